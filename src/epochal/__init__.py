"""epochal: reproducible, fast PyTorch training with one self-describing folder per run.

The public names load on first use (PEP 562), so that ``import epochal`` and the
command line's ``--help``, ``--version`` and ``tasks`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib

from epochal._version import __version__

# Not typing.TYPE_CHECKING: importing typing costs ~20 ms of the command line's start-up, before it can
# install its signal handlers (cli.main); type checkers read a module constant of this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports these
    from typing import Any

    from epochal.analysis import GateFailedWarning, load_checkpoint, load_run, save_checkpoint
    from epochal.api import Result, run
    from epochal.callbacks.base import Callback
    from epochal.config import RunConfig
    from epochal.decisions import Continue, RollBack, Save, Stop
    from epochal.ema import EMAModel
    from epochal.runs import load_runs
    from epochal.script import fit
    from epochal.task import Built, RunContext, Task, register_task
    from epochal.tune import tune_lr

_EXPORTS = {  # public name -> the module that defines it
    "Built": "epochal.task",
    "Callback": "epochal.callbacks.base",
    "Continue": "epochal.decisions",
    "EMAModel": "epochal.ema",
    "GateFailedWarning": "epochal.analysis",
    "Result": "epochal.api",
    "RollBack": "epochal.decisions",
    "RunConfig": "epochal.config",
    "RunContext": "epochal.task",
    "Save": "epochal.decisions",
    "Stop": "epochal.decisions",
    "Task": "epochal.task",
    "fit": "epochal.script",
    "load_checkpoint": "epochal.analysis",
    "load_run": "epochal.analysis",
    "load_runs": "epochal.runs",
    "register_task": "epochal.task",
    "run": "epochal.api",
    "save_checkpoint": "epochal.analysis",
    "tune_lr": "epochal.tune",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'epochal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
