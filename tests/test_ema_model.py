"""epochal.EMAModel: seed 004's swap (store, copy_to, restore) around the moving average."""

import pytest
import torch
from torch import nn

import epochal


def trained_pair():
    """A model after a few SGD steps and its EMA, whose weights differ from the model's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    ema = epochal.EMAModel(model, decay=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.randn(16, 3)).pow(2).mean().backward()
        optimizer.step()
        ema.update(model)
    return model, ema


def test_restore_after_copy_to_gives_back_the_exact_training_weights():
    model, ema = trained_pair()
    training = {k: v.clone() for k, v in model.state_dict().items()}
    ema.store(model)
    ema.copy_to(model)
    assert not torch.equal(model[0].weight, training["0.weight"])
    assert all(torch.equal(model.state_dict()[k], ema.shadow[k]) for k in ema.shadow)
    ema.restore(model)
    assert all(torch.equal(training[k], v) for k, v in model.state_dict().items())


def test_an_evaluation_inside_the_swap_sees_the_ema_weights():
    model, ema = trained_pair()
    x = torch.randn(32, 3)
    reference = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    reference.load_state_dict(ema.shadow)
    model.eval(), reference.eval()
    with torch.no_grad():
        trained = model(x)
        with ema.swapped(model):
            inside = model(x)
        after = model(x)
    assert torch.equal(inside, reference(x)) and not torch.equal(inside, trained)
    assert torch.equal(after, trained)


def test_restore_without_store_is_an_error_and_state_round_trips():
    model, ema = trained_pair()
    with pytest.raises(RuntimeError, match="call store"):
        ema.restore(model)
    other = epochal.EMAModel(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 5 and all(torch.equal(ema.shadow[k], other.shadow[k]) for k in ema.shadow)
    with pytest.raises(ValueError, match="decay"):
        epochal.EMAModel(model, decay=1.5)
