"""`epochal report PATH`: one self-contained report.html per run folder.

No network and no scripts: styles inline, images embedded as data URIs, so the file
can be mailed or attached as it is. A run report holds the status and failure reason,
the metrics (last evaluation, best, gate, test metrics of the last and best weights),
the plots (plots.py, redrawn from the folder), a provenance summary (env.json) and the
resolved config.

The HTML pieces live in html_parts.py, shared with the sweep report (sweep/report.py).
``report`` dispatches: a run folder or a sweep folder.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from epochal.io import atomic_write_text
from epochal.errors import EpochalError
from epochal.html_parts import html_table, image_tag, page, section, status_badge
from epochal.plots import PLOTS, RunFiles, read_run, write_plots
from epochal.status import GATE_FAILED, status_of
from epochal.sweep.report import is_sweep_folder, sweep_report


def run_summary(data: RunFiles) -> dict[str, Any]:
    """One run at a glance (a sweep's runs table has one of these per trial)."""
    result, meta = data.result, data.result.get("metadata", {})
    best = result.get("best") or {}
    return {"run": data.dir.name, "status": status_of(result), "epochs": result.get("epochs"),
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
def status_section(data: RunFiles) -> str:
    result, meta = data.result, data.result.get("metadata", {})
    if not result:
        return section("Status", f"<p>{status_badge('running')} no result.json yet: the run has not finished an "
                                 "epoch, or it stopped before one ended.</p>")
    status = status_of(result)
    rows = [["status", status], ["stop reason", meta.get("stop_reason", "")]]
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
    note = ("<p>The gate was not passed: a failed config (seed 001). Analyses leave it out unless asked "
            "(<code>epochal runs --passed</code>, <code>compare --include-failed</code>).</p>\n"
            if status == GATE_FAILED else "")
    return section("Status", f"<p>{status_badge(status)}</p>\n" + note + html_table(None, rows))


def metrics_section(data: RunFiles) -> str:
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


def plots_section(data: RunFiles) -> str:
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


def run_sections(data: RunFiles) -> list[str]:
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


def report(path: str | Path, loss_scale: str = "auto", out: str | Path | None = None,
           include_failed: bool = False) -> Path:
    """The report of whatever ``path`` is: a run folder or a sweep folder (``loss_scale`` is for runs,
    ``include_failed`` for sweeps: plot and rank gate-failed points too)."""
    path = Path(path)
    if not path.is_dir():
        raise EpochalError(f"{path}: no such folder; {ALLOWED}")
    if is_sweep_folder(path):
        return sweep_report(path, out, include_failed)
    if not any((path / name).exists() for name in ("config.toml", "result.json")):
        raise EpochalError(f"{path}: not a run folder (no config.toml or result.json) nor a sweep folder "
                           f"(no sweep.json); {ALLOWED}")
    return run_report(path, loss_scale, out)
