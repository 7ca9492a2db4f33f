"""Loop overhead: epochal.run against a minimal hand-written PyTorch loop (and Lightning, if installed).

All train the same MLP on the same device-resident data in the same order with
the same fused AdamW (no decay on biases), warmup + cosine schedule, clipping at
1.0, and read their per-step losses on the host once every ``BLOCK`` steps.
epochal runs four ways: the built-in task path with its defaults; the same with
the guard that skips non-finite steps on the device (``train.guard_nonfinite =
true``, on by default only under ``nan_policy = "skip"``) against the hand-written
loop with the same guard (``raw_guarded``), so that what the guard costs shows
apart from what the loop costs; with the TensorBoard and CSV trackers on (their
writes happen on a background thread); and ``epochal.fit`` on a TensorDataset (a
user's own model and data, moved to the device once like a task's).

A shared machine is noisy for seconds at a time: a neighbour slows every step by up
to a third, so two runs a few seconds apart differ by more than what is measured
here. So each variant runs in one process together with its baseline, and the two
alternate every ``BLOCK`` steps (epochal's log interval: each epochal block holds
one fetch and one round of history, console and tracker writes): at each log
interval a callback runs the next block of the hand-written loop. A run's ratio is
the median over its pairs of neighbouring blocks; the report is the min / median /
max of the runs' ratios, and the median extra microseconds a step. The final
weights of every epochal loop must be bit-equal to the hand-written one's.

    python benchmarks/loop_overhead.py [--steps 2000] [--repeats 5] [--width 512] [--device auto] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import epochal
from epochal.data import epoch_order
from epochal.optim import build_adamw, make_schedule, resolve_warmup_steps
from epochal.tasks import Built, Task, register_task


@dataclass
class BenchConfig:
    n: int = 25600  # examples; steps per epoch = n / batch
    dim: int = 64  # input and output width
    width: int = 512  # hidden width: sets the cost of a step


def make_data(cfg: BenchConfig) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(cfg.n, cfg.dim, generator=generator)
    return {"x": x, "y": torch.sin(x) + 0.1 * torch.randn(cfg.n, cfg.dim, generator=generator)}


def make_model(cfg: BenchConfig) -> nn.Module:
    return nn.Sequential(nn.Linear(cfg.dim, cfg.width), nn.GELU(), nn.Linear(cfg.width, cfg.width), nn.GELU(),
                         nn.Linear(cfg.width, cfg.dim))


class BenchTask(Task):
    name = "bench-mlp"
    summary = "benchmark MLP"
    Config = BenchConfig

    def build(self, cfg, run):
        return Built(make_model(cfg), make_data(cfg))

    def loss(self, model, batch):
        return {"loss": F.mse_loss(model(batch["x"]), batch["y"])}

    def evaluate(self, model, ctx):
        return {}


register_task(BenchTask)

SEED, BATCH, LR = 0, 64, 1e-3
BLOCK = 100  # steps a timed block holds: epochal's train.log_every here

Pairs = list[tuple[float, float]]  # seconds of (a variant's block, the baseline's block that follows it)


class RawLoop:
    """The hand-written baseline, what a careful researcher would write, run a block at a time so that
    it can alternate with another loop. ``guard``: also skip a step whose loss or gradient norm is not
    finite, on the device, written by hand the way epochal does it when asked."""

    def __init__(self, cfg: BenchConfig, device: torch.device, steps: int, guard: bool = False):
        torch.manual_seed(SEED)
        self.device, self.guard = device, guard
        self.model = make_model(cfg).to(device)
        self.data = {k: v.to(device) for k, v in make_data(cfg).items()}
        self.optimizer = build_adamw(self.model, LR, 0.01, (0.9, 0.999), 1e-8)
        schedule = make_schedule("cosine", resolve_warmup_steps(steps, 0.1, None), steps, 0.1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.losses = torch.zeros(steps, device=device)
        self.found_inf, self.unit = torch.zeros((), device=device), torch.ones((), device=device)
        self.order = epoch_order(cfg.n, SEED, 0).to(device)
        self.done = 0

    def block(self) -> float:
        """Train the next BLOCK steps; their seconds."""
        _sync(self.device)
        start = time.perf_counter()
        model, data, optimizer = self.model, self.data, self.optimizer
        for i in range(self.done, self.done + BLOCK):
            index = self.order[i * BATCH : (i + 1) * BATCH]
            loss = F.mse_loss(model(data["x"][index]), data["y"][index])
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            if self.guard:
                self.found_inf.zero_()
                torch._amp_foreach_non_finite_check_and_unscale_([loss.detach(), norm], self.found_inf, self.unit)
                optimizer.found_inf = self.found_inf  # the fused optimizer skips the update on 1.0
            optimizer.step()
            self.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            self.losses[i] = loss.detach()
        self.losses[self.done : self.done + BLOCK].tolist()
        self.done += BLOCK
        _sync(self.device)
        return time.perf_counter() - start


class Alternate(epochal.Callback):
    """Times epochal's blocks of BLOCK steps and runs a block of the baseline after each one.

    A user callback: it runs before the run's own history, console and tracker writes of
    a log interval, so those land in epochal's next block, as each block's fetch does."""

    def __init__(self, baseline: RawLoop):
        self.baseline, self.pairs, self.since, self.model = baseline, [], 0.0, None

    def on_epoch_start(self, run):
        self.since = time.perf_counter()

    def on_log(self, run, step, records):
        if step % BLOCK == 0:
            own = time.perf_counter() - self.since
            self.pairs.append((own, self.baseline.block()))
            self.since = time.perf_counter()

    def on_fit_end(self, run):
        self.model = run.model


def raw_pairs(cfg: BenchConfig, device: torch.device, steps: int) -> tuple[Pairs, nn.Module, nn.Module]:
    """The hand-written loop with the guard, alternating with the one without."""
    guarded, raw = RawLoop(cfg, device, steps, guard=True), RawLoop(cfg, device, steps)
    pairs = [(guarded.block(), raw.block()) for _ in range(steps // BLOCK)]
    return pairs, guarded.model, raw.model


def epochal_pairs(cfg: BenchConfig, device: torch.device, steps: int, guard: bool | None = None,
                  trackers: tuple[str, ...] = ()) -> tuple[Pairs, nn.Module, nn.Module]:
    baseline = RawLoop(cfg, device, steps, guard=bool(guard))
    alternate = Alternate(baseline)
    overrides = {"train.max_epochs": 1, "train.batch_size": BATCH, "train.seed": SEED, "train.progress": False,
                 "train.device": str(device), "train.log_every": BLOCK, "optim.lr": LR,
                 "checkpoint.every_epochs": 0, "task.n": steps * BATCH, "task.width": cfg.width, "task.dim": cfg.dim,
                 "log.trackers": list(trackers), "log.plots": False}
    if guard is not None:
        overrides["train.guard_nonfinite"] = guard
    epochal.run("bench-mlp", overrides=overrides, out_dir="/tmp/epochal-bench", experiment_id="loop",
                overwrite=True, callbacks=[alternate], log=lambda _: None)
    return alternate.pairs, alternate.model, baseline.model


def fit_pairs(cfg: BenchConfig, device: torch.device, steps: int) -> tuple[Pairs, nn.Module, nn.Module]:
    """epochal.fit on a TensorDataset: the user's own model and data, moved to the device once."""
    baseline = RawLoop(cfg, device, steps)
    alternate = Alternate(baseline)
    torch.manual_seed(SEED)
    model = make_model(cfg)
    data = make_data(BenchConfig(n=steps * BATCH, dim=cfg.dim, width=cfg.width))
    dataset = torch.utils.data.TensorDataset(data["x"], data["y"])

    def loss_fn(model, batch):
        x, y = batch
        return F.mse_loss(model(x), y)

    config = {"train": {"max_epochs": 1, "batch_size": BATCH, "seed": SEED, "progress": False,
                        "device": str(device), "log_every": BLOCK},
              "optim": {"lr": LR}, "checkpoint": {"every_epochs": 0}}
    with tempfile.TemporaryDirectory(prefix="epochal-bench-") as out:
        epochal.fit(model, dataset, loss_fn, config=config, out_dir=out, experiment_id="fit", resume="never",
                    callbacks=[alternate], log=lambda _: None)
    return alternate.pairs, model, baseline.model


def lightning_pairs(cfg: BenchConfig, device: torch.device, steps: int) -> tuple[Pairs, nn.Module, nn.Module] | None:
    try:
        import lightning as L
    except ImportError:
        return None

    baseline = RawLoop(cfg, device, steps)
    pairs: Pairs = []

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(SEED)
            self.model = make_model(cfg)
            self.losses = []

        def training_step(self, batch, _):
            x, y = batch
            loss = F.mse_loss(self.model(x), y)
            self.losses.append(loss.detach())
            return loss

        def configure_optimizers(self):
            optimizer = build_adamw(self.model, LR, 0.01, (0.9, 0.999), 1e-8)
            schedule = make_schedule("cosine", resolve_warmup_steps(steps, 0.1, None), steps, 0.1)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    class Alternating(L.Callback):
        since = 0.0

        def on_train_epoch_start(self, trainer, module):
            self.since = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if (batch_idx + 1) % BLOCK == 0:
                torch.stack(module.losses[-BLOCK:]).tolist()  # the host reads the losses once a block
                own = time.perf_counter() - self.since
                pairs.append((own, baseline.block()))
                self.since = time.perf_counter()

    data = make_data(BenchConfig(n=steps * BATCH, dim=cfg.dim, width=cfg.width))
    dataset = torch.utils.data.TensorDataset(data["x"], data["y"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True,
                                         generator=torch.Generator().manual_seed(SEED))
    module = Module()
    trainer = L.Trainer(max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Alternating()])
    trainer.fit(module, loader)
    return pairs, module.model, baseline.model


def _equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help=f"steps a run, a multiple of {BLOCK}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="*", default=[], help="variant names to run, e.g. tracked/raw (default: all)")
    args = parser.parse_args()
    if args.steps < 2 * BLOCK or args.steps % BLOCK:
        parser.error(f"--steps {args.steps}: allowed: a multiple of {BLOCK}, at least {2 * BLOCK}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cfg = BenchConfig(n=args.steps * BATCH, width=args.width)
    # Each variant: (what it is, what it is paired with, how to run the pair).
    variants: dict[str, tuple[str, str, Callable]] = {
        "epochal/raw": ("defaults", "", lambda: epochal_pairs(cfg, device, args.steps)),
        "raw_guarded/raw": ("the guard written by hand", "", lambda: raw_pairs(cfg, device, args.steps)),
        "guarded/raw_guarded": ("train.guard_nonfinite = true", "both skip non-finite steps on the device",
                                lambda: epochal_pairs(cfg, device, args.steps, guard=True)),
        "tracked/raw": ("log.trackers = tensorboard, csv", "",
                        lambda: epochal_pairs(cfg, device, args.steps, trackers=("tensorboard", "csv"))),
        "fit/raw": ("epochal.fit on a TensorDataset", "", lambda: fit_pairs(cfg, device, args.steps)),
        "lightning/raw": ("Lightning", "", lambda: lightning_pairs(cfg, device, args.steps)),
    }
    unknown = [name for name in args.only if name not in variants]
    if unknown:
        parser.error(f"--only {' '.join(unknown)}: allowed: {', '.join(variants)}")
    if args.only:
        variants = {name: variants[name] for name in args.only}
    order = random.Random(0)
    runs: dict[str, list[Pairs]] = {name: [] for name in variants}
    equal: dict[str, bool] = {}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        names = list(variants)
        order.shuffle(names)
        for name in names:
            measured = variants[name][2]()
            if measured is None:
                continue
            pairs, model, baseline_model = measured
            equal[name] = _equal(model, baseline_model)
            if repeat:
                runs[name].append(pairs)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.repeats} runs of {args.steps} steps "
          f"each way, alternating every {BLOCK} steps, MLP width {args.width}, batch {BATCH}")
    for name, (what, note, _) in variants.items():
        if not runs[name]:
            print(f"{name:21s} n/a (install the bench extra: make bench)")
            continue
        baseline_step = statistics.median(b for pairs in runs[name] for _, b in pairs) / BLOCK
        ratios = sorted(statistics.median(a / b for a, b in pairs) for pairs in runs[name])
        # The same difference in time: a fixed cost per step, whatever the model, which the ratio hides.
        extra = statistics.median(a - b for pairs in runs[name] for a, b in pairs) / BLOCK * 1e6
        print(f"{name:21s} min {ratios[0]:.3f}  median {statistics.median(ratios):.3f}  max {ratios[-1]:.3f}  "
              f"({extra:+.0f} us on a {baseline_step * 1e3:.2f} ms step; {what}{'; ' + note if note else ''})")
    # Lightning's DataLoader shuffles in another order: its weights differ by design.
    print("final weights bit-equal to the hand-written loop's: "
          + ", ".join(f"{name.split('/')[0]} {equal[name]}" for name in variants if name in equal and name != "lightning/raw"))


if __name__ == "__main__":
    main()
