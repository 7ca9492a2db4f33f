import numpy as np
import pytest

from epochal.tasks.walks.corpus import (
    build_corpus,
    generate_walks,
    load_corpus,
    load_graph,
    save_corpus,
    save_graph,
)
from epochal.tasks.walks.graph import Graph, Jumper, choose_jumpers, csr_from_dense, sample_sbm


def graph_from_edges(num_vertices, edges, blocks):
    dense = np.zeros((num_vertices, num_vertices), dtype=bool)
    for u, v in edges:
        dense[u, v] = True
    indptr, indices = csr_from_dense(dense)
    return Graph(indptr, indices, np.array(blocks, dtype=np.int64), max(blocks) + 1, directed=True)


def assert_walks_obey(graph, jumpers, walks):
    """Every step is an edge and every rule whose step lies inside the walk holds (plain loops)."""
    dense = graph.dense()
    for walk in walks:
        for t in range(len(walk) - 1):
            assert dense[walk[t], walk[t + 1]], f"{walk[t]}->{walk[t + 1]} is not an edge"
        for jumper in jumpers:
            for t in np.flatnonzero(walk == jumper.vertex_id):
                if t + jumper.r < len(walk):
                    assert graph.blocks[walk[t + jumper.r]] == jumper.target_block


@pytest.mark.parametrize("r", [1, 3, 6])
def test_walks_obey_every_edge_and_rule(r):
    graph = sample_sbm(40, 4, 0.25, 0.03, True, np.random.default_rng(r))
    jumpers = choose_jumpers(graph, 8, r, np.random.default_rng(10 + r))
    walks = generate_walks(graph, jumpers, 300, 40, np.random.default_rng(0))
    assert walks.shape == (300, 40) and walks.dtype == np.int64
    assert_walks_obey(graph, jumpers, walks)
    # The rules actually come into play: jumpers are visited many times.
    visits = np.isin(walks[:, : 40 - r], [j.vertex_id for j in jumpers]).sum()
    assert visits > 100


def test_walks_with_mixed_rule_distances_on_an_undirected_graph():
    graph = sample_sbm(30, 3, 0.3, 0.05, False, np.random.default_rng(5))
    jumpers = [Jumper(j.vertex_id, j.target_block, r) for j, r in
               zip(choose_jumpers(graph, 6, 2, np.random.default_rng(0)), [2, 2, 3, 4, 5, 2])]
    walks = generate_walks(graph, jumpers, 200, 30, np.random.default_rng(1))
    assert_walks_obey(graph, jumpers, walks)


def test_two_rules_are_checked_together_before_a_walk_commits():
    # Blocks [0, 0, 0, 1, 1, 2, 0, 0]. Jumper 0 wants block 1 two steps on (via 1 -> 3 or 2 -> 4);
    # jumper 1 wants block 2 two steps on (only via 6 -> 5). Each rule alone can hold, but after
    # 0 -> 1 both cannot (3 has no way into block 2), so a walk at 0 must move to 2. Checked one by
    # one, half the walks through 0 would run out of candidates; checked as a pair, none does.
    edges = [(0, 1), (0, 2), (1, 3), (1, 6), (2, 4), (3, 7), (4, 0), (5, 0), (6, 5), (7, 0)]
    graph = graph_from_edges(8, edges, [0, 0, 0, 1, 1, 2, 0, 0])
    jumpers = [Jumper(0, 1, 2), Jumper(1, 2, 2)]
    walks = generate_walks(graph, jumpers, 300, 20, np.random.default_rng(0), max_rounds=1)
    assert_walks_obey(graph, jumpers, walks)
    after_zero = walks[:, 1:][walks[:, :-1] == 0]
    assert len(after_zero) > 100 and (after_zero == 2).all()


def test_walks_start_uniformly_and_are_deterministic():
    graph = sample_sbm(20, 2, 0.3, 0.1, True, np.random.default_rng(0))
    jumpers = choose_jumpers(graph, 3, 2, np.random.default_rng(0))
    a = generate_walks(graph, jumpers, 2000, 10, np.random.default_rng(4))
    b = generate_walks(graph, jumpers, 2000, 10, np.random.default_rng(4))
    assert np.array_equal(a, b)
    counts = np.bincount(a[:, 0], minlength=20)
    assert counts.min() > 60 and counts.max() < 145


def conflict_graph(with_escape: bool):
    """Vertex 0 leads only to jumper 1; the rules of 0 (r=2 -> block 1) and 1 (r=1 -> block 2) fall due
    together, so a walk at 0 (with two more steps to take) can never go on."""
    edges = [(0, 1), (1, 2), (1, 3), (2, 0), (3, 0)]
    blocks = [0, 0, 1, 2]
    if with_escape:  # a clique 4..7 that a walk may stay in, with a door from 7 to 0
        edges += [(u, v) for u in range(4, 8) for v in range(4, 8) if u != v] + [(7, 0)]
        blocks += [0, 0, 0, 0]
    return graph_from_edges(len(blocks), edges, blocks), [Jumper(0, 1, 2), Jumper(1, 2, 1)]


def test_walks_that_hit_conflicting_rules_are_regenerated():
    graph, jumpers = conflict_graph(with_escape=True)
    walks = generate_walks(graph, jumpers, 200, 6, np.random.default_rng(0))
    assert_walks_obey(graph, jumpers, walks)
    # Only the loop survives: vertex 0 may appear at the last step at most.
    assert not np.isin(walks[:, :-1], [0, 1, 2, 3]).any()
    assert np.array_equal(walks, generate_walks(graph, jumpers, 200, 6, np.random.default_rng(0)))


def test_rules_that_always_conflict_give_a_clear_error():
    graph, jumpers = conflict_graph(with_escape=False)
    with pytest.raises(ValueError, match=r"200 of 200 walks still ran into conflicting jumper rules after 3 rounds"):
        generate_walks(graph, jumpers, 200, 8, np.random.default_rng(0), max_rounds=3)


def test_unsatisfiable_rule_stops_walk_generation_naming_the_jumper():
    graph = graph_from_edges(4, [(0, 1), (1, 2), (2, 3), (3, 0)], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="jumper at vertex 1: its rule can never be satisfied"):
        generate_walks(graph, [Jumper(1, 0, 2)], 10, 10, np.random.default_rng(0))


def test_corpus_split_and_files_round_trip(tmp_path):
    graph = sample_sbm(20, 2, 0.3, 0.1, True, np.random.default_rng(0))
    jumpers = choose_jumpers(graph, 3, 2, np.random.default_rng(0))
    corpus = build_corpus(graph, jumpers, 50, 12, 15, np.random.default_rng(1))
    assert corpus.train.shape == (35, 12) and corpus.eval.shape == (15, 12)
    # The split is a permutation of one set of walks: no walk is in both halves by construction.
    regenerated = generate_walks(graph, jumpers, 50, 12, np.random.default_rng(1))
    together = np.concatenate([corpus.eval, corpus.train])
    assert sorted(map(tuple, together)) == sorted(map(tuple, regenerated))

    save_graph(tmp_path / "graph.npz", graph, jumpers)
    save_corpus(tmp_path / "walks.npz", corpus)
    loaded_graph, loaded_jumpers = load_graph(tmp_path / "graph.npz")
    loaded = load_corpus(tmp_path / "walks.npz")
    assert np.array_equal(loaded_graph.indptr, graph.indptr)
    assert np.array_equal(loaded_graph.indices, graph.indices)
    assert np.array_equal(loaded_graph.blocks, graph.blocks)
    assert (loaded_graph.num_blocks, loaded_graph.directed) == (graph.num_blocks, graph.directed)
    assert loaded_jumpers == jumpers
    assert np.array_equal(loaded.train, corpus.train) and np.array_equal(loaded.eval, corpus.eval)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.npz", "walks.npz"]


def test_corpus_rejects_an_empty_split():
    graph = sample_sbm(20, 2, 0.3, 0.1, True, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_eval: 50 out of range"):
        build_corpus(graph, [], 50, 12, 50, np.random.default_rng(1))
