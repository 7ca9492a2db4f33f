"""Fault injection in real processes: SIGKILL anywhere, SIGTERM, a kill inside a checkpoint write."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from epochal.audit import first_difference, weights_hash
from epochal.faults import KILL_ENV

SETTINGS = ["--epochs", "3", "--set", "task.n_train=256", "--set", "task.dropout=0.2",
            "--set", "checkpoint.every_steps=3", "--set", "ema.enabled=true", "--set", "ema.decay=0.9"]


def command(out, run_id, *extra):
    return [sys.executable, "-m", "epochal.cli", "run", "toy", "--out", str(out), "--id", run_id,
            "--no-progress", *SETTINGS, *extra]


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run(out, run_id, *extra, **env_extra):
    return subprocess.run(command(out, run_id, *extra), env=env(**env_extra), capture_output=True, text=True)


def assert_same_run(a, b):
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert first_difference(ra["curves"]["train_loss"], rb["curves"]["train_loss"]) is None
    assert ra["curves"] == rb["curves"]
    assert weights_hash(a) == weights_hash(b)


@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_is_identical(tmp_path):
    assert run(tmp_path, "straight").returncode == 0
    for kill_at in (2, 7, 10):  # before any checkpoint, mid-epoch, right after an epoch ends
        proc = run(tmp_path, "killed", "--resume", "auto", **{KILL_ENV: str(kill_at)})
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert run(tmp_path, "killed", "--resume", "auto").returncode == 0
    assert_same_run(tmp_path / "straight", tmp_path / "killed")


@pytest.mark.slow
def test_sigkill_inside_a_checkpoint_write_falls_back_and_resumes_identically(tmp_path):
    assert run(tmp_path, "straight").returncode == 0
    proc = subprocess.Popen(command(tmp_path, "killed"), env=env(EPOCHAL_TEST_WRITE_DELAY="0.3"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # A temp file while an earlier checkpoint is complete: the writer is paused mid-file.
        if (folder / "manifest.json").exists() and list(folder.glob(".checkpoint_*.tmp-*")):
            break
        time.sleep(0.01)
    else:
        pytest.fail("the writer was never caught mid-write")
    proc.kill()
    proc.wait()
    assert run(tmp_path, "killed", "--resume", "auto").returncode == 0
    assert_same_run(tmp_path / "straight", tmp_path / "killed")


@pytest.mark.slow
def test_sigterm_saves_sets_preempted_and_exits_75(tmp_path):
    proc = subprocess.Popen(command(tmp_path, "t", "--epochs", "200"), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    manifest = tmp_path / "t" / "checkpoints" / "manifest.json"
    deadline = time.monotonic() + 60
    while not manifest.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 75
    result = json.loads((tmp_path / "t" / "result.json").read_text())
    assert result["status"] == "preempted" and "SIGTERM" in result["metadata"]["stop_reason"]
    entries = json.loads(manifest.read_text())["checkpoints"]
    assert any(e["kind"] == "preempt" and e["step"] == result["steps"] for e in entries)


@pytest.mark.slow
def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path):
    first = subprocess.Popen(command(tmp_path, "shared", "--epochs", "200"), env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "shared" / "checkpoints" / "manifest.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = run(tmp_path, "shared", "--resume", "auto")
        assert second.returncode == 1
        assert second.stderr.strip() == (f"epochal: error: {tmp_path / 'shared'}: in use by process {first.pid} "
                                         f"on {socket.gethostname()} (lock {tmp_path / 'shared' / '.lock'}); "
                                         f"wait for it or stop it")
    finally:
        first.kill()
        first.wait()


@pytest.mark.slow
def test_epochal_resume_continues_a_killed_run_even_after_the_folder_moved(tmp_path):
    assert run(tmp_path, "straight").returncode == 0
    assert run(tmp_path, "killed", **{KILL_ENV: "8"}).returncode == -signal.SIGKILL
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    (tmp_path / "killed").rename(moved)
    proc = subprocess.run([sys.executable, "-m", "epochal.cli", "resume", str(moved), "--no-progress"],
                          env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from checkpoint_" in proc.stdout  # step 6 or epoch 1: the kill may beat the step-6 write
    assert_same_run(tmp_path / "straight", moved)


@pytest.mark.slow
def test_history_after_a_kill_and_resume_has_every_step_exactly_once_and_no_temp_file_is_left(tmp_path):
    sync = ("--set", "checkpoint.async_write=false", "--set", "train.log_every=1")  # step 6's checkpoint is complete
    assert run(tmp_path, "killed", *sync, **{KILL_ENV: "8"}).returncode == -signal.SIGKILL
    path = tmp_path / "killed" / "history.jsonl"

    def lines():
        return [json.loads(line) for line in path.read_text().splitlines()]

    assert [h["step"] for h in lines() if "epoch_end" not in h] == list(range(1, 8))  # 7: after the checkpoint
    folder = tmp_path / "killed"
    for stale in (".result.json.tmp-4242", ".history.jsonl.tmp-4242", "checkpoints/.manifest.json.tmp-4242"):
        (folder / stale).write_text("what a write killed half way leaves")
    proc = run(tmp_path, "killed", "--resume", "auto", *sync)
    assert proc.returncode == 0, proc.stderr
    history = lines()
    assert [h["step"] for h in history if "epoch_end" not in h] == list(range(1, 13))
    assert [h["epoch"] for h in history if "epoch_end" in h] == [1, 2, 3]
    result = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert [h["loss"] for h in history if "epoch_end" not in h] == result["curves"]["train_loss"]
    assert not list(folder.rglob("*.tmp-*"))  # the resume cleared what the killed writes left
