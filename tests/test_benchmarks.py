"""The GPU benchmark's smoke run: tiny, on the CPU, every workload through every eager variant, so
that benchmarks/gpu_speed.py (what `make gpu-check` runs on a GPU) cannot rot between GPU checks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_speed_smoke_measures_every_workload(tmp_path):
    out = tmp_path / "speed.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_speed.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    measured = {(row["workload"], row["variant"]) for row in rows if row["rates"] and not row["note"]}
    for workload in ("walks-seed", "regex", "flow-seed", "gpt-tiny"):
        assert {(workload, "raw"), (workload, "epochal")} <= measured, rows
    assert "| workload | variant | steps/s (min-max) |" in done.stdout


def test_gpu_speed_without_a_gpu_asks_for_smoke():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_speed.py")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "no CUDA GPU here; allowed: --smoke" in done.stderr and "Traceback" not in done.stderr


def test_resume_time_smoke_times_both_streams_and_the_skipping_one_grows(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "resume_time.py"), "--positions", "10,10000",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:4] for line in done.stdout.splitlines() if line.startswith("| 10") or
            line.startswith("| 10,000")]
    (_, stateful_low, skipping_low), (_, stateful_high, skipping_high) = [[c.strip() for c in r] for r in rows]
    assert float(skipping_high) - float(skipping_low) > float(stateful_high) - float(stateful_low)
    assert "goal: at most 0.5 s" in done.stdout
