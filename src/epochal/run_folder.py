"""The run folder: config.toml, env.json, history.jsonl, result.json, and its writer lock.

results/<group>/<experiment_id>/
  .lock           held (flock) by the one process writing the folder; see lock.py
  config.toml     resolved config, enough to rerun exactly; written first, before anything slow
  env.json        provenance
  history.jsonl   one object per optimizer step and per epoch, appended and flushed
  result.json     status, metrics, curves, gate metadata; replaced atomically
  checkpoints/    see checkpoint.py
  metrics.json    -> result.json, and logs/history.jsonl -> ../history.jsonl: the other names these
                  files are known by (a "final summary" and "per step/epoch" logs), as relative symbolic
                  links, so that no data is kept twice and both names hold (the README maps them)

What marks an epochal run folder (the only kind ``--overwrite`` or a restart
ever empties): a folder whose ``config.toml`` is TOML with a ``[task]`` table
naming a task, or a folder holding nothing but ``.lock`` (a run killed before it
wrote its config). Anything else is refused, never deleted.

Names: ``experiment_id`` and ``group`` are each one path component of safe
characters (see ``check_name``), so a run folder is always directly inside
``<out>[/<group>]`` and nothing a user types can reach outside it.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import secrets
import shutil
import threading
import tomllib
from pathlib import Path
from typing import Any

from epochal.errors import ConfigError, EpochalError
from epochal.io import WriteError, atomic_write_text, remove_stale_temps
from epochal.lock import LOCK_NAME, FolderLock

LOCK = LOCK_NAME
CONFIG = "config.toml"
# Other names of a run folder's files: link -> what it points at (relative).
ALIASES = {"metrics.json": "result.json", "logs/history.jsonl": "../history.jsonl"}
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"  # in checkpoints/: see checkpoint.py
# Longest experiment_id or group: room for suffixes and well under any file system's name limit.
MAX_NAME = 100
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
ALLOWED_NAME = f"1 to {MAX_NAME} characters from A-Z a-z 0-9 . _ -, not starting with '.'"
# Comment lines of config.toml that record settings changed by `--force` (kept across rewrites).
FORCE_NOTE = "# --force"


def check_name(key: str, value: Any) -> None:
    """ConfigError unless ``value`` is a safe single path component (an id or a group)."""
    if not isinstance(value, str) or len(value) > MAX_NAME or not _NAME.fullmatch(value):
        shown = ascii(value) if len(str(value)) <= 40 else f"{ascii(value)[:40]}... ({len(value)} characters)"
        raise ConfigError(f"{key}: {shown} is not a valid name; allowed: {ALLOWED_NAME}")


def check_run_names(experiment_id: str, group: str) -> None:
    check_name("experiment_id (--id)", experiment_id)
    if group:
        check_name("group", group)


def default_run_id(task_name: str) -> str:
    """<task>-<timestamp>-<8 hex>: the random suffix keeps ids unique when many runs start in one second."""
    task = re.sub(r"[^A-Za-z0-9._-]", "_", task_name).lstrip(".")[:40] or "run"
    return f"{task}-{datetime.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


_STRICT_JSON = json.JSONEncoder(allow_nan=False)  # one encoder: json.dumps with options builds one per call


def json_line(record: dict) -> str:
    """One history line; a non-finite number (rare) is written as null."""
    try:
        return _STRICT_JSON.encode(record) + "\n"
    except ValueError:
        return json.dumps(finite_or_none(record)) + "\n"


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN or Infinity: a non-finite number is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoint files in ``folder``, and the folders of sharded checkpoints (``*.dcp``); temporary ones
    are hidden and never count."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("*.pt") if p.is_file()]
    found += [p for p in folder.glob("*.dcp") if p.is_dir() and not p.is_symlink()]
    return sorted(p for p in found if not p.name.startswith("."))


def read_json(path: Path, what: str) -> Any:
    """The parsed file, or one EpochalError naming it (missing, a folder, not UTF-8, not JSON)."""
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        raise EpochalError(f"{path}: no such file; allowed: {what}") from None
    except OSError as err:
        raise EpochalError(f"{path}: cannot read ({err.strerror}); allowed: {what}") from None
    except UnicodeDecodeError:
        raise EpochalError(f"{path}: not UTF-8 text; allowed: {what}") from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise EpochalError(f"{path}: not valid JSON ({err}); allowed: {what}") from None


# result.json: the keys `epochal show` and later analysis read, with their JSON types.
_RESULT_KEYS: dict[str, tuple[type, ...]] = {
    "task": (str,), "status": (str,), "epochs": (int,), "steps": (int,),
    "metrics": (dict,), "curves": (dict,), "metadata": (dict,),
}
_RESULT_OPTIONAL: dict[str, tuple[type, ...]] = {
    "best": (dict, type(None)), "test": (dict,), "checkpoints": (list,), "eval_epochs": (list,),
}


def check_result(data: Any, path: Path) -> dict:
    """``data`` if it has the shape of a result.json epochal wrote; else one error naming the file and key."""
    what = "a result.json written by epochal"
    if not isinstance(data, dict):
        raise EpochalError(f"{path}: expected a JSON object, got {type(data).__name__}; allowed: {what}")
    for key, types in {**_RESULT_KEYS, **_RESULT_OPTIONAL}.items():
        if key not in data:
            if key in _RESULT_KEYS:
                raise EpochalError(f"{path}: missing key {key!r}; allowed: {what}")
            continue
        value = data[key]
        if not isinstance(value, types) or isinstance(value, bool):
            names = " or ".join("null" if t is type(None) else {dict: "object", list: "list"}.get(t, t.__name__)
                                for t in types)
            raise EpochalError(f"{path}: {key!r} is {type(value).__name__}, expected {names}; allowed: {what}")
    for name, curve in data["curves"].items():
        if not isinstance(curve, list):
            raise EpochalError(f"{path}: curves.{name} is {type(curve).__name__}, expected a list; allowed: {what}")
    return data


class RunFolder:
    def __init__(self, path: Path, writes: bool = True):
        self.path = Path(path)
        self.writes = writes  # False on torchrun's ranks other than 0: only rank 0 writes the folder
        self.history_path = self.path / "history.jsonl"
        self.result_path = self.path / "result.json"
        self._history = None
        self._history_lock = threading.RLock()  # a warning may be recorded from the checkpoint writer thread,
        # or from inside an append (reentrant: that must not deadlock)
        self._lock = FolderLock(self.path)

    # ------------------------------------------------------------- claiming it
    def acquire(self) -> None:
        """Claim the folder for this process; a live holder makes this fail, a dead one never holds it."""
        self._lock.acquire()

    def release(self) -> None:
        self._close_history()
        self._lock.release()


    def open(self, resume: str, overwrite: bool) -> bool:
        """Create and lock the folder and make it ready; True if it holds checkpoints to resume from.

        Every decision is taken under the lock (two starts on one id see each other).
        Refusals leave the folder as it was.
        """
        if self.path.is_symlink():  # what it points to may be anywhere: never lock, clear or write it from here
            raise EpochalError(f"{self.path}: a symbolic link; allowed: a real folder inside --out "
                               f"(resume a linked run by its real path)")
        if resume == "must" and not (self.path / CONFIG).is_file():
            raise EpochalError(f"{self.path}: not a run folder (no {CONFIG}); allowed: a folder made by `epochal run`")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise EpochalError(f"{self.path}: cannot create the run folder ({err.strerror})") from None
        self.acquire()
        try:
            existing = bool(checkpoint_files(self.path / CHECKPOINTS))
            occupied = any(child.name != LOCK for child in self.path.iterdir())
            if resume == "never" and occupied:
                if not overwrite:
                    raise EpochalError(f"{self.path}: run folder exists; use --resume auto to continue it "
                                       f"or --overwrite to replace it")
                self.clear()
                return False
            if resume != "never" and not existing and occupied:
                self._refuse_lost_checkpoints()
                self.clear()  # nothing was ever saved: start from step 0 in a clean folder
            if resume != "never" and existing:
                self.remove_stale_temps()
                self._link_seed_names()  # also into a folder of the layout before the links
            return resume != "never" and existing
        except BaseException:
            self.release()
            raise

    def _refuse_lost_checkpoints(self) -> None:
        """An earlier attempt saved checkpoints (its manifest lists them) and none is left: starting over
        would replace its history and result without a word. One line instead; the folder stays as it is."""
        listed = _listed_checkpoints(self.path / CHECKPOINTS / MANIFEST)
        if not listed:
            return
        shown = ", ".join(listed[:4]) + (f" and {len(listed) - 4} more" if len(listed) > 4 else "")
        raise EpochalError(f"{self.path}: nothing to resume: its manifest lists {len(listed)} checkpoint(s) "
                           f"({shown}) and none of them is left; the folder is left as it is; to start over "
                           f"from step 0, replacing its history and result: epochal resume {self.path} --restart")

    def remove_stale_temps(self) -> None:
        """Delete the temporary files a killed write left (``.<name>.tmp-<pid>``, never a complete file):
        this process holds the lock, so no other one is writing them."""
        for folder in (self.path, *(p for p in self.path.iterdir() if p.is_dir() and not p.is_symlink())):
            remove_stale_temps(folder)

    def remove_created(self, created: Path | None, everything: bool = False) -> None:
        """Undo a failed start: the folders this start made (``created`` and below), never anything older.

        Without ``everything`` only empty folders go: a start that failed before writing
        anything must not delete what another process may have put there since.
        """
        if created is None:
            return
        if everything:
            shutil.rmtree(self.path, ignore_errors=True)
        for path in (self.path, *self.path.parents):
            if not path.is_relative_to(created):
                break
            try:
                path.rmdir()
            except FileNotFoundError:
                continue  # removed above (everything): its parents this start made go too
            except OSError:
                break

    def is_run_folder(self) -> bool:
        """Whether this is a folder epochal made (see the module docstring), so it may be emptied."""
        if self.path.is_symlink() or not self.path.is_dir():
            return False
        if all(child.name == LOCK for child in self.path.iterdir()):
            return True
        try:
            config = tomllib.loads((self.path / CONFIG).read_bytes().decode())
        except (OSError, ValueError):  # missing, a folder, not UTF-8, not TOML
            return False
        task = config.get("task")
        return isinstance(task, dict) and isinstance(task.get("name"), str)

    def clear(self) -> None:
        """Empty a run folder (keeping the lock); refuse, deleting nothing, if it is not one."""
        if self.path.is_symlink():
            raise EpochalError(f"{self.path}: a symbolic link; allowed to replace: a run folder inside --out")
        if not self.is_run_folder():
            raise EpochalError(f"{self.path}: not an epochal run folder (no {CONFIG} with a [task] table); "
                               f"nothing deleted; allowed: a run folder, an empty folder, or another --id")
        for child in self.path.iterdir():
            if child.name == LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    # ----------------------------------------------------------------- writing
    def _link_seed_names(self) -> None:
        """metrics.json and logs/history.jsonl, relative links to result.json and history.jsonl (which a
        replace by rename keeps them pointing at); where links cannot be made, the folder goes without."""
        for link, target in ALIASES.items():
            path = self.path / link
            if path.is_symlink() or path.exists():
                continue
            try:
                path.parent.mkdir(exist_ok=True)
                path.symlink_to(target)
            except OSError:
                pass

    def write_json(self, name: str, data: dict) -> None:
        if not self.writes:
            return
        atomic_write_text(self.path / name, json.dumps(finite_or_none(data), indent=1) + "\n")

    def write_config(self, toml_text: str, notes: list[str] = ()) -> None:
        """config.toml; ``notes`` (settings changed by --force, and from which step) join earlier ones as comments."""
        if not self.writes:
            return
        kept = [line for line in self._config_lines() if line.startswith(FORCE_NOTE)]
        header = "".join(f"{line}\n" for line in [*kept, *notes])
        atomic_write_text(self.path / CONFIG, header + toml_text)
        self._link_seed_names()  # after config.toml: a start that fails before it leaves nothing unknown behind

    def _config_lines(self) -> list[str]:
        try:
            return (self.path / CONFIG).read_bytes().decode().splitlines()
        except (OSError, ValueError):
            return []

    def _close_history(self) -> None:
        with self._history_lock:
            if self._history is not None:
                history, self._history = self._history, None
                try:
                    history.close()
                except OSError:
                    pass  # a failed flush was already reported by append_history

    def append_history(self, records: list[dict]) -> None:
        if not self.writes:
            return
        with self._history_lock:
            try:
                if self._history is None:
                    self._history = open(self.history_path, "a")
                self._history.write("".join(map(json_line, records)))
                self._history.flush()
            except OSError as err:
                raise WriteError(self.history_path, err) from None

    def truncate_history(self, step: int, epochs_done: int) -> None:
        """Keep what a checkpoint at (step, epochs_done) already covers; resume rewrites the rest."""
        if not self.writes:
            return
        self._close_history()  # the file is replaced: appends must go to the new one
        if not self.history_path.exists():
            return
        keep = []
        for line in self.history_path.read_bytes().decode(errors="replace").splitlines():
            record = _history_record(line)
            if record is None:
                break  # a line cut short by a kill (or not ours): nothing after it counts either
            if ("epoch_end" in record and record["epoch"] <= epochs_done) or (
                "epoch_end" not in record and record["step"] <= step
            ):
                keep.append(line)
        atomic_write_text(self.history_path, "".join(line + "\n" for line in keep))

    def read_result(self) -> dict | None:
        if not self.result_path.exists():
            return None
        return check_result(read_json(self.result_path, "a result.json written by epochal"), self.result_path)


def _listed_checkpoints(manifest: Path) -> list[str]:
    """The files a manifest.json lists, read leniently (checkpoint.py checks it in full); one that exists
    but cannot be read counts as listing something: it was written when a checkpoint was."""
    if not manifest.exists():
        return []
    try:
        entries = json.loads(manifest.read_bytes().decode())["checkpoints"]
        return [str(entry["file"]) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError):
        return [f"unreadable {MANIFEST}"]


def _history_record(line: str) -> dict | None:
    """A history line as a dict with the keys truncation reads, or None if it is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    key = "epoch" if "epoch_end" in record else "step"
    value = record.get(key)
    return record if isinstance(value, int) and not isinstance(value, bool) else None


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.4g}" for name, value in metrics.items())
