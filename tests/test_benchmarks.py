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


TINY_FLOW = """group = "bench-smoke"
[task]
name = "flow"
arch = "mlp"
flow = "icfm"
dataset = "moons"
aug = "none"
n_samples = 1000
eval_samples = 50
eval_draws = 2
test_draws = 2
floor_draws = 2
ode_steps = 2
quality_every = 1
[train]
max_epochs = 2
batch_size = 200
[schedule]
warmup_steps = 2
[early_stop]
enabled = false
"""


def test_flow_eval_times_every_evaluation_inside_the_one_run(tmp_path):
    """benchmarks/flow_eval.py's child times the loop's evaluate and test, the set-up and the plot of one run,
    so the evaluation share is a part of that run's own wall time; --set's overrides reach that run."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import flow_eval
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_FLOW)
    record = flow_eval.train(ROOT / "src", recipe, 0, tmp_path / "runs", {"train.max_epochs": 3})
    spent = record["spent"]
    assert record["epochs"] == 3  # the recipe says 2
    assert record["timed"] == "Training"  # the loop's own calls, not the older task-only fallback
    assert (len(spent["evaluate"]), len(spent["test"]), len(spent["setup"]), len(spent["plot"])) == (3, 1, 1, 1)
    evaluation = sum(sum(spent[kind]) for kind in flow_eval.EVALUATION)
    assert 0 < evaluation < record["wall"]
    share = next(line for line in flow_eval.timing_lines([record]) if "% of wall time" in line)
    assert f"{100 * evaluation / record['wall']:.3g} %" in share
