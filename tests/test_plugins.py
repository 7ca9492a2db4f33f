"""Your own task on the command line: by import path, or advertised through the epochal.tasks entry points."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = '''
from epochal.tasks.toy import ToyTask


class TinyTask(ToyTask):
    name = "tiny"
    summary = "a plugin's task"
'''


def cli(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path])}
    return subprocess.run([sys.executable, "-m", "epochal.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


@pytest.fixture
def plugin(tmp_path):
    site = tmp_path / "site"
    (site / "plugin_pkg").mkdir(parents=True)
    (site / "plugin_pkg" / "__init__.py").write_text("")
    (site / "plugin_pkg" / "tiny.py").write_text(PLUGIN)
    info = site / "plugin_pkg-0.1.dist-info"  # what an installed package leaves for importlib.metadata
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[epochal.tasks]\ntiny = plugin_pkg.tiny:TinyTask\n")
    return tmp_path


SMALL = ["--epochs", "2", "--set", "task.n_train=64", "--no-progress"]


@pytest.mark.slow
def test_a_task_by_import_path_runs_and_resumes_from_the_cli(plugin):
    out = plugin / "results"
    done = cli(plugin, "run", "plugin_pkg.tiny:TinyTask", *SMALL, "--out", str(out), "--id", "p")
    assert done.returncode == 0, done.stderr
    config = (out / "p" / "config.toml").read_text()
    assert 'name = "plugin_pkg.tiny:TinyTask"' in config  # what finds the class again in a new process
    again = cli(plugin, "resume", str(out / "p"), "--no-progress")
    assert again.returncode == 0 and "completed" in again.stdout, again.stderr  # the class was found again


@pytest.mark.slow
def test_an_entry_point_task_is_listed_and_runs_by_name(plugin):
    listed = cli(plugin, "tasks")
    assert "tiny" in listed.stdout and "plugin_pkg.tiny:TinyTask" in listed.stdout
    done = cli(plugin, "run", "tiny", *SMALL, "--out", str(plugin / "results"), "--id", "t")
    assert done.returncode == 0, done.stderr
    assert json.loads((plugin / "results" / "t" / "result.json").read_text())["status"] == "completed"


def test_a_bad_import_path_is_one_line(plugin):
    done = cli(plugin, "run", "plugin_pkg.tiny:Nope", "--out", str(plugin / "results"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "cannot import 'plugin_pkg.tiny:Nope'" in done.stderr
    assert not (plugin / "results").exists()


def test_a_run_config_reruns_in_a_new_folder(tmp_path):
    from epochal import run

    first = run("toy", overrides={"train.max_epochs": 1, "task.n_train": 64, "train.progress": False},
                out_dir=tmp_path, experiment_id="first", log=lambda _: None)
    again = run("toy", first.run_dir / "config.toml", out_dir=tmp_path, log=lambda _: None)
    assert again.run_dir != first.run_dir and again.run_dir.parent == Path(tmp_path)
    assert again.result["curves"] == first.result["curves"]  # the same settings, so the same run
