"""The examples in docs/ and the README run as written."""

import re
from pathlib import Path

import numpy as np

from epochal.checkpoint import CheckpointStore
from test_resume import SignalAtStep

DOCS = Path(__file__).resolve().parents[1] / "docs"
README = DOCS.parent / "README.md"


def example(section: str) -> dict:
    """Execute the python block under ``section`` of docs/architecture.md; its names."""
    text = (DOCS / "architecture.md").read_text()
    body = text.split(f"## {section}\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/architecture.md", "exec"), namespace)
    return namespace


def test_the_stateful_callback_example_stops_a_run_with_its_decision(run_toy):
    SpikeGuard = example("Writing a stateful callback")["SpikeGuard"]
    # factor 0: every record after the first is a spike; the third one stops the run at the step-4 fetch.
    result = run_toy(callbacks=[SpikeGuard(factor=0.0, limit=3)], settings={"train.log_every": 2})
    assert result.status == "failed" and result.result["steps"] == 4
    assert result.stop_reason == "3 loss spikes by step 4"


def test_the_stateful_callback_example_is_checkpointed_and_resumed(run_toy):
    SpikeGuard = example("Writing a stateful callback")["SpikeGuard"]
    never = {"factor": 1.0, "limit": 10**9}  # counts every step whose loss is above the lowest so far
    straight = SpikeGuard(**never)
    run_toy("straight", callbacks=[straight])
    stopped = run_toy("stopped", callbacks=[SpikeGuard(**never), SignalAtStep(6)])
    saved = CheckpointStore(stopped.run_dir / "checkpoints", 3).load_states("last.pt")["spike_guard"]
    assert saved["spikes"] > 0
    resumed = SpikeGuard(**never)
    run_toy("stopped", callbacks=[resumed], resume="must")
    assert (resumed.spikes, resumed.lowest) == (straight.spikes, straight.lowest) and straight.spikes > saved["spikes"]


def readme_block(heading: str) -> str:
    """The first python block under ``heading`` of the README."""
    body = README.read_text().split(f"{heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def test_the_readme_shows_seed_002s_example_and_it_runs_as_written(capsys):
    code = readme_block("### The NumPy reference trainer (seed 002)")
    seed = (DOCS.parent.parent / "shared" / "seeds")
    seed_text = next(seed.glob("002_*.txt"), None) if seed.is_dir() else None
    if seed_text is not None:  # the seed's example from "# Dummy model" on, line for line
        example = seed_text.read_text().split("## Example Usage\n\n```python\n", 1)[1].split("```", 1)[0]
        assert example.split("# Dummy model", 1)[1] in code
    assert code.startswith("from epochal.scratch import AdamW, LRScheduler, Trainer\n")
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    found = [re.fullmatch(r"Loss: (\d+\.\d{4}), LR: (\d+\.\d{6})", line) for line in lines]
    assert len(lines) == 10 and all(found), lines
    losses = np.array([float(m.group(1)) for m in found])
    assert float(found[0].group(2)) == 0.0 and np.all(np.diff(losses[1:]) < 0), losses
