"""Sharded checkpoints (train.parallel = "fsdp"): a folder a checkpoint, each rank writing its own shards through
``torch.distributed.checkpoint`` (DCP); no rank ever holds the whole model.

    checkpoints/checkpoint_step_00000012.dcp/
        __0_0.distcp, __1_0.distcp, ...   each rank's shards of the model, optimizer and EMA tensors
        .metadata                          DCP's index of those pieces (which file holds which part)
        state.pt                           rank 0's: everything else (training state, schedule, data position,
                                           every rank's random generators, config), marking where each tensor
                                           read through DCP goes back

Writing: every rank writes into the hidden folder ``.NAME.tmp-dcp``; once DCP has written every rank's shards
and ``.metadata``, each rank hashes its own files, and rank 0, holding every hash, writes state.pt and hands the
folder to the store, which renames it into place and only then lists it in the manifest with a SHA-256 per file.
A kill at any moment before leaves the previous checkpoint the newest; the store removes the hidden folder
when it next opens. Asynchronously (``checkpoint.async_write``) the step waits only for the copy to host
memory: ``dcp.async_save`` writes on a thread, its collectives on a process group of their own.

Reading: rank 0 checks every file's hash and the ranks read what it chose; DCP reads each rank's part of the
tensors into the layout the run has now, at any world size (one process reads all of it). Only tensors pass
through DCP (it would unpickle anything else without ``weights_only``), and ``.metadata``, a pickle, is read by
an unpickler that admits DCP's index classes alone.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from epochal.errors import CheckpointError
from epochal.io import TEMP_MARK, write_unseen

SUFFIX = ".dcp"
STATE = "state.pt"
METADATA = ".metadata"
MARK = "<dcp>"  # in state.pt's tree: a tensor DCP holds, under the path that leads here
_CHUNK = 1 << 20
# DCP warns, on its writing thread too, that it works in one process when there is no process group: one
# process (and an export) is what it is asked for here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def is_sharded(name: str) -> bool:
    return name.endswith(SUFFIX)


def temp_folder(folder: Path, name: str) -> Path:
    """Where every rank writes ``name`` before it is complete (the same path on every rank)."""
    return folder / f".{name}{TEMP_MARK}dcp"


# What epochal and DCP write into a checkpoint's folder: a hidden folder holding nothing else is a killed write.
_WRITTEN = re.compile(r"(__\d+_\d+\.distcp|(__\d+)?\.metadata(\.tmp)?|state\.pt)")


def remove_stale_folders(folder: Path) -> None:
    """The hidden folders killed writes of sharded checkpoints left in ``folder``: the files they wrote, then the
    folder; one holding anything else is left alone. The caller holds the run folder's lock."""
    for stale in Path(folder).glob(f".*{SUFFIX}*{TEMP_MARK}*"):
        if stale.is_dir() and not stale.is_symlink():
            for file in stale.iterdir():
                if _WRITTEN.fullmatch(file.name) and file.is_file() and not file.is_symlink():
                    file.unlink()
            try:
                stale.rmdir()
            except OSError:
                pass


def _tree_map(value: Any, leaf: Callable[[Any, str], Any], path: str) -> Any:
    """``value`` with every leaf replaced by ``leaf(it, its path)``: keys and list indices joined by "/"."""
    if isinstance(value, dict):
        return {key: _tree_map(item, leaf, f"{path}/{key}" if path else str(key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_tree_map(item, leaf, f"{path}/{i}") for i, item in enumerate(value))
    return leaf(value, path)


def split(states: dict, names: Iterable[str]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(``states`` with every tensor of the entries ``names`` replaced by MARK, those tensors by path)."""
    tensors: dict[str, torch.Tensor] = {}

    def take(value: Any, path: str) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        tensors[path] = value
        return MARK

    names = set(names)
    return {name: _tree_map(state, take, name) if name in names else state for name, state in states.items()}, tensors


def marked(plain: Any) -> list[str]:
    """The paths of ``plain``'s tensors held by DCP."""
    found: list[str] = []
    _tree_map(plain, lambda value, path: found.append(path) if isinstance(value, str) and value == MARK else None, "")
    return found


def join(plain: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``plain`` with each MARK replaced by its tensor."""
    return _tree_map(plain, lambda value, path: tensors[path] if isinstance(value, str) and value == MARK else value, "")


# ------------------------------------------------------------------ writing
def new_group():
    """The process group of checkpoint writes (gloo, which an asynchronous save needs for its host copies):
    collectives a background save makes never interleave with training's. Every rank must call it together."""
    return dist.new_group(backend="gloo") if dist.is_initialized() else None


def new_stager(device: torch.device):
    """What copies an asynchronous save's tensors to host memory, on a thread of its own, so that the copy
    overlaps the next step's forward and backward (into pinned memory, without blocking, from a GPU); kept for
    the run, so the pinned buffers are reused."""
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    gpu = device.type == "cuda"
    return DefaultStager(StagingOptions(use_pinned_memory=gpu, use_shared_memory=False, use_async_staging=True,
                                        use_non_blocking_copy=gpu))


def write_shards(tmp: Path, tensors: dict[str, torch.Tensor], group,
                 stager=None) -> tuple[Future | None, Future | None]:
    """Every rank's part of ``tensors`` into ``tmp`` (a collective). With a ``stager`` (asynchronously): the
    Futures of the copy to host memory (until it is done, nothing may change ``tensors``) and of the write."""
    import torch.distributed.checkpoint as dcp

    writer = dcp.FileSystemWriter(str(tmp), sync_files=True)
    if stager is None:
        dcp.save(tensors, storage_writer=writer, process_group=group, no_dist=group is None)
        return None, None
    gpus = {tensor.device for tensor in tensors.values() if tensor.device.type == "cuda"}
    for gpu in gpus:  # the step that produced these values has finished before the copy reads them
        torch.cuda.synchronize(gpu)
    saving = dcp.async_save(tensors, storage_writer=writer, process_group=group, no_dist=group is None,
                            async_stager=stager)
    return saving.staging_completion, saving.upload_completion


def own_hashes(tmp: Path, rank: int) -> dict[str, str]:
    """SHA-256 of the files rank ``rank`` wrote into ``tmp`` (rank 0: DCP's index too)."""
    own = sorted(tmp.glob(f"__{rank}_*.distcp"))
    if rank == 0:
        own.append(tmp / METADATA)
    return {path.name: file_sha256(path) for path in own}


def gather_hashes(hashes: dict[str, str], group) -> dict[str, str] | None:
    """Every rank's file hashes, on rank 0 (None elsewhere); after it, every rank's files are written."""
    if group is None:
        return hashes
    every: list | None = [None] * dist.get_world_size(group) if dist.get_rank(group) == 0 else None
    dist.gather_object(hashes, every, dst=0, group=group)
    return None if every is None else {name: sha for ranks in every for name, sha in ranks.items()}


def write_state(tmp: Path, data: bytes) -> str:
    """state.pt into the folder being written (renamed with it, so no file of its own is renamed); its SHA-256."""
    write_unseen(tmp / STATE, data)
    return hashlib.sha256(data).hexdigest()


def folder_sha256(files: dict[str, str]) -> str:
    """One hash standing for a checkpoint folder: of its files' names and hashes."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------ reading
class _IndexUnpickler(pickle.Unpickler):
    """DCP's .metadata holds its index classes, torch sizes, dtypes and layouts, and a path; nothing else loads."""

    MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module in self.MODULES and not name.startswith("__")
                   or (module, name) in {("torch", "Size"), ("torch.serialization", "_get_layout"),
                                         ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
                                         ("collections", "OrderedDict")}
                   or module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's index")
        return super().find_class(module, name)


def _reader(path: Path):
    import torch.distributed.checkpoint as dcp

    class IndexReader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            return read_index(path)

    return IndexReader(str(path))


def read_index(path: Path):
    """DCP's index of a checkpoint folder, admitting its own classes only; CheckpointError otherwise."""
    try:
        with open(path / METADATA, "rb") as f:
            metadata = _IndexUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
        raise CheckpointError(f"{path / METADATA}: not a readable checkpoint index ({err})") from None
    if getattr(metadata, "storage_meta", None) is None:
        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata.storage_meta = StorageMeta()
    return metadata


def read_shards(path: Path, plain: dict, current: Callable[[list[str]], dict], group) -> dict:
    """``plain`` (state.pt's states) with their tensors read from the folder ``path`` into the layout this run
    has: ``current(names)`` gives this run's states of the entries named (a collective when sharded)."""
    wanted = marked(plain)
    names = sorted({found.split("/", 1)[0] for found in wanted})
    _, tensors = split(current(names), names)
    missing, unknown = sorted(set(tensors) - set(wanted)), sorted(set(wanted) - set(tensors))
    if missing or unknown:
        differing = (("not in the checkpoint", missing), ("not in this run", unknown))
        shown = "; ".join(f"{what}: {', '.join(paths[:4])}{' ...' if len(paths) > 4 else ''}"
                          for what, paths in differing if paths)
        raise CheckpointError(f"{path}: its tensors differ from this run's ({shown}); it was written by a run with "
                              "another model or settings")
    fresh = {name: torch.empty_like(tensor) for name, tensor in tensors.items()}  # the live ones stay as they are
    load_tensors(path, fresh, group)
    return join(plain, fresh)


def load_tensors(path: Path, tensors: dict[str, torch.Tensor], group=None) -> None:
    """Fill ``tensors`` in place from the folder (a collective under torchrun; one process reads it all)."""
    import torch.distributed.checkpoint as dcp

    try:
        dcp.load(tensors, storage_reader=_reader(path), process_group=group, no_dist=group is None)
    except CheckpointError:
        raise
    except Exception as err:  # DCP reports a damaged or mismatching shard in several ways
        detail = (str(err).strip().splitlines() or [""])[-1][:300]
        raise CheckpointError(f"{path}: its shards do not read into this run ({type(err).__name__}: "
                              f"{detail})") from None


def whole_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor of the folder whose path starts with ``prefix``/, whole, under the rest of its path
    (one process, no process group): a sharded checkpoint's model as one state dict."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    index = read_index(path)
    tensors = {key: torch.empty(item.size, dtype=item.properties.dtype)
               for key, item in index.state_dict_metadata.items()
               if key.startswith(f"{prefix}/") and isinstance(item, TensorStorageMetadata)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors of {prefix!r}")
    load_tensors(path, tensors)
    return {key.removeprefix(f"{prefix}/"): value for key, value in tensors.items()}

