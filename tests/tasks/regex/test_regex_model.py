import pytest
import torch

from epochal.tasks.regex.model import RegexTransformer


def make(**kwargs):
    torch.manual_seed(0)
    settings = dict(vocab_size=5, n_states=4, max_positions=12, d_model=16, n_layers=2, n_heads=2, d_ff=32)
    return RegexTransformer(**{**settings, **kwargs}).eval()


TOKENS = torch.tensor([[1, 3, 4, 3, 2, 0, 0], [1, 4, 4, 4, 4, 3, 2]])


@pytest.mark.parametrize("positional", ["rope", "learned"])
def test_head_shapes(positional):
    out = make(positional=positional)(TOKENS)
    assert out["next"].shape == (2, 7, 5) and out["class"].shape == (2, 7, 2) and out["state"].shape == (2, 7, 4)
    assert "attention" not in out and "hidden" not in out


@pytest.mark.parametrize("positional", ["rope", "learned"])
def test_outputs_do_not_depend_on_later_tokens(positional):
    model = make(positional=positional)
    changed = TOKENS.clone()
    changed[:, 4:] = 3
    a, b = model(TOKENS), model(changed)
    for head in ("next", "class", "state"):
        torch.testing.assert_close(a[head][:, :4], b[head][:, :4])
        assert not torch.allclose(a[head][:, 4:], b[head][:, 4:])


def test_internals_match_the_fused_path_and_attention_is_causal():
    model = make()
    plain, inspected = model(TOKENS), model(TOKENS, return_internals=True)
    for head in ("next", "class", "state"):
        torch.testing.assert_close(plain[head], inspected[head], atol=1e-5, rtol=1e-5)
    attention, hidden = inspected["attention"], inspected["hidden"]
    assert attention.shape == (2, 2, 2, 7, 7) and hidden.shape == (3, 2, 7, 16)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 2, 2, 7))
    assert (attention.triu(1) == 0).all()


def test_l1_u_of_a_factorised_embedding():
    model = make(embed_rank=3)
    u = model.embed[0].weight
    assert model.l1_u.item() == pytest.approx(u.abs().sum().item())
    model.l1_u.backward()
    assert torch.equal(u.grad, u.detach().sign())
    assert make().l1_u.item() == 0.0


def test_longer_input_than_positions_is_an_error():
    with pytest.raises(ValueError, match="max_positions"):
        make()(torch.ones(1, 13, dtype=torch.long))


def test_heads_must_split_the_width():
    with pytest.raises(ValueError, match="heads"):
        make(d_model=18, n_heads=4)
