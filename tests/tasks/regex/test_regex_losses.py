import math

import pytest
import torch

from epochal.tasks.regex.losses import LossWeights, masked_cross_entropy, multitask_loss


def fixed_batch():
    """One row of three positions; the last is masked (an EOS position)."""
    mask = torch.tensor([[True, True, False]])
    batch = {
        "next_target": torch.tensor([[1, 0, 0]]),
        "class_target": torch.tensor([[1, 0, 1]]),
        "state_target": torch.tensor([[2, 0, 1]]),
        "next_mask": mask,
        "class_mask": mask.clone(),
        "state_mask": mask.clone(),
    }
    two_way = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]]])
    outputs = {"next": two_way.clone(), "class": two_way.clone(), "state": torch.zeros(1, 3, 3)}
    return outputs, batch


def test_components_by_hand():
    outputs, batch = fixed_batch()
    losses = multitask_loss(outputs, batch, LossWeights(), torch.tensor(0.0))
    two_way = (math.log(4 / 3) + math.log(2)) / 2  # p = 3/4 at t = 0, 1/2 at t = 1; t = 2 is masked
    assert losses["loss_next"].item() == pytest.approx(two_way, abs=1e-6)
    assert losses["loss_class"].item() == pytest.approx(two_way, abs=1e-6)
    assert losses["loss_state"].item() == pytest.approx(math.log(3), abs=1e-6)
    assert losses["loss"].item() == pytest.approx(2 * two_way + math.log(3), abs=1e-6)
    assert set(losses) == {"loss", "loss_next", "loss_class", "loss_state", "l1"}
    assert all(v.dim() == 0 for v in losses.values())


def test_deterministic_on_fixed_tensors():
    outputs, batch = fixed_batch()
    first = multitask_loss(outputs, batch, LossWeights(0.3, 0.7, 1.1, 0.01), torch.tensor(2.5))
    second = multitask_loss(outputs, batch, LossWeights(0.3, 0.7, 1.1, 0.01), torch.tensor(2.5))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_weights_scale_components_exactly():
    outputs, batch = fixed_batch()
    l1 = torch.tensor(4.0)
    unit = multitask_loss(outputs, batch, LossWeights(1.0, 1.0, 1.0, 1.0), l1)
    weighted = multitask_loss(outputs, batch, LossWeights(2.0, 0.5, 3.0, 0.25), l1)
    for name in ("loss_next", "loss_class", "loss_state", "l1"):
        assert torch.equal(unit[name], weighted[name]), name  # components are reported unweighted
    expected = 2.0 * unit["loss_next"] + 0.5 * unit["loss_class"] + 3.0 * unit["loss_state"] + 0.25 * l1
    assert torch.equal(weighted["loss"], expected)
    doubled = multitask_loss(outputs, batch, LossWeights(2.0, 2.0, 2.0, 2.0), l1)
    assert doubled["loss"].item() == pytest.approx(2 * unit["loss"].item(), rel=1e-6)


def test_a_zero_weight_removes_the_component_from_the_gradient():
    outputs, batch = fixed_batch()
    outputs = {k: v.clone().requires_grad_() for k, v in outputs.items()}
    multitask_loss(outputs, batch, LossWeights(1.0, 1.0, 0.0), torch.tensor(0.0))["loss"].backward()
    assert torch.equal(outputs["state"].grad, torch.zeros_like(outputs["state"]))
    assert outputs["class"].grad.abs().sum() > 0


def test_masked_positions_carry_no_loss_and_no_gradient():
    outputs, batch = fixed_batch()
    logits = outputs["class"].clone().requires_grad_()
    loss = masked_cross_entropy(logits, batch["class_target"], batch["class_mask"])
    loss.backward()
    assert torch.equal(logits.grad[0, 2], torch.zeros(2))
    changed = outputs["class"].clone()
    changed[0, 2] = torch.tensor([-9.0, 9.0])
    target = batch["class_target"].clone()
    target[0, 2] = 0
    assert torch.equal(masked_cross_entropy(changed, target, batch["class_mask"]), loss.detach())


def test_no_kept_position_gives_zero_not_nan():
    logits = torch.randn(2, 3, 4)
    loss = masked_cross_entropy(logits, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
