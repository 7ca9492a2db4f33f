"""GPU speed: epochal against a hand-written loop, eager, compiled and as a CUDA graph, and Lightning.

Workloads: the seed tasks as their recipes train them (walks-seed, regex-nested,
flow-seed) and a GPT-style model of about 125M parameters (12 layers, width 768,
12 heads, context 1024, vocabulary 50,304, bf16) trained through ``epochal.fit``.
Each variant trains one run; its speed is read over ``--windows`` windows of
``--steps`` optimizer steps after ``--warmup`` steps (compiles and captures happen
there), with the device synchronised at each window's edges only; the report gives
the median window and the spread (min-max) of steps/s, tokens/s and MFU.

- raw: the loop a careful researcher writes by hand: the task's own loss, fused AdamW,
  warmup + cosine, clipping at 1.0, losses read once every 50 steps;
- raw-compile: the same with torch.compile on the loss function and the model under it;
- raw-graphs: the same step captured in a CUDA graph by hand (PyTorch's whole-network recipe);
- epochal, epochal-compile, epochal-graphs: epochal.run / epochal.fit with train.compile =
  "default" or train.cuda_graphs = true; evaluation and checkpoints out of the timed windows;
- lightning: Lightning's Trainer on the same module, optimizer, schedule and batches.

MFU counts 6 N + 12 L d T FLOPs a token (N: parameters without the position table) for
the GPT and each task's own count for the others, against the GPU's datasheet bf16
dense peak and against a measured 8192^3 bf16 matrix product. ``--concurrent`` also
trains K = 1, 2, 4 flow-seed runs at once on one GPU (separate processes) and reports
their summed steps/s: many small trials share a GPU well.

    python benchmarks/gpu_speed.py [--smoke] [--budget SECONDS] [--json FILE] [--only NAME ...] [--variants V ...]

``--smoke`` runs it tiny on the CPU (eager variants only) so that it cannot rot; the
test suite runs it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import epochal
from epochal import recipes
from epochal.data import epoch_order
from epochal.loggers.perf import peak_flops
from epochal.optim import build_adamw, make_schedule, resolve_warmup_steps
from epochal.resolve import resolve_config
from epochal.step import autocast, loss_parts
from epochal.tasks import RunContext, Task
from epochal.tree import batch_size, leaves, tree_map

FETCH_EVERY = 50  # the hand-written loop reads its losses on the host this often, as epochal's default log_every
SEED = 0


# ------------------------------------------------------------------ workloads
@dataclass
class Workload:
    name: str
    model: nn.Module  # initial weights; each variant trains a deep copy
    data: Any  # tensors on the device, first dimension = examples
    loss: Callable[[nn.Module, Any], Any]
    prepare: Callable[[Any], Any] | None
    batch: int
    lr: float
    weight_decay: float
    decay_all: bool
    min_lr_ratio: float
    precision: str
    tokens_per_example: int | None
    flops_per_example: float | None
    run: Callable[[dict, list], None]  # trains through epochal with these overrides and callbacks
    compile_ok: bool = True
    graphs_ok: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def examples(self) -> int:
        return batch_size(self.data)


class Quiet:
    """A task whose evaluation and test are skipped: the benchmark times training steps only."""

    def __init__(self, task: Task):
        self.task = task

    def make(self) -> Task:
        base = type(self.task)

        class Timed(base):  # type: ignore[misc, valid-type]
            def evaluate(self, model, ctx):
                return {}

            def test(self, model, ctx):
                return None

            def callbacks(self, cfg, run):
                return []

        Timed.name = base.name
        return Timed()


QUIET_OVERRIDES = {"gate.above": {}, "gate.below": {}, "early_stop.enabled": False, "checkpoint.best_metric": "",
                   "checkpoint.every_epochs": 0, "checkpoint.every_steps": 0, "ema.enabled": False,
                   "train.progress": False, "train.drop_last": True, "train.eval_every": 10**6, "log.plots": False,
                   "train.expected_gpus": [], "train.expected_cuda_visible_devices": "",
                   "train.matmul_precision": "high"}


def task_workload(name: str, recipe: str, device: torch.device, smoke: dict, out: Path) -> Workload:
    """A built-in task as its recipe trains it (EMA, gates and evaluation off: steps only)."""
    config = tomllib.loads(recipes.text(recipe))
    overrides = {**QUIET_OVERRIDES, **smoke, "train.device": str(device)}
    task, resolved = resolve_config(None, config, overrides)
    torch.manual_seed(SEED)
    (out / f"build-{name}").mkdir(parents=True, exist_ok=True)
    built = task.build(resolved.task, RunContext(out / f"build-{name}", device, SEED, resolved))
    data = tree_map(lambda t: t.to(device), built.train_data)
    o, s, t = resolved.optim, resolved.schedule, resolved.train

    def run(extra: dict, callbacks: list) -> None:
        epochal.run(Quiet(task).make(), config, overrides={**overrides, **extra}, out_dir=out,
                    experiment_id=f"{name}-{len(os.listdir(out))}", callbacks=callbacks, log=lambda _: None)

    return Workload(name, copy.deepcopy(built.model).to(device), data, task.loss, getattr(task, "prepare_batch", None),
                    t.batch_size, o.lr, o.weight_decay, o.decay_all, s.min_lr_ratio, t.precision,
                    task.tokens_per_example(resolved.task), task.flops_per_example(resolved.task, built.model), run)


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention (flash SDPA) and a 4x MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, context: int, width: int, layers: int, heads: int):
        super().__init__()
        self.token, self.position = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.token.weight  # tied, as GPT-2
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token(tokens) + self.position(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def gpt_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    tokens = batch[0] if isinstance(batch, (tuple, list)) else batch
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())  # autocast computes it in fp32


def gpt_workload(device: torch.device, smoke: bool, out: Path) -> Workload:
    vocab, context, width, layers, heads, batch = (128, 32, 64, 2, 4, 4) if smoke else (50304, 1024, 768, 12, 12, 32)
    torch.manual_seed(SEED)
    model = GPT(vocab, context, width, layers, heads).to(device)
    sequences = 8 * batch
    tokens = torch.randint(0, vocab, (sequences, context + 1), generator=torch.Generator().manual_seed(SEED))
    data = tokens.to(device)
    n = sum(p.numel() for p in model.parameters()) - model.position.weight.numel()
    flops = (6 * n + 12 * layers * width * context) * context  # per sequence of `context` predicted tokens
    precision = "fp32" if device.type == "cpu" else "bf16"
    config = {"train": {"batch_size": batch, "precision": precision, "device": str(device), "progress": False,
                        "drop_last": True, "max_epochs": 10**6, "eval_every": 10**6,
                        "matmul_precision": "high"},
              "optim": {"lr": 6e-4, "weight_decay": 0.1}, "schedule": {"warmup_fraction": 0.1, "min_lr_ratio": 0.1},
              "checkpoint": {"every_epochs": 0}, "log": {"plots": False}}

    def run(extra: dict, callbacks: list) -> None:
        trained = copy.deepcopy(workload.model)
        layered = copy.deepcopy(config)
        for key, value in extra.items():
            section, name = key.split(".")
            layered.setdefault(section, {})[name] = value
        epochal.fit(trained, torch.utils.data.TensorDataset(data), gpt_loss, config=layered, out_dir=out,
                    experiment_id=f"gpt-{len(os.listdir(out))}", resume="never", callbacks=callbacks,
                    log=lambda _: None)

    workload = Workload("gpt-125m" if not smoke else "gpt-tiny", model, data, gpt_loss, None, batch, 6e-4, 0.1, False,
                        0.1, precision, context, flops, run, graphs_ok=False,
                        notes=[f"{n / 1e6:.1f}M parameters without the position table"])
    return workload


# ------------------------------------------------------------------ timing
class Windows:
    """Synchronised clock reads at the edges of each timed window; shared by every variant's loop."""

    def __init__(self, device: torch.device, warmup: int, steps: int, windows: int):
        self.device, self.warmup, self.steps, self.windows = device, warmup, steps, windows
        self.edges = {warmup + i * steps for i in range(windows + 1)}
        self.times: list[float] = []

    @property
    def total(self) -> int:
        return self.warmup + self.steps * self.windows

    def tick(self, step: int) -> None:
        """Called after optimizer step ``step`` (1-based)."""
        if step in self.edges:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.times.append(time.perf_counter())

    def rates(self) -> list[float]:
        return [self.steps / (b - a) for a, b in zip(self.times, self.times[1:])]


class EpochalClock(epochal.Callback):
    def __init__(self, windows: Windows):
        self.windows = windows

    def on_step_end(self, run) -> None:
        self.windows.tick(run.state.step)


def raw_loop(w: Workload, windows: Windows, mode: str, device: torch.device) -> None:
    """The hand-written loop: eager, compiled (mode "compile") or captured in a CUDA graph ("graphs")."""
    model = copy.deepcopy(w.model)
    model.train()
    optimizer = build_adamw(model, w.lr, w.weight_decay, (0.9, 0.999), 1e-8, w.decay_all)
    total = windows.total
    schedule = make_schedule("cosine", warmup_steps(total), total, w.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    loss_fn = torch.compile(w.loss) if mode == "compile" else w.loss
    losses = torch.zeros(FETCH_EVERY, device=device)

    def update(batch: Any) -> torch.Tensor:
        if w.prepare is not None:
            batch = w.prepare(batch)
        with autocast(device, w.precision):
            loss = _scalar(loss_parts(loss_fn(model, batch))["loss"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        return loss.detach()

    graph, static, static_loss, lrs = None, None, None, []
    per_epoch = w.examples // w.batch
    epoch, order = -1, None
    for step in range(1, total + 1):
        position = (step - 1) % per_epoch
        if position == 0:
            epoch += 1
            order = epoch_order(w.examples, SEED, epoch).to(device)
        index = order[position * w.batch:(position + 1) * w.batch]
        batch = tree_map(lambda t: t[index], w.data)
        if mode != "graphs" or step <= 3:
            if mode == "graphs":
                for group in optimizer.param_groups:
                    group["capturable"] = True
            loss = update(batch)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            if graph is None:  # PyTorch's whole-network capture: static inputs, lr in a tensor
                static = tree_map(torch.clone, batch)
                lrs = [torch.tensor(float(g["lr"]), device=device) for g in optimizer.param_groups]
                floats = [g["lr"] for g in optimizer.param_groups]
                for g, lr in zip(optimizer.param_groups, lrs):
                    g["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_loss = update(static)
                for g, lr in zip(optimizer.param_groups, floats):
                    g["lr"] = lr
            for target, leaf in zip(leaves(static), leaves(batch)):
                target.copy_(leaf)
            for lr, g in zip(lrs, optimizer.param_groups):
                lr.fill_(g["lr"])
            graph.replay()
            scheduler.step()
            loss = static_loss
        losses[(step - 1) % FETCH_EVERY] = loss
        if step % FETCH_EVERY == 0:
            losses.tolist()
        windows.tick(step)


def warmup_steps(total: int) -> int:
    """Every variant warms up over the first tenth of its steps (the recipes' own warmups outlast a benchmark)."""
    return resolve_warmup_steps(total, 0.1, None)


def _scalar(loss: Any) -> torch.Tensor:
    return loss[0] / loss[1] if isinstance(loss, tuple) else loss


def epochal_loop(w: Workload, windows: Windows, mode: str) -> None:
    extra: dict[str, Any] = {"train.max_steps": windows.total, "train.log_every": FETCH_EVERY,
                             "schedule.warmup_steps": warmup_steps(windows.total)}
    if mode == "compile":
        extra["train.compile"] = "default"
    elif mode == "graphs":
        extra["train.cuda_graphs"] = True
    w.run(extra, [EpochalClock(windows)])


def lightning_loop(w: Workload, windows: Windows, device: torch.device) -> str | None:
    try:
        import lightning as L
    except ImportError:
        return "Lightning is not installed (pip install 'epochal[bench]')"
    total = windows.total

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = copy.deepcopy(w.model)

        def training_step(self, batch, _):
            if w.prepare is not None:
                batch = w.prepare(batch)
            return _scalar(loss_parts(w.loss(self.model, batch))["loss"])

        def on_before_optimizer_step(self, optimizer):
            # Clipped here: Lightning's own clipping refuses a fused optimizer under bf16-mixed.
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)

        def configure_optimizers(self):
            optimizer = build_adamw(self.model, w.lr, w.weight_decay, (0.9, 0.999), 1e-8, w.decay_all)
            schedule = make_schedule("cosine", warmup_steps(total), total, w.min_lr_ratio)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            windows.tick(trainer.global_step)

    class Batches(torch.utils.data.Dataset):
        """Whole batches cut from the device tensors, in epochal's order (a DataLoader with batch_size=None)."""

        def __len__(self):
            return w.examples // w.batch

        order = epoch_order(w.examples, SEED, 0).to(device)

        def __getitem__(self, i):
            return tree_map(lambda t: t[self.order[i * w.batch:(i + 1) * w.batch]], w.data)

    precision = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}[w.precision]
    trainer = L.Trainer(max_steps=total, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[Clock()])
    loader = torch.utils.data.DataLoader(Batches(), batch_size=None, shuffle=False)
    trainer.fit(Module(), loader)
    return None


# ------------------------------------------------------------------ the run
@dataclass
class Row:
    workload: str
    variant: str
    rates: list[float] = field(default_factory=list)  # steps/s of each window
    seconds: float = 0.0  # wall time of the whole variant, compiles included
    tokens_per_step: int | None = None
    flops_per_step: float | None = None
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None


def measure_matmul(device: torch.device) -> float | None:
    """Achieved TFLOP/s of an 8192^3 bf16 matrix product on random data (median of 10 after 3 warm-ups)."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / statistics.median(times) / 1e12


def run_variant(w: Workload, variant: str, device: torch.device, args) -> Row:
    row = Row(w.name, variant, tokens_per_step=w.tokens_per_example and w.tokens_per_example * w.batch,
              flops_per_step=w.flops_per_example and w.flops_per_example * w.batch)
    windows = Windows(device, args.warmup, args.steps if w.name.startswith(("walks", "regex", "flow")) else
                      args.gpt_steps, args.windows)
    family, _, mode = variant.partition("-")
    started = time.perf_counter()
    try:
        if family == "raw":
            raw_loop(w, windows, mode, device)
        elif family == "epochal":
            epochal_loop(w, windows, mode)
        else:
            row.note = lightning_loop(w, windows, device) or ""
    except Exception as error:  # one variant failing must not cost the rest of the table
        row.note = f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:160]
    row.seconds = time.perf_counter() - started
    row.rates = windows.rates()
    return row


def concurrent_rates(device: torch.device, args, out: Path) -> dict[int, float]:
    """Summed steps/s of K flow-seed runs training at once on one GPU, K = 1, 2, 4."""
    found = {}
    for k in (1, 2, 4):
        barrier = out / f"barrier-{k}"
        barrier.mkdir()
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(barrier), "--worker-count", str(k),
                                   "--steps", str(args.steps), "--windows", "2", "--warmup", str(args.warmup)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(k)]
        rates = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
        found[k] = sum(statistics.median(r) for r in rates if r)
    return found


def worker(args) -> None:
    """One of K concurrent flow-seed trainings: waits until all K are warm, then times its windows."""
    device = torch.device("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        w = task_workload("flow-seed", "flow-seed", device, {}, Path(tmp))
        windows = Windows(device, args.warmup, args.steps, args.windows)
        barrier, count = Path(args.worker), args.worker_count

        class Wait(epochal.Callback):
            def on_step_end(self, run):
                if run.state.step == windows.warmup:
                    (barrier / str(os.getpid())).touch()
                    while len(list(barrier.iterdir())) < count:
                        time.sleep(0.01)
                windows.tick(run.state.step)

        w.run({"train.max_steps": windows.total, "train.log_every": FETCH_EVERY,
               "schedule.warmup_steps": warmup_steps(windows.total)}, [Wait()])
    print(json.dumps(windows.rates()))


def table(rows: list[Row], peak: float | None, matmul: float | None) -> list[str]:
    lines = ["| workload | variant | steps/s (min-max) | vs raw | vs raw, same mode | tokens/s | MFU datasheet | "
             "MFU measured | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    by = {(r.workload, r.variant): r for r in rows}
    for r in rows:
        if r.median is None:
            lines.append(f"| {r.workload} | {r.variant} | {r.note or 'no window measured'} | | | | | | {r.seconds:.0f} |")
            continue
        raw = by.get((r.workload, "raw"))
        mode = r.variant.partition("-")[2]
        same = by.get((r.workload, "raw" + (f"-{mode}" if mode else ""))) if not r.variant.startswith("raw") else None
        ratio = lambda base: f"{r.median / base.median:.2f}x" if base and base.median else ""  # noqa: E731
        tokens = f"{r.median * r.tokens_per_step:,.0f}" if r.tokens_per_step else ""
        flops = r.median * r.flops_per_step if r.flops_per_step else None
        mfu = lambda ceiling: f"{100 * flops / ceiling:.1f}%" if flops and ceiling else ""  # noqa: E731
        lines.append(f"| {r.workload} | {r.variant} | {r.median:,.1f} ({min(r.rates):,.1f}-{max(r.rates):,.1f}) | "
                     f"{ratio(raw)} | {ratio(same) if same else ''} | {tokens} | {mfu(peak)} | "
                     f"{mfu(matmul * 1e12 if matmul else None)} | {r.seconds:.0f} |")
    return lines


VARIANTS = ("raw", "epochal", "raw-graphs", "epochal-graphs", "lightning", "raw-compile", "epochal-compile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny, on the CPU, eager variants only")
    parser.add_argument("--steps", type=int, default=200, help="steps a timed window, small workloads")
    parser.add_argument("--gpt-steps", type=int, default=10, help="steps a timed window, the GPT")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20, help="steps before the first window")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds; variants not started by then are skipped")
    parser.add_argument("--only", nargs="*", default=[], help="workload names to run (default: all)")
    parser.add_argument("--variants", nargs="*", default=[], choices=VARIANTS, help="variants to run (default: all)")
    parser.add_argument("--concurrent", action="store_true", help="also K = 1, 2, 4 concurrent flow-seed runs")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--tests", default="", help="the GPU tests' summary line, printed above the table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # its tips and notices, once per variant
    if args.worker:
        return worker(args)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; allowed: --smoke (tiny, on the CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    variants = ("raw", "epochal", "lightning") if device.type == "cpu" else VARIANTS
    if args.variants:
        variants = tuple(v for v in variants if v in args.variants)
    if args.smoke:
        args.steps, args.gpt_steps, args.windows, args.warmup = 3, 2, 2, 2
    torch.set_float32_matmul_precision("high")  # TF32 for the fp32 parts, in every variant alike
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="epochal-gpu-speed-") as tmp:
        out = Path(tmp)
        tiny = ({"task.num_walks": 60, "task.n_vertices": 16, "task.n_blocks": 2, "task.n_jumpers": 2,
                 "task.eval_sequences": 8} if args.smoke else {})
        builders = {
            "walks-seed": lambda: task_workload("walks-seed", "walks-seed", device, tiny, out),
            "regex": lambda: task_workload("regex", "regex-nested", device,
                                           {"task.n_train": 64, "task.n_val": 16, "task.n_test": 16,
                                            "task.n_test_ood": 16} if args.smoke else {}, out),
            "flow-seed": lambda: task_workload("flow-seed", "flow-seed", device,
                                               {"task.n_samples": 400} if args.smoke else {}, out),
            "gpt": lambda: gpt_workload(device, args.smoke, out),
        }
        workloads = [build() for name, build in builders.items() if not args.only or name in args.only]
        # Phases, most telling first, so that a spent --budget skips the least: eager and graphs for every
        # workload, then Lightning, then the compiled variants (their compiles take the longest).
        phases = [[v for v in variants if "compile" not in v and v != "lightning"],
                  [v for v in variants if v == "lightning"], [v for v in variants if "compile" in v]]
        for phase in phases:
            for w in workloads:
                for variant in phase:
                    if variant.endswith("graphs") and not w.graphs_ok:
                        continue
                    if time.perf_counter() - started > args.budget:
                        rows.append(Row(w.name, variant, note="skipped: --budget spent"))
                        continue
                    rows.append(run_variant(w, variant, device, args))
                    print(f"{w.name:10s} {variant:16s} {rows[-1].median or 0:10.1f} steps/s  "
                          f"{rows[-1].seconds:6.1f} s {rows[-1].note}", flush=True)
        rows.sort(key=lambda r: ([w.name for w in workloads].index(r.workload), VARIANTS.index(r.variant)))
        concurrent = (concurrent_rates(device, args, out) if args.concurrent and device.type == "cuda"
                      and time.perf_counter() - started < args.budget else {})
    matmul = measure_matmul(device)
    peak = peak_flops(device, 0.0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; datasheet bf16 dense peak "
          f"{peak / 1e12 if peak else 'n/a'} TFLOP/s, measured 8192^3 bf16 matmul "
          f"{f'{matmul:.0f}' if matmul else 'n/a'} TFLOP/s; median window of {args.windows} (spread min-max)")
    if args.tests:
        print(f"GPU tests (tests/*_gpu.py): {args.tests.strip()}")
    for line in table(rows, peak, matmul):
        print(line)
    if concurrent:
        base = concurrent.get(1)
        print("\nconcurrent flow-seed runs on one GPU (summed steps/s): " + ", ".join(
            f"K={k}: {v:,.0f} ({v / base:.2f}x)" for k, v in concurrent.items()))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "peak_tflops": peak and peak / 1e12,
                                         "matmul_tflops": matmul, "rows": [r.__dict__ for r in rows],
                                         "concurrent": concurrent}, indent=1))


if __name__ == "__main__":
    main()
