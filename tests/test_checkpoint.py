import errno
import json
import os

import pytest
import torch

from epochal.checkpoint import CheckpointStore, load_file, serialize
from epochal.errors import CheckpointError


def test_write_is_complete_and_listed_with_its_hash(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=3)
    store.write("a.pt", serialize({"w": torch.ones(3)}), {"kind": "epoch", "step": 1})
    (entry,) = store.manifest()
    assert entry["file"] == "a.pt" and len(entry["sha256"]) == 64
    assert torch.equal(store.load("a.pt")["w"], torch.ones(3))
    assert not list(tmp_path.glob(".*tmp*"))


def test_truncated_or_corrupt_newest_falls_back_to_the_previous_with_a_warning(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        store.write(f"c{step}.pt", serialize({"step": step}), {"kind": "epoch", "step": step})
    data = (tmp_path / "c3.pt").read_bytes()
    (tmp_path / "c3.pt").write_bytes(data[: len(data) // 2])  # truncated
    raw = bytearray((tmp_path / "c2.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte
    (tmp_path / "c2.pt").write_bytes(bytes(raw))
    warnings = []
    entry, payload = store.newest_valid(warn=warnings.append)
    assert entry["file"] == "c1.pt" and payload["step"] == 1
    assert len(warnings) == 2 and all("checksum mismatch" in w for w in warnings)


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_a_pickle_that_would_run_code_is_refused_not_run(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    torch.save({"model": RunsCode()}, path)
    with pytest.raises(CheckpointError, match=r"refused, it holds objects other than tensors and plain data "
                                              r"\(Weights only load failed"):  # torch's first line says why
        load_file(path)
    assert not (tmp_path / "pwned").exists()


def test_a_full_disk_is_a_clear_error_and_earlier_checkpoints_stay(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep_last=3)
    store.write("good.pt", serialize({"x": 1}), {"kind": "epoch", "step": 1})
    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        if "w" in mode and ".tmp-" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(CheckpointError, match="No space left on device.*earlier checkpoints are intact"):
        store.write("next.pt", serialize({"x": 2}), {"kind": "epoch", "step": 2})
    monkeypatch.undo()
    assert [e["file"] for e in store.manifest()] == ["good.pt"] and store.load("good.pt")["x"] == 1
    assert not (tmp_path / "next.pt").exists()


# --- the manifest: checked, rebuilt, and files described ------------------------------------------

from epochal.checkpoint import check_manifest, describe, payload_states  # noqa: E402

GOOD = {"file": "a.pt", "sha256": "0" * 64, "kind": "epoch", "step": 4, "epoch": 1, "batch_in_epoch": 0}
BAD = {
    "not an object": ([GOOD], "expected"),
    "no list": ({"checkpoints": {}}, "expected"),
    "entry not an object": ({"checkpoints": ["a.pt"]}, "entry 0 is not an object"),
    "a path": ({"checkpoints": [{**GOOD, "file": "../a.pt"}]}, "is not a file name in this folder"),
    "twice": ({"checkpoints": [GOOD, GOOD]}, "a.pt is listed twice"),
    "short hash": ({"checkpoints": [{**GOOD, "sha256": "abc"}]}, "'sha256' is not a SHA-256"),
    "no kind": ({"checkpoints": [{k: v for k, v in GOOD.items() if k != "kind"}]}, "'kind' missing"),
    "no step": ({"checkpoints": [{k: v for k, v in GOOD.items() if k != "step"}]}, "'step' missing"),
    "bool step": ({"checkpoints": [{**GOOD, "step": True}]}, "'step' missing or not a non-negative"),
    "negative epoch": ({"checkpoints": [{**GOOD, "epoch": -1}]}, "'epoch' missing or not a non-negative"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_manifest_is_checked_entry_by_entry(case):
    data, fragment = BAD[case]
    with pytest.raises(ValueError, match=fragment):
        check_manifest(data)


def test_a_good_manifest_passes_and_optional_positions_may_be_absent():
    minimal = {"file": "b.pt", "sha256": "f" * 64, "kind": "last", "step": 0}
    assert check_manifest({"checkpoints": [GOOD, minimal]}) == [GOOD, minimal]


def payload(step=4, epoch=1, batch=0, status="running"):
    return {"format": 2, "config": {}, "state": {"model": {}, "state": {"step": step, "epoch": epoch,
                                                                       "batch_in_epoch": batch, "status": status}}}


def test_describe_names_a_files_kind_and_position_and_refuses_what_is_not_ours():
    assert describe("checkpoint_epoch_0001.pt", payload()) == {"kind": "epoch", "step": 4, "epoch": 1,
                                                                "batch_in_epoch": 0}
    assert describe("checkpoint_step_00000006.pt", payload(6, 1, 2))["kind"] == "step"
    assert describe("checkpoint_step_00000006.pt", payload(6, 1, 2, "preempted"))["kind"] == "preempt"
    assert describe("best.pt", payload())["kind"] == "best"
    no_config = {k: v for k, v in payload().items() if k != "config"}
    for name, bad in [("no config", no_config), ("a list", [1]), ("format 3", {**payload(), "format": 3}),
                      ("no model", {"format": 2, "config": {}, "state": {"state": payload()["state"]["state"]}})]:
        with pytest.raises(CheckpointError, match="not an epochal checkpoint"):
            describe(name, bad)
    for state in ({"step": 4, "epoch": 1}, {"step": True, "epoch": 1, "batch_in_epoch": 0}, "not a dict"):
        with pytest.raises(CheckpointError, match="no step, epoch and batch_in_epoch"):
            describe("x.pt", {"format": 2, "config": {}, "state": {"model": {}, "state": state}})


def test_a_format_1_checkpoint_maps_onto_the_registry_names():
    v1 = {"format": 1, "model": {"w": 1}, "optimizer": {"o": 2}, "scheduler": {"s": 3}, "rng": {"r": 4},
          "callbacks": {"ema": {"e": 5}}, "scaler": {"c": 6},
          "state": {"step": 3, "bad_steps": [2], "rollbacks": 1, "should_stop": False}}
    states = payload_states(v1)
    assert states == {"model": {"w": 1}, "optimizer": {"o": 2}, "scheduler": {"s": 3}, "state": {"step": 3},
                      "data": {}, "rng": {"r": 4}, "nan_policy": {"bad_steps": [2], "rollbacks": 1},
                      "ema": {"e": 5}, "scaler": {"c": 6}}
    assert "scaler" not in payload_states({**v1, "scaler": None})
    assert payload_states(payload()) == payload()["state"]
    with pytest.raises(CheckpointError, match="format 7 is not one this version reads"):
        payload_states({"format": 7})


@pytest.mark.parametrize("damage", ["missing", "not JSON"])
def test_a_missing_or_damaged_manifest_is_rebuilt_from_the_files_that_verify(tmp_path, damage):
    folder = tmp_path / "run" / "checkpoints"  # made by the store
    store = CheckpointStore(folder, keep_last=3)
    for step, name in ((4, "checkpoint_epoch_0001.pt"), (6, "checkpoint_step_00000006.pt")):
        store.write(name, serialize(payload(step, 1, step - 4)), {"kind": "epoch", "step": step})
    (folder / "checkpoint_epoch_0002.pt").write_bytes(b"cut short by a crash")
    if damage == "missing":
        (folder / "manifest.json").unlink()
    else:
        (folder / "manifest.json").write_text('{"checkpoints": [')
    warned = []
    rebuilt = CheckpointStore(folder, keep_last=3, warn=warned.append).manifest()
    assert [(e["file"], e["kind"], e["step"], e["batch_in_epoch"], e["rebuilt"]) for e in rebuilt] == [
        ("checkpoint_epoch_0001.pt", "epoch", 4, 0, True), ("checkpoint_step_00000006.pt", "step", 6, 2, True)]
    (message,) = warned
    assert "rebuilt from 2 verified checkpoint file(s)" in message and "checkpoint_epoch_0002.pt" in message
    assert ("missing while 3 checkpoint file(s) exist" if damage == "missing" else "invalid manifest") in message
    assert (folder / "checkpoint_epoch_0002.pt").exists()  # unverified files are left alone


def test_an_empty_folder_gets_no_manifest_and_one_with_nothing_verifiable_is_left_as_it_is(tmp_path):
    warned = []
    CheckpointStore(tmp_path / "a", keep_last=3, warn=warned.append)
    assert warned == [] and list((tmp_path / "a").iterdir()) == []
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "checkpoint_epoch_0001.pt").write_bytes(b"junk")
    CheckpointStore(tmp_path / "b", keep_last=3, warn=warned.append)
    assert len(warned) == 1 and "no checkpoint file verifies" in warned[0]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint_epoch_0001.pt"]


# --- the writer: big files, errors, temp files, retention, one entry a step -------------------

from epochal.checkpoint import BackgroundWriter  # noqa: E402
from epochal.io import TEMP_MARK, WRITE_DELAY_ENV  # noqa: E402


@pytest.mark.parametrize("delay", ["0", "0.001"], ids=["straight", "paused-between-chunks"])
def test_a_checkpoint_over_one_mib_reads_back_bit_exact(tmp_path, monkeypatch, delay):
    monkeypatch.setenv(WRITE_DELAY_ENV, delay)  # the delay hook takes the flush-per-chunk path
    weights = torch.randn(700_001, generator=torch.Generator().manual_seed(0))  # 2.7 MiB: three chunks, one short
    data = serialize({"w": weights})
    assert len(data) > 2 * (1 << 20) and len(data) % (1 << 20)
    store = CheckpointStore(tmp_path, keep_last=3)
    store.write("big.pt", data, {"kind": "epoch", "step": 1})
    assert (tmp_path / "big.pt").read_bytes() == data
    assert torch.equal(store.load("big.pt")["w"], weights)


def test_an_error_in_the_background_writer_is_raised_once_as_one_line():
    writer = BackgroundWriter(enabled=True)

    def broken():
        raise RuntimeError("cannot pickle 'generator' object\nmore detail")

    writer.submit(broken, "ckpt/a.pt")
    with pytest.raises(CheckpointError) as caught:
        writer.wait()
    assert str(caught.value) == ("ckpt/a.pt: cannot write checkpoint (RuntimeError: cannot pickle 'generator' "
                                 "object); earlier checkpoints are intact")
    writer.wait()  # reported once, then the writer is usable again
    done = []
    writer.submit(lambda: done.append(1))
    writer.wait()
    assert done == [1]


def test_without_async_write_the_write_happens_at_once_and_its_error_is_one_line_too():
    writer, ran = BackgroundWriter(enabled=False), []
    writer.submit(lambda: ran.append(1))
    assert ran == [1]  # written on the caller's thread before submit returns
    with pytest.raises(CheckpointError, match="b.pt: cannot write checkpoint \\(ValueError: no\\)"):
        writer.submit(lambda: (_ for _ in ()).throw(ValueError("no")), "b.pt")


def test_an_error_of_a_write_in_flight_surfaces_at_the_next_submit():
    writer, ran = BackgroundWriter(enabled=True), []
    writer.submit(lambda: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(CheckpointError, match="OSError: boom"):
        writer.submit(lambda: ran.append(1))
    assert ran == []  # the next write does not start over a failure nobody has seen


def test_a_failing_background_write_fails_the_run_with_one_line_and_keeps_earlier_checkpoints(tmp_path, capsys,
                                                                                            monkeypatch):
    from epochal import training
    from epochal.cli import main

    real, calls = training.serialize, []

    def serialize_then_fail(payload):
        calls.append(payload["state"]["state"]["step"])
        if len(calls) > 1:
            raise RuntimeError("cannot pickle 'generator' object")
        return real(payload)

    monkeypatch.setattr(training, "serialize", serialize_then_fail)
    code = main(["run", "toy", "--out", str(tmp_path), "--id", "r", "--no-progress", "--epochs", "3",
                 "--set", "task.n_train=256", "--set", "log.plots=false"])
    err = capsys.readouterr().err
    assert code == 1 and calls == [4, 8]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("epochal: error: ") and "checkpoint_epoch_0002.pt: cannot write checkpoint" in lines[0]
    assert "cannot pickle 'generator' object" in lines[0] and "earlier checkpoints are intact" in lines[0]
    folder = tmp_path / "r" / "checkpoints"
    store = CheckpointStore(folder, 3)
    assert {e["file"]: e["step"] for e in store.manifest()} == {"checkpoint_epoch_0001.pt": 4, "last.pt": 4, "best.pt": 4}
    assert store.load_states("last.pt")["state"]["step"] == 4
    assert not list(folder.glob(f"*{TEMP_MARK}*"))
    result = json.loads((tmp_path / "r" / "result.json").read_text()) if (tmp_path / "r" / "result.json").exists() else {}
    assert result.get("status") != "completed"


@pytest.mark.parametrize("error", [OSError(errno.EIO, os.strerror(errno.EIO)), RuntimeError("a bug in a hook")],
                         ids=["io-error", "any-error"])
def test_a_write_that_fails_half_way_leaves_no_temp_file_and_the_manifest_as_it_was(tmp_path, monkeypatch, error):
    from epochal import io

    store = CheckpointStore(tmp_path, keep_last=3)
    store.write("good.pt", serialize({"x": 1}), {"kind": "epoch", "step": 1})
    before = (tmp_path / "manifest.json").read_bytes()

    def half_then_fail(path, f, data):
        f.write(data[: len(data) // 2])
        f.flush()
        assert list(tmp_path.glob(f".next.pt{TEMP_MARK}*"))  # the temp file is really there at this point
        raise error

    monkeypatch.setattr(io, "_write", half_then_fail)
    with pytest.raises((CheckpointError, RuntimeError)):
        store.write("next.pt", serialize({"x": 2}), {"kind": "epoch", "step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.pt", "manifest.json"]
    assert (tmp_path / "manifest.json").read_bytes() == before


def test_temp_files_of_a_killed_write_are_removed_when_the_folder_is_opened_again(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=3)
    store.write("checkpoint_epoch_0001.pt", serialize({"x": 1}), {"kind": "epoch", "step": 4})
    # what a SIGKILL in the middle of each kind of write leaves behind (another pid: the killed process)
    stale = [".checkpoint_step_00000006.pt.tmp-4242", ".last.pt.tmp-4242", ".manifest.json.tmp-4242"]
    for name in stale:
        (tmp_path / name).write_bytes(b"half a file")
    (tmp_path / "notes.tmp-1").write_text("a user's file, not ours")
    reopened = CheckpointStore(tmp_path, keep_last=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch_0001.pt", "manifest.json", "notes.tmp-1"]
    assert [e["file"] for e in reopened.manifest()] == ["checkpoint_epoch_0001.pt"]


def test_retention_prunes_preemption_checkpoints_like_other_rolling_ones_and_keeps_named_links(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    writes = [("checkpoint_epoch_0001.pt", "epoch", 4), ("checkpoint_step_00000006.pt", "preempt", 6),
              ("checkpoint_step_00000009.pt", "step", 9), ("checkpoint_step_00000010.pt", "preempt", 10)]
    kept_after = []
    for name, kind, step in writes:
        store.write(name, serialize({"step": step}), {"kind": kind, "step": step})
        if step == 4:
            store.link(name, "best.pt")  # named links are never pruned, however old
        store.link(name, "last.pt")
        kept_after.append(sorted(e["file"] for e in store.manifest() if e["kind"] in ("epoch", "step", "preempt")))
    assert kept_after == [["checkpoint_epoch_0001.pt"],
                          ["checkpoint_epoch_0001.pt", "checkpoint_step_00000006.pt"],
                          ["checkpoint_step_00000006.pt", "checkpoint_step_00000009.pt"],
                          ["checkpoint_step_00000009.pt", "checkpoint_step_00000010.pt"]]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["best.pt", "checkpoint_step_00000009.pt",
                                                             "checkpoint_step_00000010.pt", "last.pt"]
    assert store.load("best.pt")["step"] == 4 and store.load("last.pt")["step"] == 10
    entry, payload = store.newest_valid()
    assert payload["step"] == 10


def test_a_step_saved_twice_is_one_manifest_entry(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=5)
    store.write("checkpoint_step_00000004.pt", serialize({"at": "last batch"}), {"kind": "preempt", "step": 4})
    store.write("checkpoint_step_00000004.pt", serialize({"at": "again"}), {"kind": "step", "step": 4})
    assert [(e["file"], e["kind"]) for e in store.manifest()] == [("checkpoint_step_00000004.pt", "step")]
    # the epoch's end at the same step supersedes the mid-epoch file: one rolling entry a step
    store.write("checkpoint_epoch_0001.pt", serialize({"at": "epoch end"}), {"kind": "epoch", "step": 4})
    store.write("checkpoint_step_00000005.pt", serialize({"at": "next"}), {"kind": "step", "step": 5})
    assert [(e["file"], e["step"]) for e in store.manifest()] == [("checkpoint_epoch_0001.pt", 4),
                                                                   ("checkpoint_step_00000005.pt", 5)]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint_epoch_0001.pt", "checkpoint_step_00000005.pt"]
    assert store.newest_valid()[1] == {"at": "next"}


def test_a_resume_that_saves_the_step_it_resumed_at_again_lists_it_once(run_toy):
    from tests.test_resume import SignalAtStep

    settings = {"checkpoint.keep_last": 10}
    stopped = run_toy("r", settings=settings, callbacks=[SignalAtStep(4)])  # the last step of epoch 1
    assert stopped.status == "preempted"
    folder = stopped.run_dir / "checkpoints"
    (folder / f".checkpoint_step_00000004.pt{TEMP_MARK}99999").write_bytes(b"left by a killed write")
    resumed = run_toy("r", settings=settings, resume="must")
    assert resumed.status == "completed"
    rolling = [(e["step"], e["kind"]) for e in CheckpointStore(folder, 10).manifest() if e["kind"] not in ("last", "best")]
    assert rolling == [(4, "epoch"), (8, "epoch"), (12, "epoch")]
    assert not list(folder.glob(f"*{TEMP_MARK}*"))


# --- bad numbers -------------------------------------------------------------------------------

from epochal.tasks.toy import ToyTask  # noqa: E402


class PoisonedToy(ToyTask):
    """The toy task whose loss is NaN on chosen calls (counted on the host: no sync)."""

    name = "toy"

    def __init__(self, bad_calls):
        self.bad_calls, self.calls = set(bad_calls), 0

    def loss(self, model, batch):
        self.calls += 1
        out = super().loss(model, batch)
        return {"loss": out["loss"] * float("nan")} if self.calls in self.bad_calls else out


def fit_poisoned(tmp_path, bad_calls, policy, callbacks=(), **extra):
    from epochal import run as fit
    from tests.conftest import quiet

    settings = {"train.max_epochs": 3, "train.progress": False, "task.n_train": 256, "train.nan_policy": policy,
                "train.log_every": 2, **extra}
    return fit(PoisonedToy(bad_calls), overrides=settings, out_dir=tmp_path, experiment_id=policy, log=quiet,
               callbacks=list(callbacks))


def all_finite(run_dir):
    model = CheckpointStore(run_dir / "checkpoints", 3).load_states("last.pt")["model"]
    return all(torch.isfinite(t).all() for t in model.values())


def newest_saved_step(run_dir):
    return max(entry["step"] for entry in CheckpointStore(run_dir / "checkpoints", 3).manifest())


def test_nan_policy_stop_fails_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    # 4 steps an epoch; step 5 goes bad, the fetch at step 6 finds it, and step 6's own checkpoint is dropped.
    result = fit_poisoned(tmp_path, {5}, "stop", **{"checkpoint.every_steps": 6})
    assert result.status == "failed" and result.exit_code == 1
    assert "non-finite loss or gradient norm at step 5" in result.stop_reason
    # Unguarded (the default under stop), the bad update reached the weights, so step 6 is bad too.
    assert result.result["metadata"]["bad_steps"] == [5, 6] and result.result["steps"] == 6
    assert newest_saved_step(result.run_dir) == 4  # the epoch-1 checkpoint: nothing of the failure is saved
    assert all_finite(result.run_dir)


def test_a_stop_asked_between_fetches_first_fetches_so_a_bad_step_still_fails_the_run(tmp_path):
    from epochal import Callback
    from epochal.decisions import Stop

    class StopAtStep6(Callback):
        def on_step_end(self, run):
            return Stop("enough") if run.state.step == 6 else None

    result = fit_poisoned(tmp_path, {5}, "stop", **{"train.log_every": 100}, callbacks=[StopAtStep6()])
    assert result.status == "failed" and "at step 5" in result.stop_reason  # not "enough", completed
    assert newest_saved_step(result.run_dir) == 4 and all_finite(result.run_dir)


def test_the_guard_keeps_the_weights_clean_up_to_a_stop(tmp_path):
    result = fit_poisoned(tmp_path, {5}, "stop", **{"train.guard_nonfinite": True})
    assert result.status == "failed" and result.result["metadata"]["bad_steps"] == [5]  # step 5 skipped, 6 fine
    assert newest_saved_step(result.run_dir) == 4


def test_nan_policy_skip_counts_and_continues(tmp_path):
    with pytest.warns(UserWarning, match="optimizer step skipped"):
        result = fit_poisoned(tmp_path, {5, 9}, "skip")
    assert result.status == "completed" and result.result["metadata"]["bad_steps"] == [5, 9]
    assert all_finite(result.run_dir)


def test_nan_policy_rollback_reloads_and_lowers_the_learning_rate(tmp_path):
    with pytest.warns(UserWarning, match="rolled back to step 4, learning rate x0.5"):
        result = fit_poisoned(tmp_path, {6}, "rollback")
    assert result.status == "completed" and result.result["metadata"]["rollbacks"] == 1
    history = [json.loads(l) for l in (result.run_dir / "history.jsonl").read_text().splitlines()]
    steps = [h["step"] for h in history if "epoch_end" not in h]
    assert steps == list(range(1, 13))  # the rolled-back steps were rewritten, not duplicated
    lr_after = [h["lr"] for h in history if h.get("step") == 5 and "epoch_end" not in h][0]
    assert all_finite(result.run_dir) and lr_after > 0


def test_nan_policy_rollback_gives_up_after_max_rollbacks(tmp_path):
    with pytest.warns(UserWarning):
        result = fit_poisoned(tmp_path, set(range(6, 100)), "rollback", **{"train.max_rollbacks": 2})
    assert result.status == "failed" and "rollbacks exhausted" in result.stop_reason
    assert result.result["metadata"]["rollbacks"] == 2
