"""The layers as import-linter checks them ([tool.importlinter] in pyproject.toml; `make test` runs it)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE_CONTRACT = "the core imports no built-in task, command line, sweep or analysis code"
TASKS_CONTRACT = "the built-in tasks use only the core's public modules"


def lint(source: Path) -> subprocess.CompletedProcess:
    """lint-imports with this repository's contracts, on the package found under ``source``."""
    command = [str(Path(sys.executable).with_name("lint-imports")), "--config", str(ROOT / "pyproject.toml"),
               "--no-cache"]
    return subprocess.run(command, cwd=source, env={"PYTHONPATH": str(source), "PATH": ""}, capture_output=True,
                          text=True, timeout=120)


def test_the_contracts_hold():
    linted = lint(ROOT / "src")
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert f"{CORE_CONTRACT} KEPT" in linted.stdout and f"{TASKS_CONTRACT} KEPT" in linted.stdout


def test_a_core_module_importing_the_cli_or_a_task_importing_the_loop_breaks_a_contract(tmp_path):
    shutil.copytree(ROOT / "src" / "epochal", tmp_path / "epochal", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "epochal" / "loop.py", "a") as loop:
        loop.write("\nfrom epochal import cli  # noqa: E402\n")
    with open(tmp_path / "epochal" / "tasks" / "toy.py", "a") as toy:
        toy.write("\nfrom epochal.training import Training  # noqa: E402\n")
    linted = lint(tmp_path)
    assert linted.returncode != 0
    assert f"{CORE_CONTRACT} BROKEN" in linted.stdout and f"{TASKS_CONTRACT} BROKEN" in linted.stdout
    assert "epochal.loop -> epochal.cli" in linted.stdout and "epochal.tasks.toy -> epochal.training" in linted.stdout


def setting_paths(run_toy, anchors: dict) -> dict[str, list[str]]:
    """The files on the call stack (from epochal.run down) when each anchor function is first called."""
    import epochal
    from epochal import api

    src = str(Path(epochal.__file__).parent) + "/"
    stacks: dict[str, list[str]] = {}

    def files_on_stack(frame) -> list[str]:
        files = []
        while frame is not None and frame.f_code is not api.run.__code__:
            files.append(frame.f_code.co_filename)
            frame = frame.f_back
        return [f.removeprefix(src) for f in reversed(files + ["api.py"]) if f.startswith(src) or f == "api.py"]

    def profiler(frame, event, arg):
        name = anchors.get(frame.f_code)
        if event == "call" and name is not None and name not in stacks:
            stacks[name] = files_on_stack(frame)

    sys.setprofile(profiler)
    try:
        run_toy(settings={"train.max_epochs": 1, "train.grad_clip": 1.0, "checkpoint.every_steps": 2})
    finally:
        sys.setprofile(None)
    return stacks


def test_a_reader_following_a_setting_to_the_step_enters_no_file_more_than_five_times(run_toy):
    """train.grad_clip and checkpoint.every_steps, each from epochal.run to where it is resolved, handed over
    and acts: along those call stacks a file entered, left and entered again counts each time."""
    import itertools

    from epochal import resolve
    from epochal.callbacks.checkpointing import Checkpointing
    from epochal.step import Step

    resolved = resolve.resolve_config.__code__
    settings = {"train.grad_clip": {resolved: "resolved", Step.__init__.__code__: "handed to the step",
                                    Step._clip.__code__: "clips"},
                "checkpoint.every_steps": {resolved: "resolved", Checkpointing.__init__.__code__: "handed to the policy",
                                           Checkpointing.on_step_end.__code__: "decides a save"}}
    stacks = setting_paths(run_toy, {code: name for anchors in settings.values() for code, name in anchors.items()})
    for setting, anchors in settings.items():
        entered: dict[str, int] = {}
        for name in anchors.values():
            for file, _ in itertools.groupby(stacks[name]):
                entered[file] = entered.get(file, 0) + 1
        assert max(entered.values()) <= 5, (setting, entered, {name: stacks[name] for name in anchors.values()})
    assert stacks["clips"][:3] == ["api.py", "loop.py", "loop.py"], stacks["clips"]  # the loop, then the step


def test_the_core_s_files_do_not_refer_to_the_seed_documents():
    """What the seed documents ask belongs to the tasks and recipes; the core says what it does and why."""
    import re
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    core = next(c for c in contracts if c["name"] == CORE_CONTRACT)["source_modules"]
    reference = re.compile(r"\bseeds? 00\d|\bseed 00\d|§|\bseed's\b", re.IGNORECASE)
    found = []
    for module in core:
        base = ROOT / "src" / Path(*module.split("."))
        for path in ([base.with_suffix(".py")] if base.with_suffix(".py").exists() else sorted(base.rglob("*.py"))):
            found += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1)
                      if reference.search(line)]
    assert len(core) > 30 and not found, found
