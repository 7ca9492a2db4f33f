"""Velocity networks and augmentations."""

import math

import pytest
import torch

from epochal.tasks.flow.augment import augment
from epochal.tasks.flow.model import SinusoidalTimeEmbedding, build_velocity_model


@pytest.mark.parametrize("arch", ["mlp", "resmlp"])
def test_velocity_shape_time_forms_and_gradients(arch):
    torch.manual_seed(0)
    model = build_velocity_model(arch, dim=3, hidden=16, depth=2, time_dim=8)
    x = torch.randn(5, 3)
    t = torch.full((5,), 0.3)
    v = model(x, t)
    assert v.shape == (5, 3)
    torch.testing.assert_close(model(x, 0.3), v)
    torch.testing.assert_close(model(x, t[:, None]), v)
    assert not torch.allclose(model(x, 0.9), v)  # the time reaches the output
    v.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert "time_embedding.frequencies" not in model.state_dict()


def test_time_embedding_is_sin_cos_of_t():
    embedding = SinusoidalTimeEmbedding(6, max_frequency=100.0)
    out = embedding(torch.tensor([0.0, 0.5]))
    assert out.shape == (2, 6)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(out[1, 0], torch.tensor(math.sin(0.5)))
    with pytest.raises(ValueError, match="even"):
        SinusoidalTimeEmbedding(5)


def test_unknown_arch():
    with pytest.raises(ValueError, match="allowed: mlp, resmlp"):
        build_velocity_model("unet", 2, 8, 1, 4)


def test_augmentations():
    torch.manual_seed(0)
    z = torch.randn(1000, 2)
    std = torch.tensor([2.0, 0.5])
    assert augment(z, "none", std) is z
    flipped = augment(z, "flip", std)
    assert torch.equal(flipped.abs(), z.abs())
    assert 0.3 < (flipped != z).float().mean() < 0.7
    rotated = augment(z, "rotate", std)
    # A rotation of the raw offsets z * std keeps their lengths, not those of z.
    torch.testing.assert_close((rotated * std).norm(dim=1), (z * std).norm(dim=1))
    assert not torch.allclose(rotated.norm(dim=1), z.norm(dim=1))
    with pytest.raises(ValueError, match="2-D"):
        augment(torch.zeros(4, 3), "rotate", torch.ones(3))
    with pytest.raises(ValueError, match="allowed: none, flip, rotate"):
        augment(z, "mixup", std)
