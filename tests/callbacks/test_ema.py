import torch
from torch import nn

from epochal.callbacks.ema import EMA


def test_ema_arithmetic_over_three_updates():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    for value in (4.0, 8.0, 8.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    # 0 -> 0.5*0 + 0.5*4 = 2 -> 0.5*2 + 0.5*8 = 5 -> 0.5*5 + 0.5*8 = 6.5
    assert ema.shadow["weight"].item() == 6.5


def test_warmup_lowers_the_decay_early_on():
    ema = EMA(nn.Linear(1, 1), decay=0.9999, warmup=True)
    assert ema.current_decay() == 0.1
    ema.updates = 990
    assert ema.current_decay() == (1 + 990) / (10 + 990)


def test_swap_evaluates_with_ema_weights_and_restores_the_model():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    ema.shadow = {k: torch.full_like(v, 7.0) for k, v in ema.shadow.items()}
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.swapped(model):
        assert torch.all(model.weight == 7.0)
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())


def test_state_dict_round_trip():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    ema.update(model)
    other = EMA(nn.Linear(2, 2), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and all(torch.equal(ema.shadow[k], other.shadow[k]) for k in ema.shadow)


def test_the_callback_is_the_public_ema_model():
    import epochal

    assert issubclass(EMA, epochal.EMAModel)
    assert EMA(nn.Linear(1, 1), decay=0.5).state_dict().keys() == {"updates", "shadow"}  # the checkpoint format
