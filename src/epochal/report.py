"""`epochal report PATH`: one self-contained report.html per run folder.

No network and no scripts: styles inline, images embedded as data URIs, so the file
can be mailed or attached as it is. A run report holds the status and failure reason,
the metrics (last evaluation, best, gate, test metrics of the last and best weights),
the plots (plots.py, redrawn from the folder), a provenance summary (env.json) and the
resolved config.

The pieces are separate so the sweep report (sweep/report.py) reuses them: ``page`` (the
HTML shell), ``html_table`` (``Markup`` cells pass through unescaped), ``image_tag``,
``status_badge``, ``run_summary`` (one run as a table row) and ``run_sections`` (a run's
report body). ``report`` dispatches: a run folder or a sweep folder.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from pathlib import Path
from typing import Any, Iterable

from epochal.io import atomic_write_text
from epochal.errors import EpochalError
from epochal.plots import PLOTS, RunData, read_run, write_plots

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; } th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f7; padding: .8rem; overflow-x: auto; font-size: .8rem; }
figure { margin: 1rem 0; } figcaption { font-size: .85rem; color: #555; } img { max-width: 100%; }
.badge { display: inline-block; padding: .1rem .5rem; border-radius: .3rem; color: white; font-weight: 600; }
.completed { background: #2a7d2a; } .failed { background: #b22; } .preempted { background: #c80; }
.pruned { background: #a60; } .running, .unknown, .waiting, .interrupted { background: #777; }
.muted { color: #666; font-size: .85rem; }
"""


# ----------------------------------------------------------------------------- reusable pieces
def page(title: str, sections: Iterable[str]) -> str:
    """A complete HTML document: ``sections`` are HTML fragments, placed in order."""
    generated = datetime.datetime.now().isoformat(timespec="seconds")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(sections)
            + f"\n<p class=\"muted\">written by epochal report, {generated}</p>\n</body></html>\n")


def section(heading: str, body: str) -> str:
    return f"<h2>{html.escape(heading)}</h2>\n{body}"


class Markup(str):
    """HTML a table cell shows as it is (a badge, a link); every other string is escaped."""


def cell(value: Any) -> str:
    """A table cell: numbers right-aligned to 4 significant digits, None as a dash, the rest escaped."""
    if isinstance(value, Markup):
        return f"<td>{value}</td>"
    if isinstance(value, bool) or value is None:
        return f"<td>{'–' if value is None else ('yes' if value else 'no')}</td>"
    if isinstance(value, (int, float)):
        text = f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
        return f"<td class=\"num\">{text}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def html_table(headers: list[str] | None, rows: list[list[Any]]) -> str:
    """A table; without headers the first column names each row."""
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>\n" if headers else ""
    body = "".join("<tr>" + "".join(cell(v) if i or headers else f"<th>{html.escape(str(v))}</th>"
                                     for i, v in enumerate(row)) + "</tr>\n" for row in rows)
    return f"<table>{head}{body}</table>"


def image_tag(path: Path, caption: str = "") -> str:
    """A PNG embedded as a data URI, in a figure with a caption."""
    data = base64.b64encode(path.read_bytes()).decode()
    alt = html.escape(caption or path.stem)
    return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{alt}\">"
            f"<figcaption>{alt}</figcaption></figure>")


def status_badge(status: str | None) -> str:
    status = status or "unknown"
    return f"<span class=\"badge {html.escape(status)}\">{html.escape(status)}</span>"


def run_summary(data: RunData) -> dict[str, Any]:
    """One run at a glance (a sweep's runs table has one of these per trial)."""
    result, meta = data.result, data.result.get("metadata", {})
    best = result.get("best") or {}
    return {"run": data.dir.name, "status": result.get("status", "running"), "epochs": result.get("epochs"),
            "steps": result.get("steps"), "final_loss": next((v for v in reversed(data.loss) if math.isfinite(v)), None),
            "best": best.get("value"), "best_metric": best.get("metric"), "reason": failure_reason(result) or meta.get(
                "stop_reason", ""), **{f"metric/{k}": v for k, v in (result.get("metrics") or {}).items()}}


def failure_reason(result: dict) -> str:
    """Why a run did not succeed: the failure reason, or the stop reason of a failed or preempted run."""
    meta = result.get("metadata", {})
    if meta.get("failure_reason"):
        return meta["failure_reason"]
    return meta.get("stop_reason", "") if result.get("status") in ("failed", "preempted") else ""


# ------------------------------------------------------------------------------- run report
def status_section(data: RunData) -> str:
    result, meta = data.result, data.result.get("metadata", {})
    if not result:
        return section("Status", f"<p>{status_badge('running')} no result.json yet: the run has not finished an "
                                 "epoch, or it stopped before one ended.</p>")
    rows = [["status", result.get("status")], ["stop reason", meta.get("stop_reason", "")]]
    reason = failure_reason(result)
    if reason:
        rows.append(["failure reason", reason])
    rows += [["epochs", result.get("epochs")], ["optimizer steps", result.get("steps")],
             ["training seconds", meta.get("train_seconds")]]
    if "gate" in meta:
        passed = f"passed at epoch {meta['gate_epoch']}" if meta.get("gate_passed") else "not passed"
        rows.append([f"gate ({meta['gate']})", passed])
    if meta.get("bad_steps"):
        rows.append(["non-finite steps", ", ".join(map(str, meta["bad_steps"][:20]))])
    return section("Status", f"<p>{status_badge(result.get('status'))}</p>\n" + html_table(None, rows))


def metrics_section(data: RunData) -> str:
    result = data.result
    parts = []
    if result.get("metrics"):
        parts.append("<p>Last evaluation</p>" + html_table(["metric", "value"], [[k, v] for k, v in result["metrics"].items()]))
    best = result.get("best") or {}
    if best.get("value") is not None:
        parts.append(f"<p>Best {html.escape(best['metric'])} ({best['mode']}): epoch {best['epoch']}</p>"
                     + html_table(["metric", "value"], [[k, v] for k, v in best.get("metrics", {}).items()]))
    tested = result.get("test") or {}
    if tested:
        names = list(next(iter(tested.values())) or {})
        parts.append("<p>Test metrics</p>" + html_table(
            ["metric", *[f"{weights} weights" for weights in tested]],
            [[name, *[(tested[w] or {}).get(name) for w in tested]] for name in names]))
    return section("Metrics", "\n".join(parts) or "<p>No evaluation yet.</p>")


def plots_section(data: RunData) -> str:
    images = sorted((data.dir / PLOTS).glob("*.png"), key=lambda p: ({"loss": 0, "metrics": 1}.get(p.stem, 2), p.stem))
    images += sorted(data.dir.glob("*.png"))  # figures a task writes itself (flow: samples.png)
    return section("Plots", "\n".join(image_tag(path, caption_of(path, data.dir)) for path in images)
                   or "<p>No plots: nothing was logged yet.</p>")


def caption_of(path: Path, run_dir: Path) -> str:
    captions = {"loss": "training loss per step, raw and smoothed, with the learning rate",
                "metrics": "evaluation metrics per evaluation; gate thresholds dashed"}
    return f"{path.relative_to(run_dir)}: {captions[path.stem]}" if path.stem in captions else str(path.relative_to(run_dir))


def provenance_section(run_dir: Path) -> str:
    path = run_dir / "env.json"
    if not path.exists():
        return section("Provenance", "<p>No env.json.</p>")
    env = json.loads(path.read_text())
    git = env.get("git") or {}
    commit = (git.get("commit") or "")[:12] or None
    rows = [["epochal", env.get("epochal")],
            ["git commit", f"{commit}{' (uncommitted changes)' if git.get('dirty') else ''}" if commit else None],
            ["python / torch / numpy", f"{env.get('python')} / {env.get('torch')} / {env.get('numpy')}"],
            ["device", env.get("device")], ["GPUs", ", ".join(env.get("gpus", [])) or None],
            ["host / platform", f"{env.get('host')} / {env.get('platform')}"], ["seed", env.get("seed")],
            ["started", env.get("started")], ["command", " ".join(env.get("command") or []) or None]]
    return section("Provenance", html_table(None, rows))


def config_section(run_dir: Path) -> str:
    path = run_dir / "config.toml"
    text = path.read_text() if path.exists() else "(no config.toml)"
    return section("Config", f"<pre>{html.escape(text)}</pre>")


def run_sections(data: RunData) -> list[str]:
    return [status_section(data), metrics_section(data), plots_section(data), provenance_section(data.dir),
            config_section(data.dir)]


def run_report(run_dir: str | Path, loss_scale: str = "auto", out: str | Path | None = None) -> Path:
    """Redraw the run's plots and write its report.html (into the run folder unless ``out``)."""
    run_dir = Path(run_dir)
    write_plots(run_dir, loss_scale=loss_scale)
    data = read_run(run_dir)
    task = data.result.get("task") or data.config.get("task", {}).get("name", "")
    target = Path(out) if out else run_dir / "report.html"
    atomic_write_text(target, page(f"{task} · {run_dir.name}", run_sections(data)))
    return target


ALLOWED = "allowed: a run folder made by `epochal run` or a sweep folder made by `epochal sweep`"


def report(path: str | Path, loss_scale: str = "auto", out: str | Path | None = None) -> Path:
    """The report of whatever ``path`` is: a run folder or a sweep folder (``loss_scale`` is for runs)."""
    path = Path(path)
    if not path.is_dir():
        raise EpochalError(f"{path}: no such folder; {ALLOWED}")
    # Imported here: the sweep report is built from this module's pieces.
    from epochal.sweep.report import is_sweep_folder, sweep_report

    if is_sweep_folder(path):
        return sweep_report(path, out)
    if not any((path / name).exists() for name in ("config.toml", "result.json")):
        raise EpochalError(f"{path}: not a run folder (no config.toml or result.json) nor a sweep folder "
                           f"(no sweep.json); {ALLOWED}")
    return run_report(path, loss_scale, out)
