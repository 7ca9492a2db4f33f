"""The graph walks run on: a stochastic block model stored as CSR, and its jumper vertices.

A stochastic block model (SBM) puts ``n`` vertices in ``K`` blocks of (nearly)
equal size and draws every ordered pair (u, v), u != v, as an edge with
probability ``p_in`` inside a block and ``p_out`` across blocks. An undirected
graph draws each unordered pair once and stores both directions.

A walk must always be able to move on and to reach every vertex again, so a
sample is kept only when every vertex has an out-edge and the graph is strongly
connected; otherwise the next sample is drawn from the same generator, at most
``max_tries`` times (deterministic with the seed).

Jumpers add memory to the walks: a walk at jumper ``u`` at step ``t`` must be in
``u.target_block`` at step ``t + u.r``. :func:`reach_sets` gives, for every block
and every ``k``, the vertices from which that block is reachable in exactly ``k``
steps; a rule is satisfiable only if the jumper is in its own set for ``k = r``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Graph:
    """A directed graph in CSR form with a block per vertex (undirected: both directions stored)."""

    indptr: np.ndarray  # [n + 1] int64: out-edges of u are indices[indptr[u]:indptr[u + 1]]
    indices: np.ndarray  # [E] int64, sorted within each row
    blocks: np.ndarray  # [n] int64: the block of each vertex
    num_blocks: int
    directed: bool

    @property
    def num_vertices(self) -> int:
        return len(self.indptr) - 1

    @property
    def out_degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    def dense(self) -> np.ndarray:
        """[n, n] bool adjacency: dense[u, v] is True when u -> v is an edge."""
        n = self.num_vertices
        matrix = np.zeros((n, n), dtype=bool)
        matrix[np.repeat(np.arange(n), self.out_degree), self.indices] = True
        return matrix

    def padded_neighbours(self) -> np.ndarray:
        """[n, max out-degree] int64: the out-neighbours of each vertex, padded with -1."""
        degree = self.out_degree
        table = np.full((self.num_vertices, int(degree.max())), -1, dtype=np.int64)
        column = np.arange(len(self.indices)) - np.repeat(self.indptr[:-1], degree)
        table[np.repeat(np.arange(self.num_vertices), degree), column] = self.indices
        return table


@dataclass(frozen=True)
class Jumper:
    """A vertex whose visit at step t requires the walk to be in ``target_block`` at step t + r."""

    vertex_id: int
    target_block: int
    r: int


def block_assignment(num_vertices: int, num_blocks: int) -> np.ndarray:
    """Contiguous blocks whose sizes differ by at most one."""
    return (np.arange(num_vertices) * num_blocks) // num_vertices


def csr_from_dense(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of a bool adjacency matrix, indices sorted within each row."""
    rows, cols = np.nonzero(matrix)
    indptr = np.zeros(matrix.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=indptr[1:])
    return indptr, cols.astype(np.int64)


def reachable_from(matrix: np.ndarray, source: int) -> np.ndarray:
    """[n] bool: the vertices reachable from ``source`` along the edges of ``matrix`` (BFS by frontiers)."""
    reached = np.zeros(matrix.shape[0], dtype=bool)
    reached[source] = True
    frontier = reached.copy()
    while frontier.any():
        frontier = matrix[frontier].any(axis=0) & ~reached
        reached |= frontier
    return reached


def is_strongly_connected(matrix: np.ndarray) -> bool:
    """True when every vertex reaches vertex 0 and vertex 0 reaches every vertex."""
    return bool(reachable_from(matrix, 0).all() and reachable_from(matrix.T, 0).all())


def _sample_adjacency(blocks: np.ndarray, p_in: float, p_out: float, directed: bool, rng: np.random.Generator) -> np.ndarray:
    same_block = blocks[:, None] == blocks[None, :]
    probability = np.where(same_block, p_in, p_out)
    drawn = rng.random(probability.shape) < probability
    np.fill_diagonal(drawn, False)
    if directed:
        return drawn
    upper = np.triu(drawn, k=1)
    return upper | upper.T


def sample_sbm(
    num_vertices: int,
    num_blocks: int,
    p_in: float,
    p_out: float,
    directed: bool,
    rng: np.random.Generator,
    max_tries: int = 100,
) -> Graph:
    """A strongly connected SBM graph in which every vertex has an out-edge.

    Samples are drawn from ``rng`` until one qualifies; after ``max_tries`` failures
    a ValueError says so and suggests denser edge probabilities.
    """
    if not 1 <= num_blocks <= num_vertices:
        raise ValueError(f"num_blocks: {num_blocks} out of range; allowed: 1..num_vertices ({num_vertices})")
    if num_vertices < 2:
        raise ValueError(f"num_vertices: {num_vertices} is too small; allowed: >= 2")
    for name, p in (("p_in", p_in), ("p_out", p_out)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}: {p} out of range; allowed: 0 <= p <= 1")
    blocks = block_assignment(num_vertices, num_blocks)
    for _ in range(max_tries):
        matrix = _sample_adjacency(blocks, p_in, p_out, directed, rng)
        if matrix.any(axis=1).all() and is_strongly_connected(matrix):
            indptr, indices = csr_from_dense(matrix)
            return Graph(indptr, indices, blocks.astype(np.int64), num_blocks, directed)
    raise ValueError(
        f"no strongly connected graph with an out-edge at every vertex in {max_tries} samples "
        f"(n={num_vertices}, K={num_blocks}, p_in={p_in}, p_out={p_out}); raise p_in or p_out"
    )


def predecessors(graph: Graph, sets: np.ndarray) -> np.ndarray:
    """[..., n] bool -> [..., n] bool: the vertices with an out-neighbour in each set.

    Every vertex has an out-edge, so each CSR row is non-empty and
    ``logical_or.reduceat`` over the rows is well defined.
    """
    return np.logical_or.reduceat(sets[..., graph.indices], graph.indptr[:-1], axis=-1)


def reach_sets(graph: Graph, max_steps: int) -> np.ndarray:
    """[K, max_steps + 1, n] bool: reach[b, k, v] is True when block b is reachable from v in exactly k steps.

    reach[b, 0] is the block itself; reach[b, k] holds the vertices with an
    out-neighbour in reach[b, k - 1].
    """
    reach = np.zeros((graph.num_blocks, max_steps + 1, graph.num_vertices), dtype=bool)
    reach[:, 0] = graph.blocks[None, :] == np.arange(graph.num_blocks)[:, None]
    for k in range(1, max_steps + 1):
        reach[:, k] = predecessors(graph, reach[:, k - 1])
    return reach


def pair_reach_sets(graph: Graph, reach: np.ndarray) -> np.ndarray:
    """[K, K, R + 1, R + 1, n] bool for two rules due g steps apart (R = reach.shape[1] - 1).

    pair[a, b, g, k, v] is True when a walk at v can be in block a exactly k steps
    later and in block b g steps after that: v reaches (block a & reach[b, g]) in
    exactly k steps. Index g = 0 is unused (two rules due together need one block).
    """
    num_blocks, horizon = reach.shape[0], reach.shape[1] - 1
    size = num_blocks**2 * (horizon + 1) ** 2 * graph.num_vertices
    if size > 2**30:
        raise ValueError(
            f"rule tables for {num_blocks} blocks, rule distance {horizon} and {graph.num_vertices} vertices "
            f"would take {size / 2**30:.1f} GiB; use fewer blocks or a shorter rule distance"
        )
    pair = np.zeros((num_blocks, num_blocks, horizon + 1, horizon + 1, graph.num_vertices), dtype=bool)
    pair[:, :, :, 0] = reach[None, :, :, :] & reach[:, None, None, 0, :]
    for k in range(1, horizon + 1):
        pair[:, :, :, k] = predecessors(graph, pair[:, :, :, k - 1])
    return pair


def check_jumpers(graph: Graph, jumpers: Sequence[Jumper], reach: np.ndarray | None = None) -> None:
    """ValueError naming the first jumper whose rule is malformed or can never be satisfied."""
    seen: set[int] = set()
    for jumper in jumpers:
        if not 0 <= jumper.vertex_id < graph.num_vertices:
            raise ValueError(f"jumper at vertex {jumper.vertex_id}: no such vertex; allowed: 0..{graph.num_vertices - 1}")
        if jumper.vertex_id in seen:
            raise ValueError(f"jumper at vertex {jumper.vertex_id}: listed twice; allowed: one rule per vertex")
        seen.add(jumper.vertex_id)
        if not 0 <= jumper.target_block < graph.num_blocks:
            raise ValueError(
                f"jumper at vertex {jumper.vertex_id}: target block {jumper.target_block} does not exist; "
                f"allowed: 0..{graph.num_blocks - 1}"
            )
        if jumper.r < 1:
            raise ValueError(f"jumper at vertex {jumper.vertex_id}: rule distance r={jumper.r}; allowed: r >= 1")
    if not jumpers:
        return
    if reach is None:
        reach = reach_sets(graph, max(j.r for j in jumpers))
    for jumper in jumpers:
        if not reach[jumper.target_block, jumper.r, jumper.vertex_id]:
            raise ValueError(
                f"jumper at vertex {jumper.vertex_id}: its rule can never be satisfied, block "
                f"{jumper.target_block} is not reachable from it in exactly r={jumper.r} steps"
            )


def choose_jumpers(graph: Graph, count: int, r: int, rng: np.random.Generator) -> list[Jumper]:
    """``count`` distinct jumper vertices, each with a satisfiable target block other than its own.

    Jumpers are drawn among the vertices from which some other block is reachable
    in exactly ``r`` steps (any other vertex would carry a rule that can never be
    satisfied); a ValueError says so when there are fewer than ``count`` of them.
    """
    if not 0 <= count <= graph.num_vertices:
        raise ValueError(f"count: {count} jumpers out of range; allowed: 0..{graph.num_vertices}")
    if r < 1:
        raise ValueError(f"r: {r}; allowed: r >= 1")
    reach = reach_sets(graph, r)
    other_block = reach[:, r, :].T & (graph.blocks[:, None] != np.arange(graph.num_blocks)[None, :])
    eligible = np.flatnonzero(other_block.any(axis=1))
    if len(eligible) < count:
        raise ValueError(
            f"only {len(eligible)} vertices can reach a block other than their own in exactly r={r} steps, "
            f"{count} jumpers asked for; use fewer jumpers, another r or a larger p_out"
        )
    jumpers = []
    for vertex in np.sort(rng.choice(eligible, size=count, replace=False)):
        target = rng.choice(np.flatnonzero(other_block[vertex]))
        jumpers.append(Jumper(int(vertex), int(target), r))
    return jumpers
