"""Edge and rule compliance of generated walks, vectorised over sequences and steps.

Meaning (seed 001): over every transition seq[t] -> seq[t + 1] of every
sequence, edge compliance is the share that are edges of the graph. Over every
visit of a jumper at step t with t + r still inside the sequence, rule compliance
is the share whose vertex at step t + r lies in the jumper's target block. A
ratio with nothing to count is 0.0, as in the seed.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch


def _as_sequences(generated: torch.Tensor | np.ndarray, num_vertices: int) -> np.ndarray:
    if isinstance(generated, torch.Tensor):
        generated = generated.detach().cpu().numpy()
    sequences = np.asarray(generated)
    if sequences.ndim != 2 or not np.issubdtype(sequences.dtype, np.integer):
        raise ValueError(f"generated: expected a 2-D integer array [sequences, steps], got {sequences.dtype} {sequences.shape}")
    if sequences.size and (sequences.min() < 0 or sequences.max() >= num_vertices):
        raise ValueError(f"generated: vertex ids out of range; allowed: 0..{num_vertices - 1}")
    return sequences.astype(np.int64, copy=False)


def edge_mask(sequences: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """[B, L - 1] bool: whether each transition is an edge (binary search in the sorted edge keys u * n + v)."""
    num_vertices = len(indptr) - 1
    indptr, indices = np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64)
    sources = np.repeat(np.arange(num_vertices, dtype=np.int64), np.diff(indptr))
    edge_keys = np.sort(sources * num_vertices + indices)
    queries = sequences[:, :-1] * num_vertices + sequences[:, 1:]
    if len(edge_keys) == 0:
        return np.zeros(queries.shape, dtype=bool)
    position = np.minimum(np.searchsorted(edge_keys, queries), len(edge_keys) - 1)
    return edge_keys[position] == queries


def _rule_counts(sequences: np.ndarray, blocks: np.ndarray, targets: np.ndarray, r: int) -> tuple[int, int]:
    """(checks, satisfied) for jumpers whose rule distance is ``r``; ``targets[v]`` is -1 off jumpers."""
    if r >= sequences.shape[1]:
        return 0, 0
    wanted = targets[sequences[:, : sequences.shape[1] - r]]
    checked = wanted >= 0
    satisfied = checked & (blocks[sequences[:, r:]] == wanted)
    return int(checked.sum()), int(satisfied.sum())


def evaluate_compliance(
    generated: torch.Tensor | np.ndarray,
    adjacency: Any,
    block_assignments: np.ndarray,
    jumpers: Iterable[Any],
    r: int | None,
) -> tuple[float, float]:
    """(edge compliance, rule compliance) of ``generated`` [B, L] vertex sequences.

    ``adjacency`` is any CSR graph (``indptr``, ``indices``); ``jumpers`` are objects
    with ``vertex_id`` and ``target_block``. ``r`` is the rule distance of every
    jumper, as in the seed; None uses each jumper's own ``r`` attribute.
    """
    indptr = np.asarray(adjacency.indptr)
    blocks = np.asarray(block_assignments, dtype=np.int64)
    num_vertices = len(indptr) - 1
    if len(blocks) != num_vertices:
        raise ValueError(f"block_assignments: {len(blocks)} entries for a graph of {num_vertices} vertices")
    if r is not None and r < 1:
        raise ValueError(f"r: {r}; allowed: r >= 1 or None (each jumper's own r)")
    sequences = _as_sequences(generated, num_vertices)
    edges = edge_mask(sequences, indptr, np.asarray(adjacency.indices))
    edge = float(edges.sum()) / max(1, edges.size)

    # One target table per distinct rule distance: a loop over distances, not over sequences or steps.
    targets_by_r: dict[int, np.ndarray] = {}
    seen: set[int] = set()
    for jumper in jumpers:
        if jumper.vertex_id in seen:
            raise ValueError(f"jumpers: vertex {jumper.vertex_id} listed twice; allowed: one rule per vertex")
        seen.add(jumper.vertex_id)
        if not 0 <= jumper.vertex_id < num_vertices:
            raise ValueError(f"jumpers: vertex {jumper.vertex_id} out of range; allowed: 0..{num_vertices - 1}")
        distance = r if r is not None else jumper.r
        if distance < 1:
            raise ValueError(f"jumper at vertex {jumper.vertex_id}: rule distance {distance}; allowed: r >= 1")
        targets = targets_by_r.setdefault(distance, np.full(num_vertices, -1, dtype=np.int64))
        targets[jumper.vertex_id] = jumper.target_block
    counts = [_rule_counts(sequences, blocks, targets, distance) for distance, targets in targets_by_r.items()]
    checks = sum(c for c, _ in counts)
    satisfied = sum(s for _, s in counts)
    return edge, satisfied / max(1, checks)
