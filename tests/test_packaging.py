"""Packaging: fast CLI start, lazy imports, ranges plus a lock, the commit of the code that ran,
optional matplotlib, and a wheel that installs and runs outside the repository."""

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import epochal
from epochal import provenance
from epochal._version import __version__

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, **kwargs)


# --- a fast command line -------------------------------------------------------------------

HEAVY = "('torch', 'numpy', 'matplotlib', 'epochal.loop', 'epochal.tasks.toy', 'epochal.tasks.flow')"


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["tasks"], ["recipe", "walks"], ["run", "--help"]])
def test_light_commands_import_neither_torch_nor_a_task(argv):
    out = python(f"""
import contextlib, io, sys
from epochal.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main({argv!r})
    except SystemExit:
        pass
print([m for m in {HEAVY} if m in sys.modules])
""").stdout
    assert out.strip() == "[]"


def test_version_from_the_console_script_and_python_m():
    for command in ([sys.executable, "-m", "epochal", "--version"], [sys.executable, "-m", "epochal.cli", "--version"]):
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"epochal {__version__}"


def test_the_package_version_is_the_one_in_version_py():
    assert epochal.__version__ == __version__ == "0.1.0"
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"] == "epochal._version.__version__"


def test_import_epochal_is_lazy_and_the_public_names_resolve():
    # provenance used to `import epochal` for the version, whose __init__ imported the loop, which imports provenance.
    out = python("""
import sys, epochal
before = 'torch' in sys.modules
import epochal.provenance
cycle = 'epochal.loop' in sys.modules
from epochal import Task, fit
import epochal.script, epochal.tasks
print(before, cycle, fit is epochal.script.fit, Task is epochal.tasks.Task, sorted(set(epochal.__all__) - set(dir(epochal))))
""").stdout
    assert out.split() == ["False", "False", "True", "True", "[]"]
    for name in epochal.__all__:
        assert getattr(epochal, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        epochal.nope


# --- dependency ranges and the lock ----------------------------------------------------------

def lock() -> dict[str, Version]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {pin.name.lower().replace("_", "-"): Version(next(iter(pin.specifier)).version) for pin in pins}


def declared() -> list[Requirement]:
    extras = PYPROJECT["project"]["optional-dependencies"].values()
    requirements = [Requirement(text) for text in [*PYPROJECT["project"]["dependencies"], *sum(extras, [])]]
    return [r for r in requirements if r.name != "epochal"]


@pytest.mark.parametrize("requirement", declared(), ids=str)
def test_each_dependency_is_a_range_below_the_next_major_and_locked_inside_it(requirement):
    bounds = {spec.operator: Version(spec.version) for spec in requirement.specifier}
    assert ">=" in bounds, f"{requirement}: no lowest tested version"
    locked = lock()[requirement.name.lower().replace("_", "-")]
    assert locked in requirement.specifier, f"constraints.txt has {locked}, outside {requirement}"
    if requirement.name != "setuptools":  # the build backend: any version new enough builds the same wheel
        assert bounds.get("<") == Version(f"{bounds['>='].major + 1}"), f"{requirement}: expected <next major"


def test_every_install_in_the_makefile_takes_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "PIP := $(BIN)/python -m pip install -q -c constraints.txt" in makefile
    assert "pip install" not in makefile.replace("PIP := $(BIN)/python -m pip install", "")


def test_all_holds_every_user_facing_extra():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["all"] == [f"epochal[{','.join(sorted(set(extras) - {'all', 'dev', 'bench'}))}]"]
    assert not any(r.startswith("matplotlib") for r in PYPROJECT["project"]["dependencies"])


def test_no_command_or_path_points_at_the_old_configs_folder():
    texts = [REPO / "README.md", REPO / "Makefile", REPO / ".ci" / "run", *REPO.glob("benchmarks/*.py"),
             *REPO.glob("src/epochal/recipes/*.toml"), REPO / "src/epochal/cli.py",
             *(p for p in REPO.glob("tests/**/*.py") if p.name != Path(__file__).name)]
    stale = [str(p.relative_to(REPO)) for p in texts if re.search(r"\bconfigs/", p.read_text())]
    assert not stale, f"still pointing at configs/ (recipes live in src/epochal/recipes): {stale}"


# --- the commit of the code that ran ---------------------------------------------------------

def git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "mod.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def test_a_checkout_gives_its_commit_and_a_hash_of_its_diff(checkout):
    clean = provenance.git_info(checkout / "pkg")
    assert clean == {"commit": git(checkout, "rev-parse", "HEAD"), "dirty": False, "diff_sha256": None,
                     "source": "checkout"}
    (checkout / "pkg" / "mod.py").write_text("x = 2\n")
    dirty = provenance.git_info(checkout / "pkg")
    assert dirty["dirty"] is True and len(dirty["diff_sha256"]) == 64 and dirty["commit"] == clean["commit"]


def test_an_untracked_install_inside_a_repository_uses_its_build_stamp(checkout):
    site = checkout / ".venv" / "epochal"  # a virtualenv inside someone's project, ignored by git
    site.mkdir(parents=True)
    (checkout / ".gitignore").write_text(".venv/\n")
    stamp = {"commit": "f" * 40, "dirty": False, "diff_sha256": None}
    (site / provenance.BUILD_INFO).write_text(json.dumps(stamp))
    assert provenance.git_info(site) == {**stamp, "source": "build stamp"}


def test_no_checkout_and_no_stamp_is_unknown_with_the_reason(tmp_path):
    info = provenance.git_info(tmp_path)
    assert info["commit"] == "unknown" and info["source"] is None
    assert "git finds no checkout" in info["reason"] and "no build stamp" in info["reason"]
    (tmp_path / provenance.BUILD_INFO).write_text(json.dumps({"commit": None, "reason": "built from a tarball"}))
    assert "built from a tarball" in provenance.git_info(tmp_path)["reason"]


def test_this_checkout_records_its_own_commit_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working directory is not a repository
    info = provenance.git_info()
    assert info["source"] == "checkout" and info["commit"] == git(REPO, "rev-parse", "HEAD")


# --- matplotlib is optional ------------------------------------------------------------------

def test_without_matplotlib_the_flow_plot_is_skipped_with_one_warning_line(tmp_path, monkeypatch, capsys):
    from epochal.tasks.flow.plot import plot_samples

    points = np.random.default_rng(0).normal(size=(50, 2))
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` of a None entry raises ImportError
    assert plot_samples(points, points, tmp_path / "samples.png") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epochal[plots]" in err and "samples.png" in err
    assert not (tmp_path / "samples.png").exists()
    monkeypatch.undo()
    assert plot_samples(points, points, tmp_path / "samples.png").stat().st_size > 1000


# --- the wheel, installed outside the repository ----------------------------------------------

def run(command: list, cwd: Path, code: int = 0, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    assert proc.returncode == code, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def fresh_venv(path: Path, cwd: Path) -> Path:
    run([sys.executable, "-m", "venv", "--without-pip", path], cwd)
    return path / "bin" / "python"


def share_this_environment(venv_python: Path, cwd: Path) -> None:
    """Let a fresh venv import this environment's packages (torch...) instead of reinstalling them.

    A plain path line: the directory is appended to sys.path without running its own .pth
    files, so an editable install of epochal there stays invisible.
    """
    site = Path(run([venv_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_path(kind) for kind in ("purelib", "platlib"))
    (site / "zz_shared_test_environment.pth").write_text("".join(f"{p}\n" for p in ours))


def pip_install(venv_python: Path, cwd: Path, *args) -> None:
    # --ignore-installed: never touch (uninstall) anything in the shared environment.
    run([sys.executable, "-m", "pip", "--python", venv_python, "install", "-q", "--no-deps", "--ignore-installed",
         *args], cwd)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """sdist then wheel from it, as `python -m build` does: the wheel is built where there is no git."""
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, REPO], REPO)
    return next(dist.glob("epochal-*.whl"))


def stamped_commit(wheel_path: Path) -> dict:
    import zipfile

    with zipfile.ZipFile(wheel_path) as archive:
        return json.loads(archive.read("epochal/_build_info.json"))


@pytest.mark.slow
def test_the_wheel_runs_toy_and_a_flow_recipe_by_name_outside_the_repo(wheel, tmp_path):
    head = git(REPO, "rev-parse", "HEAD")
    assert stamped_commit(wheel)["commit"] == head
    work = tmp_path / "elsewhere"
    work.mkdir()
    venv = fresh_venv(tmp_path / "venv", work)
    pip_install(venv, work, wheel)
    share_this_environment(venv, work)
    epochal_bin = venv.parent / "epochal"

    where = run([venv, "-c", "import epochal.recipes; print(epochal.recipes.__file__)"], work).stdout
    assert where.startswith(str(tmp_path / "venv"))
    assert run([epochal_bin, "--version"], work).stdout.strip() == f"epochal {__version__}"
    assert "flow-moons" in run([epochal_bin, "tasks"], work).stdout
    assert run([epochal_bin, "recipe", "flow-moons"], work).stdout == (REPO / "src/epochal/recipes/flow-moons.toml").read_text()

    run([epochal_bin, "run", "toy", "--epochs", "2", "--no-progress", "--out", "results", "--id", "toy"], work)
    small = ["task.n_samples=2000", "task.hidden=32", "task.depth=1", "task.swd_directions=32", "task.ode_steps=4",
             "schedule.warmup_steps=2"]
    # Two epochs cannot meet the recipe's quality goal (its gate): the run ends gate_failed, exit code 3.
    run([epochal_bin, "run", "flow", "--config", "flow-moons", "--epochs", "2", "--no-progress", "--out", "results",
         "--id", "moons", *(arg for s in small for arg in ("--set", s))], work, code=3)
    for run_dir, status in ((work / "results" / "toy", "completed"),
                            (work / "results" / "flow-recipes" / "moons", "gate_failed")):
        result = json.loads((run_dir / "result.json").read_text())
        env = json.loads((run_dir / "env.json").read_text())
        assert result["status"] == status and result["epochs"] == 2, run_dir
        assert env["git"]["commit"] == head and env["git"]["source"] == "build stamp", env["git"]
    assert (work / "results" / "flow-recipes" / "moons" / "samples.png").exists()


OTHER_NUMPY = "2.3.5"  # the lowest numpy of the range; constraints.txt locks 2.4


@pytest.mark.slow
def test_the_wheel_installs_and_runs_next_to_another_numpy(wheel, tmp_path):
    """A real install from the package index (PyPI in CI), then pip's own consistency check and a run."""
    assert Version(OTHER_NUMPY) != lock()["numpy"]
    work = tmp_path / "elsewhere"
    work.mkdir()
    venv = fresh_venv(tmp_path / "venv", work)
    pip_install(venv, work, f"numpy=={OTHER_NUMPY}", wheel)
    share_this_environment(venv, work)  # after numpy: the venv's own numpy comes first on sys.path
    run([sys.executable, "-m", "pip", "--python", venv, "check"], work)  # epochal's numpy range accepts it
    run([venv.parent / "epochal", "run", "toy", "--epochs", "1", "--no-progress", "--out", "results", "--id", "t"], work)
    env = json.loads((work / "results" / "t" / "env.json").read_text())
    assert env["numpy"] == OTHER_NUMPY
    assert json.loads((work / "results" / "t" / "result.json").read_text())["status"] == "completed"
