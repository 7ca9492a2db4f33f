"""A cache of what ``epochal runs`` and ``epochal.load_runs`` read from each run folder.

Reading a thousand run folders means parsing a thousand result.json files, each with every step's
loss. The cache keeps, per folder, the row read from it and the size and modification time of the
files it came from; an entry whose files changed since is read again, never trusted. The cache is
one JSON file under the user's cache folder (``$XDG_CACHE_HOME/epochal``, else ``~/.cache/epochal``),
never inside a run folder; it is replaced atomically, and a cache that cannot be read or written is
simply not used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

FILES = ("config.toml", "result.json", "trial.json")  # what a folder's row is read from
VERSION = 1  # bumped when the rows change shape: an older cache is then rebuilt


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "epochal" / "runs-index.json"


def signature(folder: Path) -> list:
    """(file, size, modification time) of each file a row comes from: any write changes it."""
    found = []
    for name in FILES:
        try:
            stat = (folder / name).stat()
        except OSError:
            continue
        found.append([name, stat.st_size, stat.st_mtime_ns])
    return found


def _load() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("runs"), dict):
        return {}
    return data["runs"]


def _store(entries: dict[str, Any]) -> None:
    from epochal.io import atomic_write_text

    try:
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"version": VERSION, "runs": entries}))
    except Exception:  # a read-only home or a full disk: the next call reads the folders again
        pass


def cached_rows(folders: list[Path], read: Callable[[Path], dict]) -> list[dict]:
    """``read(folder)`` for each folder, from the cache where the folder's files are unchanged."""
    entries = _load()
    rows, changed = [], False
    for folder in folders:
        key, now = str(folder.resolve()), signature(folder)
        entry = entries.get(key)
        if entry is None or entry.get("signature") != now:
            entry = {"signature": now, "record": read(folder)}
            entries[key] = entry
            changed = True
        rows.append(entry["record"])
    if changed:
        _store(entries)
    return rows
