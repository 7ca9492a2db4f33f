"""What a sweep report adds over the per-parameter plots: every point at once (parallel coordinates),
which parameters mattered (Optuna's PED-ANOVA importance), and the curves of the best points.

All of it is computed from sweep.json and the points' run folders: the importance is asked of an
in-memory Optuna study rebuilt from the points, so no database (or its password) is needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from epochal.errors import EpochalError
from epochal.plots import DPI, pyplot, use_log_scale
from epochal.run_folder import read_json
from epochal.sweep.spec import Choice, Range, SweepSpec

FEWEST_FOR_IMPORTANCE = 5  # completed points below which an importance says nothing


def _axis_position(param: Choice | Range, value: Any) -> float | None:
    """Where a value sits on its parameter's axis, 0 to 1: the searched interval (log where the spec samples
    the logarithm), or the choices spread evenly in the spec's order."""
    if isinstance(param, Choice):
        choices = list(param.values)
        if value not in choices:
            return None
        return choices.index(value) / max(1, len(choices) - 1)
    if not isinstance(value, (int, float)):
        return None
    low, high, v = (math.log(x) for x in (param.low, param.high, value)) if param.log else (param.low, param.high, value)
    return (v - low) / (high - low) if high > low else 0.5


def parallel_figure(summary: dict, spec: SweepSpec, points: list[dict]):
    """One line per completed point through one axis per parameter and a last one for the objective, colored
    by the objective; None with fewer than two points."""
    if len(points) < 2:
        return None
    plt = pyplot()
    names = list(spec.space)
    values = [e["value"] for e in points]
    low, high = min(values), max(values)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * (len(names) + 1)), 4), dpi=DPI)
    colors = plt.get_cmap("viridis_r" if summary["direction"] == "minimize" else "viridis")
    for entry in sorted(points, key=lambda e: e["value"], reverse=summary["direction"] == "minimize"):
        ys = [_axis_position(spec.space[n], entry["params"].get(n)) for n in names]
        ys.append((entry["value"] - low) / (high - low) if high > low else 0.5)
        shade = ys[-1] if summary["direction"] == "maximize" else 1 - ys[-1]
        ax.plot(range(len(ys)), [y if y is not None else math.nan for y in ys], color=colors(shade), alpha=0.8,
                marker="o", markersize=3)
    labels = [_axis_label(n, spec.space[n]) for n in names] + [f"{summary['metric']}\n{low:.3g} .. {high:.3g}"]
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_yticks([0, 1], ["low", "high"])
    for x in range(len(labels)):
        ax.axvline(x, color="0.7", linewidth=0.8)
    ax.set_title(f"{len(points)} completed points; darker: better {summary['metric']}", fontsize=10)
    fig.tight_layout()
    return fig


def _axis_label(name: str, param: Choice | Range) -> str:
    if isinstance(param, Choice):
        return f"{name}\n{' | '.join(map(str, param.values))}"
    return f"{name}\n{param.low:g} .. {param.high:g}{' (log)' if param.log else ''}"


def importances(summary: dict, spec: SweepSpec, points: list[dict]) -> tuple[dict[str, float] | None, str]:
    """(parameter -> importance, a note): Optuna's PED-ANOVA on the completed points; None and why when it
    cannot say anything (too few points, one parameter, Optuna missing)."""
    if len(spec.space) < 2:
        return None, "one swept parameter: nothing to compare it with"
    if len(points) < FEWEST_FOR_IMPORTANCE:
        return None, f"too few points for an importance: {len(points)} completed, at least {FEWEST_FOR_IMPORTANCE}"
    try:
        import optuna
        from optuna.importance import PedAnovaImportanceEvaluator
    except ImportError:
        return None, "needs optuna: pip install 'epochal[sweep]'"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction=summary["direction"])  # in memory: no storage, no password
    distributions = {name: _distribution(optuna, param) for name, param in spec.space.items()}
    for entry in points:
        params = {n: entry["params"][n] for n in distributions if n in entry["params"]}
        if len(params) == len(distributions):
            study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=entry["value"]))
    try:
        found = optuna.importance.get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    except Exception as err:  # a degenerate sweep (every value equal): say so instead of a broken report
        return None, f"no importance: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    return dict(found), "Optuna's PED-ANOVA over the completed points (mean over seeds)"


def _distribution(optuna, param: Choice | Range):
    if isinstance(param, Choice):
        return optuna.distributions.CategoricalDistribution(list(param.values))
    if param.integer:
        return optuna.distributions.IntDistribution(int(param.low), int(param.high), log=param.log,
                                                    step=int(param.step or 1))
    return optuna.distributions.FloatDistribution(param.low, param.high, log=param.log, step=param.step)


def best_curves_figure(summary: dict, points: list[dict], sweep_dir: Path):
    """The training loss and the objective's evaluation curve of each best point's first run, overlaid;
    None when no run folder has curves."""
    curves = []
    for entry in points:
        runs = entry.get("runs") or {}
        if not runs:
            continue
        first = runs[min(runs, key=int)]
        try:
            result = read_json(sweep_dir / first / "result.json", "a run's result.json")
        except EpochalError:  # a run still starting, or moved: the others are drawn
            continue
        if isinstance(result, dict) and result.get("curves"):
            curves.append((entry, result))
    if not curves:
        return None
    plt = pyplot()
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=DPI)
    metric = summary["metric"]
    losses = []
    for entry, result in curves:
        loss = result["curves"].get("train_loss") or []
        losses += [x for x in loss if isinstance(x, (int, float))]
        loss_ax.plot(range(1, len(loss) + 1), loss, linewidth=1, label=entry["point"])
        values = result["curves"].get(metric) or []
        metric_ax.plot((result.get("eval_epochs") or list(range(1, len(values) + 1)))[:len(values)], values,
                       marker="o", markersize=3, label=entry["point"])
    if use_log_scale(losses, "auto"):
        loss_ax.set_yscale("log")
    loss_ax.set(xlabel="step", ylabel="training loss", title="training loss")
    metric_ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} (first seed's run)")
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
