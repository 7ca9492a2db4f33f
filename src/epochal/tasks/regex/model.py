"""A small causal transformer with next-token, class and state heads (seed 003, M4)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: attention scores depend on relative offsets, so positions
    beyond the training lengths are not unseen inputs (the out-of-distribution test)."""

    def __init__(self, head_dim: int, max_positions: int, base: float = 10_000.0):
        super().__init__()
        inverse_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inverse_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, T, D] rotated pairwise by position."""
        length = x.shape[-2]
        cos, sin = self.cos[:length].to(x.dtype), self.sin[:length].to(x.dtype)
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, rotary: RotaryEmbedding | None):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.rotary = rotary

    def forward(self, x: torch.Tensor, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, width // self.n_heads).permute(2, 0, 3, 1, 4)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        weights = None
        if need_weights:
            # The explicit path, for inspection only; training takes the fused kernel below.
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
            mixed = weights @ v
        else:
            mixed = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        return self.out(mixed.transpose(1, 2).reshape(batch, length, width)), weights


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, rotary: RotaryEmbedding | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = CausalSelfAttention(d_model, n_heads, dropout, rotary)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        mixed, weights = self.attention(self.norm1(x), need_weights)
        x = x + self.drop(mixed)
        return x + self.drop(self.mlp(self.norm2(x))), weights


class RegexTransformer(nn.Module):
    """tokens [B, T] -> {"next": [B, T, vocab], "class": [B, T, 2], "state": [B, T, n_states]}.

    With ``embed_rank`` the token embedding is factorised as U (vocab x rank) times
    V (rank x d_model), and ``l1_u`` is the L1 norm of U, for a sparsity penalty.
    ``forward(tokens, return_internals=True)`` also returns "attention"
    [layers, B, heads, T, T] and "hidden" [layers + 1, B, T, d_model] (the
    embedding output, then each block's); training never asks for them.
    """

    def __init__(
        self,
        vocab_size: int,
        n_states: int,
        max_positions: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        d_ff: int = 256,
        dropout: float = 0.0,
        embed_rank: int | None = None,
        positional: Literal["rope", "learned"] = "rope",
    ):
        super().__init__()
        if d_model % n_heads or (positional == "rope" and (d_model // n_heads) % 2):
            raise ValueError(f"d_model {d_model} must split into {n_heads} heads of even width")
        if embed_rank is None:
            self.embed = nn.Embedding(vocab_size, d_model)
        else:
            self.embed = nn.Sequential(nn.Embedding(vocab_size, embed_rank), nn.Linear(embed_rank, d_model, bias=False))
        self.embed_rank = embed_rank
        rotary = RotaryEmbedding(d_model // n_heads, max_positions) if positional == "rope" else None
        self.position = nn.Embedding(max_positions, d_model) if positional == "learned" else None
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, dropout, rotary) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.heads = nn.ModuleDict(
            {"next": nn.Linear(d_model, vocab_size), "class": nn.Linear(d_model, 2), "state": nn.Linear(d_model, n_states)}
        )
        self.max_positions = max_positions

    @property
    def l1_u(self) -> torch.Tensor:
        """L1 norm of the factorised embedding's U; a zero tensor when the embedding is not factorised."""
        if self.embed_rank is None:
            return self.heads["class"].bias.new_zeros(())
        return self.embed[0].weight.abs().sum()

    def forward(self, tokens: torch.Tensor, return_internals: bool = False) -> dict[str, torch.Tensor]:
        if tokens.shape[1] > self.max_positions:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds max_positions {self.max_positions}")
        x = self.embed(tokens)
        if self.position is not None:
            x = x + self.position.weight[: tokens.shape[1]]
        hidden, attention = [x], []
        for block in self.blocks:
            x, weights = block(x, return_internals)
            hidden.append(x)
            attention.append(weights)
        x = self.norm(x)
        out = {name: head(x) for name, head in self.heads.items()}
        if return_internals:
            out["attention"] = torch.stack(attention)
            out["hidden"] = torch.stack(hidden)
        return out
