"""Sharded checkpoints (a folder each, written through torch.distributed.checkpoint) in one process: the folder,
its hashes, falling back past a damaged shard, retention and links, a failed background save, export and
loading. tests/test_sharding.py writes and resumes them under torchrun at 2 and 4 processes."""

import json
import os
import pickle
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file

import epochal
from epochal.audit import weights_hash
from epochal.callbacks.base import Callback
from epochal.checkpoint import CheckpointStore, load_file as load_checkpoint_file, read_manifest, tensors_sha256
from epochal.cli import main
from epochal.errors import CheckpointError
from epochal.faults import DELAY_ENV
from epochal.sharded_checkpoint import MARK, file_sha256, join, marked, read_index, split, temp_folder, whole_tensors
from test_ddp import curves
from test_sharding import FSDP

STEPS = ["checkpoint_step_00000004.dcp", "checkpoint_step_00000008.dcp", "checkpoint_step_00000012.dcp"]


def quiet(_line):
    pass


def train(out, run_id, resume="never", log=quiet, callbacks=(), **settings):
    return epochal.run("walks", overrides={**FSDP, **settings},
                       out_dir=out, experiment_id=run_id, resume=resume, log=log, callbacks=list(callbacks))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An FSDP run in one process, uninterrupted: its folder, what it printed, its Result."""
    out, lines = tmp_path_factory.mktemp("one"), []
    result = train(out, "whole", log=lines.append)
    return result.run_dir, lines, result


def copy(run_dir, tmp_path, name="copy"):
    return shutil.copytree(run_dir, tmp_path / name)


def test_split_join_round_trip_keeps_plain_values_and_marks_tensors():
    states = {"model": {"w": torch.ones(2), "b": torch.zeros(1)},
              "optimizer": {"state": {"w": {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": ["w"]}]},
              "rng": {"ranks": [torch.arange(3)]}}
    plain, tensors = split(states, ["model", "optimizer"])
    assert set(tensors) == {"model/w", "model/b", "optimizer/state/w/step"}
    assert plain["model"] == {"w": MARK, "b": MARK} and plain["optimizer"]["param_groups"] == [{"lr": 0.1, "params": ["w"]}]
    assert plain["rng"] is states["rng"]  # entries not named stay as they are (state.pt holds them)
    assert sorted(marked(plain)) == sorted(tensors)
    back = join(plain, tensors)
    assert back["model"]["w"] is tensors["model/w"] and back["optimizer"]["param_groups"][0]["lr"] == 0.1


def test_one_process_keeps_the_model_whole_and_writes_checkpoint_folders(whole):
    run_dir, lines, _ = whole
    assert any("train.parallel = 'fsdp' in one process: the model stays whole" in line for line in lines)
    entries = {entry["file"]: entry for entry in read_manifest(run_dir / "checkpoints")}
    assert set(entries) == {*STEPS, "last.dcp", "best.dcp"}
    for name, entry in entries.items():
        assert set(entry["files"]) == {".metadata", "__0_0.distcp", "state.pt"}
        for file, sha in entry["files"].items():
            assert file_sha256(run_dir / "checkpoints" / name / file) == sha
    last = run_dir / "checkpoints" / "last.dcp"
    assert os.stat(last / "__0_0.distcp").st_ino == os.stat(run_dir / "checkpoints" / STEPS[-1] / "__0_0.distcp").st_ino
    payload = load_checkpoint_file(last / "state.pt")  # weights_only: plain data, the tensors left to DCP
    assert set(marked(payload["state"]["model"])) and all(value == MARK for value in payload["state"]["model"].values())
    assert payload["state"]["state"]["step"] == 12 and json.loads((run_dir / "result.json").read_text())["status"] == "completed"


def test_a_damaged_shard_falls_back_to_the_checkpoint_before(whole, tmp_path):
    run_dir, lines, _ = whole
    damaged = copy(run_dir, tmp_path)
    newest = [entry["file"] for entry in read_manifest(damaged / "checkpoints") if entry["step"] == 12]
    for name in newest:  # last.dcp and best.dcp are hard links of step 12's files (a copy made them files)
        shard = damaged / "checkpoints" / name / "__0_0.distcp"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    said = []
    train(tmp_path, "copy", resume="must", log=said.append)
    skipped = [line for line in said if line.startswith("warning: skipping checkpoint")]
    assert len(skipped) == len(newest) == 3 and all("__0_0.distcp: checksum mismatch" in line for line in skipped)
    assert f"resuming from {STEPS[1]} (epoch 0, step 8)" in said
    assert curves(damaged) == curves(run_dir) and weights_hash(damaged) == weights_hash(run_dir)


def test_the_manifest_is_rebuilt_from_the_folders_that_verify(whole, tmp_path):
    run_dir, _, _ = whole
    checkpoints = copy(run_dir, tmp_path) / "checkpoints"
    before = {entry["file"]: entry["files"] for entry in read_manifest(checkpoints)}
    (checkpoints / "manifest.json").unlink()
    warned = []
    CheckpointStore(checkpoints, keep_last=3, warn=warned.append)
    assert "rebuilt from 5 verified checkpoint file(s)" in warned[0]
    assert {entry["file"]: entry["files"] for entry in read_manifest(checkpoints)} == before


def dummy_folder(store, name, content):
    tmp = temp_folder(store.folder, name)
    tmp.mkdir()
    for file in (".metadata", "__0_0.distcp", "state.pt"):
        (tmp / file).write_bytes(content + file.encode())
    return tmp, {file: file_sha256(tmp / file) for file in (".metadata", "__0_0.distcp", "state.pt")}


def test_retention_and_links_remove_only_the_files_the_manifest_lists(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=1)
    for step in (4, 8):
        name = f"checkpoint_step_{step:08d}.dcp"
        tmp, files = dummy_folder(store, name, str(step).encode())
        store.enter_folder(tmp, name, files, {"kind": "step", "step": step, "epoch": 0, "batch_in_epoch": step})
        store.link(name, "last.dcp")
        if step == 4:
            store.link(name, "best.dcp")
            (tmp_path / name / "notes.txt").write_text("mine")  # not the store's to delete
    assert sorted(entry["file"] for entry in store.manifest()) == ["best.dcp", "checkpoint_step_00000008.dcp", "last.dcp"]
    assert [path.name for path in (tmp_path / "checkpoint_step_00000004.dcp").iterdir()] == ["notes.txt"]
    assert (tmp_path / "best.dcp" / "state.pt").read_bytes() == b"4state.pt"  # its own links outlive the pruned folder
    assert (tmp_path / "last.dcp" / "state.pt").read_bytes() == b"8state.pt"
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


def test_killed_writes_leave_hidden_folders_that_the_store_removes_when_it_opens(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=1)
    killed, _ = dummy_folder(store, "checkpoint_step_00000004.dcp", b"")
    kept, _ = dummy_folder(store, "checkpoint_step_00000008.dcp", b"")
    (kept / "mine.txt").write_text("not written by epochal")
    CheckpointStore(tmp_path, keep_last=1)
    assert not killed.exists() and [path.name for path in kept.iterdir()] == ["mine.txt"]


def test_a_folder_in_the_way_is_left_alone_and_fails_the_run_at_the_next_step(tmp_path, monkeypatch):
    class InTheWay(Callback):
        def on_step_end(self, run):
            if run.state.step == 6:  # where step 8's checkpoint is about to go
                (run.folder.path / "checkpoints" / STEPS[1]).write_text("someone's file")

    steps = []

    class Steps(Callback):
        def on_step_end(self, run):
            steps.append(run.state.step)

    monkeypatch.setenv(DELAY_ENV, "0.2")  # steps slower than a background save of this small model
    with pytest.raises(CheckpointError, match=f"{STEPS[1]}: is in the way and no checkpoint the manifest lists; it is "
                                              "left as it is"):
        train(tmp_path, "in-the-way", callbacks=[InTheWay(), Steps()])
    checkpoints = tmp_path / "in-the-way" / "checkpoints"
    assert steps[-1] in (8, 9)  # the step after the background write failed did not train
    assert (checkpoints / STEPS[1]).read_text() == "someone's file"
    assert [entry["file"] for entry in read_manifest(checkpoints)] == [STEPS[0], "last.dcp"]


def test_the_index_of_a_checkpoint_admits_no_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    (tmp_path / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match=r"\.metadata: not a readable checkpoint index \(.*system is not part"):
        read_index(tmp_path)
    assert not (tmp_path / "ran").exists()


def test_export_load_run_and_init_from_read_checkpoint_folders(whole, tmp_path, capsys):
    run_dir, _, _ = whole
    checkpoints = run_dir / "checkpoints"
    for weights, written in (("last", "model.safetensors"), ("ema", "model_ema.safetensors")):
        assert main(["export", str(run_dir), "--weights", weights, "--to", str(tmp_path / f"{weights}.safetensors")]) == 0
        exported, expected = load_file(tmp_path / f"{weights}.safetensors"), load_file(checkpoints / written)
        assert set(exported) == set(expected) and all(torch.equal(exported[k], expected[k]) for k in expected)
    assert "the ema weights of" in capsys.readouterr().out
    loaded = epochal.load_run(run_dir, weights="last")
    assert whole[2].best_weights == checkpoints / "best.dcp"
    assert epochal.load_checkpoint(whole[2].best_weights, loaded.model)["step"] > 0
    assert all(torch.equal(value, expected[name]) for name, value in loaded.model.state_dict().items()
               for expected in [load_file(checkpoints / "model.safetensors")])
    warm = train(tmp_path, "warm", **{"init.path": str(run_dir), "init.weights": "best", "train.max_steps": 4})
    env = json.loads((warm.run_dir / "env.json").read_text())
    assert env["init"]["parent"]["run_dir"] == str(run_dir.resolve())


def test_a_checkpoint_folder_itself_loads_into_the_model_and_starts_a_run(whole, tmp_path):
    run_dir, _, _ = whole
    folder = run_dir / "checkpoints" / STEPS[0]
    model = epochal.load_run(run_dir, weights="last").model
    meta = epochal.load_checkpoint(folder, model)
    assert meta["step"] == 4 and meta["config"]["train"]["parallel"] == "fsdp"
    with pytest.raises(CheckpointError, match="optimizer state loads by resuming its run"):
        epochal.load_checkpoint(folder, model, torch.optim.SGD(model.parameters(), lr=0.1))
    warm = train(tmp_path, "warm", **{"init.path": str(folder), "train.max_steps": 4})
    assert json.loads((warm.run_dir / "env.json").read_text())["initial_weights_sha256"] == \
        tensors_sha256(model.state_dict())


def test_export_refuses_a_path_that_is_not_safetensors(whole, tmp_path, capsys):
    assert main(["export", str(whole[0]), "--to", str(tmp_path / "weights.bin")]) == 1
    assert capsys.readouterr().err.strip().endswith("does not end in .safetensors; allowed: a FILE.safetensors path")
    assert not list(tmp_path.iterdir())


def test_a_rollback_reloads_the_checkpoint_folder_before_the_bad_step(tmp_path):
    seen = []

    def poisoned(model, batch):
        seen.append(round(float(batch[0][0, 0]), 6))  # the batch's first example names it
        loss = ((model(batch[0]) - batch[1]) ** 2).mean()
        return loss * float("nan") if len(seen) == 9 else loss  # step 9, once

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(96, 4), torch.randn(96, 1))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    config = {"train": {"max_steps": 12, "batch_size": 8, "progress": False, "log_every": 1, "parallel": "fsdp",
                        "nan_policy": "rollback"}, "checkpoint": {"every_steps": 3}, "log": {"plots": False}}
    with pytest.warns(UserWarning, match="rolled back to step 6"):
        result = epochal.fit(model, data, poisoned, config=config, out_dir=tmp_path, experiment_id="r", log=quiet)
    assert result.status == "completed" and result.result["steps"] == 12
    assert seen[9:12] == seen[6:9]  # the step-6 folder reloaded: batches 7, 8, 9 again
    assert {"checkpoint_step_00000009.dcp", "checkpoint_epoch_0001.dcp"} <= set(result.result["checkpoints"])


def test_the_copy_of_an_asynchronous_save_ends_before_the_next_step_changes_what_it_copies(tmp_path, monkeypatch):
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    import epochal.training

    class SlowCopy(DefaultStager):
        def _stage(self, state_dict, **kwargs):
            time.sleep(0.3)  # the next step's forward and backward are done long before
            return super()._stage(state_dict, **kwargs)

    def slow_stager(device):
        return SlowCopy(StagingOptions(use_pinned_memory=False, use_shared_memory=False, use_async_staging=True,
                                       use_non_blocking_copy=False))

    synchronous = train(tmp_path, "sync", **{"checkpoint.async_write": False}).run_dir
    monkeypatch.setattr(epochal.training, "new_stager", slow_stager)
    overlapped = train(tmp_path, "async").run_dir
    for name in STEPS:
        for entry in ("model", "optimizer", "ema"):
            saved, expected = (whole_tensors(run / "checkpoints" / name, entry) for run in (overlapped, synchronous))
            assert all(torch.equal(saved[key], expected[key]) for key in expected), (name, entry)
