"""`epochal report SWEEP_DIR`: one self-contained report.html per sweep folder.

Drawn from sweep.json (one entry per point: parameters, value, spread, status, failure
reason, run folders) and spec.toml (how each parameter is sampled), with report.py's pieces:
the sweep at a glance, the best points by the objective's direction, the metric against each
swept parameter (``plots/<metric>-vs-<parameter>.png``, embedded), every point at once
(parallel coordinates), the parameters' importance and the best points' curves (insight.py), the
failed and pruned points with their reasons, and every point with links to its run folders.

A point is what sweep.json lists; the trials column names the Optuna trials that tried it
(more than one after a retry or a duplicate draw).
"""

from __future__ import annotations

import os
import re
from html import escape as html_escape
from pathlib import Path
from typing import Any

from epochal.config import load_toml
from epochal.errors import ConfigError, EpochalError
from epochal.io import atomic_write_text
from epochal.plots import DPI, PLOTS, pyplot, save_png, use_log_scale
from epochal.run_folder import read_json
from epochal.html_parts import Markup, html_table, image_tag, page, section, status_badge
from epochal.status import GATE_FAILED
from epochal.sweep.insight import best_curves_figure, importances, parallel_figure
from epochal.sweep.spec import Choice, Range, SweepSpec, parse_spec

BEST = 5  # points in the best table: enough to tell a plateau from one lucky point
WHAT = "the sweep.json `epochal sweep` writes"
NUMBER = ((int, float, type(None)), "a number or null")  # null: not reached, or not finite
# The keys of a sweep.json point this report reads: their JSON types, and which must be there.
POINT_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "point": ((str,), "a string"), "params": ((dict,), "an object"), "status": ((str,), "a string"),
    "value": NUMBER, "std": NUMBER, "values": ((dict,), "an object"),
    "failure_reason": ((str, type(None)), "a string or null"), "trials": ((list,), "a list"),
    "runs": ((dict,), "an object")}
REQUIRED = ("point", "params", "status")


def is_sweep_folder(path: Path) -> bool:
    """sweep.json makes a sweep folder (spec.toml alone may be a folder of specs)."""
    return (path / "sweep.json").exists()


# ----------------------------------------------------------------------------- reading
def read_sweep(sweep_dir: Path) -> tuple[dict, SweepSpec]:
    """sweep.json and the spec, checked; one line naming the file and what is missing otherwise."""
    path = sweep_dir / "sweep.json"
    summary = read_json(path, WHAT)
    if not isinstance(summary, dict):
        raise EpochalError(f"{path}: not a JSON object; allowed: {WHAT}")
    missing = [key for key in ("metric", "direction", "points") if key not in summary]
    if missing:
        state = f" (sweep state {summary['state']!r})" if "state" in summary else ""
        raise EpochalError(f"{path}: no {', '.join(missing)} yet{state}; allowed: {WHAT} once its first worker "
                           "started")
    if not isinstance(summary["points"], list):
        raise EpochalError(f"{path}: points is not a list; allowed: {WHAT}")
    for index, entry in enumerate(summary["points"]):
        check_point(entry, f"{path}: points[{index}]")
    if summary["direction"] not in ("minimize", "maximize"):
        raise EpochalError(f"{path}: direction {summary['direction']!r}; allowed: minimize, maximize")
    spec_path = sweep_dir / "spec.toml"
    try:
        spec = parse_spec(load_toml(spec_path, label=""))
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(str(spec_path)) else f"{spec_path}: {message}") from None
    return summary, spec


def check_point(entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise EpochalError(f"{where}: not a JSON object; allowed: {WHAT}")
    for key in REQUIRED:
        if key not in entry:
            raise EpochalError(f"{where} has no {key}; allowed: {WHAT}")
    for key, (types, described) in POINT_TYPES.items():
        if key in entry and (not isinstance(entry[key], types) or isinstance(entry[key], bool)):
            raise EpochalError(f"{where}.{key}: {entry[key]!r} is not {described}; allowed: {WHAT}")


# ----------------------------------------------------------------------------- choosing
def point_status(entry: dict) -> str:
    """The point's status; sweeps written before gate_failed existed say failed with gate_passed false."""
    if entry["status"] == "failed" and entry.get("gate_passed") is False and mean_of_seeds(entry) is not None:
        return GATE_FAILED
    return entry["status"]


def analysed(summary: dict, include_failed: bool) -> list[dict]:
    """The points with a value that the best table and the plots read: completed ones, and gate-failed ones
    (at the mean of their seeds) only when asked for; seed 001 leaves failed configs out of analysis."""
    found = [e for e in summary["points"] if e["status"] == "completed" and e.get("value") is not None]
    if include_failed:
        found += [{**e, "value": mean_of_seeds(e)} for e in summary["points"] if point_status(e) == GATE_FAILED]
    return found


def gate_failed_points(summary: dict) -> list[dict]:
    return sorted((e for e in summary["points"] if point_status(e) == GATE_FAILED), key=first_trial)


def first_trial(entry: dict) -> int:
    """The trial that first tried the point: the order points were tried in (unknown ones last)."""
    return min(entry.get("trials") or [1 << 62])


def best_points(summary: dict, n: int = BEST, include_failed: bool = False) -> list[dict]:
    """The n completed points (and gate-failed ones if asked) with the best value, by the objective's
    direction; ties by trial order."""
    sign = 1 if summary["direction"] == "minimize" else -1
    done = analysed(summary, include_failed)
    return sorted(done, key=lambda e: (sign * e["value"], first_trial(e)))[:n]


def stopped_points(summary: dict) -> list[dict]:
    """Failed and pruned points (gate-failed ones have their own list), in the order they were tried."""
    return sorted((e for e in summary["points"] if point_status(e) in ("failed", "pruned")), key=first_trial)


# ----------------------------------------------------------------------------- tables
def run_links(entry: dict, sweep_dir: Path, report_dir: Path) -> Markup | None:
    """Links to the point's run folders (one per seed), relative to where the report is; None without any."""
    links = []
    for seed, run in sorted((entry.get("runs") or {}).items(), key=lambda item: int(item[0])):
        href = Path(os.path.relpath(sweep_dir / run, report_dir)).as_posix()
        links.append(f"<a href=\"{href}/\">{Path(run).name}</a>")
    return Markup("<br>".join(links)) if links else None


def point_row(entry: dict, names: list[str], sweep_dir: Path, report_dir: Path) -> list[Any]:
    """trials, point, each parameter, value, std, status, failure reason, runs."""
    trials = ", ".join(map(str, entry.get("trials") or [])) or None
    return [trials, entry["point"], *[entry["params"].get(name) for name in names], entry.get("value"),
            entry.get("std"), Markup(status_badge(point_status(entry))), entry.get("failure_reason") or "",
            run_links(entry, sweep_dir, report_dir)]


def points_table(entries: list[dict], summary: dict, names: list[str], sweep_dir: Path, report_dir: Path) -> str:
    headers = ["trials", "point", *names, summary["metric"], "std", "status", "failure reason", "runs"]
    return html_table(headers, [point_row(e, names, sweep_dir, report_dir) for e in entries])


def overview_section(summary: dict, spec: SweepSpec, include_failed: bool = False) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in (summary.get("counts") or {}).items() if n)
    value = {"last": "at the last evaluation", "best": "best over the evaluations"}[spec.value]
    best = best_points(summary, 1, include_failed)
    gate_failed = len(gate_failed_points(summary))
    rows = [["task", summary.get("task")], ["method", spec.method],
            ["objective", f"{summary['direction']} {summary['metric']} ({value}, mean over seeds)"],
            ["seeds", ", ".join(map(str, spec.seeds))],
            ["points", f"{len(summary['points'])} listed of {summary.get('points_asked', '?')} asked"
                       + (f": {counts}" if counts else "")],
            ["gate-failed points", (f"{gate_failed}, " + ("included in the best points and plots (--include-failed)"
                                    if include_failed else "left out of the best points and plots, listed apart"))
             if gate_failed else "none"],
            ["state", summary.get("state")], ["storage", summary.get("storage")],
            ["created", summary.get("created")], ["updated", summary.get("updated")]]
    if best:
        shown = ", ".join(f"{k} = {v}" for k, v in best[0]["params"].items())
        rows.append(["best point", f"{best[0]['point']}: {shown} ({summary['metric']} {best[0]['value']:.4g})"])
    return section("Sweep", html_table(None, rows))


# ----------------------------------------------------------------------------- plots
def categories(param: Choice, seen: list[Any]) -> list[Any]:
    """The choices in the spec's order, then any value sweep.json has that the spec does not."""
    found = list(param.values)
    return found + [v for v in dict.fromkeys(seen) if v not in found]


def mean_of_seeds(entry: dict) -> float | None:
    """A failed point's mean over the seeds that gave a value (a gate not passed); None if none did."""
    numbers = [v for v in entry.get("values", {}).values() if isinstance(v, (int, float))]
    return sum(numbers) / len(numbers) if numbers else None


def x_positions(ax, param: Choice | Range, values: list[Any]) -> list[Any]:
    """Where the values go on the x axis: a range spans the searched interval (log if the spec samples its
    logarithm), so the plot shows where in the space the points fell; choices are categories in the spec's order."""
    if isinstance(param, Choice):
        labels = categories(param, values)
        ax.set_xticks(range(len(labels)), [str(v) for v in labels])
        ax.set_xlim(-0.5, len(labels) - 0.5)
        return [labels.index(v) for v in values]
    if param.log:
        ax.set_xscale("log")
        pad = (param.high / param.low) ** 0.03  # 3% of the axis either side: points on a bound stay whole
        ax.set_xlim(param.low / pad, param.high * pad)
    else:
        pad = (param.high - param.low) * 0.03
        ax.set_xlim(param.low - pad, param.high + pad)
    return values


def parameter_figure(summary: dict, name: str, param: Choice | Range, include_failed: bool = False):
    """The metric of each completed point against one parameter, mean ± std over seeds, the best starred, and
    (``include_failed``) gate-failed points crossed at the mean of their seeds; None without a completed point."""
    done = [e for e in summary["points"] if e["status"] == "completed" and e.get("value") is not None]
    if not done:
        return None
    failed = gate_failed_points(summary) if include_failed else []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=DPI)
    xs = x_positions(ax, param, [e["params"][name] for e in done + failed])
    ys = [e["value"] for e in done]
    ax.errorbar(xs[:len(done)], ys, yerr=[e.get("std") or 0.0 for e in done], fmt="o", capsize=3,
                color="tab:blue", label="completed (mean ± std over seeds)")
    if failed:
        ys += [mean_of_seeds(e) for e in failed]
        ax.plot(xs[len(done):], ys[len(done):], marker="x", markersize=8, color="tab:red", linestyle="none",
                label="gate_failed (mean of the seeds)")
    best = best_points(summary, 1)[0]
    ax.plot([xs[done.index(best)]], [best["value"]], marker="*", markersize=14, color="tab:green",
            linestyle="none", label=f"best ({best['point']})")
    if use_log_scale(ys, "auto"):
        ax.set_yscale("log")
    ax.set_xlabel(name + (" (log scale)" if isinstance(param, Range) and param.log else ""))
    ax.set_ylabel(f"{summary['metric']} ({summary['direction']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{summary['metric']} vs {name} · {len(done)} completed points", fontsize=10)
    fig.tight_layout()
    return fig


def plot_path(sweep_dir: Path, metric: str, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{metric}-vs-{name}")
    return sweep_dir / PLOTS / f"{safe}.png"


def write_sweep_plots(sweep_dir: Path, summary: dict, spec: SweepSpec, include_failed: bool = False) -> list[Path]:
    """One plot per swept parameter into <sweep>/plots; returns the files written."""
    written = []
    for name, param in spec.space.items():
        fig = parameter_figure(summary, name, param, include_failed)
        if fig is not None:
            written.append(save_png(fig, plot_path(sweep_dir, summary["metric"], name)))
    return written


# ----------------------------------------------------------------------------- the page
def table_or(entries: list[dict], summary: dict, names: list[str], sweep_dir: Path, report_dir: Path,
             empty: str) -> str:
    return points_table(entries, summary, names, sweep_dir, report_dir) if entries else f"<p>{empty}</p>"


def plots_section(sweep_dir: Path, summary: dict, spec: SweepSpec, include_failed: bool = False) -> str:
    caption = ("completed points and gate-failed ones (crossed)" if include_failed else
               "completed points; gate-failed, failed and pruned points are listed below")
    images = [image_tag(path, f"{path.relative_to(sweep_dir)}: {caption}")
              for path in write_sweep_plots(sweep_dir, summary, spec, include_failed)]
    return section(f"{summary['metric']} vs each swept parameter", "\n".join(images) or "<p>No point completed yet.</p>")


def insight_sections(sweep_dir: Path, summary: dict, spec: SweepSpec, include_failed: bool = False) -> list[str]:
    """Every point at once (parallel coordinates), the parameters' importance, the best points' curves."""
    points = [e for e in analysed(summary, include_failed) if e.get("value") is not None]
    metric = summary["metric"]
    figure = parallel_figure(summary, spec, points)
    every = (image_tag(save_png(figure, sweep_dir / PLOTS / "parallel-coordinates.png"),
                       f"{PLOTS}/parallel-coordinates.png: each line a point, its parameters, then the objective")
             if figure is not None else "<p>Fewer than two completed points.</p>")
    found, note = importances(summary, spec, points)
    ranked = html_table(["parameter", "importance"], sorted(found.items(), key=lambda kv: -kv[1])) if found else ""
    figure = best_curves_figure(summary, best_points(summary, include_failed=include_failed), sweep_dir)
    curves = (image_tag(save_png(figure, sweep_dir / PLOTS / "best-curves.png"),
                        f"{PLOTS}/best-curves.png: the best points' curves, the first seed's run of each")
              if figure is not None else "<p>No run folder of a best point has curves yet.</p>")
    return [section("Every point at once", every),
            section(f"Which parameters mattered for {metric}", f"<p>{html_escape(note)}</p>{ranked}"),
            section(f"Curves of the best points (top {BEST})", curves)]


def sweep_sections(sweep_dir: Path, summary: dict, spec: SweepSpec, report_dir: Path,
                   include_failed: bool = False) -> list[str]:
    names, metric = list(spec.space), summary["metric"]
    in_order = sorted(summary["points"], key=first_trial)
    apart = "included above (--include-failed)" if include_failed else "left out of the best points and the plots"
    return [
        overview_section(summary, spec, include_failed),
        section(f"Best points (top {BEST}, {summary['direction']} {metric})", table_or(
            best_points(summary, include_failed=include_failed), summary, names, sweep_dir, report_dir,
            "No point completed yet.")),
        plots_section(sweep_dir, summary, spec, include_failed),
        *insight_sections(sweep_dir, summary, spec, include_failed),
        section(f"Gate-failed points ({apart})", table_or(
            gate_failed_points(summary), summary, names, sweep_dir, report_dir, "None.")),
        section("Failed and pruned points", table_or(
            stopped_points(summary), summary, names, sweep_dir, report_dir, "None.")),
        section("All points, in the order they were tried", table_or(
            in_order, summary, names, sweep_dir, report_dir, "No point tried yet.")),
    ]


def sweep_report(sweep_dir: str | Path, out: str | Path | None = None, include_failed: bool = False) -> Path:
    """Draw the sweep's plots and write its report.html (into the sweep folder unless ``out``); gate-failed
    points are listed apart, and only ``include_failed`` ranks and plots them."""
    sweep_dir = Path(sweep_dir)
    summary, spec = read_sweep(sweep_dir)
    target = Path(out) if out else sweep_dir / "report.html"
    title = f"sweep {summary.get('sweep', sweep_dir.name)} · {summary.get('task', spec.task)}"
    atomic_write_text(target, page(title, sweep_sections(sweep_dir, summary, spec, target.resolve().parent,
                                                          include_failed)))
    return target
