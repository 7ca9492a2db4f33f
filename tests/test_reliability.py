"""Issue 19: no bad input or fault may lose data, escape the output folder or end in a traceback.

One test per class of failure, parametrised over examples. Each bad input asserts the
exit code, one stderr line naming what is wrong and what is allowed, no traceback,
and that every file outside the run folder, and every earlier checkpoint, is unchanged
(the whole tree is hashed before and after).
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from epochal import io
from epochal import run as fit
from epochal.audit import first_difference, weights_hash
from epochal.callbacks.base import Callback
from epochal.checkpoint import CheckpointStore
from epochal.cli import main
from epochal.tasks.toy import ToyTask
from tests.conftest import quiet

# 3 epochs of 4 steps; mid-epoch checkpoints every 3 steps; dropout puts the RNG on the resume path.
SETTINGS = {"train.max_epochs": 3, "train.progress": False, "task.n_train": 256, "task.n_eval": 64,
            "task.dropout": 0.2, "checkpoint.every_steps": 3, "train.log_every": 1}
FLAGS = [arg for key, value in SETTINGS.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


# ----------------------------------------------------------------------------- helpers
def tree(root: Path) -> dict[str, str]:
    """Every file (by content hash), folder and link under ``root``."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "folder"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err: str, *fragments: str) -> None:
    assert err.count("\n") == 1 and err.startswith("epochal: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


class PreemptAt(Callback):
    """SIGTERM during step ``step``, as a scheduler would send it: the loop saves and stops with status preempted."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, run):
        if run.state.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class Crash(Exception):
    """Stands for a kill: the process is gone, its files stay as they were."""


class CrashAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, fit_):
        if fit_.state.step == self.step:
            raise Crash


class CrashInBuild(ToyTask):
    """The toy task, killed while it builds (where corpus generation or a DFA build takes minutes)."""

    def build(self, cfg, run):
        assert (run.dir / "config.toml").is_file()  # written before anything slow
        raise Crash


def run_fit(out, run_id, task="toy", **kwargs):
    settings = {**SETTINGS, **kwargs.pop("settings", {})}
    return fit(task, overrides=settings, out_dir=out, experiment_id=run_id, log=quiet, **kwargs)


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert ra["status"] == rb["status"] == "completed"
    assert first_difference(ra["curves"]["train_loss"], rb["curves"]["train_loss"]) is None
    assert ra["curves"] == rb["curves"] and weights_hash(a) == weights_hash(b)
    steps = [h["step"] for h in map(json.loads, (a / "history.jsonl").read_text().splitlines())
             if "epoch_end" not in h and "event" not in h]
    assert steps == list(range(1, ra["steps"] + 1))  # each step once, none lost or replayed twice


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A world to damage: an unrelated folder, a completed run, a preempted one, a user folder, a link."""
    root = tmp_path_factory.mktemp("template")
    (root / "victim" / "data").mkdir(parents=True)
    (root / "victim" / "notes.txt").write_text("keep me\n")
    (root / "victim" / "data" / "a.bin").write_bytes(os.urandom(64))
    results = root / "results"
    assert run_fit(results, "straight").status == "completed"
    assert run_fit(results, "preempted", callbacks=[PreemptAt(6)]).status == "preempted"
    (results / "notarun").mkdir()
    (results / "notarun" / "thesis.tex").write_text("\\documentclass{article}\n")
    (results / "link").symlink_to(root / "victim")
    return root


@pytest.fixture
def world(template, tmp_path):
    """A fresh copy of the template for one test (links copied as links)."""
    root = tmp_path / "world"
    shutil.copytree(template, root, symlinks=True)
    (root / "results" / "link").unlink()
    (root / "results" / "link").symlink_to(root / "victim")
    return root


# ----------------------------------------------------- ids and --overwrite: data loss, escaping
BAD_IDS = ["../x", "../victim", "a/b", "", ".", "..", ".hidden", "a b", "x" * 300, "tab\there", "ü"]


@pytest.mark.parametrize("run_id", BAD_IDS + ["/ABSOLUTE"], ids=lambda s: repr(s[:12]))
@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--resume", "auto"]], ids=["", "overwrite", "resume"])
def test_an_unsafe_id_is_refused_before_anything_is_written(capsys, world, run_id, extra):
    run_id = str(world / "victim") if run_id == "/ABSOLUTE" else run_id  # an absolute --id once emptied a folder
    before = tree(world)
    code, _, err = cli(capsys, "run", "toy", "--out", world / "results", "--id", run_id, *extra, *FLAGS)
    assert code == 2
    assert_one_line(err, "experiment_id (--id)", "allowed: 1 to 100 characters from A-Z a-z 0-9 . _ -")
    assert tree(world) == before


@pytest.mark.parametrize("where", ["--set", "file"])
@pytest.mark.parametrize("key, value", [("group", "../escape"), ("group", "a/b"), ("group", ".."),
                                        ("experiment_id", "../escape"), ("experiment_id", "/tmp")])
def test_an_unsafe_group_or_id_from_a_file_or_set_is_refused(capsys, world, tmp_path, key, value, where):
    if where == "file":
        config = tmp_path / "bad.toml"
        config.write_text(f"{key} = {json.dumps(value)}\n")
        args = ["--config", config]
    else:
        args = ["--set", f"{key}={json.dumps(value)}"]
    before = tree(world)
    code, _, err = cli(capsys, "run", "toy", "--out", world / "results", *args, *FLAGS)
    assert code == 2
    assert_one_line(err, "allowed: 1 to 100 characters")
    assert tree(world) == before


def test_an_id_that_is_not_utf8_is_one_line_and_writes_nothing(world):
    before = tree(world)
    proc = subprocess.run([sys.executable, "-m", "epochal.cli", "run", "toy", "--out", str(world / "results"),
                           "--id", os.fsdecode(b"bad\xff"), "--no-progress"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stderr == ("epochal: error: experiment_id (--id): 'bad\\udcff' is not a valid name; allowed: "
                           "1 to 100 characters from A-Z a-z 0-9 . _ -, not starting with '.'\n")
    assert tree(world) == before


@pytest.mark.parametrize("target, fragment", [
    ("notarun", "not an epochal run folder"),  # a user's folder inside --out
    ("link", "a symbolic link"),  # a link from inside --out to a folder outside it
])
@pytest.mark.parametrize("extra", [["--overwrite"], ["--resume", "auto"]])
def test_overwrite_and_restart_only_ever_empty_an_epochal_run_folder(capsys, world, target, fragment, extra):
    before = tree(world)
    code, _, err = cli(capsys, "run", "toy", "--out", world / "results", "--id", target, *extra, *FLAGS)
    assert code == 1
    assert_one_line(err, fragment, "allowed")
    assert tree(world) == before


@given(st.text(max_size=120))
def test_any_accepted_name_is_one_folder_directly_inside_out(text):
    from epochal.errors import ConfigError
    from epochal.run_folder import check_name

    try:
        check_name("id", text)
    except ConfigError as err:
        assert str(err).count("\n") == 0 and "allowed: 1 to 100 characters" in str(err)
        return
    out = Path("/out")
    assert (out / text).parent == out and (out / text).name == text and not text.startswith(".")
    assert len(text.encode()) <= 100


def test_default_ids_are_unique_within_one_second(tmp_path):
    from epochal.run_folder import check_name, default_run_id

    ids = {default_run_id("toy") for _ in range(200)}
    assert len(ids) == 200
    for run_id in list(ids)[:10]:
        check_name("id", run_id)


# --------------------------------------------------------------- manifest: rebuild or refuse
def drop_step(entries):
    del entries[0]["step"]
    return {"checkpoints": entries}


def escape(entries):
    entries[0]["file"] = "../../../victim/notes.txt"  # retention must never delete through this
    return {"checkpoints": entries}


BAD_MANIFESTS = {
    "missing": None,
    "empty list": b"[]",
    "entry without step": drop_step,
    "not JSON": b'{"checkpoints": [',
    "not UTF-8": b"\xff\xfe\x00",
    "file outside the folder": escape,
    "listed twice": lambda entries: {"checkpoints": entries + entries[:1]},
}


@pytest.mark.parametrize("damage", BAD_MANIFESTS, ids=list(BAD_MANIFESTS))
def test_a_bad_manifest_is_rebuilt_from_verified_files_and_the_resume_is_exact(capsys, world, damage):
    run_dir = world / "results" / "preempted"
    manifest = run_dir / "checkpoints" / "manifest.json"
    change = BAD_MANIFESTS[damage]
    if change is None:
        manifest.unlink()
    elif isinstance(change, bytes):
        manifest.write_bytes(change)
    else:
        manifest.write_text(json.dumps(change(json.loads(manifest.read_text())["checkpoints"])))
    victim = tree(world / "victim")
    with pytest.warns(UserWarning, match="rebuilt from 5 verified checkpoint file"):
        code, out, err = cli(capsys, "run", "toy", "--out", world / "results", "--id", "preempted",
                             "--resume", "auto", *FLAGS)
    assert code == 0, err
    assert "resuming from checkpoint_step_00000006.pt" in out or "resuming from last.pt" in out
    assert_same_run(run_dir, world / "results" / "straight")
    assert tree(world / "victim") == victim


def test_a_resume_with_no_verifiable_checkpoint_is_refused_and_deletes_nothing(capsys, world):
    run_dir = world / "results" / "preempted"
    (run_dir / "checkpoints" / "manifest.json").unlink()
    for path in (run_dir / "checkpoints").glob("*.pt"):
        path.write_bytes(path.read_bytes()[:100])  # truncated by a crash
    before = tree(world)
    with pytest.warns(UserWarning, match="no checkpoint file verifies"):
        code, _, err = cli(capsys, "run", "toy", "--out", world / "results", "--id", "preempted",
                           "--resume", "auto", *FLAGS)
    assert code == 1
    assert_one_line(err, "no valid checkpoint to resume from", "left as they are")
    assert tree(world) == before


@pytest.mark.parametrize("damage", ["deleted", "unreadable"])
def test_a_resume_with_every_listed_checkpoint_gone_refuses_and_restart_starts_over(capsys, world, damage):
    run_dir = world / "results" / "preempted"
    for path in (run_dir / "checkpoints").glob("*.pt"):
        path.unlink() if damage == "deleted" else path.write_bytes(path.read_bytes()[:100])
    before = tree(world)
    code, _, err = cli(capsys, "resume", run_dir)
    assert code == 1
    assert_one_line(err, str(run_dir), f"epochal resume {run_dir} --restart")
    if damage == "deleted":  # the files it names, and the same refusal from `run --resume auto`
        assert "manifest lists 5 checkpoint(s) (checkpoint_step_00000003.pt, " in err and "none of them is left" in err
        code, _, err = cli(capsys, "run", "toy", "--out", world / "results", "--id", "preempted", "--resume", "auto",
                           *FLAGS)
        assert code == 1 and "none of them is left" in err
    assert tree(world) == before  # the earlier attempt's history and result are untouched
    code, out, err = cli(capsys, "resume", run_dir, "--restart")
    assert code == 0, err
    assert_same_run(run_dir, world / "results" / "straight")  # from step 0, as its config says


def test_retention_deletes_only_files_the_manifest_lists(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=1)
    (tmp_path / "checkpoint_epoch_0000.pt").write_bytes(b"a user's file, or one written before a crash")
    from epochal.checkpoint import serialize

    for step in (1, 2, 3):
        store.write(f"checkpoint_step_{step:08d}.pt", serialize({"x": step}), {"kind": "step", "step": step})
    names = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert names == ["checkpoint_epoch_0000.pt", "checkpoint_step_00000003.pt"]


# --------------------------------------------------------------------------------- --force
def history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def step_lrs(run_dir):
    return {h["step"]: h["lr"] for h in history(run_dir) if "lr" in h}


def test_force_refuses_a_setting_it_cannot_apply_and_writes_nothing(capsys, world):
    before = tree(world)
    code, _, err = cli(capsys, "run", "toy", "--out", world / "results", "--id", "preempted", "--resume", "auto",
                       "--force", *FLAGS, "--set", "task.hidden=32")
    assert code == 2
    assert_one_line(err, "task.hidden: cannot change when resuming, even with --force (64 -> 32)",
                    "allowed with --force: optim.lr")
    assert tree(world) == before


def test_force_applies_a_new_learning_rate_and_length_and_records_them(capsys, world):
    results = world / "results"
    before = step_lrs(results / "preempted")
    code, out, err = cli(capsys, "run", "toy", "--out", results, "--id", "preempted", "--resume", "auto",
                         "--force", *FLAGS, "--lr", "0.001", "--epochs", "4")
    assert code == 0, err
    assert "--force at step 6: optim.lr = 0.003 up to step 6, 0.001 from step 7" in out
    assert run_fit(results, "new", settings={"optim.lr": 0.001, "train.max_epochs": 4}).status == "completed"
    lrs, fresh = step_lrs(results / "preempted"), step_lrs(results / "new")
    assert sorted(lrs) == list(range(1, 17))
    assert all(lrs[s] == before[s] for s in range(1, 7))  # what ran before the change stays on record
    assert all(lrs[s] == fresh[s] for s in range(7, 17))  # from the next step: as if started with the new settings
    old = step_lrs(results / "straight")  # the old settings, uninterrupted: what ignoring --force would give
    assert all(lrs[s] != old[s] for s in range(7, 13))
    change = [h for h in history(results / "preempted") if h.get("event") == "config_change"]
    assert change == [{"event": "config_change", "step": 6, "applies_from_step": 7,
                       "changes": {"optim.lr": {"from": 0.003, "to": 0.001},
                                   "train.max_epochs": {"from": 3, "to": 4}}}]
    text = (results / "preempted" / "config.toml").read_text()
    config = tomllib.loads(text)
    assert config["optim"]["lr"] == 0.001 and config["train"]["max_epochs"] == 4
    assert text.startswith("# --force at step 6: optim.lr = 0.003 up to step 6, 0.001 from step 7\n")


def test_without_force_a_changed_setting_is_refused_and_writes_nothing(capsys, world):
    before = tree(world)
    code, _, err = cli(capsys, "run", "toy", "--out", world / "results", "--id", "preempted", "--resume", "auto",
                       *FLAGS, "--lr", "0.001")
    assert code == 2
    assert_one_line(err, "optim.lr: 0.003 -> 0.001", "use --force")
    assert tree(world) == before


# -------------------------------------------- a run killed before its first checkpoint resumes
@pytest.mark.parametrize("killed", ["during task build", "at step 2"])
def test_a_run_killed_before_its_first_checkpoint_restarts_from_step_0_identically(capsys, world, killed):
    results = world / "results"
    with pytest.raises(Crash):
        if killed == "during task build":
            run_fit(results, "early", task=CrashInBuild())
        else:
            run_fit(results, "early", callbacks=[CrashAt(2)])
    assert tomllib.loads((results / "early" / "config.toml").read_text())["task"]["name"] == "toy"
    assert not list((results / "early").glob("checkpoints/*.pt"))
    code, out, err = cli(capsys, "resume", results / "early", "--no-progress")
    assert code == 0, err
    assert_same_run(results / "early", results / "straight")


# ---------------------------------------------------- clear error instead of a traceback (config)
BAD_CONFIGS = {  # case: (make the file, what the error says, whether it names the file or a key in it)
    "a folder": (lambda p: p.mkdir(), "a folder, not a file", True),
    "not UTF-8": (lambda p: p.write_bytes(b"[train]\nmax_epochs = 2 # \xff\n"), "not UTF-8 text", True),
    "not TOML": (lambda p: p.write_text("[train\n"), "not valid TOML", True),
    "a scalar for a section": (lambda p: p.write_text("train = 5\n"), "train: expected a table of settings", False),
    "a scalar for task": (lambda p: p.write_text("task = 5\n"), "task: expected a table or a task name", False),
}


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=list(BAD_CONFIGS))
def test_a_bad_config_file_is_one_line(capsys, world, tmp_path, case):
    make, fragment, names_file = BAD_CONFIGS[case]
    path = tmp_path / "bad.toml"
    make(path)
    before = tree(world)
    code, _, err = cli(capsys, "run", "toy", "--out", world / "results", "--id", "new", "--config", path,
                       "--set", "train.max_epochs=2", "--set", "task.noise=0.1")
    assert code == 2
    assert_one_line(err, f"--config {path}: " if names_file else "", fragment, "allowed")
    assert tree(world) == before


@pytest.mark.parametrize("case", ["a folder", "not UTF-8", "not TOML", "a scalar for a section"])
def test_a_damaged_config_toml_of_a_run_is_named_on_resume(capsys, world, case):
    make, fragment, names_file = BAD_CONFIGS[case]
    config = world / "results" / "preempted" / "config.toml"
    config.unlink()
    make(config)
    before = tree(world)
    code, _, err = cli(capsys, "resume", world / "results" / "preempted")
    assert code == 2
    assert_one_line(err, f"{config}: " if names_file else "", fragment, "allowed")
    assert tree(world) == before


NON_FINITE = [
    (["--lr", "nan"], "optim.lr: nan is not a finite number"),
    (["--lr", "inf"], "optim.lr: inf is not a finite number"),
    (["--set", "optim.lr=nan"], "optim.lr: nan"),
    (["--set", "optim.weight_decay=inf"], "optim.weight_decay: inf"),
    (["--set", "optim.eps=-inf"], "optim.eps: -inf"),
    (["--set", "optim.betas=[0.9, nan]"], "optim.betas[1]: nan"),
    (["--set", "task.noise=nan"], "task.noise: nan"),
    (["--set", "train.grad_clip=inf"], "train.grad_clip: inf"),
    (["--set", "ema.decay=nan"], "ema.decay: nan"),
    (["--set", "gate.below={eval_mse = nan}"], "gate.below.eval_mse: nan"),
]
SECTIONS = [
    (["--set", "train=5"], "train: expected a table of settings, got 5; allowed: a [train] table"),
    (["--set", "train.max_epochs.foo=1"], "train.max_epochs.foo: train.max_epochs is a setting, not a section"),
    (["--set", "train.max_epochs.foo=1", "--epochs", "2"], "train.max_epochs.foo: train.max_epochs is a setting"),
    (["--epochs", "2", "--set", "train.max_epochs.foo=1"], "train.max_epochs.foo: train.max_epochs is a setting"),
    (["--set", "train.max_epochs=2", "--set", "train.max_epochs.foo=1"], "train.max_epochs is a setting"),
    (["--set", "train..max_epochs=2"], "empty part in a dotted key"),
]


@pytest.mark.parametrize("args, fragment", NON_FINITE + SECTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_bad_setting_is_one_line_naming_the_key(capsys, world, args, fragment):
    before = tree(world)
    code, _, err = cli(capsys, "run", "toy", "--out", world / "results", "--id", "new", *args)
    assert code == 2
    assert_one_line(err, fragment, "allowed")
    assert tree(world) == before


RESULTS = {
    "{}": (b"{}", "missing key 'task'"),
    "[]": (b"[]", "expected a JSON object, got list"),
    "status is a number": (None, "'status' is int, expected str"),
    "curves is a list": (None, "'curves' is list, expected object"),
    "a curve is a number": (None, "curves.train_loss is float, expected a list"),
    "not JSON": (b'{"task": ', "not valid JSON"),
    "not UTF-8": (b'{"task": "\xff"}', "not UTF-8 text"),
}


@pytest.mark.parametrize("case", RESULTS, ids=list(RESULTS))
def test_show_names_a_bad_result_json(capsys, world, case):
    path = world / "results" / "straight" / "result.json"
    content, fragment = RESULTS[case]
    if content is None:
        data = json.loads(path.read_text())
        data.update({"status is a number": {"status": 3}, "curves is a list": {"curves": []},
                     "a curve is a number": {"curves": {"train_loss": 0.5}}}[case])
        content = json.dumps(data).encode()
    path.write_bytes(content)
    before = tree(world)
    code, _, err = cli(capsys, "show", path.parent)
    assert code == 1
    assert_one_line(err, str(path), fragment, "allowed: a result.json written by epochal")
    assert tree(world) == before


def test_show_of_a_result_json_that_is_a_folder_is_one_line(capsys, world):
    path = world / "results" / "straight" / "result.json"
    path.unlink()
    path.mkdir()
    code, _, err = cli(capsys, "show", path.parent)
    assert code == 1
    assert_one_line(err, str(path), "cannot read")


# ------------------------------------------------------------------------------- disk full
def no_space(monkeypatch, name: str, after: int = 0):
    """Every write to a file called ``name`` after the first ``after`` fails as on a full disk."""
    real, seen = io._write, []

    def failing(path, f, data):
        if Path(path).name == name:
            seen.append(path)
            if len(seen) > after:
                f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, f, data)

    monkeypatch.setattr(io, "_write", failing)


STARTUP = [(".lock", 0), ("config.toml", 0), ("env.json", 0)]
LATER = [("checkpoint_epoch_0002.pt", 0), ("manifest.json", 3), ("result.json", 1), ("model.safetensors", 0)]


@pytest.mark.parametrize("name, after", STARTUP + LATER, ids=[f"{n}#{a + 1}" for n, a in STARTUP + LATER])
def test_disk_full_at_each_write_point_is_one_line_and_keeps_earlier_checkpoints(capsys, world, monkeypatch,
                                                                               name, after):
    results = world / "results"
    outside = {k: v for k, v in tree(world).items() if not k.startswith("results/new")}
    no_space(monkeypatch, name, after)
    code, _, err = cli(capsys, "run", "toy", "--out", results, "--id", "new", *FLAGS)
    monkeypatch.undo()
    assert code == 1
    assert_one_line(err, name, "No space left on device")
    assert {k: v for k, v in tree(world).items() if not k.startswith("results/new")} == outside
    if (name, after) in STARTUP[:2]:
        assert not (results / "new").exists()  # it failed before writing anything: nothing left behind
        return
    assert not list((results / "new").rglob(f"*{io.TEMP_MARK}*"))
    store = CheckpointStore(results / "new" / "checkpoints", 3)
    for entry in store.manifest():  # every checkpoint the manifest lists is complete
        store.load(entry["file"])
    if name != "env.json":
        assert store.manifest()
    # once there is room again, the run continues from what it kept and ends as if nothing happened
    code, _, err = cli(capsys, "run", "toy", "--out", results, "--id", "new", "--resume", "auto", *FLAGS)
    assert code == 0, err
    assert_same_run(results / "new", results / "straight")


def test_disk_full_on_a_real_small_file_system_is_one_line(tmp_path):
    """End to end: a size-limited tmpfs fills up during training (CI runs as root and can mount it)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        proc = subprocess.run([sys.executable, "-m", "epochal.cli", "run", "toy", "--out", str(mount), "--id", "full",
                               "--no-progress", "--epochs", "50", "--set", "task.hidden=512", "--set", "task.n_train=128",
                               "--set", "checkpoint.every_steps=1", "--set", "checkpoint.keep_last=4"],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        assert proc.returncode == 1, proc.stderr
        assert_one_line(proc.stderr, "No space left on device")
        run_dir = mount / "full"
        assert not list(run_dir.rglob(f"*{io.TEMP_MARK}*"))
        store = CheckpointStore(run_dir / "checkpoints", 4)
        entries = store.manifest()
        assert entries
        for entry in entries:
            store.load(entry["file"])
    finally:
        subprocess.run(["umount", str(mount)], check=True)
