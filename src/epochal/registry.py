"""The state registry: every stateful thing of a run under one stable name.

Checkpoints are the registry's ``state_dict``; resume and rollback load it back.
Anything with ``state_dict``/``load_state_dict`` can be registered: the model,
optimizer, scheduler, grad scaler, the train state (data position, curves), the
global RNG and every callback that has a ``key``. A new stateful callback needs
no change to checkpoint code.

Entries marked ``weights`` (the model, EMA shadow weights) are what
``weights_from`` swaps in temporarily, e.g. to test the best checkpoint's weights.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Protocol

from epochal.checkpoint import to_cpu
from epochal.errors import CheckpointError


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> Any: ...


class StateRegistry:
    def __init__(self) -> None:
        self._entries: dict[str, Stateful] = {}
        self._weights: list[str] = []

    def register(self, name: str, obj: Stateful, *, weights: bool = False) -> None:
        if name in self._entries:
            raise ValueError(f"state {name!r} is registered twice; every stateful callback needs a unique key")
        self._entries[name] = obj
        if weights:
            self._weights.append(name)

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def state_dict(self) -> dict[str, Any]:
        return {name: obj.state_dict() for name, obj in self._entries.items()}

    def states(self, names: Iterable[str]) -> dict[str, Any]:
        """The states of the entries ``names`` (those registered), as they are now."""
        return {name: self._entries[name].state_dict() for name in names if name in self._entries}

    def load_state_dict(self, states: dict[str, Any], keep: Iterable[str] = ()) -> None:
        """Load every entry from ``states`` except those in ``keep``; a missing entry is refused by name."""
        keep = set(keep)
        missing = [name for name in self._entries if name not in keep and name not in states]
        if missing:
            raise CheckpointError(f"the checkpoint holds no state for {', '.join(missing)}; it was written by a run "
                                  "with other callbacks or settings")
        for name, obj in self._entries.items():
            if name not in keep:
                obj.load_state_dict(states[name])

    @contextlib.contextmanager
    def weights_from(self, states: dict[str, Any]):
        """Inside the block the weight entries hold ``states``' values; afterwards their own, always."""
        names = [name for name in self._weights if name in states]
        backup = {name: to_cpu(self._entries[name].state_dict()) for name in names}
        try:
            for name in names:
                self._entries[name].load_state_dict(states[name])
            yield
        finally:
            for name in names:
                self._entries[name].load_state_dict(backup[name])
