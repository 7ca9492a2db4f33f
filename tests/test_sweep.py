"""epochal sweep: grids with several workers, pruning, failed trials, SIGKILL and resume, PostgreSQL."""

import glob
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from epochal.checkpoint import read_manifest
from epochal.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")

# The example, sized for a test: tiny toy runs of 2 epochs on 128 examples.
GRID_SPEC = """
task = "toy"                 # a registered task or an import path
recipe = "toy"               # a built-in recipe or a path to a TOML config
method = "grid"              # grid | random | tpe
trials = 8                   # ignored by grid
metric = "eval_mse"
direction = "minimize"
seeds = [0, 1]
[space]
"optim.lr" = [1e-3, 3e-3]
"train.batch_size" = [32, 64]
[set]
"train.max_epochs" = 2
"task.n_train" = 128
"task.n_eval" = 64
# A checkpoint every 2 steps, written before training goes on: the kill test resumes from one.
"checkpoint.every_steps" = 2
"checkpoint.async_write" = false
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def env_for_subprocess(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def run_folders(sweep_dir: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted((sweep_dir / "runs").iterdir())}


def result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


def trial_record(folder: Path) -> dict:
    return json.loads((folder / "trial.json").read_text())


def study_trials(sweep_dir: Path, storage=None):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = storage or JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal")))
    return optuna.load_study(study_name=sweep_dir.name, storage=storage).get_trials()


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """The 2 x 2 grid x 2 seeds sweep with 2 workers, run once for the tests that read it."""
    root = tmp_path_factory.mktemp("grid")
    spec = write(root / "spec.toml", GRID_SPEC)
    assert main(["sweep", str(spec), "--out", str(root / "results"), "--id", "grid", "--workers", "2"]) == 0
    return root / "results" / "grid"


@pytest.mark.slow
def test_grid_with_two_workers_gives_eight_complete_runs_and_their_summary(grid_sweep):
    folders = run_folders(grid_sweep)
    assert len(folders) == 8
    points = json.loads((grid_sweep / "sweep.json").read_text())["points"]
    assert len(points) == 4 and all(p["status"] == "completed" for p in points)
    seen = set()
    for point in points:
        values = []
        for seed in (0, 1):
            folder = grid_sweep / point["runs"][str(seed)]
            record, res = trial_record(folder), result(folder)
            assert res["status"] == "completed"
            assert record["params"] == point["params"] and record["seed"] == seed
            config = (folder / "config.toml").read_text()
            # The trial number and its parameters head config.toml; the settings themselves are in it.
            assert config.startswith(f"# sweep grid trial {record['trials'][0]}")
            assert f"lr = {point['params']['optim.lr']}" in config and f"seed = {seed}" in config
            values.append(res["metrics"]["eval_mse"])
        seen.add((point["params"]["optim.lr"], point["params"]["train.batch_size"]))
        assert point["value"] == pytest.approx(statistics.fmean(values))
        assert point["std"] == pytest.approx(statistics.stdev(values))
    assert seen == {(1e-3, 32), (1e-3, 64), (3e-3, 32), (3e-3, 64)}
    best = min(points, key=lambda p: p["value"])
    assert json.loads((grid_sweep / "sweep.json").read_text())["best"]["point"] == best["point"]


@pytest.mark.slow
def test_runs_table_of_the_grid(grid_sweep, capsys):
    code, out, _ = cli(capsys, "runs", grid_sweep, "--format", "json", "--sort", "eval_mse")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 8
    for row in rows:
        folder = Path(row["run"])
        res = result(folder)
        assert row["status"] == "completed" and row["task"] == "toy"
        assert row["eval_mse"] == res["metrics"]["eval_mse"]
        assert row["optim.lr"] == trial_record(folder)["params"]["optim.lr"]
        assert row["train.seed"] == trial_record(folder)["seed"]
    # Only the settings that differ are columns; the ones all runs share are not.
    assert {"optim.lr", "train.batch_size", "train.seed"} <= set(rows[0]) and "task.n_train" not in rows[0]
    assert [r["eval_mse"] for r in rows] == sorted(r["eval_mse"] for r in rows)
    code, out, _ = cli(capsys, "runs", grid_sweep, "--where", "optim.lr=0.001", "--where", "train.seed=1")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3 and lines[0].split()[:3] == ["run", "task", "status"]


@pytest.mark.slow
def test_sweep_killed_mid_trial_resumes_to_the_same_results(grid_sweep, tmp_path, capsys):
    spec = write(tmp_path / "spec.toml", GRID_SPEC)
    # The worker that reaches its second run kills the coordinator and both workers at step 5 of it.
    proc = subprocess.Popen([sys.executable, "-m", "epochal.cli", "sweep", str(spec), "--out", str(tmp_path),
                             "--id", "killed", "--workers", "2"], env=env_for_subprocess(EPOCHAL_SWEEP_SIGNAL_AT="2:5"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL, err
    sweep_dir = tmp_path / "killed"
    unfinished = [f for f in run_folders(sweep_dir).values() if not (f / "result.json").exists()
                  or result(f)["status"] == "running"]
    # Step 4 ends a 4-step epoch: its checkpoint is the epoch's file (one file a step).
    mid_run = [f for f in unfinished if 4 in [e["step"] for e in read_manifest(f / "checkpoints")]]
    assert mid_run, "the kill should leave a run with a checkpoint and no final result"

    code, out, _ = cli(capsys, "sweep", "--resume", sweep_dir, "--workers", 2)
    assert code == 0 and "retrying interrupted trials" in out

    resumed, reference = run_folders(sweep_dir), run_folders(grid_sweep)
    assert resumed.keys() == reference.keys()
    for name, folder in resumed.items():
        assert trial_record(folder)["params"] == trial_record(reference[name])["params"]
        assert result(folder)["curves"]["train_loss"] == result(reference[name])["curves"]["train_loss"]
        # Trained once: a single start from step 0; a continuation starts where a checkpoint was.
        starts = [s["from_step"] for s in trial_record(folder)["starts"]]
        assert starts.count(0) == 1, (name, starts)
    assert any(4 in [s["from_step"] for s in trial_record(f)["starts"]] for f in mid_run)
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    expected = {p["point"]: p["value"] for p in json.loads((grid_sweep / "sweep.json").read_text())["points"]}
    assert {p["point"]: p["value"] for p in summary["points"]} == expected
    complete = [t.user_attrs["point"] for t in study_trials(sweep_dir) if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(expected)  # each point completed by exactly one trial


@pytest.mark.slow
def test_sigterm_stops_the_sweep_cleanly_and_resume_finishes_it(tmp_path, capsys):
    spec = write(tmp_path / "spec.toml", """
task = "toy"
metric = "eval_mse"
[space]
"optim.lr" = [1e-3, 3e-3]
[set]
"train.max_epochs" = 2
"task.n_train" = 128
"task.n_eval" = 64
"train.batch_size" = 32
""")
    # At step 3 of the first run, SIGTERM reaches the sweep, as a scheduler's would.
    proc = subprocess.run([sys.executable, "-m", "epochal.cli", "sweep", str(spec), "--out", str(tmp_path), "--id", "t"],
                          env=env_for_subprocess(EPOCHAL_SWEEP_SIGNAL_AT="1:3:TERM"), capture_output=True, text=True,
                          timeout=240, start_new_session=True)
    assert proc.returncode == 75, proc.stderr
    sweep_dir = tmp_path / "t"
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert summary["state"] == "interrupted" and [p["status"] for p in summary["points"]] == ["waiting"]
    (first,) = run_folders(sweep_dir).values()  # the worker stopped: no other run began
    assert result(first)["status"] == "preempted"

    code, out, _ = cli(capsys, "sweep", "--resume", sweep_dir)
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert code == 0 and summary["state"] == "finished" and summary["counts"]["completed"] == 2
    assert [s["from_step"] for s in trial_record(first)["starts"]] == [0, 3]
    assert result(first)["steps"] == 8


def test_tpe_with_median_pruner_marks_some_trials_pruned(tmp_path, capsys):
    spec = write(tmp_path / "spec.toml", """
task = "toy"
method = "tpe"
trials = 6
metric = "eval_mse"
seeds = [0, 1]
pruner = { kind = "median", startup_trials = 2 }
[space]
"optim.lr" = { low = 1e-5, high = 1e-1, log = true }
[set]
"train.max_epochs" = 3
"task.n_train" = 128
"task.n_eval" = 64
""")
    code, out, _ = cli(capsys, "sweep", spec, "--out", tmp_path, "--id", "tpe")
    assert code == 0
    sweep_dir = tmp_path / "tpe"
    points = json.loads((sweep_dir / "sweep.json").read_text())["points"]
    states = {t.user_attrs["point"]: t.state.name for t in study_trials(sweep_dir)}
    pruned = [p for p in points if p["status"] == "pruned"]
    assert pruned and len(points) == 6
    for point in points:
        assert states[point["point"]] == {"pruned": "PRUNED", "completed": "COMPLETE"}[point["status"]]
        first = sweep_dir / point["runs"]["0"]
        if point["status"] == "pruned":
            # Pruned on its first seed: that run says so, and the other seed never ran.
            assert result(first)["status"] == "pruned" and "pruned by the median pruner" in point["failure_reason"]
            assert set(point["runs"]) == {"0"}
        else:
            assert result(first)["status"] == "completed" and set(point["runs"]) == {"0", "1"}
    code, out, _ = cli(capsys, "runs", sweep_dir, "--where", "status=pruned", "--format", "json")
    assert len(json.loads(out)) == len(pruned)


def test_failed_trials_are_flagged_and_the_gate_filter_keeps_the_passing_runs(tmp_path, capsys):
    spec = write(tmp_path / "spec.toml", """
task = "toy"
method = "grid"
metric = "eval_mse"
[space]
"optim.lr" = [1e-4, 3e-2, -1.0]   # too slow for the gate, fine, and not a learning rate at all
[set]
"train.max_epochs" = 3
"task.n_train" = 128
"task.n_eval" = 64
"gate.below" = { eval_mse = 0.3 }
""")
    code, out, _ = cli(capsys, "sweep", spec, "--out", tmp_path, "--id", "gated")
    assert code == 0  # the sweep goes on past failed trials
    sweep_dir = tmp_path / "gated"
    points = {p["params"]["optim.lr"]: p for p in json.loads((sweep_dir / "sweep.json").read_text())["points"]}
    assert points[3e-2]["status"] == "completed" and points[3e-2]["gate_passed"] is True
    # A point whose run trained to the end without passing the gate says so in the runs' vocabulary.
    assert points[1e-4]["status"] == "gate_failed" and "gate not passed (eval_mse < 0.3)" in points[1e-4]["failure_reason"]
    assert points[-1.0]["status"] == "failed" and "optim.lr: -1.0 must be positive" in points[-1.0]["failure_reason"]
    code, out, _ = cli(capsys, "runs", sweep_dir, "--format", "json")
    rows = {r["optim.lr"]: r for r in json.loads(out)}
    assert rows.keys() == {1e-4, 3e-2}  # the invalid point never made a run folder
    assert rows[1e-4]["gate_passed"] is False and "gate not passed" in rows[1e-4]["failure_reason"]
    assert rows[1e-4]["status"] == "gate_failed"
    code, out, _ = cli(capsys, "runs", sweep_dir, "--where", "gate_passed=true", "--format", "json")
    assert [r["run"] for r in json.loads(out)] == [rows[3e-2]["run"]]


def test_a_point_drawn_twice_is_trained_once(tmp_path, capsys):
    spec = write(tmp_path / "spec.toml", """
task = "toy"
method = "random"
trials = 3
metric = "eval_mse"
[space]
"optim.lr" = [3e-3]   # one point only: every trial draws it
[set]
"train.max_epochs" = 1
"task.n_train" = 128
"task.n_eval" = 64
""")
    assert cli(capsys, "sweep", spec, "--out", tmp_path, "--id", "dup")[0] == 0
    sweep_dir = tmp_path / "dup"
    (folder,) = run_folders(sweep_dir).values()
    assert trial_record(folder)["starts"] == [dict(trial_record(folder)["starts"][0], from_step=0)]
    trials = study_trials(sweep_dir)
    assert len(trials) == 3 and len({t.value for t in trials}) == 1
    assert trials[0].value == result(folder)["metrics"]["eval_mse"]


def test_random_points_do_not_depend_on_the_history_of_retries(tmp_path):
    """Points are seeded by their position among the sweep's points, so a retry does not shift them."""
    import optuna

    from epochal.sweep.spec import parse_spec, suggest
    from epochal.sweep.worker import make_sampler

    spec = parse_spec({"task": "toy", "metric": "eval_mse", "method": "random", "trials": 3,
                       "space": {"optim.lr": {"low": 1e-5, "high": 1e-1, "log": True}}})

    def draw(index):
        study = optuna.create_study(sampler=make_sampler(spec, index))
        return suggest(study.ask(), spec.space)

    assert draw(1) == draw(1) and draw(0) != draw(1)


def test_the_readme_specs_are_valid():
    """Every spec in the README's Sweeps section parses and resolves (the grid one is GRID_SPEC's shape)."""
    from epochal.sweep.spec import base_config, load_task, parse_spec

    repo = Path(__file__).resolve().parents[1]
    section = (repo / "README.md").read_text().split("## Sweeps\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    methods = []
    for block in blocks:
        spec = parse_spec(tomllib.loads(block))
        base_config(spec, load_task(spec.task), repo)
        methods.append(spec.method)
    assert methods == ["grid", "random", "tpe"]


@pytest.mark.parametrize("text, fragment", [
    ('task = "toy"\nmetric = "eval_mse"\nmethod = "anneal"\n[space]\n"optim.lr" = [1e-3]',
     "spec.method: 'anneal' is not allowed; allowed: grid, random, tpe"),
    ('task = "toy"\nmetric = "eval_mse"\n[space]\n"optim.lr" = { low = 1e-4, high = 1e-2 }',
     "space.optim.lr: grid needs a list of values"),
    ('task = "toy"\nmetric = "eval_mse"\n[space]\n"optim.nope" = [1]', "optim.nope: unknown key"),
    ('task = "toy"\nmetric = "eval_mse"\n[space]\n"train.seed" = [1, 2]', "train.seed: set by the sweep itself"),
    ('task = "toy"\nmetric = "accuracy"\n[space]\n"optim.lr" = [1e-3]', "spec.metric: 'accuracy' is not a metric"),
    ('task = "toy"\nmetric = "eval_mse"\nrecipe = "nope"\n[space]\n"optim.lr" = [1e-3]',
     "spec.recipe: 'nope' is neither a TOML file nor a built-in recipe"),
    ('task = "toy"\nmetric = "eval_mse"\nmethod = "random"\n[space]\n"optim.lr" = { low = 1, high = 0 }',
     "space.optim.lr: low 1 and high 0"),
    ('task = "toy"\nmetric = "eval_mse"', "spec.space: missing or empty"),
])
def test_bad_spec_is_one_line_and_no_sweep_folder(tmp_path, capsys, text, fragment):
    spec = write(tmp_path / "spec.toml", text)
    code, _, err = cli(capsys, "sweep", spec, "--out", tmp_path / "out", "--id", "bad")
    assert code == 2 and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "out").exists()


def test_sweep_arguments_and_folders_are_checked(tmp_path, capsys):
    spec = write(tmp_path / "spec.toml", 'task = "toy"\nmetric = "eval_mse"\n[space]\n"optim.lr" = [1e-3]')
    code, _, err = cli(capsys, "sweep", spec, "--resume", tmp_path)
    assert code == 2 and "not both" in err
    code, _, err = cli(capsys, "sweep", "--resume", tmp_path)
    assert code == 1 and "not a sweep folder" in err
    code, _, err = cli(capsys, "sweep", spec, "--id", "a/b")
    assert code == 2 and "--id 'a/b': not a folder name" in err
    code, _, err = cli(capsys, "sweep", spec, "--out", tmp_path / "out", "--workers", 0)
    assert code == 2 and "--workers: 0 must be positive" in err and not (tmp_path / "out").exists()


def test_an_sql_storage_url_holds_the_study(tmp_path, capsys):
    spec = write(tmp_path / "spec.toml", 'task = "toy"\nmetric = "eval_mse"\n[space]\n"optim.lr" = [1e-3]\n'
                                         '[set]\n"train.max_epochs" = 1\n"task.n_train" = 64\n"task.n_eval" = 32')
    url = f"sqlite:///{tmp_path / 'study.db'}"
    code, _, err = cli(capsys, "sweep", spec, "--out", tmp_path, "--id", "sql", "--storage", url)
    assert code == 0, err
    assert not (tmp_path / "sql" / "optuna.journal").exists()
    assert [t.state.name for t in study_trials(tmp_path / "sql", url)] == ["COMPLETE"]
    code, _, err = cli(capsys, "sweep", spec, "--out", tmp_path / "out", "--storage", "nosuchdb://host/db")
    assert code == 1 and err.count("\n") == 1 and "--storage nosuchdb://host/db: cannot open" in err
    assert not (tmp_path / "out").exists()


def test_missing_optuna_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)
    spec = write(tmp_path / "spec.toml", 'task = "toy"\nmetric = "eval_mse"\n[space]\n"optim.lr" = [1e-3]')
    code, _, err = cli(capsys, "sweep", spec, "--out", tmp_path)
    assert code == 1 and err.strip() == ("epochal: error: sweeps need Optuna, which is not installed; "
                                         "pip install 'epochal[sweep]'")


def _hold_lock(folder, held) -> None:
    from epochal.run_folder import RunFolder

    RunFolder(folder).acquire()
    held.set()
    time.sleep(60)


def test_in_use_tells_a_live_holder_from_a_dead_one(tmp_path):
    import multiprocessing

    from epochal.sweep.worker import in_use

    folder = tmp_path / "run"
    folder.mkdir()
    fork = multiprocessing.get_context("fork")
    held = fork.Event()
    holder = fork.Process(target=_hold_lock, args=(folder, held))
    holder.start()
    try:
        assert held.wait(30) and in_use(folder)
    finally:
        holder.kill()
        holder.join()
    assert not in_use(folder)  # a dead holder's lock is free to take


def test_a_dead_workers_trial_is_retried_with_its_point_and_a_live_ones_is_not(tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from epochal.sweep.store import reclaim, this_worker

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    study = optuna.create_study(study_name="s", storage=storage)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead, alive = study.ask(), study.ask()
    for trial, worker in ((dead, {**this_worker(), "pid": gone.pid, "started": None}), (alive, this_worker())):
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("worker", worker)
    assert reclaim(study, storage) == [dead.number]
    trials = {t.number: t for t in study.get_trials()}
    (retry,) = [t for t in trials.values() if t.state.name == "WAITING"]
    assert trials[dead.number].state.name == "FAIL" and trials[alive.number].state.name == "RUNNING"
    assert retry.params == trials[dead.number].params and retry.system_attrs["retry_history"] == [dead.number]
    # Taken by a new worker that has not yet written its identity: not mistaken for the dead one.
    assert study.ask().number == retry.number and reclaim(study, storage) == []


# ------------------------------------------------------------------ PostgreSQL
def _pg_program(name: str) -> str:
    found = shutil.which(name) or (sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [None])[-1]
    if found is None:
        pytest.fail(f"PostgreSQL's {name} is not installed: apt-get install postgresql (.ci/run does)")
    return found


@pytest.fixture(scope="module")
def postgres_url():
    """One PostgreSQL server on 127.0.0.1 for this module, in a temp folder, as the postgres user when root."""
    root = Path(tempfile.mkdtemp(prefix="epochal-pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")  # initdb refuses to run as root
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, _pg_program("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, _pg_program("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o", options,
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, _pg_program("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_a_postgresql_study(postgres_url, tmp_path, capsys):
    spec = write(tmp_path / "spec.toml", """
task = "toy"
metric = "eval_mse"
[space]
"optim.lr" = [1e-3, 3e-2]
[set]
"train.max_epochs" = 1
"task.n_train" = 128
"task.n_eval" = 64
""")
    code, _, err = cli(capsys, "sweep", spec, "--out", tmp_path, "--id", "pg", "--workers", 2, "--storage", postgres_url)
    assert code == 0, err
    sweep_dir = tmp_path / "pg"
    assert not (sweep_dir / "optuna.journal").exists() and len(run_folders(sweep_dir)) == 2
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert summary["storage"] == postgres_url and summary["counts"]["completed"] == 2
    import optuna

    trials = optuna.load_study(study_name="pg", storage=postgres_url).get_trials()
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"]
    assert len(list((sweep_dir / "logs").glob("worker-*.log"))) == 2  # both workers joined the study


@pytest.mark.parametrize("visible, placed", [(None, ["0", "0", "1", "1"]), ("5,7", ["5", "5", "7", "7"])])
def test_workers_per_gpu_puts_k_workers_on_each_visible_gpu(monkeypatch, visible, placed):
    import torch

    from epochal.sweep import _worker_env, workers_for_gpus

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert workers_for_gpus(2) == 4
    assert [_worker_env(i, 4, None, per_gpu=2)["CUDA_VISIBLE_DEVICES"] for i in range(4)] == placed


def test_workers_per_gpu_without_a_gpu_is_refused_in_one_line(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text('task = "toy"\nmetric = "eval_mse"\n[grid]\n"optim.lr" = [0.001]\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path), "--workers-per-gpu", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "epochal: error: --workers-per-gpu: no CUDA GPU is visible here; allowed here: --workers N"
    assert main(["sweep", str(spec), "--workers", "2", "--workers-per-gpu", "2"]) == 2
    assert "--workers and --workers-per-gpu both given" in capsys.readouterr().err


# --- --launcher slurm, through submitit's local executor -------------------------------------------

SLOW_TOY = '''
import time

from epochal.tasks.toy import ToyTask


class SlowToy(ToyTask):
    """The toy task at 50 ms a step (on the host: the numbers are the toy's), so a time limit falls mid-run."""

    def loss(self, model, batch):
        time.sleep(0.05)
        return super().loss(model, batch)
'''


def test_a_job_array_worker_at_its_time_limit_saves_is_requeued_and_continues_its_run(tmp_path, monkeypatch,
                                                                                        capsys):
    pytest.importorskip("submitit", reason="the slurm extra")
    from epochal import run as fit
    from epochal.sweep import ClusterLaunch, start_sweep
    from epochal.tasks.toy import ToyTask
    from tests.conftest import quiet

    write(tmp_path / "slowtoy.py", SLOW_TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), SRC, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    settings = {"train.max_epochs": 1, "task.n_train": 320 * 8, "train.batch_size": 8}
    spec = write(tmp_path / "spec.toml", 'task = "slowtoy:SlowToy"\nmetric = "eval_mse"\n[space]\n"optim.lr" = [3e-3]\n'
                 "[set]\n" + "".join(f'"{k}" = {v}\n' for k, v in settings.items()))
    # Each job gets 30 s and the signal 15 s before its end: 15 s of imports and training (16 s to train), then
    # a requeue.
    launch = ClusterLaunch(time_minutes=0.5, signal_delay_s=15, cluster="local")
    code = start_sweep(spec, tmp_path, "array", workers=1, cluster=launch, echo=lambda m: None)
    sweep_dir = tmp_path / "array"
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert code == 0 and summary["state"] == "finished" and summary["counts"]["completed"] == 1, summary
    (run_dir,) = run_folders(sweep_dir).values()
    starts = [s["from_step"] for s in trial_record(run_dir)["starts"]]
    # Interrupted at least once, and each job went on from the step the previous one saved.
    assert len(starts) >= 2 and starts[0] == 0 and starts == sorted(set(starts)), starts
    interrupted = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in interrupted if "train_loss" in e and "epoch_end" not in e]
    assert steps == sorted(set(steps)), "no step trained twice"
    # The same numbers as the run never interrupted.
    config = tomllib.loads((run_dir / "config.toml").read_text())
    config["task"]["name"] = "toy"  # the same numbers without the sleep
    reference = fit(ToyTask(), config, out_dir=tmp_path, experiment_id="ref", log=quiet)
    assert result(run_dir)["steps"] == 320
    assert result(run_dir)["curves"]["train_loss"] == reference.result["curves"]["train_loss"]


@pytest.mark.parametrize("args, fragment", [
    (["--partition", "gpu"], "--partition is a SLURM job setting; allowed only with --launcher slurm"),
    (["--time", "1:00:00", "--gpus-per-worker", "1"], "--gpus-per-worker and --time are SLURM job settings"),
    (["--launcher", "slurm", "--time", "4h"], "--time '4h': not a time limit; allowed: MINUTES, HH:MM:SS"),
    (["--launcher", "slurm", "--time", "1:75:00"], "--time '1:75:00': not a time limit"),
])
def test_slurm_settings_are_checked_in_one_line(tmp_path, capsys, args, fragment):
    spec = write(tmp_path / "spec.toml", 'task = "toy"\nmetric = "eval_mse"\n[space]\n"optim.lr" = [1e-3]')
    code, _, err = cli(capsys, "sweep", spec, "--out", tmp_path, *args)
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == [spec]


def test_slurm_launcher_without_submitit_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)
    spec = write(tmp_path / "spec.toml", 'task = "toy"\nmetric = "eval_mse"\n[space]\n"optim.lr" = [1e-3]')
    code, _, err = cli(capsys, "sweep", spec, "--out", tmp_path, "--launcher", "slurm")
    assert code == 1 and err.strip() == ("epochal: error: --launcher slurm needs submitit, which is not installed; "
                                         "pip install 'epochal[slurm]'")


def test_slurm_time_limits_read_as_slurm_reads_them():
    from epochal.sweep.launcher import parse_time

    assert [parse_time(t) for t in ("90", "4:00:00", "0:00:30", "1-02:00:00")] == [90, 240, 0.5, 26 * 60]
