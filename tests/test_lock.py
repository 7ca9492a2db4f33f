"""The run-folder lock under races, in processes that load the lock code and nothing else (no torch)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import epochal
from epochal.lock import LOCK_NAME, FolderLock, LockHeld

SRC = Path(epochal.__file__).parent

# Loads epochal.lock (and the errors and io modules it uses) without epochal/__init__,
# which would import torch: a lock must not depend on it, and 100 processes must start fast.
PRELUDE = f"""
import os, sys, time, types
pkg = types.ModuleType("epochal")
pkg.__path__ = [{str(SRC)!r}]
sys.modules["epochal"] = pkg
from epochal.lock import FolderLock, LockHeld
assert "torch" not in sys.modules
"""

CONTENDER = PRELUDE + """
lock = FolderLock(sys.argv[1])
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
try:
    lock.acquire()
    print("owner", os.getpid(), flush=True)
except LockHeld as err:
    print("refused", err, flush=True)
sys.stdin.read()  # hold until the test has every answer
lock.release()
"""

CHURN = PRELUDE + """
lock, marker, owned, deadline = FolderLock(sys.argv[1]), sys.argv[2], 0, time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        lock.acquire()
    except LockHeld:
        continue
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL)  # fails if another owner is inside too
    except FileExistsError:
        print("two owners", flush=True)
        sys.exit(1)
    os.close(fd)
    owned += 1
    os.unlink(marker)
    lock.release()
print("owned", owned, flush=True)
"""


def refusal(folder, pid):
    return (f"{folder}: in use by process {pid} on {socket.gethostname()} (lock {folder / LOCK_NAME}); "
            f"wait for it or stop it")


def test_100_concurrent_acquisitions_give_exactly_one_owner(tmp_path):
    folder, go = tmp_path / "run", tmp_path / "go"
    folder.mkdir()
    procs = [subprocess.Popen([sys.executable, "-I", "-S", "-c", CONTENDER, str(folder), str(go)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(100)]
    try:
        assert all(p.stdout.readline().strip() == "ready" for p in procs)
        go.touch()  # all 100 race from here
        answers = [p.stdout.readline().strip() for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
        codes = [p.wait(timeout=60) for p in procs]
    owners = [a for a in answers if a.startswith("owner ")]
    assert len(owners) == 1, answers
    holder = int(owners[0].split()[1])
    assert answers.count(f"refused {refusal(folder, holder)}") == 99
    assert codes == [0] * 100
    assert not (folder / LOCK_NAME).exists()  # released and removed by its owner


def test_locking_and_releasing_in_a_loop_never_gives_two_owners_at_once(tmp_path):
    marker = tmp_path / "inside"
    (tmp_path / "run").mkdir()
    procs = [subprocess.Popen([sys.executable, "-I", "-S", "-c", CHURN, str(tmp_path / "run"), str(marker), "3"],
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    owned = [int(out.split()[1]) for out in outputs]
    assert sum(owned) > 20, outputs  # the lock really changed hands, many times


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    holder = subprocess.Popen([sys.executable, "-I", "-S", "-c", PRELUDE + "FolderLock(sys.argv[1]).acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld) as refused:
            FolderLock(tmp_path).acquire()
        assert str(refused.value) == refusal(tmp_path, holder.pid)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(holder.pid)  # its file is left, but not its lock
    lock = FolderLock(tmp_path)
    lock.acquire()
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_two_locks_in_one_process_exclude_each_other(tmp_path):
    first, second = FolderLock(tmp_path), FolderLock(tmp_path)
    first.acquire()
    with pytest.raises(LockHeld, match=f"in use by process {os.getpid()} on "):
        second.acquire()
    first.release()
    second.acquire()
    assert second.held and not first.held
    second.release()


def test_a_lock_file_replaced_under_a_waiting_opener_is_not_trusted(tmp_path, monkeypatch):
    """The release race: we opened the old file just before its owner removed it; we must lock the new one."""
    lock, other = FolderLock(tmp_path), FolderLock(tmp_path)
    real_open, calls = lock._open, []

    def open_then_lose_the_race():
        fd = real_open()
        if not calls:  # the previous owner removes the file right after we opened it, another takes the name
            calls.append(fd)
            (tmp_path / LOCK_NAME).unlink()
            other.acquire()
        return fd

    monkeypatch.setattr(lock, "_open", open_then_lose_the_race)
    with pytest.raises(LockHeld):
        lock.acquire()  # our lock on the orphaned file must not count
    assert other.held and not lock.held
    other.release()
    started = time.monotonic()
    lock.acquire()
    assert lock.held and time.monotonic() - started < 1
    lock.release()


def test_8_concurrent_runs_on_one_id_make_exactly_one_run(tmp_path):
    command = [sys.executable, "-m", "epochal.cli", "run", "toy", "--out", str(tmp_path), "--id", "same",
               "--no-progress", "--epochs", "2", "--set", "task.n_train=128", "--set", "train.log_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(8)]
    outputs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0] + [1] * 7, outputs
    folder = tmp_path / "same"
    in_use = re.compile(rf"epochal: error: {re.escape(str(folder))}: in use by process \d+ on "
                        rf"{re.escape(socket.gethostname())} \(lock {re.escape(str(folder / LOCK_NAME))}\); "
                        rf"wait for it or stop it\n")
    exists = f"epochal: error: {folder}: run folder exists; use --resume auto to continue it or --overwrite to replace it\n"
    for code, (_, err) in zip(codes, outputs):
        assert code == 0 or in_use.fullmatch(err) or err == exists, err
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "epoch_end" not in h] == [1, 2, 3, 4]  # one run's steps, once each
    assert json.loads((folder / "result.json").read_text())["status"] == "completed"
    assert not (folder / LOCK_NAME).exists()
