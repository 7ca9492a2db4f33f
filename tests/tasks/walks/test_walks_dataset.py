import numpy as np
import pytest
import torch

from epochal.tasks.walks.dataset import WalkDataset, chunk_walks


def test_chunks_are_non_overlapping_pieces_of_context_plus_one():
    walks = np.arange(3 * 23).reshape(3, 23)  # 23 // (5 + 1) = 3 pieces per walk, 5 tokens dropped
    tokens = chunk_walks(walks, context=5)
    assert tokens.shape == (9, 6) and tokens.dtype == torch.int64
    assert tokens[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert tokens[2].tolist() == [12, 13, 14, 15, 16, 17]
    assert tokens[3].tolist() == [23, 24, 25, 26, 27, 28]  # the second walk starts a new piece
    # Every kept token appears exactly once.
    assert len(set(tokens.flatten().tolist())) == tokens.numel()


def test_dataset_items_are_token_dicts():
    dataset = WalkDataset(np.arange(40).reshape(2, 20), context=9)
    assert len(dataset) == 4
    item = dataset[1]
    assert set(item) == {"tokens"} and item["tokens"].tolist() == list(range(10, 20))
    assert dataset.tokens.shape == (4, 10)


def test_walks_shorter_than_one_piece_are_an_error():
    with pytest.raises(ValueError, match="shorter than context \\+ 1 = 9"):
        chunk_walks(np.zeros((2, 8), dtype=np.int64), context=8)
    with pytest.raises(ValueError, match="expected \\[num_walks, walk_length\\]"):
        chunk_walks(np.zeros(8, dtype=np.int64), context=2)
