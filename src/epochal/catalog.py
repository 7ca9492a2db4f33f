"""The built-in tasks as plain data: name, where the class lives, one-line summary.

``epochal tasks`` and ``--help`` read this table instead of importing the task
modules, which would import torch (seconds). The registry in ``epochal.task``
is built from it, and a test checks each summary against its task class.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskEntry:
    target: str  # "module:Class", imported only when the task is used
    summary: str  # the class's own ``summary``, copied so that listing needs no import


BUILTIN_TASKS: dict[str, TaskEntry] = {
    "walks": TaskEntry(
        "epochal.tasks.walks.task:WalksTask",
        "transformer on SBM random walks with jumper rules; gate on edge and rule compliance",
    ),
    "regex": TaskEntry(
        "epochal.tasks.regex.task:RegexTask",
        "transformer on a regular language: next token, prefix membership and DFA state",
    ),
    "flow": TaskEntry(
        "epochal.tasks.flow.task:FlowTask",
        "conditional flow matching on 2-D/8-D vectors; sample quality against real data's own scores",
    ),
    "scratch-mlp": TaskEntry(
        "epochal.scratch.task:ScratchMLPTask",
        "NumPy MLP trained by the from-scratch AdamW reference trainer",
    ),
    "toy": TaskEntry(
        "epochal.tasks.toy:ToyTask",
        "regress a random teacher MLP (tiny; for tests, benchmarks and trying the CLI)",
    ),
}
