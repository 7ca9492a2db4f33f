import pytest
import torch

from epochal.tasks.walks.generate import greedy_generate, greedy_generate_each
from epochal.tasks.walks.model import ExtractionMode, TransformerLM
from epochal.tasks.walks.reference import reference_generate


def sharp_model(seed, vocab=13, context=6, layers=2, d_model=32, dtype=torch.float64):
    """A random model with unit-scale weights: unlike the small init, its greedy walks do not settle
    on one vertex, so the token choices depend on the whole window."""
    torch.manual_seed(seed)
    model = TransformerLM(vocab, context, d_model, layers, 4).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.split(".")[-2].startswith("ln"):
                p.normal_(0, 1.0)
    return model


def distinct_tails(generated, skip):
    return len({tuple(row[skip:].tolist()) for row in generated})


@pytest.mark.parametrize("seed,layers", [(0, 2), (1, 1), (2, 3)])
@pytest.mark.parametrize("length", [1, 4, 7, 25])
def test_generation_equals_naive_recomputation(seed, layers, length):
    model = sharp_model(seed, layers=layers)
    starts = torch.tensor([0, 5, 5, 12, 3, 0, 7, 7, 7, 1])
    with torch.no_grad():
        expected = reference_generate(model, starts, length)
    assert torch.equal(greedy_generate(model, starts, length), expected)
    assert torch.equal(greedy_generate_each(model, starts, length), expected)
    assert greedy_generate(model, starts, length).shape == (10, length)


def test_generation_equals_naive_on_varied_walks_past_the_window():
    # Positions shift each time the window slides; these walks keep changing long after step w,
    # so a generator that reused stale keys or positions would part from the reference.
    model = sharp_model(1, context=4)
    starts = torch.arange(13)
    with torch.no_grad():
        expected = reference_generate(model, starts, 40)
    assert distinct_tails(expected, skip=4) >= 8
    assert len(set(expected[:, 20:].flatten().tolist())) >= 6
    assert torch.equal(greedy_generate(model, starts, 40), expected)


def test_float32_generation_matches_on_a_default_sized_model():
    model = sharp_model(0, vocab=48, context=32, d_model=64, dtype=torch.float32)
    starts = torch.arange(48)
    with torch.no_grad():
        expected = reference_generate(model, starts, 66)
    assert distinct_tails(expected, skip=32) >= 10
    assert torch.equal(greedy_generate(model, starts, 66), expected)


def test_generation_rejects_bad_arguments():
    model = sharp_model(0)
    with pytest.raises(ValueError, match="1-D tensor"):
        greedy_generate(model, torch.zeros(2, 2, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="length: 0"):
        greedy_generate(model, torch.zeros(2, dtype=torch.long), 0)


def test_extraction_matches_the_training_forward():
    model = sharp_model(0, dtype=torch.float64)
    tokens = torch.randint(0, 13, (3, 6))
    with torch.no_grad():
        logits = model(tokens)
        full = model.extract(tokens, ExtractionMode.FULL)
        lean = model.extract(tokens, ExtractionMode.NONE)
        residual = model.extract(tokens, ExtractionMode.RESIDUAL)
    torch.testing.assert_close(full.logits, logits)
    torch.testing.assert_close(lean.logits, logits)
    assert lean.attention is None and lean.residual is None
    assert residual.attention is None and residual.residual.shape == (3, 3, 6, 32)
    assert full.attention.shape == (2, 3, 4, 6, 6)
    torch.testing.assert_close(full.attention.sum(-1), torch.ones(2, 3, 4, 6, dtype=torch.float64))
    assert (full.attention.triu(1) == 0).all()  # causal: nothing attends to the future
    torch.testing.assert_close(model.ln_f(full.residual[:, -1]) @ model.head.weight.T, logits)


def test_model_refuses_more_positions_than_its_context():
    model = TransformerLM(10, 4, 16, 1, 2)
    with pytest.raises(ValueError, match="5 positions exceed the context of 4"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="not divisible"):
        TransformerLM(10, 4, 16, 1, 3)


def test_generation_runs_under_bf16_autocast():
    model = sharp_model(1, context=4, dtype=torch.float32)
    starts = torch.arange(13)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        generated = greedy_generate(model, starts, 12)
        expected = reference_generate(model, starts, 12)
    assert generated.dtype == torch.int64 and generated.shape == (13, 12)
    assert (generated == expected).float().mean() > 0.9  # bf16 rounding may break a near-tie
