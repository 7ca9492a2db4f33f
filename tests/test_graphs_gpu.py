"""The step as a CUDA graph (train.cuda_graphs): same numbers as the eager step, exact resume, a
recapture after each checkpoint load, and a step that needs the host refused in one line."""

import json

import numpy as np
import pytest
import torch

from epochal.errors import ConfigError
from tests.test_resume import SignalAtStep, assert_identical, final_tensors

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = {"train.device": "cuda", "train.deterministic": True, "ema.enabled": True, "ema.decay": 0.9,
        "train.max_epochs": 3, "task.n_train": 256}
GRAPHS = {**CUDA, "train.cuda_graphs": True}


def test_a_graph_run_computes_what_the_eager_run_computes(run_toy):
    graphs = run_toy("graphs", settings=GRAPHS)
    eager = run_toy("eager", settings=CUDA)
    assert graphs.status == "completed" and graphs.result["metadata"]["cuda_graph_captures"] == 1
    # The graph reads its learning rate from a float32 tensor, the eager step from a Python float.
    assert np.allclose(graphs.result["curves"]["train_loss"], eager.result["curves"]["train_loss"], rtol=1e-4)
    a, b = final_tensors(graphs.run_dir), final_tensors(eager.run_dir)
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_a_graph_run_killed_and_resumed_equals_the_uninterrupted_one(run_toy, dropout):
    settings = {**GRAPHS, "task.dropout": dropout}
    straight = run_toy("straight", settings=settings)
    stopped = run_toy("stopped", settings=settings, callbacks=[SignalAtStep(6)])
    assert stopped.status == "preempted"
    resumed = run_toy("stopped", settings=settings, resume="must")
    assert resumed.result["metadata"]["cuda_graph_captures"] == 1  # captured again after the load
    assert_identical(straight, resumed)


def test_bf16_and_the_nonfinite_guard_run_inside_the_graph(run_toy):
    result = run_toy(settings={**GRAPHS, "train.precision": "bf16", "train.nan_policy": "skip"})
    assert result.status == "completed"
    assert all(np.isfinite(result.result["curves"]["train_loss"]))


def test_matmul_precision_takes_effect_and_deterministic_forces_highest(run_toy):
    fast = run_toy("fast", settings={"train.device": "cuda", "train.matmul_precision": "high"})
    exact = run_toy("exact", settings={"train.device": "cuda", "train.matmul_precision": "high",
                                      "train.deterministic": True})
    assert json.loads((fast.run_dir / "env.json").read_text())["matmul_precision"] == "high"
    assert json.loads((exact.run_dir / "env.json").read_text())["matmul_precision"] == "highest"


# Last in the file: a failed capture is the one thing here that may leave the CUDA context unsettled.
def test_a_step_that_reads_a_value_on_the_host_is_refused_in_one_line(run_toy, monkeypatch):
    from epochal.tasks.toy import ToyTask

    real = ToyTask.loss

    def reads_the_host(self, model, batch):
        parts = real(self, model, batch)
        if parts["loss"].item() > 1e9:  # a host read: cannot be captured
            raise AssertionError
        return parts

    monkeypatch.setattr(ToyTask, "loss", reads_the_host)
    with pytest.raises(ConfigError) as refused:
        run_toy(settings=GRAPHS)
    assert str(refused.value).startswith("train.cuda_graphs: the step could not be captured (")
    assert "train.cuda_graphs = false" in str(refused.value) and "\n" not in str(refused.value)
    monkeypatch.setattr(ToyTask, "loss", real)
    # The refused capture left this process able to draw random numbers on the GPU (dropout) again.
    after = run_toy("after", settings={**CUDA, "task.dropout": 0.2})
    assert after.status == "completed"
