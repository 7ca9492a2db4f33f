"""Loop overhead: epochal.run against a minimal hand-written PyTorch loop (and Lightning, if installed).

All train the same MLP on the same device-resident data in the same order with
the same fused AdamW (no decay on biases), warmup + cosine schedule, clipping at
1.0 and per-step loss recording. epochal runs four times: the built-in task path
with its default guard that skips non-finite steps on the device, the same without
it (the raw loop has none), with the TensorBoard and CSV trackers on (their writes
happen on a background thread), and ``epochal.fit`` on a TensorDataset (a user's own
model and data, moved to the device once like a task's). The hand-written loop runs
twice too: as is, and with the same guard written by hand (``raw_guarded``), so
that what the guard costs shows apart from what the loop costs.

This machine is noisy, so the variants are paired: each repeat runs every variant
once, in a shuffled order, and the ratio to the raw loop is taken within the
repeat; the report is the min / median / max of those per-repeat ratios. The
final weights of the raw loop and epochal must be bit-equal.

    python benchmarks/loop_overhead.py [--steps 1000] [--repeats 7] [--width 512] [--device auto]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from dataclasses import dataclass

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


def raw_loop(cfg: BenchConfig, device: torch.device, steps: int, guard: bool = False) -> tuple[float, nn.Module]:
    """The hand-written baseline: what a careful researcher would write. ``guard``: also skip a step whose
    loss or gradient norm is not finite, on the device, written by hand the way epochal does it by default."""
    torch.manual_seed(SEED)
    model = make_model(cfg).to(device)
    data = {k: v.to(device) for k, v in make_data(cfg).items()}
    optimizer = build_adamw(model, LR, 0.01, (0.9, 0.999), 1e-8)
    warmup = resolve_warmup_steps(steps, 0.1, None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, make_schedule("cosine", warmup, steps, 0.1))
    losses = torch.zeros(steps, device=device)
    found_inf, unit = torch.zeros((), device=device), torch.ones((), device=device)
    order = epoch_order(cfg.n, SEED, 0).to(device)
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        index = order[i * BATCH : (i + 1) * BATCH]
        loss = F.mse_loss(model(data["x"][index]), data["y"][index])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        if guard:
            found_inf.zero_()
            torch._amp_foreach_non_finite_check_and_unscale_([loss.detach(), norm], found_inf, unit)
            optimizer.found_inf = found_inf  # the fused optimizer skips the update on 1.0
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses[i] = loss.detach()
    losses.tolist()
    _sync(device)
    return (time.perf_counter() - start) / steps, model


def epochal_loop(cfg: BenchConfig, device: torch.device, steps: int, guard: bool = True,
                 trackers: tuple[str, ...] = ()) -> tuple[float, nn.Module]:
    captured = {}

    class Capture(epochal.Callback):
        def on_fit_end(self, run):
            captured["model"] = run.model
            captured["seconds"] = run.state.train_seconds
            captured["fit_end"] = time.perf_counter()

    overrides = {"train.max_epochs": 1, "train.batch_size": BATCH, "train.seed": SEED, "train.progress": False,
                 "train.device": str(device), "train.log_every": 100, "optim.lr": LR, "train.guard_nonfinite": guard,
                 "checkpoint.every_epochs": 0, "task.n": steps * BATCH, "task.width": cfg.width, "task.dim": cfg.dim,
                 "log.trackers": list(trackers), "log.plots": False}
    epochal.run("bench-mlp", overrides=overrides, out_dir="/tmp/epochal-bench", experiment_id="loop",
                overwrite=True, callbacks=[Capture()], log=lambda _: None)
    drain = time.perf_counter() - captured["fit_end"]  # tracker writes still queued after the last step count too
    return (captured["seconds"] + drain) / steps, captured["model"]


def fit_loop(cfg: BenchConfig, device: torch.device, steps: int) -> tuple[float, nn.Module]:
    """epochal.fit on a TensorDataset: the user's own model and data, moved to the device once."""
    captured = {}

    class Capture(epochal.Callback):
        def on_fit_end(self, run):
            captured["seconds"] = run.state.train_seconds

    torch.manual_seed(SEED)
    model = make_model(cfg)
    data = make_data(BenchConfig(n=steps * BATCH, dim=cfg.dim, width=cfg.width))
    dataset = torch.utils.data.TensorDataset(data["x"], data["y"])

    def loss_fn(model, batch):
        x, y = batch
        return F.mse_loss(model(x), y)

    config = {"train": {"max_epochs": 1, "batch_size": BATCH, "seed": SEED, "progress": False,
                        "device": str(device), "log_every": 100},
              "optim": {"lr": LR}, "checkpoint": {"every_epochs": 0}}
    with tempfile.TemporaryDirectory(prefix="epochal-bench-") as out:
        epochal.fit(model, dataset, loss_fn, config=config, out_dir=out, experiment_id="fit", resume="never",
                    callbacks=[Capture()], log=lambda _: None)
    return captured["seconds"] / steps, model


def lightning_loop(cfg: BenchConfig, device: torch.device, steps: int) -> float | None:
    try:
        import lightning as L
    except ImportError:
        return None

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

    data = make_data(BenchConfig(n=steps * BATCH, dim=cfg.dim, width=cfg.width))
    dataset = torch.utils.data.TensorDataset(data["x"], data["y"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True,
                                         generator=torch.Generator().manual_seed(SEED))
    module = Module()
    trainer = L.Trainer(max_epochs=1, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(module, loader)
    torch.stack(module.losses).tolist()
    return (time.perf_counter() - start) / steps


def _equal(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cfg = BenchConfig(n=args.steps * BATCH, width=args.width)
    variants = {
        "raw": lambda: raw_loop(cfg, device, args.steps),
        "raw_guarded": lambda: raw_loop(cfg, device, args.steps, guard=True),
        "epochal": lambda: epochal_loop(cfg, device, args.steps),
        "unguarded": lambda: epochal_loop(cfg, device, args.steps, guard=False),
        "tracked": lambda: epochal_loop(cfg, device, args.steps, trackers=("tensorboard", "csv")),
        "fit": lambda: fit_loop(cfg, device, args.steps),
        "lightning": lambda: lightning_loop(cfg, device, args.steps),
    }
    order = random.Random(0)
    times: dict[str, list[float]] = {name: [] for name in variants}
    models = {}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        names = list(variants)
        order.shuffle(names)
        for name in names:
            measured = variants[name]()
            if isinstance(measured, tuple):
                measured, models[name] = measured
            if repeat and measured is not None:
                times[name].append(measured)
    equal = _equal(models["raw"], models["epochal"]) and _equal(models["raw"], models["raw_guarded"])
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.steps} steps x {args.repeats} paired "
          f"repeats, MLP width {args.width}, batch {BATCH}")
    for name, values in times.items():
        if values:
            print(f"{name:10s} median step {statistics.median(values) * 1e3:8.3f} ms")
    for name in ("raw_guarded", "epochal", "unguarded", "tracked", "fit", "lightning"):
        if not times[name]:
            print(f"{name}/raw n/a (install the bench extra: make bench)")
            continue
        ratios = sorted(t / r for t, r in zip(times[name], times["raw"]))
        # The same difference in time: a fixed cost per step, whatever the model, which the ratio hides.
        extra = statistics.median(t - r for t, r in zip(times[name], times["raw"])) * 1e6
        note = {"unguarded": " (train.guard_nonfinite = false)", "tracked": " (log.trackers = tensorboard, csv)"}.get(name, "")
        print(f"{name + '/raw':14s} min {ratios[0]:.3f}  median {statistics.median(ratios):.3f}  "
              f"max {ratios[-1]:.3f}  ({extra:+.0f} us a step){note}")
    ratios = sorted(e / r for e, r in zip(times["epochal"], times["raw_guarded"]))
    print(f"{'epochal/raw_guarded':14s} min {ratios[0]:.3f}  median {statistics.median(ratios):.3f}  "
          f"max {ratios[-1]:.3f} (both skip non-finite steps on the device)")
    if times["tracked"]:
        ratios = sorted(t / e for t, e in zip(times["tracked"], times["epochal"]))
        print(f"{'tracked/epochal':14s} min {ratios[0]:.3f}  median {statistics.median(ratios):.3f}  "
              f"max {ratios[-1]:.3f} (what the trackers alone cost)")
    print(f"final weights raw vs epochal bit-equal: {equal}")
    print(f"final weights raw vs epochal.fit(TensorDataset) bit-equal: {_equal(models['raw'], models['fit'])}")


if __name__ == "__main__":
    main()
