"""The recipes that ship with epochal: commented TOML configs, found by name.

``flow-moons`` is ``epochal/recipes/flow-moons.toml`` inside the installed
package, read through importlib.resources so that it is there whether epochal
runs from a checkout or from a wheel. ``epochal recipe NAME > my.toml`` writes
a copy to edit; ``--config`` takes a recipe name or a file path.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from importlib.resources.abc import Traversable

from epochal.errors import ConfigError

SUFFIX = ".toml"


def _folder() -> Traversable:
    return resources.files(__name__)


def names() -> list[str]:
    """Every shipped recipe, sorted."""
    return sorted(entry.name.removesuffix(SUFFIX) for entry in _folder().iterdir()
                  if entry.name.endswith(SUFFIX) and entry.is_file())


def text(name: str) -> str:
    """A recipe's file exactly as shipped, comments included."""
    entry = _folder().joinpath(name + SUFFIX)
    if "/" in name or not entry.is_file():
        raise ConfigError(f"recipe {name!r}: no such recipe; recipes: {', '.join(names())}")
    return entry.read_text(encoding="utf-8")


def task_of(name: str) -> str | None:
    """The task a recipe is for: its ``[task] name`` (or ``task = "name"``)."""
    table = tomllib.loads(text(name)).get("task")
    return table.get("name") if isinstance(table, dict) else table


def by_task() -> dict[str | None, list[str]]:
    """Recipe names grouped by the task they configure."""
    grouped: dict[str | None, list[str]] = {}
    for name in names():
        grouped.setdefault(task_of(name), []).append(name)
    return grouped
