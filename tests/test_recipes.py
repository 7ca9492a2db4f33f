"""Shipped recipes: found by name or path, listed per task, printed verbatim, resolvable."""

import tomllib
from pathlib import Path

import pytest

from epochal import recipes
from epochal.cli import main
from epochal.config import load_toml
from epochal.resolve import resolve
from epochal.errors import ConfigError
from epochal.catalog import BUILTIN_TASKS

SHIPPED = Path(recipes.__file__).parent


def test_every_toml_in_the_package_is_a_recipe_and_names_a_builtin_task():
    on_disk = sorted(p.stem for p in SHIPPED.glob("*.toml"))
    assert recipes.names() == on_disk and len(on_disk) >= 6
    grouped = recipes.by_task()
    assert sorted(n for names in grouped.values() for n in names) == on_disk
    assert set(grouped) <= set(BUILTIN_TASKS), grouped
    assert {"flow-moons", "flow-8gaussians"} <= set(grouped["flow"])


@pytest.mark.parametrize("name", recipes.names())
def test_each_recipe_resolves_for_its_task(name):
    config = resolve(None, [load_toml(name)])
    assert config.task_name == recipes.task_of(name)


def test_a_name_and_its_file_path_load_the_same_settings():
    assert load_toml("regex-nested") == load_toml(SHIPPED / "regex-nested.toml")
    assert load_toml("regex-nested") == tomllib.loads(recipes.text("regex-nested"))


def test_a_local_file_wins_over_a_recipe_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("flow-moons").write_text('[task]\nname = "toy"\n')
    assert load_toml("flow-moons") == {"task": {"name": "toy"}}


@pytest.mark.parametrize("source", ["no-such-recipe", "old/flow-moons.toml", "../recipes/walks"])
def test_an_unknown_name_or_path_lists_the_recipes(source):
    with pytest.raises(ConfigError, match="no such file or recipe; recipes: flow-8gaussians, flow-moons"):
        load_toml(source)


def test_invalid_toml_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match=f"--config {bad}: not valid TOML"):
        load_toml(bad)


def test_recipe_command_prints_the_file_verbatim_and_the_copy_reruns(capsys, tmp_path):
    assert main(["recipe", "flow-moons"]) == 0
    printed = capsys.readouterr().out
    assert printed == (SHIPPED / "flow-moons.toml").read_text()
    assert printed.count("\n#") >= 5  # the comments travel with the copy
    copy = tmp_path / "my.toml"
    copy.write_text(printed)
    assert resolve(None, [load_toml(copy)]).to_dict() == resolve(None, [load_toml("flow-moons")]).to_dict()


def test_recipe_command_refuses_an_unknown_name_in_one_line(capsys):
    assert main(["recipe", "flow-mons"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recipe 'flow-mons': no such recipe; recipes: " in err and "flow-moons" in err


def test_tasks_lists_each_task_with_its_recipes(capsys):
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, entry in BUILTIN_TASKS.items():
        at = next(i for i, line in enumerate(lines) if line.split()[0] == name)
        assert entry.summary in lines[at]
        listed = lines[at + 1].split("recipes:")[1]
        for recipe in recipes.by_task().get(name, []):
            assert recipe in listed, (name, recipe)


def test_the_catalog_matches_the_task_classes():
    from epochal.tasks import get_task

    for name, entry in BUILTIN_TASKS.items():
        task = get_task(name)
        assert f"{type(task).__module__}:{type(task).__name__}" == entry.target
        assert task.summary == entry.summary, name
