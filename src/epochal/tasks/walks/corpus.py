"""Rule-obeying random walks, their train/eval split, and the files a run keeps of them.

Walk generation (:func:`generate_walks`) moves all walks of a batch one step at a
time, vectorised over walks with numpy. Each walk carries the blocks its pending
rules require, indexed by absolute step. At step s a neighbour is a candidate
only when

1. every pending rule can still hold: for a rule (deadline d, block b) with no
   later rule, b is reachable from the neighbour in exactly d - s steps
   (``reach_sets``; at d = s: the neighbour is in b). When the next rule due is
   (d', b'), the pair must hold together: the neighbour reaches, in exactly
   d - s steps, a vertex of b from which b' is reachable in exactly d' - d steps
   (``pair_reach_sets``);
2. if the neighbour is a jumper, its own new rule agrees with the pending rules:
   the same block if one is due at the same step, and as a pair with the rules
   due just before and just after it.

A walk is drawn uniformly among its candidates, so every finished walk obeys
every rule exactly, including rules that fall due after its last step (each walk
is a prefix of a longer walk that obeys them all).

Conflicts. The checks are exact for the rules of one pair, but not for three
interlocking rules, and the reach tables count paths through other jumpers as if
those added no rules. A walk can therefore still run out of candidates (the
default config: about 14 % of walks in the first round; pairs cut it from 51 %).
Such a walk is discarded and regenerated from a fresh random start in the next
round; rounds draw from the same generator, so the corpus is deterministic with
the seed, and walks are in effect drawn conditioned on never getting stuck.
After ``max_rounds`` rounds with unfinished walks a ValueError says the rules
conflict too often.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from epochal.io import atomic_write_bytes

from epochal.tasks.walks.graph import Graph, Jumper, check_jumpers, pair_reach_sets, reach_sets


@dataclass(frozen=True)
class Corpus:
    train: np.ndarray  # [num_train_walks, walk_length] int64 vertex ids
    eval: np.ndarray  # [num_eval_walks, walk_length]: held out; their first vertices seed generation


def _nearest_due(due: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each offset k of ``due`` [W, H]: the nearest due offset before k and after k (-1: none)."""
    width = due.shape[1]
    before = np.full(due.shape, -1, dtype=np.int64)
    after = np.full(due.shape, -1, dtype=np.int64)
    for k in range(1, width):
        before[:, k] = np.where(due[:, k - 1], k - 1, before[:, k - 1])
    for k in range(width - 2, -1, -1):
        after[:, k] = np.where(due[:, k + 1], k + 1, after[:, k + 1])
    return before, after


class _RuleTables:
    """Per-vertex lookups of the jumper rules, and the reach tables that keep them satisfiable."""

    def __init__(self, graph: Graph, jumpers: Sequence[Jumper]):
        self.horizon = max((j.r for j in jumpers), default=0)
        self.reach = reach_sets(graph, self.horizon)
        check_jumpers(graph, jumpers, self.reach)
        self.pair = pair_reach_sets(graph, self.reach)
        self.target = np.full(graph.num_vertices, -1, dtype=np.int64)
        self.distance = np.zeros(graph.num_vertices, dtype=np.int64)
        for jumper in jumpers:
            self.target[jumper.vertex_id] = jumper.target_block
            self.distance[jumper.vertex_id] = jumper.r

    def record_rules(self, required: np.ndarray, step: int, vertices: np.ndarray) -> None:
        """Write the rule of each jumper among ``vertices`` (visited at ``step``) into ``required``."""
        rows = np.flatnonzero(self.target[vertices] >= 0)
        required[rows, step + self.distance[vertices[rows]]] = self.target[vertices[rows]]

    def _two_rules(self, first: np.ndarray, second: np.ndarray, gap: np.ndarray, offset, vertices) -> np.ndarray:
        """Can ``vertices`` be in block ``first`` after ``offset`` steps and in ``second`` ``gap`` steps later?"""
        return self.pair[np.maximum(first, 0), np.maximum(second, 0), np.maximum(gap, 0), offset, vertices]

    def allowed(self, required: np.ndarray, step: int, candidates: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """[W, D] bool: which candidates for ``step`` keep the pending rules satisfiable, pair by pair."""
        window = required[:, step : step + self.horizon + 1]  # block due k steps from now, or -1
        due = window >= 0
        before, after = _nearest_due(due)
        rows = np.arange(len(candidates))[:, None]
        allowed = valid.copy()
        for k in np.flatnonzero(due.any(axis=0)):
            following = after[:, k, None]
            together = self._two_rules(window[:, k, None], window[rows, np.maximum(following, 0)],
                                       following - k, k, candidates)
            alone = self.reach[np.maximum(window[:, k, None], 0), k, candidates]
            allowed &= ~due[:, k, None] | np.where(following >= 0, together, alone)
        # A jumper adds its own rule, due ``offset`` steps from now: it must agree with the rules due
        # just before and just after it, and with one due at the same step.
        target, offset = self.target[candidates], self.distance[candidates]
        same_step = window[rows, offset]
        previous, following = before[rows, offset], after[rows, offset]
        with_previous = self._two_rules(window[rows, np.maximum(previous, 0)], target,
                                        np.where(previous >= 0, offset - previous, 0), np.maximum(previous, 0),
                                        candidates)
        with_following = self._two_rules(target, window[rows, np.maximum(following, 0)], following - offset,
                                         offset, candidates)
        agrees = ((same_step < 0) | (same_step == target)) & ((previous < 0) | with_previous) & (
            (following < 0) | with_following)
        return allowed & ((target < 0) | agrees)


def _walk_round(
    graph: Graph, neighbours: np.ndarray, rules: _RuleTables, count: int, walk_length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` walks in lockstep; returns them and a mask of those that never ran out of candidates."""
    walks = np.empty((count, walk_length), dtype=np.int64)
    required = np.full((count, walk_length + rules.horizon + 1), -1, dtype=np.int64)
    finished = np.ones(count, dtype=bool)
    rows = np.arange(count)
    walks[:, 0] = rng.integers(graph.num_vertices, size=count)
    rules.record_rules(required, 0, walks[:, 0])
    from epochal.callbacks.console import setup_progress

    for step in setup_progress(range(1, walk_length), f"walks: {count} in lockstep"):
        padded = neighbours[walks[:, step - 1]]
        valid = padded >= 0
        candidates = np.where(valid, padded, 0)
        allowed = rules.allowed(required, step, candidates, valid)
        num_allowed = allowed.sum(axis=1)
        finished &= num_allowed > 0
        # The k-th allowed candidate, k uniform in [0, num_allowed): one draw per walk and step.
        k = np.floor(rng.random(count) * num_allowed)
        column = np.argmax(np.cumsum(allowed, axis=1) > k[:, None], axis=1)
        walks[:, step] = candidates[rows, column]
        rules.record_rules(required, step, walks[:, step])
    return walks, finished


def generate_walks(
    graph: Graph,
    jumpers: Sequence[Jumper],
    num_walks: int,
    walk_length: int,
    rng: np.random.Generator,
    max_rounds: int = 50,
) -> np.ndarray:
    """[num_walks, walk_length] int64 walks from uniform random starts that obey every edge and rule.

    ValueError naming the jumper when a rule can never be satisfied, and when walks
    still hit conflicting rules after ``max_rounds`` rounds (see the module docstring).
    """
    if num_walks < 1 or walk_length < 1:
        raise ValueError(f"num_walks={num_walks}, walk_length={walk_length}; allowed: both >= 1")
    rules = _RuleTables(graph, jumpers)
    neighbours = graph.padded_neighbours()
    walks = np.empty((num_walks, walk_length), dtype=np.int64)
    unfinished = np.arange(num_walks)
    for _ in range(max_rounds):
        batch, finished = _walk_round(graph, neighbours, rules, len(unfinished), walk_length, rng)
        walks[unfinished[finished]] = batch[finished]
        unfinished = unfinished[~finished]
        if len(unfinished) == 0:
            return walks
    raise ValueError(
        f"{len(unfinished)} of {num_walks} walks still ran into conflicting jumper rules after {max_rounds} "
        f"rounds; use fewer jumpers, another rule distance or a denser graph"
    )


def build_corpus(
    graph: Graph,
    jumpers: Sequence[Jumper],
    num_walks: int,
    walk_length: int,
    num_eval: int,
    rng: np.random.Generator,
) -> Corpus:
    """``num_walks`` walks, of which a random ``num_eval`` are held out for evaluation."""
    if not 0 < num_eval < num_walks:
        raise ValueError(f"num_eval: {num_eval} out of range; allowed: 1..num_walks - 1 ({num_walks - 1})")
    walks = generate_walks(graph, jumpers, num_walks, walk_length, rng)
    order = rng.permutation(num_walks)
    return Corpus(train=walks[order[num_eval:]], eval=walks[order[:num_eval]])


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Through epochal.io, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def save_graph(path: str | Path, graph: Graph, jumpers: Sequence[Jumper]) -> None:
    _save_npz(
        Path(path),
        {
            "indptr": graph.indptr,
            "indices": graph.indices,
            "blocks": graph.blocks,
            "num_blocks": np.int64(graph.num_blocks),
            "directed": np.bool_(graph.directed),
            "jumper_vertex": np.array([j.vertex_id for j in jumpers], dtype=np.int64),
            "jumper_target_block": np.array([j.target_block for j in jumpers], dtype=np.int64),
            "jumper_r": np.array([j.r for j in jumpers], dtype=np.int64),
        },
    )


def load_graph(path: str | Path) -> tuple[Graph, list[Jumper]]:
    with np.load(path) as data:
        graph = Graph(
            indptr=data["indptr"],
            indices=data["indices"],
            blocks=data["blocks"],
            num_blocks=int(data["num_blocks"]),
            directed=bool(data["directed"]),
        )
        jumpers = [
            Jumper(int(v), int(b), int(r))
            for v, b, r in zip(data["jumper_vertex"], data["jumper_target_block"], data["jumper_r"])
        ]
    return graph, jumpers


def save_corpus(path: str | Path, corpus: Corpus) -> None:
    _save_npz(Path(path), {"train": corpus.train, "eval": corpus.eval})


def load_corpus(path: str | Path) -> Corpus:
    with np.load(path) as data:
        return Corpus(train=data["train"], eval=data["eval"])
