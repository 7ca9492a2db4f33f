"""train.compile on the CPU's inductor backend (a C++ compiler is on these machines): exact resume of a
compiled run, agreement with eager, switching compile on resume, recompiles and compiler failures."""

import numpy as np
import pytest
import torch

import epochal.training
from epochal.compiling import CompileError
from tests.test_resume import SignalAtStep, assert_identical, final_tensors

# Small and deterministic: EMA and accumulation (two compiled micro-batches a step) but no dropout,
# whose compiled random numbers are inductor's own and not eager's.
SETTINGS = {"ema.enabled": True, "ema.decay": 0.9, "train.grad_accum": 2, "train.max_epochs": 3,
            "task.n_train": 256, "task.hidden": 16}
COMPILED = {**SETTINGS, "train.compile": "default"}


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Each test compiles from scratch: dynamo's cache of an earlier test's shapes would hide recompiles."""
    torch._dynamo.reset()


def close(a, b, rtol=1e-4):
    assert np.allclose(a.result["curves"]["train_loss"], b.result["curves"]["train_loss"], rtol=rtol)
    ta, tb = final_tensors(a.run_dir), final_tensors(b.run_dir)
    for key in ta:
        if ta[key].is_floating_point():
            assert torch.allclose(ta[key], tb[key], rtol=rtol, atol=1e-6), key


@pytest.mark.slow
def test_a_compiled_run_resumes_exactly_and_agrees_with_eager(run_toy):
    straight = run_toy("straight", settings=COMPILED)
    metadata = straight.result["metadata"]
    assert metadata["compile_seconds"] > 0 and metadata["recompiles"] == 0
    stopped = run_toy("stopped", settings=COMPILED, callbacks=[SignalAtStep(6)])
    assert stopped.status == "preempted"
    resumed = run_toy("stopped", settings=COMPILED, resume="must")
    assert_identical(straight, resumed)  # killed and resumed equals uninterrupted, bit for bit
    eager = run_toy("eager", settings=SETTINGS)
    close(straight, eager)
    assert "compile_seconds" not in eager.result["metadata"]
    # compile may change on resume, without --force: the compiled run's checkpoint continues eagerly
    run_toy("switched", settings=COMPILED, callbacks=[SignalAtStep(6)])
    switched = run_toy("switched", settings=SETTINGS, resume="must")
    assert switched.status == "completed"
    close(straight, switched)


@pytest.mark.slow
def test_changing_batch_shapes_warn_once_naming_drop_last(run_toy):
    # 200 = 3 x 64 + 8: every epoch ends in a smaller batch, which recompiles the step
    with pytest.warns(UserWarning, match=r"train.compile: recompiled 1 times.*\(\(64, 16\), \(64, 16\)\).*"
                                         r"\(\(8, 16\), \(8, 16\)\).*train.drop_last = true") as caught:
        result = run_toy(settings={"train.compile": True, "task.n_train": 200, "task.hidden": 16,
                                   "train.max_epochs": 2})
    assert sum("recompiled" in str(w.message) for w in caught) == 1
    assert result.result["metadata"]["recompiles"] >= 1


def test_a_compiler_failure_stops_the_run_in_one_line_and_saves_nothing(run_toy, tmp_path, monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("this backend cannot compile anything\nsecond line")

    monkeypatch.setattr(epochal.training, "compile_loss", lambda fn, mode: torch.compile(fn, backend=broken_backend))
    with pytest.raises(CompileError) as failed:
        run_toy("broken", settings={"train.compile": True})
    message = str(failed.value)
    assert message.startswith("train.compile: torch.compile failed: ")
    assert "this backend cannot compile anything" in message and 'train.compile = "off"' in message
    assert "\n" not in message
    assert not list((tmp_path / "broken" / "checkpoints").glob("*.pt"))
