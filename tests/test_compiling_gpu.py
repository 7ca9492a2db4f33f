"""train.compile on a CUDA GPU: the compiled modes run, a compiled run resumes exactly, compiled and
eager agree within the stated tolerance, and compile may change on resume."""

import numpy as np
import pytest
import torch

from tests.test_resume import SignalAtStep, assert_identical

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SETTINGS = {"train.device": "cuda", "ema.enabled": True, "ema.decay": 0.9, "train.max_epochs": 3,
            "task.n_train": 256, "task.hidden": 32}


@pytest.fixture(autouse=True)
def fresh_compiler():
    torch._dynamo.reset()


def test_a_compiled_gpu_run_resumes_exactly_and_agrees_with_eager(run_toy):
    compiled = {**SETTINGS, "train.compile": "default"}
    straight = run_toy("straight", settings=compiled)
    run_toy("stopped", settings=compiled, callbacks=[SignalAtStep(6)])
    resumed = run_toy("stopped", settings=compiled, resume="must")
    assert_identical(straight, resumed)
    eager = run_toy("eager", settings=SETTINGS)
    assert np.allclose(straight.result["curves"]["train_loss"], eager.result["curves"]["train_loss"], rtol=1e-3)


def test_reduce_overhead_trains(run_toy):
    # max-autotune is left out: its autotuning takes minutes, more than the whole GPU check may
    result = run_toy(settings={**SETTINGS, "train.compile": "reduce-overhead", "train.max_epochs": 1})
    assert result.status == "completed" and result.result["metadata"]["compile_seconds"] > 0


def test_compile_with_graphs_captures_the_compiled_step(run_toy):
    result = run_toy(settings={**SETTINGS, "train.compile": "default", "train.cuda_graphs": True})
    assert result.status == "completed" and result.result["metadata"]["cuda_graph_captures"] == 1
