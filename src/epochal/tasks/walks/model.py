"""A small causal transformer over graph vertices (vocabulary = the n vertices).

Pre-norm blocks (x + attn(ln(x)), x + mlp(ln(x))), learned absolute positions
0..context-1, a final LayerNorm and a linear head. ``forward`` is the lean
training path (fused ``scaled_dot_product_attention`` with ``is_causal=True``)
and returns logits only; ``extract`` is the analysis path (seed 000's
ExtractionMode) that also returns attention weights and/or the residual stream.
``Block.forward_last`` and ``Block.forward_cached`` serve greedy generation
(see generate.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn


class ExtractionMode(Enum):
    NONE = "none"  # logits only
    ATTENTION = "attention"  # + attention weights of every layer
    RESIDUAL = "residual"  # + the residual stream after the embedding and after every block
    FULL = "full"  # both


@dataclass
class Extraction:
    logits: torch.Tensor  # [B, T, vocab]
    attention: torch.Tensor | None = None  # [n_layers, B, n_heads, T, T], rows sum to 1
    residual: torch.Tensor | None = None  # [B, n_layers + 1, T, d_model]


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.d_model = d_model
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, n_heads, T, head_dim]."""
        batch, steps, _ = x.shape
        return x.view(batch, steps, self.n_heads, -1).transpose(1, 2)

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """[B, n_heads, T, head_dim] -> output projection of [B, T, d_model]."""
        batch, _, steps, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(batch, steps, self.d_model))

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(h).split(self.d_model, dim=-1)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def project_keys_values(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values only: the rows of the fused projection that a query-less position needs."""
        kv = F.linear(h, self.qkv.weight[self.d_model :], self.qkv.bias[self.d_model :])
        k, v = kv.split(self.d_model, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def project_query(self, h: torch.Tensor) -> torch.Tensor:
        return self.split_heads(F.linear(h, self.qkv.weight[: self.d_model], self.qkv.bias[: self.d_model]))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(h)
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def forward_with_weights(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same attention written out, returning the [B, n_heads, T, T] weights too."""
        q, k, v = self.project(h)
        steps = h.shape[1]
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        future = torch.ones(steps, steps, dtype=torch.bool, device=h.device).triu(1)
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        return self.merge_heads(weights @ v), weights


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attended, weights = self.attn.forward_with_weights(self.ln1(x))
        x = x + attended
        return x + self.mlp(self.ln2(x)), weights

    def forward_last(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> [B, 1, D]: the block's output at the last position only.

        Every position contributes keys and values; only the last one needs a
        query, the attention output and the MLP.
        """
        h = self.ln1(x)
        k, v = self.attn.project_keys_values(h)
        q = self.attn.project_query(h[:, -1:])
        last = x[:, -1:] + self.attn.merge_heads(F.scaled_dot_product_attention(q, k, v))
        return last + self.mlp(self.ln2(last))

    def forward_cached(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: int) -> torch.Tensor:
        """[B, 1, D] at ``position`` -> [B, 1, D], writing its key and value into the caches.

        ``keys``/``values`` are [B, n_heads, context, head_dim]; entries before
        ``position`` hold the earlier positions of the same sequence.
        """
        q, k, v = self.attn.project(self.ln1(x))
        keys[:, :, position] = k[:, :, 0]
        values[:, :, position] = v[:, :, 0]
        seen = slice(0, position + 1)
        x = x + self.attn.merge_heads(F.scaled_dot_product_attention(q, keys[:, :, seen], values[:, :, seen]))
        return x + self.mlp(self.ln2(x))


class TransformerLM(nn.Module):
    def __init__(self, vocab_size: int, context: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.vocab_size = vocab_size
        self.context = context
        self.n_heads = n_heads
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2's small-normal init keeps the initial logits near uniform.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, tokens: torch.Tensor, first_position: int = 0) -> torch.Tensor:
        steps = tokens.shape[1]
        if first_position + steps > self.context:
            raise ValueError(f"{first_position + steps} positions exceed the context of {self.context}; window the input")
        positions = torch.arange(first_position, first_position + steps, device=tokens.device)
        return self.token_embedding(tokens) + self.position_embedding(positions)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(x))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, T] vertex ids (T <= context) -> [B, T, vocab] next-vertex logits."""
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.logits(x)

    def extract(self, tokens: torch.Tensor, mode: ExtractionMode = ExtractionMode.FULL) -> Extraction:
        """Logits plus what ``mode`` asks for; for analysis, not for training."""
        want_attention = mode in (ExtractionMode.ATTENTION, ExtractionMode.FULL)
        want_residual = mode in (ExtractionMode.RESIDUAL, ExtractionMode.FULL)
        x = self.embed(tokens)
        residual, attention = [x], []
        for block in self.blocks:
            if want_attention:
                x, weights = block.forward_with_weights(x)
                attention.append(weights)
            else:
                x = block(x)
            residual.append(x)
        return Extraction(
            logits=self.logits(x),
            attention=torch.stack(attention) if want_attention else None,
            residual=torch.stack(residual, dim=1) if want_residual else None,
        )
