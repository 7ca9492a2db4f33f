"""The loop's numbers are frozen: every built-in task reproduces its captured curve and weights bit for bit."""

import json

import pytest

from golden.cases import CASES, GOLDEN, run_case


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_task_reproduces_its_golden_losses_and_weights(name, tmp_path):
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    now = run_case(name, tmp_path)
    assert len(now["train_loss"]) == len(golden["train_loss"]) > 0
    first = next((i for i, (a, b) in enumerate(zip(now["train_loss"], golden["train_loss"])) if a != b), None)
    assert first is None, f"step {first + 1}: {now['train_loss'][first]!r} != golden {golden['train_loss'][first]!r}"
    assert now["weights_sha256"] == golden["weights_sha256"]
