"""Plots of a run folder: plots/loss.png, plots/metrics.png and the task's own figures.

Everything is drawn from the folder alone (history.jsonl, result.json, config.toml),
so the plots written at the end of a run and those `epochal report` draws later agree.
matplotlib is imported on first use, with the Agg backend (no display needed).
"""

from __future__ import annotations

import io
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epochal.callbacks.base import Callback
from epochal.errors import EpochalError
from epochal.io import atomic_write_bytes

DPI = 100  # 700x400-pixel figures: small PNGs that still read well in a report
PLOTS = "plots"


def pyplot():
    """matplotlib.pyplot on the Agg backend; a one-line error naming the extra when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise EpochalError("plots need matplotlib; install it with pip install 'epochal[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class RunFiles:
    """What the plots read from a run folder."""

    dir: Path
    result: dict[str, Any] = field(default_factory=dict)  # result.json, {} before the first epoch ended
    config: dict[str, Any] = field(default_factory=dict)  # config.toml
    steps: list[int] = field(default_factory=list)  # per-step records of history.jsonl, in order
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    @property
    def eval_epochs(self) -> list[int]:
        return self.result.get("eval_epochs", [])

    def eval_curves(self) -> dict[str, list[float]]:
        """Curves with one value per evaluation: the evaluation metrics."""
        n = len(self.eval_epochs)
        return {name: values for name, values in self.result.get("curves", {}).items()
                if n and len(values) == n and name != "train_loss"}


def read_run(run_dir: str | Path) -> RunFiles:
    run_dir = Path(run_dir)
    if not any((run_dir / name).exists() for name in ("config.toml", "result.json")):
        raise EpochalError(f"{run_dir}: not a run folder (no config.toml or result.json); allowed: a folder made by "
                           "`epochal run`")
    data = RunFiles(run_dir)
    if (run_dir / "result.json").exists():
        data.result = json.loads((run_dir / "result.json").read_text())
    if (run_dir / "config.toml").exists():
        data.config = tomllib.loads((run_dir / "config.toml").read_text())
    history = run_dir / "history.jsonl"
    for line in history.read_text().splitlines() if history.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            break  # a line cut short by a kill
        if "epoch_end" not in record and "loss" in record:
            data.steps.append(record["step"])
            data.loss.append(_number(record["loss"]))
            data.lr.append(_number(record.get("lr")))
    if not data.steps and data.result.get("curves", {}).get("train_loss"):
        data.loss = [_number(v) for v in data.result["curves"]["train_loss"]]
        data.steps = list(range(1, len(data.loss) + 1))
    return data


def _number(value: Any) -> float:
    """JSON null (how a non-finite value is written) as NaN."""
    return float("nan") if value is None else float(value)


def smooth(values: list[float], span: int) -> list[float]:
    """Bias-corrected exponential moving average over the finite values; NaN where none came yet."""
    alpha, mean, weight, out = 2 / (span + 1), 0.0, 0.0, []
    for value in values:
        if math.isfinite(value):
            mean = (1 - alpha) * mean + alpha * value
            weight = (1 - alpha) * weight + alpha
        out.append(mean / weight if weight else float("nan"))
    return out


def use_log_scale(values: list[float], scale: str) -> bool:
    """auto: log when every finite value is positive and they span more than a factor of 10."""
    if scale != "auto":
        return scale == "log"
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) > 10 * min(finite)


def loss_figure(data: RunFiles, scale: str = "auto"):
    """Per-step training loss, raw and smoothed, with the learning rate on a second axis; None without steps."""
    if not data.steps:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=DPI)
    span = max(1, min(200, len(data.loss) // 30))
    ax.plot(data.steps, data.loss, color="tab:blue", alpha=0.3 if span > 1 else 1.0, linewidth=0.8, label="loss (per step)")
    if span > 1:
        ax.plot(data.steps, smooth(data.loss, span), color="tab:blue", linewidth=1.8, label=f"smoothed (EMA span {span})")
    if use_log_scale(data.loss, scale):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if any(math.isfinite(v) for v in data.lr):
        lr_ax = ax.twinx()
        lr_ax.plot(data.steps, data.lr, color="tab:orange", linewidth=1.0, label="learning rate")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        more_handles, more_labels = lr_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title(_title(data))
    fig.tight_layout()
    return fig


def _title(data: RunFiles) -> str:
    task = data.result.get("task") or data.config.get("task", {}).get("name", "")
    return f"{task} · {data.dir.name}"


def stop_marks(data: RunFiles) -> list[tuple[int, str]]:
    """(epoch, label) of the moments worth a vertical line: the gate passing, early stopping."""
    meta, marks = data.result.get("metadata", {}), []
    if meta.get("gate_passed") and meta.get("gate_epoch"):
        marks.append((meta["gate_epoch"], f"gate passed (epoch {meta['gate_epoch']})"))
    if str(meta.get("stop_reason", "")).startswith("early stopping") and data.result.get("epochs"):
        marks.append((data.result["epochs"], f"early stopping (epoch {data.result['epochs']})"))
    return marks


def metrics_figure(data: RunFiles):
    """Each evaluation metric per evaluation, gate thresholds dashed, gate pass / early stop marked; None without any."""
    curves = data.eval_curves()
    if not curves:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    columns = 1 if len(curves) == 1 else 2
    rows = math.ceil(len(curves) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(7, 1.2 + 2.4 * rows), dpi=DPI, squeeze=False)
    gate = data.config.get("gate", {})
    best = data.result.get("best") or {}
    for ax, (name, values) in zip(axes.flat, curves.items()):
        ax.plot(data.eval_epochs, [_number(v) for v in values], marker="o", markersize=3, color="tab:blue")
        for side, symbol in (("above", ">"), ("below", "<")):
            if name in gate.get(side, {}):
                threshold = gate[side][name]
                ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"gate {symbol} {threshold:g}")
        if best.get("metric") == name and best.get("epoch") is not None:
            ax.plot([best["epoch"]], [best["value"]], marker="*", markersize=11, color="tab:green", linestyle="none",
                    label=f"best (epoch {best['epoch']})")
        for epoch, label in stop_marks(data):
            ax.axvline(epoch, color="tab:purple", linestyle=":", linewidth=1.2, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    fig.suptitle(f"evaluation metrics · {_title(data)}", fontsize=10)
    fig.tight_layout()
    return fig


def write_plots(run_dir: str | Path, task=None, loss_scale: str = "auto") -> list[Path]:
    """Draw the run's plots into <run>/plots; returns the files written. ``task``: the Task, for its own figures."""
    data = read_run(run_dir)
    figures = {"loss": loss_figure(data, loss_scale), "metrics": metrics_figure(data)}
    if task is None and data.config.get("task", {}).get("name"):
        task = _task_or_none(data.config["task"]["name"])
    if task is not None and data.result:
        figures.update(task.figures(data.dir, data.result))
    written = []
    for stem, fig in figures.items():
        if fig is not None:
            written.append(save_png(fig, data.dir / PLOTS / f"{stem}.png"))
    return written


def save_png(fig, path: Path) -> Path:
    """Write the figure as a PNG through io (the one write path, like every run file) and close it."""
    path.parent.mkdir(exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    pyplot().close(fig)
    atomic_write_bytes(path, png.getvalue())
    return path


def _task_or_none(name: str):
    from epochal.task import get_task

    try:
        return get_task(name)
    except EpochalError:  # a task registered by a script that is not loaded now: its own figures are skipped
        return None


class Plots(Callback):
    """Writes the plots at the end of every run (log.plots); a missing matplotlib is one warning line."""

    def __init__(self, task, loss_scale: str):
        self.task, self.loss_scale = task, loss_scale

    def on_fit_end(self, run) -> None:
        try:
            written = write_plots(run.dir, self.task, self.loss_scale)
        except EpochalError as err:
            run.print(f"warning: no plots: {err}")
            return
        if written:
            run.print(f"plots: {', '.join(str(path.relative_to(run.dir)) for path in written)}")
