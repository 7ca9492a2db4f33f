"""Greedy (argmax) walk generation that computes only what the windowed reference computes once.

The reference (seed 001) generates token i from one full forward over the
window ``seq[max(0, i - w) : i]`` at positions 0, 1, ..., and takes the argmax
of the last position's logits. :func:`greedy_generate` returns the same tokens
with less work, in two phases:

Growing phase (i <= w). The window is the whole prefix at positions 0..i-1. With
causal attention the hidden states of position j depend only on tokens 0..j at
positions 0..j, which do not change as the prefix grows, so every layer's keys
and values of earlier positions are exactly those computed at earlier steps:
a KV cache feeds one new token per step.

Sliding phase (i > w). The window starts at i - w and token ``seq[i - w + j]``
now sits at position j. With learned absolute positions a token's input
embedding, and with it every key and value above it, changes each time the
window slides by one, so no cached entry is valid any more. Nor is there any
other exact reuse: the state of window position j at step i is a function of
(tokens i-w..i-w+j, positions 0..j), a pair of start and length that the
reference evaluates at exactly one step. Caches indexed by window start (one
growing cache per start) would do the same arithmetic as the full window, only
as w thin calls instead of one batched call. So each sliding step runs one
forward over the window, and saves only what no later step reads: the last
layer computes keys and values at every position but the query, attention
output and MLP at the last position only, and the head (n-way logits) runs at
the last position only, in both phases.

Identical starts. Greedy decoding is a deterministic function of the start
vertex, so sequences are generated once per distinct start vertex and copied
(1000 eval walks over n vertices need at most n sequences).

Batching. All sequences advance together; the next token is written into a
preallocated device tensor, so the per-token loop never waits on the host
(the one sync is ``torch.unique`` on the start vertices, before the loop).
Arithmetic is the same as the reference's up to floating-point summation order
(different matrix shapes), so tokens agree except on exact near-ties of logits.
"""

from __future__ import annotations

import torch

from epochal.tasks.walks.model import TransformerLM


def _next_token(model: TransformerLM, last_hidden: torch.Tensor) -> torch.Tensor:
    """[B, 1, D] -> [B] argmax vertex."""
    return model.logits(last_hidden)[:, 0].argmax(dim=-1)


@torch.no_grad()
def greedy_generate_each(model: TransformerLM, starts: torch.Tensor, length: int) -> torch.Tensor:
    """[B, length] greedy walks, one per start even when starts repeat (no deduplication)."""
    window = model.context
    first = model.blocks[0].attn
    cache_shape = (len(starts), first.n_heads, window, first.d_model // first.n_heads)
    device_type = starts.device.type
    # Keys and values come out of autocast's linear layers in its dtype when it is on.
    autocasting = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type) if autocasting else model.token_embedding.weight.dtype
    keys = [torch.empty(cache_shape, dtype=dtype, device=starts.device) for _ in model.blocks]
    values = [torch.empty(cache_shape, dtype=dtype, device=starts.device) for _ in model.blocks]
    generated = torch.empty((len(starts), length), dtype=torch.long, device=starts.device)
    generated[:, 0] = starts
    for i in range(1, min(length, window + 1)):
        position = i - 1
        x = model.embed(generated[:, position : position + 1], first_position=position)
        for block, block_keys, block_values in zip(model.blocks, keys, values):
            x = block.forward_cached(x, block_keys, block_values, position)
        generated[:, i] = _next_token(model, x)
    for i in range(window + 1, length):
        x = model.embed(generated[:, i - window : i])
        for block in model.blocks[:-1]:
            x = block(x)
        generated[:, i] = _next_token(model, model.blocks[-1].forward_last(x))
    return generated


def greedy_generate(model: TransformerLM, starts: torch.Tensor, length: int) -> torch.Tensor:
    """[B, length] greedy walks from ``starts`` [B] (column 0), the context windowed to the last w tokens."""
    if starts.ndim != 1:
        raise ValueError(f"starts: expected a 1-D tensor of start vertices, got shape {tuple(starts.shape)}")
    if length < 1:
        raise ValueError(f"length: {length}; allowed: >= 1")
    distinct, copy_of = torch.unique(starts, return_inverse=True)
    return greedy_generate_each(model, distinct, length)[copy_of]
