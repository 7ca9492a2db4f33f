from types import SimpleNamespace

import numpy as np
import pytest
import torch

from epochal.tasks.walks.compliance import evaluate_compliance
from epochal.tasks.walks.graph import Jumper, csr_from_dense, sample_sbm
from epochal.tasks.walks.reference import reference_compliance


def cycle_graph():
    """0 -> 1 -> 2 -> 3 -> 0 plus 0 -> 2, blocks [0, 0, 1, 1]."""
    dense = np.zeros((4, 4), dtype=bool)
    for u, v in [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)]:
        dense[u, v] = True
    indptr, indices = csr_from_dense(dense)
    return SimpleNamespace(indptr=indptr, indices=indices), np.array([0, 0, 1, 1])


def test_hand_made_sequences_with_known_answers():
    adjacency, blocks = cycle_graph()
    sequences = np.array([
        [0, 1, 2, 3],  # 3 edges; jumper 0 at t=0 -> t=2 is vertex 2 (block 1): satisfied
        [0, 3, 0, 2],  # 0->3 is no edge, 3->0 and 0->2 are; jumper 0 at t=0 -> vertex 0 (block 0): not
                       # jumper 0 at t=2 -> t=4 is outside the sequence: not counted
        [2, 2, 3, 0],  # 2->2 is no edge; no jumper
    ])
    jumpers = [SimpleNamespace(vertex_id=0, target_block=1)]
    edge, rule = evaluate_compliance(sequences, adjacency, blocks, jumpers, r=2)
    assert edge == pytest.approx(7 / 9)
    assert rule == pytest.approx(1 / 2)


def test_rule_distance_one_and_torch_input():
    adjacency, blocks = cycle_graph()
    sequences = torch.tensor([[1, 2, 3, 0, 1, 2], [3, 0, 2, 3, 0, 1]])
    # Jumper 3 wants block 0 next: 3 -> 0 three times out of three; jumper 1 wants block 0: 1 -> 2 fails.
    jumpers = [Jumper(3, 0, 1), Jumper(1, 0, 1)]
    edge, rule = evaluate_compliance(sequences, adjacency, blocks, jumpers, r=1)
    assert edge == 1.0
    assert rule == pytest.approx(3 / 5)


def test_nothing_to_count_gives_zero_as_in_the_seed():
    adjacency, blocks = cycle_graph()
    edge, rule = evaluate_compliance(np.array([[1, 2]]), adjacency, blocks, [Jumper(0, 1, 2)], r=2)
    assert (edge, rule) == (1.0, 0.0)
    edge, rule = evaluate_compliance(np.array([[1], [2]]), adjacency, blocks, [], r=2)
    assert (edge, rule) == (0.0, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_seed_loop_on_random_sequences(seed):
    rng = np.random.default_rng(seed)
    graph = sample_sbm(30, 3, 0.3, 0.1, seed % 2 == 0, rng)
    dense = graph.dense()
    # Half random tokens, half random walks, so both outcomes of each check occur often.
    random_tokens = rng.integers(0, 30, size=(40, 25))
    walks = np.empty((40, 25), dtype=np.int64)
    walks[:, 0] = rng.integers(0, 30, size=40)
    for t in range(1, 25):
        walks[:, t] = [rng.choice(np.flatnonzero(dense[u])) for u in walks[:, t - 1]]
    sequences = np.concatenate([random_tokens, walks])
    jumpers = [Jumper(int(v), int(rng.integers(3)), 3) for v in rng.choice(30, size=6, replace=False)]
    for r in (1, 3, 7, 24, 30):
        expected = reference_compliance(sequences, graph, graph.blocks, jumpers, r)
        assert evaluate_compliance(sequences, graph, graph.blocks, jumpers, r) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1


def test_each_jumper_keeps_its_own_distance_when_r_is_none():
    rng = np.random.default_rng(4)
    graph = sample_sbm(20, 2, 0.3, 0.1, True, rng)
    sequences = rng.integers(0, 20, size=(30, 16))
    near = [Jumper(v, int(rng.integers(2)), 2) for v in range(0, 10)]
    far = [Jumper(v, int(rng.integers(2)), 5) for v in range(10, 20)]
    _, rule = evaluate_compliance(sequences, graph, graph.blocks, near + far, r=None)
    near_checks = np.isin(sequences[:, :-2], range(0, 10)).sum()
    far_checks = np.isin(sequences[:, :-5], range(10, 20)).sum()
    near_rule = reference_compliance(sequences, graph, graph.blocks, near, 2)[1]
    far_rule = reference_compliance(sequences, graph, graph.blocks, far, 5)[1]
    assert rule == pytest.approx((near_rule * near_checks + far_rule * far_checks) / (near_checks + far_checks))


def test_bad_input_is_named():
    adjacency, blocks = cycle_graph()
    with pytest.raises(ValueError, match="vertex ids out of range"):
        evaluate_compliance(np.array([[0, 4]]), adjacency, blocks, [], r=1)
    with pytest.raises(ValueError, match="2-D integer array"):
        evaluate_compliance(np.array([0, 1]), adjacency, blocks, [], r=1)
    with pytest.raises(ValueError, match="r: 0"):
        evaluate_compliance(np.array([[0, 1]]), adjacency, blocks, [], r=0)
    with pytest.raises(ValueError, match="vertex 1 listed twice"):
        evaluate_compliance(np.array([[0, 1]]), adjacency, blocks, [Jumper(1, 0, 1), Jumper(1, 1, 1)], r=1)
    with pytest.raises(ValueError, match="block_assignments: 3 entries"):
        evaluate_compliance(np.array([[0, 1]]), adjacency, blocks[:3], [], r=1)
