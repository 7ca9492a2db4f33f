"""torchrun with 2 CPU processes (gloo): same losses as one process, exact resume after SIGKILL and SIGTERM.

Each torchrun launch costs seconds, so one launch trains several runs (tests/ddp_runs.py) where it can.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import epochal
from epochal.audit import first_difference, weights_hash
from epochal.data import make_batches
from epochal.distributed import ALONE, RanksRNG, World
from epochal.state import capture_rng
from epochal.errors import ConfigError
from epochal.faults import DELAY_ENV, KILL_ENV, OOM_ENV, OOM_RANK_ENV

HERE = Path(__file__).parent
SETTINGS = {"task.n_train": 256, "task.n_eval": 64, "train.batch_size": 32, "train.max_steps": 30,
            "train.log_every": 5, "checkpoint.every_steps": 4, "task.dropout": 0.2, "log.plots": False,
            "train.progress": False}  # 8 steps an epoch; dropout: every rank's generator must resume too


def env(**extra):
    src = str(Path(epochal.__file__).parents[1])
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def torchrun(*args, restarts=0, procs=2):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", "localhost:0", "--max-restarts", str(restarts), *args]


def cli_run(out, run_id):
    sets = [arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    return ["-m", "epochal", "run", "toy", "--out", str(out), "--id", run_id, *sets]


class Launch:
    """A torchrun in its own process group, killed with all its workers when the test ends."""

    def __init__(self):
        self.procs = []

    def start(self, command, **env_extra):
        proc = subprocess.Popen(command, env=env(**env_extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, command, **env_extra):
        proc = self.start(command, **env_extra)
        out, _ = proc.communicate(timeout=240)
        return proc.returncode, out

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def launch():
    launcher = Launch()
    yield launcher
    launcher.close()


def runs_script(tmp_path, runs, procs=2):
    spec = tmp_path / f"spec-{len(list(tmp_path.glob('spec-*')))}.json"
    spec.write_text(json.dumps(runs))
    return torchrun(str(HERE / "ddp_runs.py"), str(spec), procs=procs)


def run_all(out, runs):
    """Train ``runs`` (ddp_runs.py's spec) in one torchrun launch; returns ``out``."""
    launcher = Launch()
    try:
        code, output = launcher.run(runs_script(out, runs))
    finally:
        launcher.close()
    assert code == 0, output
    return out


def curves(run_dir):
    return json.loads((run_dir / "result.json").read_text())["curves"]


def assert_same_run(a, b):
    assert first_difference(curves(a)["train_loss"], curves(b)["train_loss"]) is None
    assert curves(a) == curves(b)
    assert weights_hash(a) == weights_hash(b)


def wait_for(path, proc, seconds=120):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def worker_of(agent_pid, rank):
    """The pid of torchrun's worker of ``rank``: a child of the agent with RANK=rank in its environment."""
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == agent_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank}")


def preempt_checkpoints(run_dir):
    manifest = json.loads((run_dir / "checkpoints" / "manifest.json").read_text())["checkpoints"]
    return [entry for entry in manifest if entry["kind"] == "preempt"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted world-size-2 runs: two of SETTINGS; without dropout, also with accumulation (no_sync);
    a user's DataLoader."""
    out = tmp_path_factory.mktemp("ddp")
    runs = [{"id": "a", "out": str(out), "settings": SETTINGS}, {"id": "b", "out": str(out), "settings": SETTINGS},
            {"id": "plain", "out": str(out), "settings": {**SETTINGS, "task.dropout": 0.0}},
            {"id": "accum", "out": str(out), "settings": {**SETTINGS, "task.dropout": 0.0, "train.grad_accum": 2}},
            # 16 examples a rank do not fit, 8 do: split in two, as "accum" is from the start
            {"id": "auto", "out": str(out), "settings": {**SETTINGS, "task.dropout": 0.0, "train.microbatch": "auto"},
             "env": {OOM_ENV: "8"}},
            {"id": "auto-rank1", "out": str(out), "settings": {**SETTINGS, "task.dropout": 0.0,
                                                               "train.microbatch": "auto"},
             "env": {OOM_ENV: "8", OOM_RANK_ENV: "1"}},  # rank 0 fits, and must split with rank 1 all the same
            {"id": "loader", "out": str(out), "loader": True}]
    return run_all(out, runs)


@pytest.mark.slow
def test_two_processes_match_one_and_repeat_bit_identically(straight, tmp_path):
    from ddp_runs import loader_run

    assert_same_run(straight / "a", straight / "b")
    alone = epochal.run("toy", overrides={**SETTINGS, "task.dropout": 0.0}, out_dir=tmp_path, experiment_id="one",
                        log=lambda _: None)
    accum = epochal.run("toy", overrides={**SETTINGS, "task.dropout": 0.0, "train.grad_accum": 2}, out_dir=tmp_path,
                        experiment_id="accum", log=lambda _: None)
    user = loader_run(str(tmp_path), "loader")  # a DataLoader split over the ranks, a (sum, count) loss
    pairs = ((straight / "plain", alone.run_dir), (straight / "accum", accum.run_dir), (straight / "loader", user.run_dir))
    for two, one in pairs:
        two_losses, one_losses = curves(two)["train_loss"], curves(one)["train_loss"]
        assert len(two_losses) == len(one_losses) >= 12
        assert two_losses != curves(straight / "a")["train_loss"]  # not the dropout run's
        assert torch.allclose(torch.tensor(two_losses), torch.tensor(one_losses), rtol=1e-5, atol=0)
    env_json = json.loads((straight / "a" / "env.json").read_text())["distributed"]
    assert env_json["world_size"] == 2 and env_json["backend"] == "gloo"
    assert [rank["rank"] for rank in env_json["ranks"]] == [0, 1]


@pytest.mark.slow
def test_under_torchrun_out_of_memory_splits_on_every_rank_as_if_configured(straight):
    for auto in ("auto", "auto-rank1"):
        assert_same_run(straight / "accum", straight / auto)
        history = [json.loads(line) for line in (straight / auto / "history.jsonl").read_text().splitlines()]
        splits = [h for h in history if h.get("event") == "microbatch"]
        assert [(h["step"], h["micro_batches"]) for h in splits] == [(1, 2)]
    assert "out of memory on another process of torchrun" in splits[0]["reason"]  # rank 0 wrote it: rank 1 ran out


@pytest.mark.slow
def test_sigkill_and_sigterm_to_torchrun_then_resume_is_exact(straight, tmp_path, launch):
    killed, preempted = tmp_path / "killed", tmp_path / "preempted"
    code, output = launch.run(torchrun(*cli_run(tmp_path, "killed")), **{KILL_ENV: "11"})  # mid-epoch 2
    assert code != 0 and json.loads((killed / "result.json").read_text())["steps"] == 8, output  # epoch 1's

    agent = launch.start(torchrun(*cli_run(tmp_path, "preempted")), **{DELAY_ENV: "0.1"})
    wait_for(preempted / "history.jsonl", agent)  # training: the first log interval is written
    os.kill(agent.pid, signal.SIGTERM)  # torchrun forwards it to both workers
    sent = time.monotonic()
    output, _ = agent.communicate(timeout=60)
    assert time.monotonic() - sent < 30, "the workers outlived torchrun's grace period"
    assert agent.returncode == 1, output  # torchrun's answer to a SIGTERM, whatever the workers did
    assert "preempted: preempted by SIGTERM" in output
    assert len(preempt_checkpoints(preempted)) == 1

    # One process resumes a copy of a two-process checkpoint: the same global batches go on, and it says so.
    shutil.copytree(killed, tmp_path / "alone" / "killed")
    said = []
    alone = epochal.run("toy", overrides=SETTINGS, out_dir=tmp_path / "alone", experiment_id="killed", resume="must",
                        log=said.append)
    assert alone.status == "completed" and any("written by 2 process(es), this run has 1" in line for line in said)
    assert curves(alone.run_dir)["train_loss"][:8] == curves(straight / "a")["train_loss"][:8]

    runs = [{"id": name, "out": str(tmp_path), "settings": SETTINGS, "resume": "must"} for name in ("killed", "preempted")]
    code, output = launch.run(runs_script(tmp_path, runs))
    assert code == 0, output
    assert output.count("resuming from") == 2
    assert_same_run(straight / "a", killed)
    assert_same_run(straight / "a", preempted)


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_and_torchrun_restarts_the_run(straight, tmp_path, launch):
    run_dir = tmp_path / "restarted"
    agent = launch.start(torchrun(*cli_run(tmp_path, "restarted"), restarts=1), **{DELAY_ENV: "0.05"})
    wait_for(run_dir / "history.jsonl", agent)
    os.kill(worker_of(agent.pid, 1), signal.SIGTERM)
    output, _ = agent.communicate(timeout=180)
    # Both ranks stop at one step and exit 75; torchrun counts that as a failure and restarts the group,
    # which resumes from the preemption checkpoint (TORCHELASTIC_RESTART_COUNT) and completes.
    assert agent.returncode == 0, output
    assert "preempted: preempted by SIGTERM" in output and "resuming from checkpoint_step_" in output
    assert_same_run(straight / "a", run_dir)


def test_when_one_rank_is_killed_the_other_says_so_in_one_line(tmp_path, launch):
    run_dir = tmp_path / "lost"
    agent = launch.start(torchrun(*cli_run(tmp_path, "lost")), **{DELAY_ENV: "0.05"})
    wait_for(run_dir / "history.jsonl", agent)
    os.kill(worker_of(agent.pid, 1), signal.SIGKILL)
    output, _ = agent.communicate(timeout=120)
    rank0 = [line for line in output.splitlines() if line.startswith("[rank0]") or "epochal: error" in line]
    assert agent.returncode != 0
    assert not any("Traceback" in line for line in rank0), output  # torchrun's own report is not ours
    assert any("epochal: error: another process of this run stopped" in line for line in rank0), output
    assert (run_dir / "config.toml").exists() and (run_dir / "history.jsonl").exists()  # left to resume


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield from range(3)


def test_each_rank_takes_its_part_of_the_same_global_batches():
    data = {"x": torch.arange(24)}
    alone = [b["x"] for b in make_batches(data, torch.device("cpu"), 8, 0, False).epoch(1)]
    parts = [[b["x"] for b in make_batches(data, torch.device("cpu"), 8, 0, False, world=World(rank, 2)).epoch(1)]
             for rank in (0, 1)]
    assert [torch.cat(pair).tolist() for pair in zip(*parts)] == [b.tolist() for b in alone]
    assert all(len(b) == 4 for rank in parts for b in rank)


def test_batches_that_do_not_split_over_the_ranks_are_refused():
    with pytest.raises(ConfigError, match="train.batch_size: 9 is the global batch"):
        make_batches({"x": torch.arange(24)}, torch.device("cpu"), 9, 0, False, world=World(0, 2))
    with pytest.raises(ConfigError, match="the last batch of 3 examples"):
        make_batches({"x": torch.arange(19)}, torch.device("cpu"), 8, 0, False, world=World(0, 2))
    with pytest.raises(ConfigError, match="iterable dataset cannot be split"):
        make_batches(Stream(), torch.device("cpu"), 8, 0, False, world=World(0, 2))


@pytest.mark.slow
def test_a_batch_that_does_not_split_is_refused_in_one_line_by_rank_0(tmp_path, launch):
    command = torchrun("-m", "epochal", "run", "toy", "--out", str(tmp_path), "--id", "odd", "--batch-size", "33")
    code, output = launch.run(command)
    assert code != 0
    assert output.count("epochal: error: train.batch_size: 33 is the global batch and must split evenly over "
                        "2 processes; allowed: a multiple of 2") == 1, output
    assert "rank 1" not in output.split("ChildFailedError")[0]  # rank 1 leaves the line to rank 0
    assert not (tmp_path / "odd").exists()


@pytest.mark.slow
def test_a_run_folder_another_rank_cannot_see_is_refused_in_one_line(tmp_path, launch):
    # Rank 1 looks for the folder under another --out, as a node without the shared filesystem would.
    shell = (f'out={tmp_path}/shared; [ "$RANK" = 1 ] && out={tmp_path}/elsewhere; '
             f'exec {sys.executable} -m epochal run toy --out "$out" --id r')
    code, output = launch.run(torchrun("--no-python", "bash", "-c", shell))
    assert code != 0
    assert output.count(f"epochal: error: out_dir: {tmp_path}/shared/r made by rank 0 on ") == 1, output
    assert "is not visible to rank 1 on " in output
    assert not (tmp_path / "shared" / "r").exists()


def test_the_rng_entry_of_one_process_replays_its_draws_and_reads_older_and_wider_checkpoints():
    torch.manual_seed(5)
    saved = RanksRNG(ALONE).state_dict()
    first = torch.rand(3)
    RanksRNG(ALONE).load_state_dict(saved)
    assert torch.equal(torch.rand(3), first) and len(saved["ranks"]) == 1
    RanksRNG(ALONE).load_state_dict(saved["ranks"][0])  # a checkpoint holding one bare state
    assert torch.equal(torch.rand(3), first)
    torch.manual_seed(6)
    other, rank_1_draws = capture_rng(), torch.rand(3)
    RanksRNG(World(rank=1, size=2)).load_state_dict({"ranks": [saved["ranks"][0], other]})  # rank 1 takes its own
    assert torch.equal(torch.rand(3), rank_1_draws)
