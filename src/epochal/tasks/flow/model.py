"""Velocity networks v(x_t, t) for flow matching on vectors."""

from __future__ import annotations

import math

import torch
from torch import nn

ARCHS = ("mlp", "resmlp")


class SinusoidalTimeEmbedding(nn.Module):
    """sin/cos of t at geometrically spaced frequencies, so the network can resolve both
    slow and fast changes of the velocity along t in [0, 1]."""

    def __init__(self, dim: int, max_frequency: float = 100.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"time embedding dimension must be even and >= 2, got {dim}")
        frequencies = torch.exp(torch.linspace(0.0, math.log(max_frequency), dim // 2))
        # Not persistent: derived from the constructor arguments, so not part of the weights.
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.frequencies
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def _batch_times(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """t as one time per row of x: accepts a number, a 0-dim tensor, (n,) or (n, 1)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(x.shape[0])


class MLPVelocity(nn.Module):
    """A plain MLP on [x_t, embed(t)]."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_dim: int = 32):
        super().__init__()
        self.time_embedding = SinusoidalTimeEmbedding(time_dim)
        layers: list[nn.Module] = []
        width = dim + time_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t_features = self.time_embedding(_batch_times(t, x_t))
        return self.net(torch.cat([x_t, t_features], dim=1))


class ResidualBlock(nn.Module):
    """h + W2 silu(W1 norm(h) + Wt embed(t)): the time enters every block."""

    def __init__(self, hidden: int, time_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.inner = nn.Linear(hidden, hidden)
        self.time = nn.Linear(time_dim, hidden)
        self.outer = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, t_features: torch.Tensor) -> torch.Tensor:
        return h + self.outer(nn.functional.silu(self.inner(self.norm(h)) + self.time(t_features)))


class ResMLPVelocity(nn.Module):
    """A residual MLP: deeper stacks train stably because each block adds to the stream."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_dim: int = 32):
        super().__init__()
        self.time_embedding = SinusoidalTimeEmbedding(time_dim)
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, time_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.output = nn.Linear(hidden, dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t_features = self.time_embedding(_batch_times(t, x_t))
        h = self.input(x_t)
        for block in self.blocks:
            h = block(h, t_features)
        return self.output(self.norm(h))


def build_velocity_model(arch: str, dim: int, hidden: int, depth: int, time_dim: int) -> nn.Module:
    if arch == "mlp":
        return MLPVelocity(dim, hidden, depth, time_dim)
    if arch == "resmlp":
        return ResMLPVelocity(dim, hidden, depth, time_dim)
    raise ValueError(f"unknown arch {arch!r}; allowed: {', '.join(ARCHS)}")
