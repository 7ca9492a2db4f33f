"""train.parallel = "fsdp": the walks transformer sharded over 2 and 4 CPU processes (gloo) under torchrun.

One torchrun launch trains the sharded runs compared here (tests/ddp_runs.py); others are killed mid-run or in
the middle of a sharded save and resumed at the same, a larger and a smaller world size.
"""

import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

import epochal
from epochal.checkpoint import read_manifest
from epochal.cli import main
from epochal.config import TrainConfig
from epochal.errors import ConfigError
from epochal.faults import DELAY_ENV, KILL_ENV
from epochal.io import WRITE_DELAY_ENV
from epochal.sharding import check_world, shard
from epochal.tasks.walks.model import TransformerLM
from test_ddp import Launch, assert_same_run, curves, run_all, runs_script, wait_for, worker_of

SMALL = {"task.n_vertices": 32, "task.num_walks": 200, "task.eval_sequences": 40, "task.walk_length": 34,
         "task.context": 16, "task.d_model": 32, "task.rule_distance": 3, "train.batch_size": 16,
         "train.max_steps": 12, "train.log_every": 4, "checkpoint.every_steps": 4, "gate.above": {},
         "log.plots": False, "train.progress": False}  # 10 steps an epoch: the budget ends in epoch 2
REGEX = {"task.n_train": 256, "task.n_val": 64, "task.n_test": 64, "task.n_test_ood": 32, "task.d_model": 16,
         "task.d_ff": 32, "train.batch_size": 32, "train.max_steps": 6, "train.log_every": 3,
         "early_stop.enabled": False, "log.plots": False, "train.progress": False}  # (sum, count) losses
FSDP = {**SMALL, "train.parallel": "fsdp", "ema.enabled": True, "ema.decay": 0.9,
        "checkpoint.best_metric": "edge_compliance"}


def walks(run_id, out, **settings):
    return {"id": run_id, "out": str(out), "task": "walks", "settings": {**FSDP, **settings}}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    runs = [walks("fsdp", out), walks("ddp", out, **{"train.parallel": "ddp"}),
            walks("accum", out, **{"train.grad_accum": 2}),
            walks("recompute", out, **{"train.activation_checkpointing": True}),
            walks("bf16", out, **{"train.precision": "bf16"}),
            walks("guarded", out, **{"train.nan_policy": "skip"}),  # the fused optimizer's found_inf on shards
            *({"id": f"regex-{accum}", "out": str(out), "task": "regex",
               "settings": {**REGEX, "train.parallel": "fsdp", "train.grad_accum": accum}} for accum in (1, 2)),
            {"id": "regex-ddp", "out": str(out), "task": "regex", "settings": {**REGEX, "train.parallel": "ddp"}},
            {"id": "loader", "out": str(out), "loader": True, "train": {"parallel": "fsdp", "fsdp_modules": ["Linear"]}},
            {"out": str(out), "shards": {**FSDP, "task.n_layers": 4}}]
    return run_all(out, runs)


def losses(run_dir):
    return torch.tensor(curves(run_dir)["train_loss"])


@pytest.mark.slow
def test_sharded_training_matches_ddp_and_its_own_variants(sharded):
    fsdp = losses(sharded / "fsdp")
    assert len(fsdp) == 12 and fsdp[-1] < fsdp[0]
    # Reduce-scatter sums in another order than DDP's all-reduce: equal to rounding.
    assert torch.allclose(fsdp, losses(sharded / "ddp"), rtol=1e-5, atol=0)
    # Accumulation holds the reduce-scatter of the first micro-batch (set_requires_gradient_sync).
    assert torch.allclose(fsdp, losses(sharded / "accum"), rtol=1e-5, atol=0)
    # Recomputing the blocks' activations computes the same numbers.
    assert torch.allclose(fsdp, losses(sharded / "recompute"), rtol=1e-6, atol=0)
    assert torch.allclose(fsdp, losses(sharded / "guarded"), rtol=1e-6, atol=0)
    bf16 = losses(sharded / "bf16")
    assert torch.isfinite(bf16).all() and not torch.equal(bf16, fsdp)
    assert torch.allclose(bf16, fsdp, rtol=3e-2, atol=0)
    result = json.loads((sharded / "fsdp" / "result.json").read_text())
    assert result["status"] == "completed" and set(result["metrics"]) >= {"edge_compliance", "rule_compliance"}
    assert "best.dcp" in result["checkpoints"]


@pytest.mark.slow
def test_a_sum_count_loss_accumulated_over_shards_is_the_whole_batchs(sharded):
    tested = json.loads((sharded / "regex-1" / "result.json").read_text())["test"]
    assert set(tested) == {"last", "best"}  # best.dcp's shards read back into the sharded model for its test
    whole, accumulated = losses(sharded / "regex-1"), losses(sharded / "regex-2")
    assert len(whole) == 6 and whole[-1] < whole[0]
    assert torch.allclose(whole, accumulated, rtol=1e-5, atol=0)
    # Under DDP the regex loss reaches the model's own L1 term through the wrapper, and computes the same.
    assert torch.allclose(whole, losses(sharded / "regex-ddp"), rtol=1e-5, atol=0)


@pytest.mark.slow
def test_a_users_model_shards_through_epochal_fit(sharded, tmp_path):
    from ddp_runs import loader_run

    alone = loader_run(str(tmp_path), "loader")  # the same model, DataLoader and (sum, count) loss, one process
    assert len(losses(alone.run_dir)) == 12
    assert torch.allclose(losses(sharded / "loader"), losses(alone.run_dir), rtol=1e-5, atol=0)


@pytest.mark.slow
def test_each_rank_holds_half_the_parameters(sharded):
    counts = [json.loads((sharded / f"shards-{rank}.json").read_text()) for rank in (0, 1)]
    whole = counts[0]["whole"]
    assert counts[0]["held"] + counts[1]["held"] == whole
    for count in counts:
        assert abs(count["held"] / whole - 0.5) < 0.02, count


@pytest.mark.slow
def test_exported_weights_are_whole_under_the_models_own_names(sharded):
    run_dir = sharded / "fsdp"
    model = TransformerLM(32, 16, 32, 2, 4)
    weights, ema = (load_file(run_dir / "checkpoints" / name) for name in ("model.safetensors", "model_ema.safetensors"))
    model.load_state_dict(weights)  # strict: every name and shape of the unsharded model
    assert set(ema) == set(weights) and any(not torch.equal(ema[name], weights[name]) for name in weights)
    ddp = load_file(sharded / "ddp" / "checkpoints" / "model.safetensors")
    assert all(torch.allclose(weights[name], ddp[name], rtol=1e-3, atol=1e-5) for name in weights)


@pytest.mark.slow
def test_export_consolidates_the_shards_of_two_processes(sharded, tmp_path):
    checkpoints = sharded / "fsdp" / "checkpoints"
    assert {path.name for path in checkpoints.glob("last.dcp/__*")} == {"__0_0.distcp", "__1_0.distcp"}
    for weights, gathered in (("last", "model.safetensors"), ("ema", "model_ema.safetensors")):
        assert main(["export", str(sharded / "fsdp"), "--weights", weights, "--to", str(tmp_path / "w.safetensors")]) == 0
        exported, expected = load_file(tmp_path / "w.safetensors"), load_file(checkpoints / gathered)
        assert set(exported) == set(expected) and all(torch.equal(exported[k], expected[k]) for k in expected)
    model = epochal.load_run(sharded / "fsdp", weights="last").model  # consolidated in this process, no group
    assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items()
               for expected in [load_file(checkpoints / "model.safetensors")])


@pytest.mark.slow
def test_a_killed_sharded_run_resumes_exactly(sharded, tmp_path):
    launcher = Launch()
    try:
        # Steps slowed so that the asynchronous save of step 4 is complete when step 7 kills the run.
        code, output = launcher.run(runs_script(tmp_path, [walks("fsdp", tmp_path)]), **{KILL_ENV: "7", DELAY_ENV: "0.2"})
        manifest = json.loads((tmp_path / "fsdp" / "checkpoints" / "manifest.json").read_text())["checkpoints"]
        assert code != 0 and {entry["step"] for entry in manifest} == {4}, output
        code, output = launcher.run(runs_script(tmp_path, [{**walks("fsdp", tmp_path), "resume": "must"}]))
    finally:
        launcher.close()
    assert code == 0 and "resuming from" in output, output
    assert_same_run(sharded / "fsdp", tmp_path / "fsdp")


def test_fp16_and_cpu_offload_on_a_cpu_are_refused():
    with pytest.raises(ConfigError, match="^train.precision: fp16 .* allowed with train.parallel = 'fsdp': bf16"):
        check_world(TrainConfig(parallel="fsdp", precision="fp16"), 2, torch.device("cpu"))
    with pytest.raises(ConfigError, match="^train.fsdp_cpu_offload: .* this run is on cpu"):
        check_world(TrainConfig(parallel="fsdp", fsdp_cpu_offload=True), 2, torch.device("cpu"))
    check_world(TrainConfig(parallel="fsdp", precision="bf16"), 2, torch.device("cpu"))


def test_a_module_class_the_model_lacks_is_refused_with_the_classes_it_has():
    model = TransformerLM(8, 4, 8, 1, 2)
    with pytest.raises(ConfigError, match="^train.fsdp_modules: Blok names no module class of this model; "
                                          "allowed: Block, Embedding, .*TransformerLM$"):
        shard(model, TrainConfig(parallel="fsdp", fsdp_modules=["Block", "Blok"]))


@pytest.mark.parametrize("settings, refused", [
    ({"cuda_graphs": True}, "train.cuda_graphs"), ({"microbatch": "auto"}, "train.microbatch"),
])
def test_features_that_cannot_shard_are_refused(settings, refused):
    with pytest.raises(ConfigError, match=f"^{refused}: .*allowed with train.parallel = 'fsdp'"):
        TrainConfig(parallel="fsdp", **settings).validate()


def test_activation_checkpointing_needs_named_blocks_under_fsdp():
    for settings in ({}, {"parallel": "fsdp"}):
        with pytest.raises(ConfigError, match="^train.activation_checkpointing: .*train.fsdp_modules naming"):
            TrainConfig(activation_checkpointing=True, **settings).validate()
    TrainConfig(activation_checkpointing=True, parallel="fsdp", fsdp_modules=["Block"]).validate()


def temp_of(run_dir, step):
    return run_dir / "checkpoints" / f".checkpoint_step_{step:08d}.dcp.tmp-dcp"


def steps_listed(run_dir):
    return {entry["step"] for entry in read_manifest(run_dir / "checkpoints")}


def assert_same_losses(a, b):
    assert torch.allclose(losses(a), losses(b), rtol=1e-5, atol=0)


@pytest.mark.slow
def test_a_kill_during_an_async_save_keeps_the_one_before_and_four_processes_resume_it(sharded, tmp_path):
    launcher = Launch()
    try:
        # Writes slowed: step 9 comes while step 8's save still writes in the background.
        code, output = launcher.run(runs_script(tmp_path, [walks("fsdp", tmp_path)]), **{KILL_ENV: "9", WRITE_DELAY_ENV: "0.5"})
        assert code != 0 and steps_listed(tmp_path / "fsdp") == {4} and temp_of(tmp_path / "fsdp", 8).is_dir(), output
        resume = [{**walks("fsdp", tmp_path), "resume": "must"}, {"out": str(tmp_path), "shards": {**FSDP, "task.n_layers": 4}}]
        code, output = launcher.run(runs_script(tmp_path, resume, procs=4))
    finally:
        launcher.close()
    assert code == 0 and "written by 2 process(es), this run has 4" in output, output
    assert not temp_of(tmp_path / "fsdp", 8).exists() and steps_listed(tmp_path / "fsdp") >= {8, 12}
    assert_same_losses(tmp_path / "fsdp", sharded / "fsdp")  # the same global batches, summed in another order
    for rank in range(4):
        count = json.loads((tmp_path / f"shards-{rank}.json").read_text())
        assert abs(count["held"] / count["whole"] - 0.25) < 0.02, count


@pytest.mark.slow
def test_a_kill_during_a_sync_save_of_four_processes_resumes_at_two_and_at_one(sharded, tmp_path):
    run = walks("fsdp", tmp_path, **{"checkpoint.async_write": False})
    launcher = Launch()
    try:
        proc = launcher.start(runs_script(tmp_path, [run], procs=4), **{WRITE_DELAY_ENV: "0.5"})
        wait_for(temp_of(tmp_path / "fsdp", 8) / "state.pt", proc)  # every shard written, state.pt being written
        os.kill(worker_of(proc.pid, 0), signal.SIGKILL)  # rank 0, as it writes; torchrun stops the others
        proc.communicate(timeout=120)
        assert steps_listed(tmp_path / "fsdp") == {4}
        alone = shutil.copytree(tmp_path / "fsdp", tmp_path / "alone" / "fsdp", symlinks=True)
        code, output = launcher.run(runs_script(tmp_path, [{**run, "resume": "must"}]))
    finally:
        launcher.close()
    assert code == 0 and "written by 4 process(es), this run has 2" in output, output
    assert_same_losses(tmp_path / "fsdp", sharded / "fsdp")
    said = []
    epochal.run("walks", overrides=run["settings"], out_dir=alone.parent, experiment_id="fsdp", resume="must",
                log=said.append)
    assert "resuming from checkpoint_step_00000004.dcp (epoch 0, step 4)" in said and not temp_of(alone, 8).exists()
    assert_same_losses(alone, sharded / "fsdp")
