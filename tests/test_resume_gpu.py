"""CUDA variants of the exact-resume promise; skipped where there is no GPU."""

import pytest
import torch

from tests.test_resume import STRESS, SignalAtStep, assert_identical

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_mid_epoch_resume_equals_uninterrupted(run_toy, precision):
    settings = {**STRESS, "train.device": "cuda", "train.precision": precision, "train.deterministic": True}
    straight = run_toy("straight", settings=settings)
    stopped = run_toy("stopped", settings=settings, callbacks=[SignalAtStep(6)])
    assert stopped.status == "preempted"
    resumed = run_toy("stopped", settings=settings, resume="must")
    assert_identical(straight, resumed)


def test_cuda_run_records_the_gpu_in_env(run_toy):
    import json

    result = run_toy(settings={"train.device": "cuda"})
    env = json.loads((result.run_dir / "env.json").read_text())
    assert env["gpus"] and env["cuda"] == torch.version.cuda
