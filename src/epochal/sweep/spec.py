"""The sweep spec (a TOML file): what to train, which settings to vary, how to pick points and judge them.

    task = "toy"                  # a registered task or an import path (package.module:TaskClass)
    recipe = "toy"                # a built-in recipe, a TOML config path, or the task's name (its defaults)
    method = "grid"               # grid | random | tpe
    trials = 8                    # points to try (random, tpe); grid tries every point
    metric = "eval_mse"
    direction = "minimize"
    seeds = [0, 1]
    [space]
    "optim.lr" = [1e-3, 3e-3]                                   # a list: choices
    "optim.weight_decay" = { low = 1e-4, high = 1e-1, log = true }  # a range (random, tpe)
    [set]
    "train.max_epochs" = 2        # settings every trial shares, over the recipe

A point is one value per dotted setting of the space; its key is a hash of those values.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from epochal.config import RunConfig, build_dataclass, flat, load_toml
from epochal.errors import ConfigError
from epochal.resolve import resolve_config
from epochal.task import Task, get_task

Scalar = int | float | str | bool

# Settings a trial sets itself: the seeds axis owns the seed, the sweep owns where runs live.
RESERVED_KEYS = ("train.seed", "experiment_id", "out_dir", "group")


@dataclass(frozen=True)
class Choice:
    """A list in [space]: the values to choose from (the only kind of parameter grid accepts)."""

    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Range:
    """A table in [space]: numbers between low and high; integers when both bounds are integers."""

    low: float
    high: float
    log: bool = False  # sample the logarithm uniformly (learning rates, decays)
    step: float | None = None  # only multiples of step above low
    integer: bool = False  # both bounds were written as integers: suggest integers


@dataclass
class PrunerSpec:
    kind: Literal["none", "median", "successive_halving", "hyperband"] = "none"  # Optuna pruner by name
    startup_trials: int = 4  # median: trials that must finish before any is pruned
    warmup_epochs: int = 1  # median: evaluations a trial always gets before it can be pruned


@dataclass
class SweepSpec:
    task: str  # a registered task or an import path (package.module:TaskClass)
    metric: str  # the evaluation metric a trial is judged by
    recipe: str = ""  # a built-in recipe, a TOML path (relative to the spec) or ""/the task's name: its defaults
    method: Literal["grid", "random", "tpe"] = "grid"  # how points are picked (Optuna's samplers)
    trials: int = 10  # points to try with random and tpe; grid tries every point of the space once
    direction: Literal["minimize", "maximize"] = "minimize"  # whether a smaller or larger metric is better
    seeds: list[int] = field(default_factory=lambda: [0])  # every point runs once per seed; its value is the mean
    value: Literal["last", "best"] = "last"  # the metric at the last evaluation, or its best over the run
    sampler_seed: int = 0  # random and tpe pick the same points for the same sampler_seed and history
    pruner: PrunerSpec = field(default_factory=PrunerSpec)  # stops unpromising trials early (first seed only)
    space: dict[str, Choice | Range] = field(default_factory=dict)  # dotted setting -> choices or range
    set: dict[str, Any] = field(default_factory=dict)  # dotted settings every trial shares, over the recipe

    def validate(self) -> None:
        if self.trials <= 0:
            raise ConfigError(f"spec.trials: {self.trials} must be positive; allowed: > 0")
        if not self.seeds:
            raise ConfigError("spec.seeds: empty; allowed: a list of one or more integers")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"spec.seeds: {self.seeds} repeats a seed; allowed: distinct integers")

    @property
    def grid_size(self) -> int:
        return math.prod(len(p.values) for p in self.space.values() if isinstance(p, Choice))

    @property
    def points(self) -> int:
        """How many points the sweep tries: every grid point, else ``trials``."""
        return self.grid_size if self.method == "grid" else self.trials


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a spec file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep spec; allowed: a TOML file")
    try:
        return parse_spec(load_toml(path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def parse_spec(data: dict) -> SweepSpec:
    data = dict(data)
    space = _parse_space(data.pop("space", None))
    fixed = data.pop("set", {})
    if not isinstance(fixed, dict):
        raise ConfigError(f"spec.set: expected a table of \"section.key\" = value, got {fixed!r}")
    pruner = data.pop("pruner", "none")
    if isinstance(pruner, str):
        pruner = {"kind": pruner}
    if not isinstance(pruner, dict):
        raise ConfigError(f"spec.pruner: expected a name or a table, got {pruner!r}; allowed: none, median, "
                          "successive_halving, hyperband")
    spec = build_dataclass(SweepSpec, data, "spec")
    spec.space, spec.set, spec.pruner = space, flat(fixed), build_dataclass(PrunerSpec, pruner, "spec.pruner")
    for key in [*space, *fixed]:
        if key in RESERVED_KEYS:
            raise ConfigError(f"{key}: set by the sweep itself (seeds = [...] for the seed); allowed: any other setting")
    if spec.method == "grid":
        ranged = [key for key, p in space.items() if isinstance(p, Range)]
        if ranged:
            raise ConfigError(f"space.{ranged[0]}: grid needs a list of values; ranges are for random and tpe")
    return spec


def _parse_space(table: Any) -> dict[str, Choice | Range]:
    if not isinstance(table, dict) or not table:
        raise ConfigError("spec.space: missing or empty; allowed: a table of \"section.key\" = [values] or {low, high}")
    space: dict[str, Choice | Range] = {}
    for key, value in _leaves(table):
        space[key] = _parse_param(key, value)
    return space


def _leaves(table: dict, prefix: str = ""):
    """Dotted keys of [space]; `optim.lr = [...]` without quotes nests in TOML, a {low, high} table does not."""
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "low" not in value and "high" not in value:
            yield from _leaves(value, f"{name}.")
        else:
            yield name, value


def _parse_param(key: str, value: Any) -> Choice | Range:
    where = f"space.{key}"
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: empty list; allowed: one or more values")
        for item in value:
            if not isinstance(item, (int, float, str, bool)):
                raise ConfigError(f"{where}: {item!r} is not a number, string or boolean; allowed: those")
        if len({json.dumps(v) for v in value}) != len(value):
            raise ConfigError(f"{where}: {value} repeats a value; allowed: distinct values")
        return Choice(tuple(value))
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"low", "high", "log", "step"})
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed: low, high, log, step")
        low, high = value.get("low"), value.get("high")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        if not numbers or not low < high:
            raise ConfigError(f"{where}: low {low!r} and high {high!r}; allowed: numbers with low < high")
        log, step = value.get("log", False), value.get("step")
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
        if log and low <= 0:
            raise ConfigError(f"{where}: log needs low > 0, got {low}")
        if step is not None and (log or not isinstance(step, (int, float)) or step <= 0):
            raise ConfigError(f"{where}.step: {step!r}; allowed: a positive number, without log")
        integer = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
        return Range(low, high, log, step, integer)
    raise ConfigError(f"{where}: {value!r}; allowed: a list of choices or a table {{low, high, log, step}}")


# ----------------------------------------------------------------- points and keys
def point_key(params: dict[str, Scalar]) -> str:
    """The point's identity: the same values give the same key in every process and on every machine."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def run_id(key: str, seed: int) -> str:
    """The run folder of (point, seed); only characters of [A-Za-z0-9._-]."""
    return f"{key}-seed{seed}"


def suggest(trial, space: dict[str, Choice | Range]) -> dict[str, Scalar]:
    """The trial's point, through Optuna's suggest API (a retried trial gets its old values back)."""
    params: dict[str, Scalar] = {}
    for key, p in space.items():
        if isinstance(p, Choice):
            params[key] = trial.suggest_categorical(key, list(p.values))
        elif p.integer:
            params[key] = trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            params[key] = trial.suggest_float(key, float(p.low), float(p.high), step=p.step, log=p.log)
    return params


def grid_space(space: dict[str, Choice | Range]) -> dict[str, list[Scalar]]:
    return {key: list(p.values) for key, p in space.items() if isinstance(p, Choice)}


# ----------------------------------------------------------------- task and recipe
def load_task(name: str) -> Task:
    """A registered task, a plugin's, or ``package.module:TaskClass`` (epochal.task.get_task)."""
    try:
        return get_task(name)
    except ConfigError as err:
        raise ConfigError(f"spec.task: {str(err).removeprefix('task: ')}") from None


def builtin_recipe(name: str) -> dict | None:
    """A recipe shipped with epochal (``flow-moons``), by name; None if there is no such recipe."""
    from epochal import recipes

    return tomllib.loads(recipes.text(name)) if name in recipes.names() else None


def recipe_layer(recipe: str, task: Task, spec_dir: Path) -> dict:
    """The recipe's settings as a config layer: a TOML path, a shipped recipe's name, or the task's own name
    (or nothing) for its defaults."""
    if recipe in ("", task.name):
        return {}
    path = Path(recipe) if Path(recipe).is_absolute() else spec_dir / recipe
    if recipe.endswith(".toml") or path.exists():
        return load_toml(path)
    found = builtin_recipe(recipe)
    if found is None:
        raise ConfigError(f"spec.recipe: {recipe!r} is neither a TOML file nor a built-in recipe; allowed: a path "
                          f"to a .toml config or {task.name!r} (the task's defaults)")
    return found


def base_config(spec: SweepSpec, task: Task, spec_dir: Path) -> RunConfig:
    """The config every trial starts from: task defaults <- recipe <- [set]. Checks the space's keys too."""
    layer = recipe_layer(spec.recipe, task, spec_dir)
    # A trial's PNGs cost more than a small trial's training (about 0.4 s on a busy CPU) and the sweep report
    # draws every point's curves; `epochal report RUN` draws one trial's, and [set] "log.plots" = true keeps them.
    _, config = resolve_config(task, layer, {"log.plots": False, **spec.set})
    declared = tuple(getattr(task, "metrics", ()))
    if declared and spec.metric not in declared:
        raise ConfigError(f"spec.metric: {spec.metric!r} is not a metric of task {task.name!r}; "
                          f"allowed: {', '.join(declared)}")
    # Each setting of the space must exist and take its values' type: try the first choice or the low bound.
    for key, p in spec.space.items():
        value = p.values[0] if isinstance(p, Choice) else (int(p.low) if p.integer else float(p.low))
        resolve_config(task, config.to_dict(), {key: value})
    return config


def trial_config(task: Task, base: dict, params: dict[str, Scalar], seed: int) -> RunConfig:
    """The config of (point, seed); a bad combination of values is a ConfigError naming the key."""
    _, config = resolve_config(task, base, {**params, "train.seed": seed, "train.progress": False})
    return config
