"""The one way a run's config is resolved: defaults <- task recipe <- config file <- --set / flags.

``epochal run``, ``epochal resume``, ``epochal audit`` and the Python API all go through
``resolve_config``. (config.py knows the settings; this module also knows the tasks.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from epochal.config import RunConfig, build_config, dotted_to_nested, layered_task_name, load_toml
from epochal.errors import ConfigError
from epochal.task import Task, get_task


def resolve(task: str | Task | None, layers: list[dict]) -> RunConfig:
    """The RunConfig of ``task`` (or the task the layers name) from nested-dict layers, later winning."""
    return build_config(_task(task, layers), layers)


def resolve_config(task: str | Task | None, config: RunConfig | str | Path | dict | None = None,
                   overrides: dict[str, Any] | None = None) -> tuple[Task, RunConfig]:
    """The task and its resolved config from a config (file path, dict or RunConfig) and dotted overrides."""
    if isinstance(config, RunConfig):
        if overrides:
            raise ConfigError("overrides: give them in the RunConfig or pass a file or dict config instead")
        return (task if isinstance(task, Task) else get_task(task or config.task_name)), config
    base = load_toml(config) if isinstance(config, (str, Path)) else dict(config or {})
    layers = [base, dotted_to_nested(overrides or {})]
    task_obj = _task(task, layers)
    return task_obj, build_config(task_obj, layers)


def _task(task: str | Task | None, layers: list[dict]) -> Task:
    if isinstance(task, Task):
        if not isinstance(getattr(type(task), "name", None), str):
            raise ConfigError("task: a Task instance needs a name")
        return task
    name = task or layered_task_name(layers)
    if not name:
        raise ConfigError("task.name: no task given; pass one on the command line or set [task] name")
    return get_task(name)
