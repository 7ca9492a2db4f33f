"""The flow task (seed 004): conditional flow matching on vectors, scored by sample quality.

Training regresses a velocity network on straight noise-to-data paths (``icfm.py``).
Each evaluation reports the validation flow-matching loss (the early-stopping
metric) on fixed noise, and the sliced Wasserstein distance of ODE samples
(``ode.py``) to the test set next to its floor, the distance between two halves of
the test set. The core swaps the EMA weights in for evaluation and test.

The run folder gets ``normalization_stats.json`` (training-split mean/std),
``splits.json`` (split sizes) and, at the end, ``samples.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from epochal.callbacks.base import Callback
from epochal.errors import ConfigError
from epochal.tasks import Built, RunContext, Task
from epochal.tasks.flow.augment import augment
from epochal.tasks.flow.data import NormStats, build_flow_data, load_rows
from epochal.tasks.flow.icfm import pair_noise, squared_errors
from epochal.tasks.flow.metrics import random_directions, sliced_wasserstein
from epochal.tasks.flow.model import build_velocity_model
from epochal.tasks.flow.ode import sample
from epochal.tasks.flow.plot import plot_samples

if TYPE_CHECKING:
    from epochal.config import RunConfig

PLOT_FILE = "samples.png"


@dataclass
class FlowConfig:
    # Required: every run states its choices, so no two runs differ by a silent default.
    arch: Literal["mlp", "resmlp"]  # velocity network: plain MLP, or residual MLP for deeper stacks
    flow: Literal["icfm", "otcfm"]  # noise pairing: independent (seed 004) or minibatch OT (straighter paths, CPU sync)
    dataset: Literal["moons", "8gaussians", "checkerboard", "gmm8d", "file"]  # a seeded synthetic set or task.data_path
    aug: Literal["none", "flip", "rotate"]  # only a symmetry of the data is harmless; see augment.py
    data_path: str | None = None  # a .npy or .csv of shape (n_samples, dim), read when dataset = "file"
    n_samples: int = 20000  # rows drawn from a synthetic dataset before splitting
    val_fraction: float = 0.1  # rows held out for the early-stopping loss
    test_fraction: float = 0.1  # rows held out for the sample distance; halves of it give the floor
    train_fraction: float = 1.0  # share of the training pool used; smaller shares are nested in larger ones
    data_seed: int = 0  # fixes the data, the splits and the evaluation noise, apart from train.seed
    hidden: int = 128  # width of the velocity network: ample for 2-D to 8-D densities
    depth: int = 3  # hidden layers (mlp) or residual blocks (resmlp)
    time_dim: int = 32  # size of the sinusoidal time embedding
    ode_method: Literal["euler", "midpoint", "rk4"] = "midpoint"  # sampler; midpoint is 2nd order at 2 calls a step
    ode_steps: int = 16  # fixed steps from noise (t=0) to data (t=1); straight-ish CFM paths need few
    eval_samples: int = 2000  # most samples scored per evaluation (also capped by half the test set)
    swd_directions: int = 256  # random 1-D slices of the sliced Wasserstein distance: fewer are noisier
    swd_draws: int = 4  # independent sample sets whose distances are averaged: same mean, less noise
    eval_batch_size: int = 256  # rows per chunk of the validation loss; for otcfm the OT pairing is per chunk, so match train.batch_size

    def validate(self) -> None:
        if self.dataset == "file" and self.data_path is None:
            raise ConfigError("task.data_path: required when task.dataset = 'file'; allowed: a .npy or .csv path")
        if self.dataset != "file" and self.data_path is not None:
            raise ConfigError(f"task.data_path: only read when task.dataset = 'file', but task.dataset = {self.dataset!r}")
        if self.aug == "rotate" and self.dataset == "gmm8d":
            raise ConfigError("task.aug: 'rotate' needs 2-D data, task.dataset 'gmm8d' is 8-D; allowed: none, flip")
        if not 0 < self.train_fraction <= 1:
            raise ConfigError(f"task.train_fraction: {self.train_fraction} out of range; allowed: 0 < f <= 1")
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise ConfigError(f"task.{name}: {getattr(self, name)} out of range; allowed: 0 < f < 0.5")
        if self.val_fraction + self.test_fraction > 0.5:
            raise ConfigError("task.val_fraction + task.test_fraction: above 0.5; allowed: at most half held out")
        for name in ("n_samples", "hidden", "depth", "ode_steps", "eval_samples", "swd_directions", "swd_draws", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"task.{name}: {getattr(self, name)} must be positive; allowed: >= 1")
        if self.dataset != "file" and self.n_samples < 100:
            raise ConfigError(f"task.n_samples: {self.n_samples} is too few to split; allowed: >= 100")
        if self.time_dim < 2 or self.time_dim % 2:
            raise ConfigError(f"task.time_dim: {self.time_dim}; allowed: an even number >= 2 (sin and cos pairs)")


@dataclass
class FlowEval:
    """Everything evaluate() and test() need, fixed at build time and on the device."""

    flow: str
    ode_method: str
    ode_steps: int
    eval_batch_size: int
    val: torch.Tensor  # normalised validation rows
    val_noise: torch.Tensor  # fixed x0 for the validation loss
    val_times: torch.Tensor  # fixed t (n, 1) for the validation loss
    reference: torch.Tensor  # one half of the test set: what samples are compared with
    sample_noise: torch.Tensor  # fixed x0 (draws, n, dim) carried to data space at every evaluation
    test_noise: torch.Tensor  # separate x0 for the final test, so test() is not the eval draw again
    directions: torch.Tensor  # SWD slices, the same for samples and floor
    swd_floor: float  # distance of the test set's other half to `reference`
    stats: NormStats
    title: str


def _fixed_normal(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Drawn on the CPU, so the values are the same whatever the device."""
    return torch.randn(shape, generator=generator).to(device)


def make_eval_context(cfg: FlowConfig, val: torch.Tensor, test: torch.Tensor, stats: NormStats, run: RunContext) -> FlowEval:
    generator = torch.Generator().manual_seed(cfg.data_seed)
    device = run.device
    n_scored = min(cfg.eval_samples, len(test) // 2)
    dim = val.shape[1]
    reference, other_half = test[:n_scored].to(device), test[n_scored : 2 * n_scored].to(device)
    directions = random_directions(dim, cfg.swd_directions, generator).to(device)
    return FlowEval(
        flow=cfg.flow,
        ode_method=cfg.ode_method,
        ode_steps=cfg.ode_steps,
        eval_batch_size=cfg.eval_batch_size,
        val=val.to(device),
        val_noise=_fixed_normal(tuple(val.shape), generator, device),
        val_times=torch.rand(len(val), 1, generator=generator).to(device),
        reference=reference,
        sample_noise=_fixed_normal((cfg.swd_draws, n_scored, dim), generator, device),
        test_noise=_fixed_normal((cfg.swd_draws, n_scored, dim), generator, device),
        directions=directions,
        swd_floor=float(sliced_wasserstein(reference, other_half, directions)),
        stats=stats,
        title=f"{cfg.dataset}, {cfg.arch}, {cfg.flow}, {cfg.ode_method} ODE, {cfg.ode_steps} steps",
    )


def validation_loss(model: nn.Module, ctx: FlowEval) -> float:
    """Mean squared velocity error on the validation rows with the fixed noise and times."""
    total = torch.zeros((), device=ctx.val.device)
    for start in range(0, len(ctx.val), ctx.eval_batch_size):
        chunk = slice(start, start + ctx.eval_batch_size)
        x1 = ctx.val[chunk]
        x0 = pair_noise(ctx.val_noise[chunk], x1, ctx.flow)
        total += squared_errors(model, x0, x1, ctx.val_times[chunk]).sum()
    return float(total / ctx.val.numel())


def sample_distance(model: nn.Module, ctx: FlowEval, noise: torch.Tensor) -> float:
    """Mean sliced Wasserstein distance of each draw of samples, from ``noise`` (draws, n, dim),
    to the reference half of the test set; the draws are integrated as one batch."""
    samples = sample(model, noise.flatten(0, 1), ctx.ode_steps, ctx.ode_method).reshape(noise.shape)
    return float(sliced_wasserstein(samples, ctx.reference, ctx.directions).mean())


class SamplePlot(Callback):
    """At the end of training, a PNG of samples from the final (EMA) weights against test data."""

    def on_fit_end(self, run) -> None:
        ctx: FlowEval = run.eval_context
        with run.evaluating() as model:  # eval mode, no grad, EMA weights, training RNG untouched
            samples = sample(model, ctx.sample_noise[0], ctx.ode_steps, ctx.ode_method)
        plot_samples(
            ctx.stats.denormalize(samples.float().cpu().numpy()),
            ctx.stats.denormalize(ctx.reference.cpu().numpy()),
            Path(run.dir) / PLOT_FILE,
            ctx.title,
        )


class FlowTask(Task):
    name = "flow"
    summary = "conditional flow matching on 2-D/8-D vectors; sample quality by sliced Wasserstein vs a floor"
    Config = FlowConfig
    metrics = ("val_fm_loss", "sample_swd", "swd_floor", "swd_ratio")
    # Seed 004's locked settings. The CPU recipes flow-moons and flow-8gaussians shorten
    # warmup and EMA decay to fit runs of a few thousand steps.
    defaults = {
        "train": {"grad_clip": 1.0},
        "schedule": {"kind": "cosine", "warmup_steps": 1000},
        "ema": {"enabled": True, "decay": 0.9999},
        "early_stop": {"enabled": True, "metric": "val_fm_loss", "mode": "min", "patience": 20},
    }

    def validate(self, config: "RunConfig") -> None:
        if config.group == "":
            raise ConfigError(
                "group: required for the flow task; set group = \"<name>\" so runs are kept in results/<group>/"
            )

    def build(self, cfg: FlowConfig, run: RunContext) -> Built:
        rows = load_rows(cfg.dataset, cfg.n_samples, cfg.data_path, cfg.data_seed)
        if cfg.aug == "rotate" and rows.shape[1] != 2:
            raise ConfigError(f"task.aug: 'rotate' needs 2-D data, task.data_path has dimension {rows.shape[1]}; allowed: none, flip")
        data = build_flow_data(rows, cfg.val_fraction, cfg.test_fraction, cfg.train_fraction, cfg.data_seed, run.dir)
        self.aug = cfg.aug
        self.flow = cfg.flow
        self.std = torch.as_tensor(data.stats.std, dtype=torch.float32, device=run.device)
        model = build_velocity_model(cfg.arch, data.train.dim, cfg.hidden, cfg.depth, cfg.time_dim)
        ctx = make_eval_context(cfg, data.val.vectors, data.test.vectors, data.stats, run)
        return Built(model=model, train_data=data.train.tensors(), eval_context=ctx)

    def prepare_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Augmentation, noise, its pairing and times are drawn once per optimizer step, on the whole batch,
        so that gradient accumulation splits the same draws (and OT pairs within the whole batch)."""
        x1 = augment(batch["x1"], self.aug, self.std)
        x0 = pair_noise(torch.randn_like(x1), x1, self.flow)
        return {"x1": x1, "x0": x0, "t": torch.rand_like(x1[:, :1])}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": squared_errors(model, batch["x0"], batch["x1"], batch["t"]).mean()}

    def evaluate(self, model: nn.Module, ctx: FlowEval) -> dict[str, float]:
        swd = sample_distance(model, ctx, ctx.sample_noise)
        return {
            "val_fm_loss": validation_loss(model, ctx),
            "sample_swd": swd,
            "swd_floor": ctx.swd_floor,
            "swd_ratio": swd / ctx.swd_floor,
        }

    def test(self, model: nn.Module, ctx: FlowEval) -> dict[str, float]:
        swd = sample_distance(model, ctx, ctx.test_noise)
        return {"test_sample_swd": swd, "test_swd_ratio": swd / ctx.swd_floor}

    def callbacks(self, cfg: FlowConfig, run: RunContext) -> list[Callback]:
        return [SamplePlot()]
