"""Signals at any moment: before the run folder exists one line and nothing written; after, a resumable folder."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

WALKS = ["--set", "task.n_vertices=16", "--set", "task.n_blocks=2", "--set", "task.n_jumpers=2",
         "--set", "task.rule_distance=3", "--set", "task.num_walks=4000", "--set", "task.walk_length=34",
         "--set", "task.eval_sequences=40", "--set", "task.context=16", "--set", "task.d_model=16",
         "--set", "task.n_layers=1", "--set", "task.n_heads=2", "--epochs", "1"]


def start(tmp_path, *args):
    return subprocess.Popen([sys.executable, "-m", "epochal.cli", "run", *args, "--out", str(tmp_path), "--id", "r",
                             "--no-progress"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_signal_once_the_run_folder_exists_leaves_a_preempted_resumable_run(tmp_path):
    proc = start(tmp_path, "walks", *WALKS, "--set", "gate.above={}")  # no gate: one epoch ends completed
    config = tmp_path / "r" / "config.toml"
    deadline = time.monotonic() + 60
    while not config.exists() and time.monotonic() < deadline:  # written before the task is built
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["status"] == "preempted" and "SIGTERM" in result["metadata"]["stop_reason"]
    resumed = subprocess.run([sys.executable, "-m", "epochal.cli", "resume", str(tmp_path / "r"), "--no-progress"],
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "r" / "result.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("delay", [0.1, 0.3, 0.6])
def test_a_signal_before_any_run_folder_is_one_line_and_writes_nothing(tmp_path, delay):
    proc = start(tmp_path, "toy")
    time.sleep(delay)  # in the interpreter's start-up or the CLI's imports (torch's import takes NumPy's), before a folder
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert not (tmp_path / "r").exists()
    assert "Traceback" not in err
    if proc.returncode != -signal.SIGTERM:  # the CLI's handler was installed in time (the usual case)
        assert proc.returncode == 128 + signal.SIGTERM and err.count("\n") == 1 and "interrupted by SIGTERM" in err


def test_under_torchrun_a_signal_counts_once_the_ranks_agree_and_a_second_sigint_does_not_abort():
    from epochal.signals import PreemptionSignals

    signals = PreemptionSignals(agreed=True)
    assert signals.flags() == [0.0, 0.0, 0.0]
    signals._handle(signal.SIGINT, None)
    signals._handle(signal.SIGINT, None)  # torchrun forwards the terminal's Ctrl-C once more: no abort
    assert signals.received is None and signals.flags() == [0.0, 1.0, 0.0]
    signals.agree([0.0, 1.0, 1.0])  # this rank's SIGINT, another rank's SIGUSR1
    assert signals.name == "SIGINT"
    other = PreemptionSignals(agreed=True)
    other.agree([0.0, 1.0, 1.0])  # a rank that got nothing stops as well
    assert other.name == "SIGINT"
    alone = PreemptionSignals()
    alone._handle(signal.SIGTERM, None)
    assert alone.name == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
        alone._handle(signal.SIGINT, None)


def signal_during_import(tmp_path, monkeypatch, name):
    """Import a module that signals this process (SIGUSR1) in its body, as a scheduler could at any moment."""
    (tmp_path / f"{name}.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGUSR1)\n"
                                         "time.sleep(0.01)\nfinished = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return __import__(name)


@pytest.fixture
def outside_runs():
    from epochal.signals import interrupt_outside_runs

    previous = signal.signal(signal.SIGUSR1, interrupt_outside_runs)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_a_signal_inside_an_import_is_raised_once_the_import_has_finished(tmp_path, monkeypatch, outside_runs):
    from epochal.signals import Interrupted

    module = None
    with pytest.raises(Interrupted, match="interrupted by SIGUSR1 while no run was training") as raised:
        module = signal_during_import(tmp_path, monkeypatch, "signals_then_finishes")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.01)
    assert module is not None and module.finished  # the import was not cut short
    assert raised.value.exit_code == 128 + signal.SIGUSR1


def test_a_run_that_starts_after_an_import_took_a_signal_has_received_it(tmp_path, monkeypatch, outside_runs):
    from epochal.signals import PreemptionSignals

    class Counted(PreemptionSignals):
        handled = 0

        def _handle(self, signum, frame):
            self.handled += 1
            super()._handle(signum, frame)

    signal_during_import(tmp_path, monkeypatch, "signals_before_the_run")
    with Counted() as signals:
        assert signals.received == signal.SIGUSR1
        time.sleep(0.2)  # long after the held signal would have been delivered again
    assert signals.handled == 1
