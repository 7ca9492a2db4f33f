"""Exact resume: a run interrupted anywhere ends bit-for-bit equal to one that never was."""

import os
import random
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from epochal import run
from epochal.callbacks.base import Callback
from epochal.checkpoint import CheckpointStore
from epochal.tasks.toy import ToyTask

# EMA, early stopping (patience never reached), accumulation and dropout all active.
STRESS = {"ema.enabled": True, "ema.decay": 0.9, "early_stop.enabled": True, "early_stop.metric": "eval_mse",
          "early_stop.patience": 50, "train.grad_accum": 2, "task.dropout": 0.2, "train.max_epochs": 3}


class SignalAtStep(Callback):
    """Send this process a signal after a given optimizer step, as a scheduler would."""

    def __init__(self, step: int, signum=signal.SIGTERM):
        self.step, self.signum = step, signum

    def on_step_end(self, fit):
        if fit.state.step == self.step:
            os.kill(os.getpid(), self.signum)


def final_tensors(run_dir):
    payload = CheckpointStore(run_dir / "checkpoints", 3).load_states("last.pt")
    tensors = dict(payload["model"])
    for key, state in payload["optimizer"]["state"].items():
        tensors.update({f"opt.{key}.{name}": value for name, value in state.items()})
    tensors.update({f"ema.{k}": v for k, v in payload["ema"]["shadow"].items()})
    return tensors


def assert_identical(a, b):
    assert a.result["curves"] == b.result["curves"]
    ta, tb = final_tensors(a.run_dir), final_tensors(b.run_dir)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


@pytest.mark.parametrize("stop_step", [4, 6], ids=["epoch-boundary", "mid-epoch"])
def test_preempted_and_resumed_equals_uninterrupted(run_toy, stop_step):
    straight = run_toy("straight", settings=STRESS)
    exported = load_file(str(straight.run_dir / "checkpoints" / "model_ema.safetensors"))
    ema_state = final_tensors(straight.run_dir)
    assert exported and all(torch.equal(v, ema_state[f"ema.{k}"]) for k, v in exported.items())
    stopped = run_toy("stopped", settings=STRESS, callbacks=[SignalAtStep(stop_step)])
    assert stopped.status == "preempted" and stopped.exit_code == 75
    assert stopped.result["steps"] == stop_step
    resumed = run_toy("stopped", settings=STRESS, resume="must")
    assert resumed.status == "completed"
    assert_identical(straight, resumed)


def test_resume_after_a_step_checkpoint_skips_and_replays_nothing(run_toy):
    settings = {**STRESS, "checkpoint.every_steps": 3}
    straight = run_toy("straight", settings=settings)
    stopped = run_toy("stopped", settings=settings, callbacks=[SignalAtStep(5, signal.SIGUSR1)])
    assert stopped.status == "preempted"
    resumed = run_toy("stopped", settings=settings, resume="auto")
    assert_identical(straight, resumed)


def test_config_change_on_resume_is_refused_with_the_differing_keys(run_toy):
    from epochal.errors import ConfigError

    run_toy("r", settings=STRESS, callbacks=[SignalAtStep(3)])
    with pytest.raises(ConfigError, match=r"optim.lr: 0.003 -> 0.1.*--force"):
        run_toy("r", settings={**STRESS, "optim.lr": 0.1}, resume="must")
    assert run_toy("r", settings={**STRESS, "optim.lr": 0.1}, resume="must", force=True).status == "completed"


def test_resuming_a_finished_run_changes_nothing(run_toy):
    done = run_toy("r")
    before = (done.run_dir / "result.json").read_text()
    again = run_toy("r", resume="auto")
    assert again.status == "completed" and again.result["epochs"] == 3
    assert (done.run_dir / "result.json").read_text() == before


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_trains_and_resumes_exactly(run_toy, precision):
    settings = {**STRESS, "train.precision": precision, "optim.lr": 0.01, "train.max_epochs": 4}
    straight = run_toy("straight", settings=settings)
    first_loss = straight.result["curves"]["train_loss"][0]  # an untrained model's loss (~0.5)
    assert straight.status == "completed" and straight.metrics["eval_mse"] < 0.8 * first_loss
    run_toy("stopped", settings=settings, callbacks=[SignalAtStep(6)])
    resumed = run_toy("stopped", settings=settings, resume="must")
    assert_identical(straight, resumed)
    scalers = [CheckpointStore(r.run_dir / "checkpoints", 3).load_states("last.pt").get("scaler") for r in (straight, resumed)]
    if precision == "fp16":  # the loss scale and its growth tracker resume too
        assert scalers[0] is not None and scalers[0] == scalers[1]
    else:  # bf16 has fp32's range: no scaler at all
        assert scalers == [None, None]


class GlobalRNGToy(ToyTask):
    """A task whose loss draws from Python's and NumPy's global generators, as users' code does."""

    name = "toy"

    def loss(self, model, batch):
        noise = 1.0 + 0.1 * random.random() + 0.1 * float(np.random.rand())
        return {"loss": super().loss(model, batch)["loss"] * noise}


def test_python_and_numpy_global_generators_resume_exactly(tmp_path):
    def go(run_id, **extra):
        return run(GlobalRNGToy(), overrides={**STRESS, "train.progress": False, "task.n_train": 256,
                                              "log.plots": False}, out_dir=tmp_path, experiment_id=run_id,
                   log=lambda _: None, **extra)

    straight = go("straight")
    go("stopped", callbacks=[SignalAtStep(6)])
    resumed = go("stopped", resume="must")
    assert_identical(straight, resumed)


def test_evaluation_leaves_the_training_random_stream_untouched(run_toy):
    rare = run_toy("rare", settings={**STRESS, "train.eval_every": 100})  # evaluated at the end only
    often = run_toy("often", settings={**STRESS, "train.eval_every": 1})
    assert rare.result["curves"]["train_loss"] == often.result["curves"]["train_loss"]  # dropout draws alike


def test_a_checkpoint_written_before_the_state_registry_resumes_to_the_golden_result(tmp_path):
    """tests/golden/toy-v1-preempted: the toy golden case preempted at step 5 by the format-1 loop."""
    import shutil

    from golden.cases import GOLDEN, captures, machine, mismatch
    from epochal import run
    from epochal.audit import weights_hash

    shutil.copytree(GOLDEN / "toy-v1-preempted", tmp_path / "toy-v1-preempted")
    config = tmp_path / "toy-v1-preempted" / "config.toml"
    resumed = run("toy", config, out_dir=tmp_path, resume="must", log=lambda _: None)
    assert resumed.status == "completed"
    now = {"train_loss": resumed.result["curves"]["train_loss"], "weights_sha256": weights_hash(resumed.run_dir)}
    # The checkpoint's machine wrote the first capture: the resumed steps are bit-equal there and within the
    # tolerance on another machine (whose kernels would have rounded the first five steps differently too).
    problem = mismatch(captures("toy")[:1], now, machine())
    assert problem is None, problem
