import numpy as np
import pytest

from epochal.tasks.walks.graph import (
    Graph,
    Jumper,
    block_assignment,
    check_jumpers,
    choose_jumpers,
    csr_from_dense,
    is_strongly_connected,
    pair_reach_sets,
    reach_sets,
    sample_sbm,
)


def transitive_closure(adjacency: np.ndarray) -> np.ndarray:
    """reach[u, v]: v reachable from u in one or more steps, by repeated squaring (independent of BFS)."""
    reach = adjacency.astype(np.int64)
    for _ in range(int(np.ceil(np.log2(len(adjacency)))) + 1):
        reach = ((reach + reach @ reach) > 0).astype(np.int64)
    return reach > 0


def graph_from_edges(num_vertices: int, edges: list[tuple[int, int]], blocks: list[int]) -> Graph:
    dense = np.zeros((num_vertices, num_vertices), dtype=bool)
    for u, v in edges:
        dense[u, v] = True
    indptr, indices = csr_from_dense(dense)
    return Graph(indptr, indices, np.array(blocks, dtype=np.int64), max(blocks) + 1, directed=True)


@pytest.mark.parametrize("directed", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sbm_has_out_edges_is_strongly_connected_and_balanced(directed, seed):
    graph = sample_sbm(40, 4, 0.25, 0.03, directed, np.random.default_rng(seed))
    dense = graph.dense()
    assert graph.out_degree.min() >= 1
    assert transitive_closure(dense).all()
    assert not dense.diagonal().any()
    assert np.bincount(graph.blocks).tolist() == [10, 10, 10, 10]
    assert graph.num_blocks == 4
    if not directed:
        assert (dense == dense.T).all()
    # Rows are sorted and within range: the CSR is well formed.
    for u in range(graph.num_vertices):
        row = graph.indices[graph.indptr[u] : graph.indptr[u + 1]]
        assert (np.diff(row) > 0).all()


def test_sbm_edges_follow_block_probabilities():
    graph = sample_sbm(200, 2, 0.3, 0.02, True, np.random.default_rng(0))
    dense = graph.dense()
    same = graph.blocks[:, None] == graph.blocks[None, :]
    np.fill_diagonal(same, False)
    inside = dense[same].mean()
    across = dense[graph.blocks[:, None] != graph.blocks[None, :]].mean()
    assert abs(inside - 0.3) < 0.02
    assert abs(across - 0.02) < 0.005


def test_sbm_is_deterministic_with_the_seed():
    a = sample_sbm(30, 3, 0.3, 0.05, True, np.random.default_rng(7))
    b = sample_sbm(30, 3, 0.3, 0.05, True, np.random.default_rng(7))
    assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)


def test_sbm_gives_up_after_bounded_tries_with_a_clear_error():
    # With no edges across blocks the graph can never be strongly connected.
    with pytest.raises(ValueError, match="no strongly connected graph .* in 5 samples.*raise p_in or p_out"):
        sample_sbm(20, 2, 0.5, 0.0, True, np.random.default_rng(0), max_tries=5)


def test_sbm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="p_in"):
        sample_sbm(10, 2, 1.5, 0.1, True, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_blocks"):
        sample_sbm(10, 11, 0.5, 0.1, True, np.random.default_rng(0))


def test_strong_connectivity_detects_a_one_way_edge():
    # 0 <-> 1, 1 -> 2, 2 <-> 3: nothing leads back from {2, 3} to {0, 1}.
    dense = np.zeros((4, 4), dtype=bool)
    for u, v in [(0, 1), (1, 0), (1, 2), (2, 3), (3, 2)]:
        dense[u, v] = True
    assert not is_strongly_connected(dense)
    dense[3, 0] = True
    assert is_strongly_connected(dense)


def test_block_assignment_is_contiguous_and_balanced():
    assert block_assignment(7, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]


def test_padded_neighbours_lists_each_row():
    graph = graph_from_edges(3, [(0, 1), (0, 2), (1, 0), (2, 0)], [0, 0, 1])
    assert graph.padded_neighbours().tolist() == [[1, 2], [0, -1], [0, -1]]


def test_reach_sets_match_matrix_powers():
    graph = sample_sbm(25, 3, 0.2, 0.05, True, np.random.default_rng(3))
    dense = graph.dense().astype(np.int64)
    reach = reach_sets(graph, 5)
    power = np.eye(25, dtype=np.int64)
    for k in range(6):
        for block in range(3):
            expected = (power[:, graph.blocks == block] > 0).any(axis=1)
            assert np.array_equal(reach[block, k], expected), (block, k)
        power = ((power @ dense) > 0).astype(np.int64)


def test_pair_reach_sets_match_matrix_powers():
    graph = sample_sbm(18, 3, 0.25, 0.08, True, np.random.default_rng(4))
    dense = graph.dense().astype(np.int64)
    powers = [np.eye(18, dtype=np.int64)]
    for _ in range(4):
        powers.append(((powers[-1] @ dense) > 0).astype(np.int64))
    reach = reach_sets(graph, 4)
    pair = pair_reach_sets(graph, reach)
    assert pair.shape == (3, 3, 5, 5, 18)
    for a in range(3):
        for b in range(3):
            for gap in range(1, 5):
                # Vertices of block a from which block b is reachable in exactly `gap` steps...
                middle = (graph.blocks == a) & (powers[gap][:, graph.blocks == b] > 0).any(axis=1)
                for k in range(5):
                    # ...reachable from v in exactly k steps.
                    expected = (powers[k][:, middle] > 0).any(axis=1)
                    assert np.array_equal(pair[a, b, gap, k], expected), (a, b, gap, k)


def test_unsatisfiable_rule_names_the_jumper():
    # A directed 4-cycle 0 -> 1 -> 2 -> 3 -> 0 with blocks [0, 0, 1, 1]: from vertex 1,
    # two steps always land on vertex 3 (block 1), never in block 0.
    graph = graph_from_edges(4, [(0, 1), (1, 2), (2, 3), (3, 0)], [0, 0, 1, 1])
    check_jumpers(graph, [Jumper(1, 1, 2)])
    with pytest.raises(ValueError, match=r"jumper at vertex 1: its rule can never be satisfied.*block 0.*r=2"):
        check_jumpers(graph, [Jumper(3, 0, 1), Jumper(1, 0, 2)])


def test_check_jumpers_rejects_malformed_rules():
    graph = graph_from_edges(4, [(0, 1), (1, 2), (2, 3), (3, 0)], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="jumper at vertex 9: no such vertex"):
        check_jumpers(graph, [Jumper(9, 0, 1)])
    with pytest.raises(ValueError, match="jumper at vertex 0: target block 5 does not exist"):
        check_jumpers(graph, [Jumper(0, 5, 1)])
    with pytest.raises(ValueError, match="jumper at vertex 0: rule distance r=0"):
        check_jumpers(graph, [Jumper(0, 1, 0)])
    with pytest.raises(ValueError, match="jumper at vertex 2: listed twice"):
        check_jumpers(graph, [Jumper(2, 1, 4), Jumper(2, 1, 4)])


def test_choose_jumpers_targets_another_reachable_block():
    graph = sample_sbm(40, 4, 0.3, 0.05, True, np.random.default_rng(0))
    jumpers = choose_jumpers(graph, 8, 3, np.random.default_rng(1))
    assert len({j.vertex_id for j in jumpers}) == 8
    reach = reach_sets(graph, 3)
    for jumper in jumpers:
        assert jumper.r == 3
        assert jumper.target_block != graph.blocks[jumper.vertex_id]
        assert reach[jumper.target_block, 3, jumper.vertex_id]


def test_choose_jumpers_skips_vertices_whose_rule_could_never_hold():
    # 4-cycle with blocks [0, 0, 1, 1]: in one step only vertices 1 and 3 change block.
    graph = graph_from_edges(4, [(0, 1), (1, 2), (2, 3), (3, 0)], [0, 0, 1, 1])
    assert choose_jumpers(graph, 2, 1, np.random.default_rng(0)) == [Jumper(1, 1, 1), Jumper(3, 0, 1)]
    with pytest.raises(ValueError, match=r"only 2 vertices can reach a block other than their own in exactly r=1"):
        choose_jumpers(graph, 3, 1, np.random.default_rng(0))
