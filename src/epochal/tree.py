"""Batches as trees: a tensor, or tuples, lists and dicts of them, nested.

Everything that handles a batch without knowing its shape (moving it to the
device, splitting it into micro-batches, indexing examples) goes through here.
Leaves that are not tensors (strings, numbers) are carried along unchanged.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def tree_map(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {key: tree_map(fn, value) for key, value in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a namedtuple keeps its type
        return type(tree)(*(tree_map(fn, value) for value in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, value) for value in tree)
    return tree


def leaves(tree: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    tree_map(found.append, tree)
    return found


def batch_size(tree: Any) -> int:
    """Examples in a batch: the first dimension of its first tensor."""
    tensors = leaves(tree)
    if not tensors or tensors[0].ndim == 0:
        raise ValueError(f"a batch needs at least one tensor with a batch dimension, got {type(tree).__name__}")
    return len(tensors[0])


def split(tree: Any, parts: int) -> list[Any]:
    """``parts`` micro-batches along the first dimension (sizes differ by at most one)."""
    if parts == 1:
        return [tree]
    chunks: list[list[torch.Tensor]] = []
    tree_map(lambda t: chunks.append(list(t.tensor_split(parts))), tree)
    out = []
    for i in range(parts):
        position = iter(range(len(chunks)))
        out.append(tree_map(lambda _t, i=i: chunks[next(position)][i], tree))
    return out


def to_device(tree: Any, device: torch.device, non_blocking: bool = False) -> Any:
    return tree_map(lambda t: t.to(device, non_blocking=non_blocking), tree)
