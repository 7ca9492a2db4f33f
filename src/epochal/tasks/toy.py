"""A tiny built-in task: regress a fixed random two-layer network. For tests, benchmarks and trying the CLI."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from epochal.errors import ConfigError
from epochal.task import Built, RunContext, Task


@dataclass
class ToyConfig:
    n_train: int = 2048  # training examples: enough for a smooth loss curve in a second
    n_eval: int = 512  # held-out examples for eval_mse
    dim: int = 16  # input and output width
    hidden: int = 64  # width of the student MLP
    noise: float = 0.01  # label noise, so the loss floor is known (noise ** 2)
    dropout: float = 0.0  # exercises the RNG-in-the-step path for resume tests

    def validate(self) -> None:
        for name in ("n_train", "n_eval", "dim", "hidden"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"task.{name}: {getattr(self, name)} must be positive; allowed: > 0")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"task.dropout: {self.dropout} out of range; allowed: 0 <= dropout < 1")


class ToyTask(Task):
    name = "toy"
    summary = "regress a random teacher MLP (tiny; for tests, benchmarks and trying the CLI)"
    Config = ToyConfig
    metrics = ("eval_mse",)
    val_loss_metric = "eval_mse"  # the training loss (MSE) on the held-out set
    defaults = {"train": {"max_epochs": 5, "batch_size": 64}, "optim": {"lr": 3e-3},
                "checkpoint": {"best_metric": "eval_mse", "best_mode": "min"}}

    def build(self, cfg: ToyConfig, run: RunContext) -> Built:
        generator = run.torch_generator("toy-data")
        teacher = [torch.randn(cfg.dim, cfg.dim, generator=generator) / cfg.dim**0.5 for _ in range(2)]

        def sample(n: int) -> dict[str, torch.Tensor]:
            x = torch.randn(n, cfg.dim, generator=generator)
            y = torch.tanh(x @ teacher[0]) @ teacher[1] + cfg.noise * torch.randn(n, cfg.dim, generator=generator)
            return {"x": x, "y": y}

        train, held_out = sample(cfg.n_train), sample(cfg.n_eval)
        model = nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
                              nn.Linear(cfg.hidden, cfg.dim))
        return Built(model, train, {name: t.to(run.device) for name, t in held_out.items()})

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(model(batch["x"]), batch["y"])}

    def evaluate(self, model: nn.Module, ctx: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"eval_mse": F.mse_loss(model(ctx["x"]), ctx["y"]).item()}

    def test(self, model: nn.Module, ctx: dict[str, torch.Tensor]) -> dict[str, float]:
        return self.evaluate(model, ctx)
