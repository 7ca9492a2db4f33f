"""``epochal runs`` and ``epochal compare``: list, filter and compare run folders.

A run folder is any folder with a config.toml (single runs and sweep trials alike);
the index reads config.toml, result.json and, for sweep trials, trial.json. Nothing
here writes to a run folder.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from epochal.config import flat, parse_override
from epochal.errors import ConfigError, EpochalError
from epochal.lock import held as lock_held
from epochal.status import COMPLETED, GATE_FAILED, status_of

# Settings that say where a run lives, not what it computes: never "a setting that differs".
PLACE_KEYS = {"experiment_id", "out_dir", "group", "train.progress"}
FIXED_COLUMNS = ("run", "task", "status", "gate_passed", "failure_reason")
OPERATORS = ("!=", "<=", ">=", "=", "<", ">")


# ----------------------------------------------------------------- reading run folders
def find_runs(paths: list[str | Path]) -> list[Path]:
    """Every run folder at or under ``paths``, in path order; a run folder's own sub-folders are not searched."""
    found: list[Path] = []
    for root in map(Path, paths or ["results"]):
        if not root.exists():
            raise EpochalError(f"{root}: no such folder; allowed: run folders or folders that hold them")
        for folder, subfolders, files in os.walk(root):
            subfolders.sort()
            if "config.toml" in files:
                found.append(Path(folder))
                subfolders.clear()
    return found


def lock_alive(folder: Path) -> bool:
    """Whether a live process is running this folder (its OS lock is held); reads only."""
    return lock_held(folder)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_run(folder: Path) -> dict[str, Any]:
    """One run folder as a row: identity, status, gate, failure reason, settings and metrics."""
    try:
        settings = flat(tomllib.loads((folder / "config.toml").read_text()))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise EpochalError(f"{folder / 'config.toml'}: unreadable ({err})") from None
    result = _read_json(folder / "result.json")
    trial = _read_json(folder / "trial.json")
    meta = result.get("metadata", {})
    status = _live_status(folder, status_of(result) if result else "not started")
    failure = meta.get("failure_reason") or (meta.get("stop_reason") if status in ("failed", "pruned") else None)
    row: dict[str, Any] = {
        "run": str(folder), "task": result.get("task") or settings.get("task.name"), "status": status,
        "gate_passed": meta.get("gate_passed"), "failure_reason": failure or "",
        "trial": (trial.get("trials") or [None])[0], "point": trial.get("point"),
        "epochs": result.get("epochs"), "steps": result.get("steps"),
    }
    curve = result.get("curves", {}).get("train_loss") or []
    row["train_loss"] = curve[-1] if curve else None
    row.update({name: value for name, value in result.get("metrics", {}).items()})
    best = result.get("best") or {}
    if best.get("metric"):
        row[f"best_{best['metric']}"] = best.get("value")
        row["best_epoch"] = best.get("epoch")
    return {"row": row, "settings": settings, "result": result}


def _live_status(folder: Path, status: str) -> str:
    """A run without a final status is running if a live process holds its folder, else interrupted."""
    if status in ("running", "not started", "interrupted"):
        return "running" if lock_alive(folder) else "interrupted"
    return status


def _index_record(folder: Path) -> dict:
    """What the index keeps of a folder (no curves): its row with test metrics and duration, its settings;
    a folder that cannot be read is a row of its own, status "damaged"."""
    try:
        record = read_run(folder)
    except EpochalError as err:
        return {"row": {"run": str(folder), "task": None, "status": "damaged", "gate_passed": None,
                        "failure_reason": str(err), "trial": None, "point": None}, "settings": {}}
    result = record["result"]
    row = record["row"]
    row["seconds"] = result.get("metadata", {}).get("train_seconds")
    for weights, metrics in (result.get("test") or {}).items():
        row.update({f"test/{weights}/{name}": value for name, value in (metrics or {}).items()})
    return {"row": row, "settings": record["settings"]}


def index_records(paths: list[str | Path]) -> list[dict]:
    """The index record of every run folder under ``paths``, read through the cache (index_cache.py)."""
    from epochal.index_cache import cached_rows

    records = cached_rows(find_runs(list(paths)), _index_record)
    for record in records:  # whether a process holds a folder is never cached
        row = record["row"]
        if row["status"] != "damaged":
            row["status"] = _live_status(Path(row["run"]), row["status"])
    return records


# ----------------------------------------------------------------- the index
def differing(records: list[dict]) -> list[str]:
    """Settings whose values are not the same in every listed run."""
    keys = sorted({k for r in records for k in r["settings"]} - PLACE_KEYS)
    return [k for k in keys if len({json.dumps(r["settings"].get(k), sort_keys=True) for r in records}) > 1]


def parse_where(text: str) -> tuple[str, str, Any]:
    match = re.fullmatch(r"\s*([^!<>=\s]+)\s*(!=|<=|>=|=|<|>)(.*)", text)
    if not match:
        raise ConfigError(f"--where {text!r}: expected KEY=VALUE (or !=, <, <=, >, >=)")
    key, op, raw = match.groups()
    return key, op, parse_override(f"v={raw.strip()}")[1]


def _lookup(record: dict, key: str) -> tuple[bool, Any]:
    if key in record["row"]:
        return True, record["row"][key]
    if key in record["settings"]:
        return True, record["settings"][key]
    return False, None


def _matches(value: Any, op: str, wanted: Any) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, wanted))
    if op in ("=", "!="):
        same = value == wanted if numbers or isinstance(wanted, bool) else str(value) == str(wanted)
        if isinstance(wanted, bool) and not isinstance(value, bool):
            same = False
        return same if op == "=" else not same
    if not numbers:
        return False
    return {"<": value < wanted, "<=": value <= wanted, ">": value > wanted, ">=": value >= wanted}[op]


def select(records: list[dict], wheres: list[str]) -> list[dict]:
    for text in wheres:
        key, op, wanted = parse_where(text)
        if records and not any(_lookup(r, key)[0] for r in records):
            raise ConfigError(f"--where {key}: no run has it; {_close_keys(key, records)}")
        records = [r for r in records if _lookup(r, key)[0] and _matches(_lookup(r, key)[1], op, wanted)]
    return records


def _close_keys(key: str, records: list[dict]) -> str:
    """The known column, setting and metric names nearest to a misspelt ``key``, for its error line."""
    import difflib

    known = sorted({k for r in records for k in r["row"]} | {k for r in records for k in r["settings"]})
    close = difflib.get_close_matches(key, known, n=6, cutoff=0.5) or known[:12]
    return f"allowed, for example: {', '.join(close)}"


def choose_columns(records: list[dict], columns: list[str]) -> list[dict[str, Any]]:
    """Only ``columns`` of each row (any metric or setting may be named, shown or not by default)."""
    for name in columns:
        if records and not any(_lookup(r, name)[0] for r in records):
            raise ConfigError(f"--columns {name}: no run has it; {_close_keys(name, records)}")
    return [{name: _lookup(record, name)[1] for name in columns} for record in records]


def sort_records(records: list[dict], key: str | None) -> list[dict]:
    if not key:
        return records
    descending = key.startswith("-")
    key = key.lstrip("-")
    present = [r for r in records if _lookup(r, key)[1] is not None]
    missing = [r for r in records if _lookup(r, key)[1] is None]
    if records and not any(_lookup(r, key)[0] for r in records):
        raise ConfigError(f"--sort {key}: no run has it; allowed: a metric, a setting or a column of the table")
    try:
        present.sort(key=lambda r: _lookup(r, key)[1], reverse=descending)
    except TypeError:
        present.sort(key=lambda r: str(_lookup(r, key)[1]), reverse=descending)
    return present + missing


def index_rows(records: list[dict]) -> list[dict[str, Any]]:
    """The rows shown: fixed columns, trial (sweeps), the differing settings, then metrics."""
    varying = differing(records)
    metric_keys: list[str] = []
    for r in records:
        for k in r["row"]:
            if k not in (*FIXED_COLUMNS, "trial", "point") and k not in metric_keys:
                metric_keys.append(k)
    has_trials = any(r["row"]["trial"] is not None for r in records)
    rows = []
    for r in records:
        row = {k: r["row"][k] for k in FIXED_COLUMNS}
        if has_trials:
            row["trial"] = r["row"]["trial"]
        row.update({k: r["settings"].get(k) for k in varying})
        row.update({k: r["row"].get(k) for k in metric_keys})
        rows.append(row)
    return rows


def runs_index(paths: list[str | Path], wheres: list[str] = (), sort: str | None = None,
               passed: bool = False, columns: list[str] = ()) -> list[dict[str, Any]]:
    """The index rows; ``passed`` keeps only runs that completed and passed their gate (if they have one);
    ``columns`` names the columns to show instead of the default ones."""
    records = index_records(paths)
    if passed:
        records = [r for r in records if r["row"]["status"] == COMPLETED]
    records = sort_records(select(records, list(wheres)), sort)
    return choose_columns(records, list(columns)) if columns else index_rows(records)


def load_runs(paths: str | Path | list[str | Path] = "results", include_failed: bool = False):
    """Every run folder under ``paths`` (nested folders and sweeps too) as a pandas DataFrame, one row a run:
    its folder (``run``) and ``id``, status, gate, failure reason, sweep trial and point, every setting
    flattened (``optim.lr``), final and best metrics, test metrics (``test/last/...``), ``seconds`` trained.
    Gate-failed runs are left out with a warning naming how many, unless ``include_failed``; a folder that
    cannot be read is a row with status "damaged". Read through a cache (index_cache.py)."""
    try:
        import pandas
    except ImportError:
        raise EpochalError("load_runs needs pandas; install it with pip install 'epochal[analysis]'") from None
    records, left_out = split_gate_failed(index_records([paths] if isinstance(paths, (str, Path)) else paths),
                                          include_failed)
    if left_out:
        import warnings

        from epochal.analysis import GateFailedWarning

        warnings.warn(f"load_runs: left out {len(left_out)} gate-failed run(s) (seed 001 keeps failed configs out "
                      "of analysis); include_failed=True brings them in", GateFailedWarning, stacklevel=2)
    rows = [{"run": r["row"]["run"], "id": Path(r["row"]["run"]).name, **r["row"], **r["settings"]}
            for r in records]
    return pandas.DataFrame(rows)


def split_gate_failed(records: list[dict], include_failed: bool) -> tuple[list[dict], list[dict]]:
    """(runs to analyse, gate-failed runs left out): seed 001 keeps failed configs out of analysis unless asked."""
    if include_failed:
        return records, []
    return ([r for r in records if r["row"]["status"] != GATE_FAILED],
            [r for r in records if r["row"]["status"] == GATE_FAILED])


# ----------------------------------------------------------------- output
def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned columns under a header; columns present in any row, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in cells]
    return "\n".join(lines)


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=1, default=str)
    if fmt == "csv":
        out = io.StringIO()
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        # Booleans as the --where syntax writes them; numbers in full precision.
        writer.writerows({k: _cell(v) if isinstance(v, (bool, list, dict)) else v for k, v in row.items()}
                         for row in rows)
        return out.getvalue().rstrip("\n")
    if not rows:
        return "no run folders match"
    return format_table(rows)


# ----------------------------------------------------------------- compare
def first_divergence(a: list, b: list, rtol: float = 0.0) -> int | None:
    """Index of the first pair that differs (beyond ``rtol`` relative), over the shared length; None if none."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x is None or y is None:
            if x is not y:
                return i
            continue
        if not (math.isclose(x, y, rel_tol=rtol, abs_tol=0.0) if rtol else x == y):
            return i
    return None


def _divergence_line(name: str, label: str, a: list, b: list, unit: str, positions: list | None, rtol: float) -> str:
    i = first_divergence(a, b, rtol)
    where = (lambda k: f"{unit} {positions[k]}") if positions else (lambda k: f"{unit} {k + 1}")
    if i is None:
        same = f"identical over the {min(len(a), len(b))} shared {unit}s"
        return f"  {name} {label}: {same}" + (f" (lengths {len(a)} vs {len(b)})" if len(a) != len(b) else "")
    return f"  {name} {label}: first differ at {where(i)}: {_cell(a[i])} vs {_cell(b[i])}"


def compare(paths: list[str | Path], rtol: float = 0.0, include_failed: bool = False) -> str:
    """Settings, results and curve divergence of the runs; gate-failed runs are listed apart unless included."""
    if len(paths) < 2:
        raise ConfigError("compare: give two or more run folders")
    records = []
    for path in map(Path, paths):
        if not (path / "config.toml").exists():
            raise EpochalError(f"{path}: not a run folder (no config.toml)")
        records.append(read_run(path))
    records, left_out = split_gate_failed(records, include_failed)
    apart = [f"left out (gate_failed; --include-failed compares them): {r['row']['run']}: "
             f"{r['row']['failure_reason']}" for r in left_out]
    if len(records) < 2:
        raise ConfigError(f"compare: {len(records)} of the runs passed their gate, {len(left_out)} are gate_failed "
                          "(seed 001 leaves failed configs out); allowed: --include-failed to compare them too")
    labels = [chr(ord("A") + i) if i < 26 else f"R{i}" for i in range(len(records))]
    lines = [f"{label} = {r['row']['run']}" for label, r in zip(labels, records)] + apart

    varying = differing(records)
    lines.append("")
    if varying:
        lines.append("settings that differ:")
        rows = [{"setting": k, **{label: r["settings"].get(k) for label, r in zip(labels, records)}} for k in varying]
        lines.append(_indent(format_table(rows)))
    else:
        lines.append("settings: identical")

    lines += ["", "results:"]
    names = ["status", "gate_passed", "failure_reason", "epochs", "steps", "train_loss"]
    for r in records:
        names += [k for k in r["row"] if k not in names and k not in ("run", "task", "trial", "point")]
    rows = [{"": n, **{label: r["row"].get(n) for label, r in zip(labels, records)}} for n in names
            if any(r["row"].get(n) not in (None, "") for r in records)]
    lines.append(_indent(format_table(rows)))

    lines += ["", f"where the curves first diverge (against A{', relative tolerance ' + str(rtol) if rtol else ''}):"]
    base = records[0]["result"]
    for label, r in zip(labels[1:], records[1:]):
        other = r["result"]
        lines.append(_divergence_line("train_loss", f"{label} vs A", base.get("curves", {}).get("train_loss", []),
                                      other.get("curves", {}).get("train_loss", []), "step", None, rtol))
        for metric in base.get("metrics", {}):
            lines.append(_divergence_line(metric, f"{label} vs A", base.get("curves", {}).get(metric, []),
                                          other.get("curves", {}).get(metric, []), "epoch",
                                          base.get("eval_epochs"), rtol))
    return "\n".join(lines)


# ----------------------------------------------------------------- diff
VOLATILE_ENV = {"started", "command", "seed"}  # when and how a run was launched, or a setting shown already


def _environment(folder: Path) -> dict[str, Any]:
    return {k: v for k, v in flat(_read_json(folder / "env.json")).items() if k not in VOLATILE_ENV}


def _delta(a: Any, b: Any) -> str:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return f"{b - a:+.4g}" if numbers else ""


def diff(path_a: str | Path, path_b: str | Path, rtol: float = 0.0) -> str:
    """Only what differs between two runs: settings, environment (versions, GPU, commit, dirty hash), data
    and initial-weight hashes, results with their deltas, and the first step at which the loss curves part."""
    folders = [Path(path_a), Path(path_b)]
    for folder in folders:
        if not (folder / "config.toml").exists():
            raise EpochalError(f"{folder}: not a run folder (no config.toml); allowed: a folder made by epochal run")
    a, b = (read_run(folder) for folder in folders)
    lines = [f"A = {folders[0]}", f"B = {folders[1]}"]

    def section(title: str, rows: list[dict]) -> None:
        lines.extend(["", f"{title}:", _indent(format_table(rows))] if rows else [])

    section("settings", [{"setting": k, "A": a["settings"].get(k), "B": b["settings"].get(k)}
                         for k in differing([a, b])])
    env_a, env_b = _environment(folders[0]), _environment(folders[1])
    section("environment, data and initial weights", [
        {"": k, "A": env_a.get(k), "B": env_b.get(k)} for k in sorted(env_a.keys() | env_b.keys())
        if json.dumps(env_a.get(k), sort_keys=True) != json.dumps(env_b.get(k), sort_keys=True)])
    names = [k for k in a["row"] if k != "run"] + [k for k in b["row"] if k not in a["row"]]
    section("results", [{"": k, "A": a["row"].get(k), "B": b["row"].get(k), "B - A": _delta(a["row"].get(k),
                                                                                          b["row"].get(k))}
                        for k in names if a["row"].get(k) != b["row"].get(k)])
    curve_a = a["result"].get("curves", {}).get("train_loss", [])
    curve_b = b["result"].get("curves", {}).get("train_loss", [])
    part = first_divergence(curve_a, curve_b, rtol)
    if part is not None:
        lines += ["", f"loss curves: part at step {part + 1}: {_cell(curve_a[part])} vs {_cell(curve_b[part])}"]
    elif len(curve_a) != len(curve_b):
        lines += ["", f"loss curves: identical over the {min(len(curve_a), len(curve_b))} shared steps "
                      f"({len(curve_a)} vs {len(curve_b)})"]
    if len(lines) == 2:
        lines += ["", f"identical: settings, environment, results and the {len(curve_a)}-step loss curve"]
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
