"""epochal.io: the one write path. Every file a run writes is complete or absent, and goes through it."""

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from epochal import io
from epochal.io import WriteError, atomic_write_bytes, atomic_write_text, rewrite_in_place


def no_space(monkeypatch, name: str):
    """Make every write to a file called ``name`` fail as on a full disk."""
    real = io._write

    def failing(path, f, data):
        if Path(path).name == name:
            f.write(data[: len(data) // 2])  # part of it reached the disk before the error
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, f, data)

    monkeypatch.setattr(io, "_write", failing)


def test_an_atomic_write_replaces_the_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"new" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_removes_its_temp_and_says_why(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    atomic_write_text(target, "complete old content")
    no_space(monkeypatch, "result.json")
    with pytest.raises(WriteError) as failed:
        atomic_write_text(target, "new content that does not fit")
    assert str(failed.value) == f"{target}: cannot write (No space left on device)"
    assert failed.value.errno == errno.ENOSPC
    assert target.read_text() == "complete old content"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    no_space(monkeypatch, "config.toml")
    with pytest.raises(WriteError):
        atomic_write_text(tmp_path / "config.toml", "x = 1\n")
    assert list(tmp_path.iterdir()) == []


def test_a_write_into_a_missing_folder_is_a_write_error(tmp_path):
    with pytest.raises(WriteError, match="cannot write"):
        atomic_write_text(tmp_path / "missing" / "a.txt", "x")


def test_the_write_delay_hook_pauses_between_chunks_with_the_old_file_still_in_place(tmp_path, monkeypatch):
    """EPOCHAL_TEST_WRITE_DELAY: external harnesses kill a process mid-write with it."""
    target = tmp_path / "big.pt"
    atomic_write_bytes(target, b"old")
    monkeypatch.setenv(io.WRITE_DELAY_ENV, "0.1")
    seen = []

    def watch():
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            temps = list(tmp_path.glob(".big.pt.tmp-*"))
            if temps and temps[0].exists() and os.path.getsize(temps[0]) >= io._CHUNK:
                seen.append(target.read_bytes())  # caught between two chunks
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    atomic_write_bytes(target, b"x" * (2 * io._CHUNK + 1))  # three chunks: three pauses
    watcher.join()
    assert time.monotonic() - started >= 0.3
    assert seen == [b"old"]
    assert target.read_bytes() == b"x" * (2 * io._CHUNK + 1)


def test_rewrite_in_place_keeps_the_inode(tmp_path):
    path = tmp_path / ".lock"
    path.write_text("a much longer previous content\n")
    inode = path.stat().st_ino
    fd = os.open(path, os.O_RDWR)
    try:
        rewrite_in_place(path, fd, b"12 host\n")
    finally:
        os.close(fd)
    assert path.read_text() == "12 host\n" and path.stat().st_ino == inode


def test_every_file_of_a_run_is_written_through_io(run_toy, written):
    """All but history.jsonl, which is appended line by line (its truncation on resume goes through io)."""
    result = run_toy(settings={"ema.enabled": True, "ema.decay": 0.9, "checkpoint.every_steps": 3, "log.plots": True})
    files = {p.relative_to(result.run_dir) for p in result.run_dir.rglob("*") if p.is_file() and not p.is_symlink()}
    links = {p.relative_to(result.run_dir) for p in result.run_dir.rglob("*") if p.is_symlink()}
    assert links == {Path("metrics.json"), Path("logs/history.jsonl")}  # seed 003's names for two of the files
    through_io = {p.relative_to(result.run_dir) for p in written}
    hard_links = {Path("checkpoints", name) for name in ("last.pt", "best.pt")}  # links to written files
    assert files - through_io - hard_links == {Path("history.jsonl")}
    assert {Path("config.toml"), Path("env.json"), Path("result.json"), Path("checkpoints/manifest.json"),
            Path("checkpoints/model.safetensors"), Path("checkpoints/model_ema.safetensors"),
            Path(".lock")} <= through_io
    assert written.index(result.run_dir / "config.toml") == 1  # right after the lock: before the task is built


def test_task_files_are_written_through_io(tmp_path, written):
    from epochal.tasks.flow.data import build_flow_data
    from epochal.tasks.flow.plot import plot_samples
    from epochal.tasks.regex.fsm import compile_regex
    from epochal.tasks.walks.corpus import Corpus, save_corpus, save_graph
    from epochal.tasks.walks.graph import sample_sbm

    compile_regex("a(b|c)*", "abc").save(tmp_path / "fsm.json")
    graph = sample_sbm(12, 2, 0.9, 0.2, False, np.random.default_rng(0))
    save_graph(tmp_path / "graph.npz", graph, [])
    save_corpus(tmp_path / "walks.npz", Corpus(train=np.zeros((2, 3), np.int64), eval=np.ones((1, 3), np.int64)))
    rows = np.random.default_rng(0).normal(size=(60, 2))
    build_flow_data(rows, 0.2, 0.2, 1.0, 0, run_dir=tmp_path)
    plot_samples(rows, rows, tmp_path / "samples.png")
    files = {p.name for p in tmp_path.iterdir()}
    assert {p.name for p in written} == files
    assert files >= {"fsm.json", "graph.npz", "walks.npz", "normalization_stats.pt", "splits.json", "samples.png"}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
