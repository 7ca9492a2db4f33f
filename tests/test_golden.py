"""The loop's numbers are frozen: every built-in task reproduces its captured curve and weights."""

import pytest

from golden.cases import CASES, RELATIVE_TOLERANCE, captures, machine, mismatch, run_case


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_task_reproduces_its_golden_losses_and_weights(name, tmp_path):
    problem = mismatch(captures(name), run_case(name, tmp_path), machine())
    assert problem is None, problem


CAPTURES = [{"machine": "first", "train_loss": [1.0, 0.5], "weights_sha256": "aa"},
            {"machine": "here", "train_loss": [1.0, 0.5000001], "weights_sha256": "bb"}]


def test_a_machine_with_a_capture_must_match_it_bit_for_bit():
    assert mismatch(CAPTURES, {"train_loss": [1.0, 0.5000001], "weights_sha256": "bb"}, "here") is None
    assert "step 2" in mismatch(CAPTURES, {"train_loss": [1.0, 0.5], "weights_sha256": "bb"}, "here")
    assert "final weights" in mismatch(CAPTURES, {"train_loss": [1.0, 0.5000001], "weights_sha256": "aa"}, "here")


def test_another_machine_must_agree_with_the_first_capture_within_the_tolerance():
    close = {"train_loss": [1.0, 0.5 * (1 + RELATIVE_TOLERANCE / 2)], "weights_sha256": "cc"}
    assert mismatch(CAPTURES, close, "elsewhere") is None
    far = {"train_loss": [1.0, 0.5 * (1 + 2 * RELATIVE_TOLERANCE)], "weights_sha256": "aa"}
    assert "step 2" in mismatch(CAPTURES, far, "elsewhere")
    assert "1 steps" in mismatch(CAPTURES, {"train_loss": [1.0], "weights_sha256": "aa"}, "elsewhere")


def test_the_machine_names_the_cpu_and_the_numeric_libraries():
    import numpy
    import torch

    here = machine()
    assert here == machine()
    assert f"torch {torch.__version__}" in here and f"numpy {numpy.__version__}" in here
