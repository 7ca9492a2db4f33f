"""Typed run configuration: dataclasses, TOML in and out, dotted overrides, one-line errors.

Resolution order, later wins: dataclass defaults < the task's ``defaults`` < the
TOML file < ``--set section.key=value`` and shorthand flags. The resolved config
is written to the run folder as ``config.toml`` and is enough to rerun exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from epochal.errors import ConfigError

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")  # train.compile's values


def compile_mode(setting: bool | str) -> str:
    """The mode a ``train.compile`` setting means: true is "default", false "off"."""
    if isinstance(setting, bool):
        return "default" if setting else "off"
    return setting


@dataclass
class TrainConfig:
    max_epochs: int = 10  # upper bound: a gate or early stopping may end the run sooner
    max_steps: int | None = None  # optimizer-step budget; the first budget reached ends training (required for iterable data)
    batch_size: int = 64  # examples per optimizer step, whatever grad_accum is; the GLOBAL batch under torchrun, split evenly over the processes (a user's DataLoader sets its own)
    grad_accum: int = 1  # micro-batches per optimizer step: the same update with less memory
    microbatch: Literal["off", "auto"] = "off"  # auto: a step that runs out of memory is retried on the same batch in 2, 4, ... times the micro-batches, with the same gradient and random numbers, and keeps that split (checkpointed)
    drop_last: bool = False  # drop an epoch's last incomplete batch (keeps every step the same size)
    grad_clip: float = 1.0  # global-norm clipping threshold; 0 turns clipping off (the norm is still logged)
    precision: Literal["fp32", "bf16", "fp16", "amp"] = "fp32"  # autocast dtype; fp16 adds a GradScaler; amp (--amp): bf16 where the device supports it, else fp16, decided when the run starts and recorded in config.toml
    eval_every: int = 1  # epochs between evaluations (the end of training is always evaluated)
    eval_every_steps: int = 0  # also evaluate every N optimizer steps, mid-epoch; 0 turns it off
    eval_batches: int = 0  # cap on batches per evaluation of epochal.fit's eval_data; 0: all of it
    num_workers: int = 0  # DataLoader workers for a map-style Dataset (0: read in the training process)
    log_every: int = 50  # steps between fetches of the on-device loss buffer (the only host syncs)
    seed: int = 0  # seeds python, numpy, torch and the data order
    deterministic: bool = False  # deterministic kernels: reproducible on GPU, somewhat slower
    device: str = "auto"  # auto picks CUDA when present; or cpu, cuda, cuda:N
    nan_policy: Literal["stop", "skip", "rollback"] = "stop"  # what a non-finite loss or grad norm does
    guard_nonfinite: bool | None = None  # skip such a step on the device before it reaches the weights; unset: only under nan_policy "skip", which needs it (1-2 % of a tiny CPU step: benchmarks/loop_overhead.py)
    max_rollbacks: int = 3  # rollback policy: give up (stop) after this many
    rollback_lr_scale: float = 0.5  # rollback policy: learning-rate factor applied at each rollback
    compile: bool | str = "off"  # torch.compile the step's forward and loss: off, default, reduce-overhead (adds CUDA graphs), max-autotune (longer compile, faster kernels); true = default. Faster GPU steps after a compile of seconds to minutes
    cuda_graphs: bool = False  # capture the whole step (forward, backward, optimizer) in one CUDA graph and replay it: removes the launch overhead that bounds small models on a GPU; needs fixed batch shapes
    matmul_precision: Literal["highest", "high", "medium"] = "highest"  # float32 matmuls: highest is true fp32; high allows TF32 (about 1e-3 relative error, much faster on Ampere and later); --deterministic forces highest
    progress: bool = True  # tqdm bar per epoch
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: ddp keeps a whole model on every process; fsdp shards parameters, gradients and optimizer state over them (FSDP2), for models that do not fit on one device
    fsdp_modules: list[str] = field(default_factory=list)  # fsdp: class names of the modules sharded each on its own (a transformer's block), so only one block's parameters are gathered at a time; the built-in transformer tasks name theirs; empty: the whole model as one unit
    fsdp_cpu_offload: bool = False  # fsdp on CUDA: keep the shards and optimizer state in host memory between uses (slower steps, far less GPU memory)
    activation_checkpointing: bool = False  # fsdp: recompute each fsdp_modules block's activations in the backward instead of keeping them (less memory, about a third more compute)
    expected_gpus: list[str] = field(default_factory=list)  # GPU models this recipe was tuned on: warn on others
    expected_cuda_visible_devices: str = ""  # the CUDA_VISIBLE_DEVICES it expects (e.g. "1"); empty: any

    def validate(self) -> None:
        _positive(self, "train", "max_epochs", "batch_size", "grad_accum", "eval_every", "log_every", "max_rollbacks")
        _non_negative(self, "train", "grad_clip", "eval_every_steps", "eval_batches", "num_workers")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"train.max_steps: {self.max_steps} must be positive; allowed: > 0, or leave it out")
        if self.grad_accum > self.batch_size:
            raise ConfigError(f"train.grad_accum: {self.grad_accum} exceeds train.batch_size {self.batch_size}; allowed: 1..batch_size")
        if not 0 < self.rollback_lr_scale <= 1:
            raise ConfigError(f"train.rollback_lr_scale: {self.rollback_lr_scale} out of range; allowed: 0 < scale <= 1")
        if self.nan_policy == "skip" and self.guard_nonfinite is False:
            raise ConfigError("train.nan_policy: 'skip' needs train.guard_nonfinite = true or unset; allowed: stop, rollback")
        if compile_mode(self.compile) not in COMPILE_MODES:
            raise ConfigError(f"train.compile: {self.compile!r} is not a compile mode; allowed: "
                              f"{', '.join(COMPILE_MODES)}, true (default) or false (off)")
        self.compile = compile_mode(self.compile)
        if self.cuda_graphs and self.microbatch == "auto":
            raise ConfigError("train.cuda_graphs: a captured step has fixed micro-batches; allowed with "
                              "train.cuda_graphs = true: train.microbatch = off")
        if self.cuda_graphs and self.compile == "reduce-overhead":
            raise ConfigError("train.cuda_graphs: reduce-overhead compiles CUDA graphs of its own; allowed with "
                              "train.cuda_graphs = true: train.compile = off, default or max-autotune")
        if self.parallel == "fsdp" and self.cuda_graphs:
            raise ConfigError("train.cuda_graphs: a captured step cannot hold FSDP's gathers and frees; allowed with "
                              "train.parallel = 'fsdp': train.cuda_graphs = false")
        if self.parallel == "fsdp" and self.microbatch == "auto":
            raise ConfigError("train.microbatch: 'auto' retries a step with gradients averaged as DDP does, not as "
                              "FSDP reduces its shards; allowed with train.parallel = 'fsdp': off")
        if self.activation_checkpointing and (self.parallel != "fsdp" or not self.fsdp_modules):
            raise ConfigError("train.activation_checkpointing: recomputes the train.fsdp_modules blocks; allowed: "
                              "with train.parallel = 'fsdp' and train.fsdp_modules naming the blocks")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device: {self.device!r} is not a device; allowed: auto, cpu, cuda, cuda:N")


@dataclass
class OptimConfig:
    lr: float = 3e-4  # peak learning rate of AdamW
    weight_decay: float = 0.01  # decoupled decay, applied to weight matrices only (see decay_all)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW moment decay rates
    eps: float = 1e-8  # AdamW denominator guard
    decay_all: bool = False  # also decay biases, norm weights and embeddings (off: they gain nothing from it)

    def validate(self) -> None:
        _positive(self, "optim", "lr", "eps")
        _non_negative(self, "optim", "weight_decay")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas: {list(self.betas)} out of range; allowed: each in [0, 1)")


@dataclass
class ScheduleConfig:
    kind: Literal["cosine", "linear", "constant"] = "cosine"  # decay after warmup
    warmup_fraction: float = 0.1  # warmup as a share of all optimizer steps
    warmup_steps: int | None = None  # warmup as a step count; wins over the fraction
    min_lr_ratio: float = 0.1  # final learning rate as a share of the peak

    def validate(self) -> None:
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"schedule.warmup_fraction: {self.warmup_fraction} out of range; allowed: 0 <= f < 1")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"schedule.warmup_steps: {self.warmup_steps} is negative; allowed: >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"schedule.min_lr_ratio: {self.min_lr_ratio} out of range; allowed: 0..1")


@dataclass
class EMAConfig:
    enabled: bool = False  # keep an exponential moving average of the weights for eval and export
    decay: float = 0.9999  # a long average for long runs; smaller for short runs
    warmup: bool = False  # use min(decay, (1 + t) / (10 + t)) so early averages are not stuck at init

    def validate(self) -> None:
        if not 0 < self.decay < 1:
            raise ConfigError(f"ema.decay: {self.decay} out of range; allowed: 0 < decay < 1")


@dataclass
class EarlyStopConfig:
    enabled: bool = False  # stop when the metric has not improved for `patience` evaluations
    metric: str = ""  # an evaluation metric name
    mode: Literal["min", "max"] = "min"  # whether smaller or larger is better
    patience: int = 20  # evaluations without improvement before stopping
    min_delta: float = 0.0  # improvement smaller than this does not count

    def validate(self) -> None:
        _non_negative(self, "early_stop", "patience", "min_delta")
        if self.enabled and not self.metric:
            raise ConfigError("early_stop.metric: required when early_stop.enabled; allowed: an evaluation metric name")


@dataclass
class GateConfig:
    above: dict[str, float] = field(default_factory=dict)  # metric must be strictly greater than the value
    below: dict[str, float] = field(default_factory=dict)  # metric must be strictly smaller than the value
    stop: bool = True  # stop training at the first pass; false: record the pass and train on


@dataclass
class CheckpointConfig:
    every_epochs: int = 1  # rolling checkpoint every N epochs; 0 turns it off
    every_steps: int = 0  # also every N optimizer steps, mid-epoch; 0 turns it off
    every_minutes: float = 0.0  # also every M minutes of training; 0 turns it off
    keep_last: int = 3  # rolling checkpoints kept (gate and best are kept besides)
    async_write: bool = True  # write in a background thread after copying the state off the device
    best_metric: str = ""  # track best.pt by this evaluation metric; empty: no best.pt
    best_mode: Literal["min", "max"] = "max"  # whether smaller or larger is better for best_metric

    def validate(self) -> None:
        _non_negative(self, "checkpoint", "every_epochs", "every_steps", "every_minutes")
        _positive(self, "checkpoint", "keep_last")


# Tracker name -> (importable modules it needs, the pip extra that installs them); csv needs nothing.
TRACKERS = {"tensorboard": (("tensorboard", "google_crc32c"), "tensorboard"), "csv": ((), None),
            "mlflow": (("mlflow",), "mlflow"), "wandb": (("wandb",), "wandb")}


@dataclass
class LogConfig:
    trackers: list[str] = field(default_factory=list)  # where every logged value also goes: tensorboard, csv, mlflow, wandb
    mlflow_uri: str = ""  # MLflow tracking URI; empty: a SQLite store shared by the runs of out_dir (out_dir/mlflow.db)
    mlflow_experiment: str = ""  # MLflow experiment; empty: the group if set, else the task name
    wandb_project: str = "epochal"  # W&B project the run is filed under
    wandb_entity: str = ""  # W&B team or user; empty: the logged-in user's default
    wandb_mode: Literal["offline", "online", "auto"] = "offline"  # offline needs no account; auto: online when logged in
    profile: str = ""  # "START:STOP": torch.profiler trace of those optimizer steps into the run folder; empty: off
    peak_tflops: float = 0.0  # the device's peak for MFU; 0: looked up from the GPU's name (bf16 dense)
    plots: bool = True  # write plots/*.png at the end of the run (`epochal report` draws them anyway)
    loss_scale: Literal["auto", "linear", "log"] = "auto"  # loss plot y axis; auto: log when the loss spans 10x

    def validate(self) -> None:
        for name in self.trackers:
            if name not in TRACKERS:
                raise ConfigError(f"log.trackers: {name!r} is not a tracker; allowed: {', '.join(TRACKERS)}")
            modules, extra = TRACKERS[name]
            for module in modules:
                if importlib.util.find_spec(module) is None:
                    raise ConfigError(f"log.trackers: {name!r} needs the {module} package; install it with "
                                      f"pip install 'epochal[{extra}]'")
        if len(set(self.trackers)) != len(self.trackers):
            raise ConfigError(f"log.trackers: {self.trackers} names a tracker twice; allowed: each once")
        if self.profile:
            self.profile_window()
        _non_negative(self, "log", "peak_tflops")

    def profile_window(self) -> tuple[int, int] | None:
        """(first, last) optimizer step of the profiled window, both included; None when off."""
        if not self.profile:
            return None
        first, sep, last = self.profile.partition(":")
        if not (sep and first.strip().isdigit() and last.strip().isdigit() and 0 < int(first) <= int(last)):
            raise ConfigError(f"log.profile: {self.profile!r} is not a step window; allowed: START:STOP with "
                              "1 <= START <= STOP, e.g. 10:20")
        return int(first), int(last)


@dataclass
class InitConfig:
    """Warm start: a new run that begins from another run's (or file's) weights."""

    path: str = ""  # a run folder, a .pt checkpoint, a sharded checkpoint's .dcp folder or a .safetensors file; empty: fresh weights
    weights: Literal["last", "best", "ema"] = "last"  # which weights of a run folder
    strict: bool = False  # false: load what matches and report missing/unexpected keys (fine-tuning a changed head)
    freeze: list[str] = field(default_factory=list)  # parameter-name patterns (fnmatch) kept fixed in training


@dataclass
class RunConfig:
    task: Any  # the task's own settings dataclass; its name is task.name in TOML ([task] name = "...")
    task_name: str = ""  # registered task name
    experiment_id: str = ""  # run folder name; empty: <task>-<timestamp>
    group: str = ""  # optional sub-folder of out_dir that gathers related runs
    out_dir: str = "results"  # where run folders live
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    init: InitConfig = field(default_factory=InitConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir, self.group, self.experiment_id)

    def to_dict(self) -> dict:
        """Plain nested dict, the shape of config.toml: the task's name lives in [task]."""
        data = _plain(self)
        data["task"] = {"name": data.pop("task_name"), **data["task"]}
        return data

    def to_toml(self) -> str:
        return tomli_w.dumps(_drop_none(self.to_dict()))

    def hash(self) -> str:
        """What the run does, not where it is: runs of one config in different folders share the hash."""
        data = self.to_dict()
        for key in ("experiment_id", "out_dir"):
            data.pop(key)
        data["train"].pop("progress")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_TOP_LEVEL = ("experiment_id", "group", "out_dir")


def _positive(obj: Any, section: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{section}.{name}: {getattr(obj, name)} must be positive; allowed: > 0")


def _non_negative(obj: Any, section: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{section}.{name}: {getattr(obj, name)} is negative; allowed: >= 0")


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _drop_none(data: Any) -> Any:
    """TOML has no null: a None setting is left out and reads back as its default."""
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    return data


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp)) if origin is None else str(tp).replace("typing.", "")


def _takes_table(tp: Any) -> bool:
    """Whether a setting of type ``tp`` may be given as a TOML table."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_takes_table(a) for a in typing.get_args(tp))
    return origin is dict or dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in that type or raise naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if isinstance(value, dict) and value and not _takes_table(tp):
        # `--set train.max_epochs.foo=1` arrives as a table where a value belongs
        raise ConfigError(f"{key}.{next(iter(value))}: {key} is a setting, not a section; "
                          f"allowed: {key} = <{_type_name(tp)}>")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise bad
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):  # nan/inf would only fail steps later, inside torch
            raise ConfigError(f"{key}: {value} is not a finite number; allowed: a finite float")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of settings, got {value!r}")
        return build_dataclass(tp, value, key)
    raise ConfigError(f"{key}: unsupported setting type {tp}")


def build_dataclass(cls: type, data: dict, section: str) -> Any:
    """An instance of ``cls`` from a dict: unknown keys, wrong types and missing fields name the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a table of settings, got {data!r}; allowed: a [{section}] table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}: unknown key; allowed: {', '.join(fields)}")
    values = {name: _coerce(value, hints[name], f"{section}.{name}") for name, value in data.items()}
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in values:
            raise ConfigError(f"{section}.{name}: required setting is missing ({_type_name(hints[name])})")
    instance = cls(**values)
    if hasattr(instance, "validate"):
        instance.validate()
    return instance


def merge(base: dict, update: dict) -> dict:
    """Layer ``update`` over ``base``: sections merge key by key, settings are replaced whole.

    A table-valued setting (gate.above) is replaced, not merged, so a later layer
    can remove a threshold an earlier one set: ``--set gate.above={}`` turns the gate off.
    """
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value); the value is read as TOML, else taken as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def dotted_to_nested(overrides: dict[str, Any]) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}; a key that is both a setting and a section is an error, in either order."""
    nested: dict = {}
    for key, value in overrides.items():
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"{key}: empty part in a dotted key; allowed: section.key=value")
        *parents, leaf = parts
        node = nested
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {'.'.join(parts[: i + 1])} is a setting, not a section; "
                                  f"allowed: {'.'.join(parts[: i + 1])}=value")
        if isinstance(node.get(leaf), dict) and not isinstance(value, dict):
            inner = f"{key}.{next(iter(node[leaf]))}" if node[leaf] else key
            raise ConfigError(f"{inner}: {key} is a setting, not a section; allowed: {key}=value")
        node[leaf] = value
    return nested


def load_toml(path: str | Path, label: str = "--config") -> dict:
    """The parsed TOML file, or the shipped recipe ``path`` names (``flow-moons``) when no such file exists;
    one ConfigError naming it if it is missing, a folder, unreadable, not UTF-8 or not TOML."""
    from epochal import recipes

    where = f"{label} {path}" if label else str(path)
    if not Path(path).exists() and str(path) in recipes.names():
        try:
            return tomllib.loads(recipes.text(str(path)))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{where} (recipe): not valid TOML ({err})") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file or recipe; recipes: {', '.join(recipes.names())}") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: a folder, not a file; allowed: a TOML file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where}: not UTF-8 text (byte {err.start}); allowed: a UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: not valid TOML ({err}); allowed: a TOML file") from None
    except OSError as err:
        raise ConfigError(f"{where}: cannot read ({err.strerror}); allowed: a readable TOML file") from None


def layered_task_name(layers: list[dict]) -> str | None:
    """The task a stack of layers names in [task] name (or top-level ``task = "..."``), the last one winning."""
    name = None
    for layer in layers:
        _check_section_values(layer)
        table = layer.get("task")
        if isinstance(table, str):
            name = table
        elif isinstance(table, dict):
            name = table.get("name", name)
        elif table is not None:
            raise ConfigError(f"task: expected a table ([task] name = ...) or a task name, got {table!r}")
    return name if isinstance(name, str) else None


def build_config(task: Any, layers: list[dict]) -> RunConfig:
    """The RunConfig of ``task`` (a Task) from nested-dict layers: the task's defaults first, overrides last."""
    data = {}
    for layer in layers:
        _check_section_values(layer)
        data = merge(data, layer)
    task_table = data.pop("task", {})
    if isinstance(task_table, str):  # `task = "walks"` without settings is a name
        task_table = {"name": task_table}
    if not isinstance(task_table, dict):
        raise ConfigError(f"task: expected a table ([task] name = ...) or a task name, got {task_table!r}")
    task_table = dict(task_table)
    name = getattr(task, "registered_as", task.name)  # an import path or plugin name stays what finds it again
    if task_table.get("name", name) not in (name, task.name):
        raise ConfigError(f"task.name: the config is for {task_table['name']!r}, not {name!r}")
    task_table.pop("name", None)
    data = merge(task.defaults, data)
    unknown = sorted(set(data) - set(_SECTIONS) - set(_TOP_LEVEL))
    if unknown:
        allowed = ", ".join([*_TOP_LEVEL, *_SECTIONS, "task"])
        raise ConfigError(f"{unknown[0]}: unknown section or key; allowed: {allowed}")
    top = {k: _coerce(data[k], str, k) for k in _TOP_LEVEL if k in data}
    sections = {k: build_dataclass(tp, data.get(k, {}), k) for k, tp in _SECTIONS.items()}
    config = RunConfig(task=build_dataclass(task.Config, task_table, "task"), task_name=name, **top, **sections)
    _default_best_metric(config)
    _check_metric_names(config, tuple(getattr(task, "metrics", ())))
    _check_warmup(config)
    task.validate(config)
    return config


def _check_warmup(config: RunConfig) -> None:
    """A warmup as long as the step budget: refused here, before any folder, when the budget is set; else
    the scheduler refuses it once the data is built (training.default_scheduler)."""
    warmup, budget = config.schedule.warmup_steps, config.train.max_steps
    if warmup is not None and budget is not None and warmup >= budget:
        raise ConfigError(f"schedule.warmup_steps: {warmup} warmup steps, but train.max_steps is {budget}; "
                          "allowed: fewer")


def _check_metric_names(config: RunConfig, declared: tuple[str, ...]) -> None:
    """Every setting that names a metric names one the task declares (undeclared: checked at the first evaluation)."""
    if not declared:
        return
    named = [("checkpoint.best_metric", config.checkpoint.best_metric)]
    if config.early_stop.enabled:
        named.append(("early_stop.metric", config.early_stop.metric))
    named += [(f"gate.above.{m}", m) for m in config.gate.above] + [(f"gate.below.{m}", m) for m in config.gate.below]
    for key, metric in named:
        if metric and metric not in declared:
            raise ConfigError(f"{key}: {metric!r} is not a metric of task {config.task_name!r}; allowed: {', '.join(declared)}")


_SECTIONS = {name: tp for name, tp in typing.get_type_hints(RunConfig).items() if dataclasses.is_dataclass(tp)}


def _check_section_values(layer: dict) -> None:
    """A scalar where a section belongs (`train = 5`) is an error, before a later layer could hide it by merging."""
    for name in _SECTIONS:
        if name in layer and not isinstance(layer[name], dict):
            raise ConfigError(f"{name}: expected a table of settings, got {layer[name]!r}; allowed: a [{name}] table")
    task = layer.get("task", "")
    if not isinstance(task, (dict, str)):
        raise ConfigError(f"task: expected a table or a task name, got {task!r}; allowed: [task] name = \"...\"")


def _default_best_metric(config: RunConfig) -> None:
    """best.pt follows the early-stopping metric unless another is named."""
    if config.checkpoint.best_metric == "" and config.early_stop.enabled:
        config.checkpoint.best_metric = config.early_stop.metric
        config.checkpoint.best_mode = config.early_stop.mode


def flat(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: for listing differing keys."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
