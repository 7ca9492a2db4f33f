"""train.parallel = "fsdp" on 2 GPUs (NCCL): bf16, CPU offload and activation checkpointing, exact resume from
sharded checkpoints (saved asynchronously: the copy to host memory, the write on a gloo group of its own).
Skipped without two CUDA GPUs; the CPU (gloo) variants are tests/test_sharding.py."""

import json

import pytest
import torch

from epochal.faults import DELAY_ENV, KILL_ENV
from test_ddp import Launch, assert_same_run, curves, runs_script
from test_sharding import walks

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")]

GPU = {"train.device": "cuda", "train.precision": "bf16", "train.deterministic": True}


def test_sharded_on_gpus_offloads_recomputes_and_resumes_exactly(tmp_path):
    runs = [walks("fsdp", tmp_path, **GPU),
            walks("offload", tmp_path, **GPU, **{"train.fsdp_cpu_offload": True,
                                                 "train.activation_checkpointing": True})]
    launcher = Launch()
    try:
        code, output = launcher.run(runs_script(tmp_path, runs))
        assert code == 0, output
        killed = tmp_path / "killed"
        # Steps slowed so that step 4's asynchronous sharded save is complete when step 7 kills the run.
        code, output = launcher.run(runs_script(killed, [walks("fsdp", killed, **GPU)]),
                                    **{KILL_ENV: "7", DELAY_ENV: "0.2"})
        assert code != 0, output
        code, output = launcher.run(runs_script(killed, [{**walks("fsdp", killed, **GPU), "resume": "must"}]))
        assert code == 0 and "resuming from" in output, output
    finally:
        launcher.close()
    env = json.loads((tmp_path / "fsdp" / "env.json").read_text())["distributed"]
    assert env["backend"] == "nccl"
    sharded, offloaded = (torch.tensor(curves(tmp_path / name)["train_loss"]) for name in ("fsdp", "offload"))
    assert torch.isfinite(sharded).all() and torch.allclose(sharded, offloaded, rtol=2e-2, atol=0)
    assert_same_run(tmp_path / "fsdp", killed / "fsdp")
    assert (killed / "fsdp" / "checkpoints" / "last.dcp" / "__1_0.distcp").is_file()
