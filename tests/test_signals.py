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


@pytest.mark.parametrize("sig, delay", [(signal.SIGTERM, 0.1), (signal.SIGTERM, 0.4), (signal.SIGTERM, 1.0),
                                        (signal.SIGUSR1, 0.1), (signal.SIGUSR1, 0.6),
                                        (signal.SIGINT, 0.1), (signal.SIGINT, 0.6)])
def test_a_signal_during_start_up_is_one_line_and_epochal_s_exit_code(tmp_path, sig, delay):
    proc = start(tmp_path, "toy")
    time.sleep(delay)  # the interpreter's start-up, the CLI's imports (torch's takes seconds), or the task's build
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and err.count("\n") <= 1, err
    if not (tmp_path / "r").exists():  # before the run folder: nothing to save, and nothing written
        preempted = sig != signal.SIGINT
        assert proc.returncode == (75 if preempted else 130), err  # 75: a scheduler requeues the job
        assert err.count("\n") == 1 and (f"preempted by {sig.name}" if preempted else "interrupted by SIGINT") in err
    else:  # a fast machine reached the run: a preempted run folder (a Ctrl-C there is a preemption too)
        assert proc.returncode == 75, err
        assert json.loads((tmp_path / "r" / "result.json").read_text())["status"] == "preempted"


def test_a_run_preempted_during_start_up_starts_with_resume_auto(tmp_path):
    proc = start(tmp_path, "toy", "--set", "task.n_train=64", "--epochs", "1")
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75 and "--resume auto" in err, err
    again = subprocess.run([sys.executable, "-m", "epochal", "run", "toy", "--set", "task.n_train=64", "--epochs",
                            "1", "--out", str(tmp_path), "--id", "r", "--no-progress", "--resume", "auto"],
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "r" / "result.json").read_text())["status"] == "completed"


def test_a_signal_once_the_command_has_ended_leaves_its_exit_code(monkeypatch):
    from epochal import cli
    from epochal.signals import PREEMPT_SIGNALS

    before = {sig: signal.getsignal(sig) for sig in PREEMPT_SIGNALS}
    ignored = []
    monkeypatch.setattr(cli, "ignore_after_the_command", lambda: ignored.append(True))
    monkeypatch.setattr(sys, "argv", ["epochal", "recipe", "walks"])
    try:
        assert cli.main() == 0 and ignored  # the program: teardown ignores signals (the default would kill: 143)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    ignored.clear()
    assert cli.main(["recipe", "walks"]) == 0 and not ignored  # in-process: the caller's handlers come back
    assert {sig: signal.getsignal(sig) for sig in PREEMPT_SIGNALS} == before


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
    from epochal.signals import install_outside_runs

    previous = install_outside_runs()
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_a_signal_inside_an_import_is_raised_once_the_import_has_finished(tmp_path, monkeypatch, outside_runs):
    from epochal.signals import Interrupted

    module = None
    with pytest.raises(Interrupted, match="preempted by SIGUSR1 while no run was training") as raised:
        module = signal_during_import(tmp_path, monkeypatch, "signals_then_finishes")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.01)
    assert module is not None and module.finished  # the import was not cut short
    assert raised.value.exit_code == 75  # a scheduler's signal: requeue the job


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
