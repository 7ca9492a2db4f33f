import math

import pytest
import torch
from torch import nn

from epochal.tasks.regex.metrics import evaluate_split


class Scripted(nn.Module):
    """Returns fixed logits for the rows whose index is in the token tensor's last column."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, tokens):
        rows = tokens[:, -1]
        return {name: value[rows] for name, value in self.outputs.items()}


def logits(predicted, classes):
    return 2.0 * nn.functional.one_hot(torch.tensor(predicted), classes).float()


@pytest.fixture(scope="module")
def hand_batch():
    """Two strings of lengths 2 and 1 in rows of four positions: masks keep t = 0..L."""
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    tensors = {
        "tokens": torch.tensor([[1, 3, 4, 0], [1, 4, 2, 1]]),  # last column: the row's index for Scripted
        "next_target": torch.tensor([[1, 2, 0, 0], [2, 0, 0, 0]]),
        "class_target": torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]]),
        "state_target": torch.tensor([[0, 1, 2, 0], [0, 3, 0, 0]]),
        "next_mask": mask, "class_mask": mask.clone(), "state_mask": mask.clone(),
        "lengths": torch.tensor([2, 1]),
    }
    model = Scripted({
        "next": logits([[1, 0, 0, 1], [2, 1, 1, 1]], 3),  # hits: t0, t2 | t0 -> 3 of 5
        "class": logits([[0, 1, 0, 1], [0, 0, 1, 1]], 2),  # hits: t0, t1 | t0, t1 -> 4 of 5
        "state": logits([[0, 1, 2, 2], [0, 0, 0, 0]], 4),  # hits: t0, t1, t2 | t0 -> 4 of 5
    })
    return model, tensors


@pytest.mark.parametrize("batch_size", [1, 2])
def test_metrics_by_hand(hand_batch, batch_size):
    model, tensors = hand_batch
    metrics = evaluate_split(model, tensors, "val", batch_size, bin_width=2)
    z = math.exp(2.0) + 2  # softmax normaliser of logits (2, 0, 0)
    assert metrics["val_token_acc"] == pytest.approx(3 / 5)
    assert metrics["val_nll"] == pytest.approx((5 * math.log(z) - 3 * 2.0) / 5, rel=1e-6)
    assert metrics["val_class_acc"] == pytest.approx(4 / 5)
    assert metrics["val_state_acc"] == pytest.approx(4 / 5)
    assert metrics["val_string_acc"] == pytest.approx(1 / 2)  # row 0 wrong at t = L = 2 (right at t = 1)
    assert metrics["val_class_acc_len_01_02"] == pytest.approx(2 / 3)  # t1 (2 of 2) and t2 (0 of 1)
    assert "val_class_acc_len_03_04" not in metrics  # no kept position there


def test_no_bins_unless_asked(hand_batch):
    model, tensors = hand_batch
    metrics = evaluate_split(model, tensors, "test", 2)
    assert sorted(metrics) == ["test_class_acc", "test_nll", "test_state_acc", "test_string_acc", "test_token_acc"]
