"""Weights & Biases: offline by default (files in <run>/wandb, `wandb sync` uploads them later).

``log.wandb_mode = "online"`` logs live (after `wandb login`); ``"auto"`` goes online
when an API key is configured and offline otherwise. The run id is this logger's
checkpointed state: a resumed run continues the same W&B run (``resume="allow"``);
offline, each process writes its own offline-run folder of that id and `wandb sync`
merges them. Steps a hard-killed process wrote after its last checkpoint are sent
again by the resumed one (with equal values: resume is exact); W&B does not take a
step lower than one it already has, so they are not doubled online (not checkable offline).
"""

from __future__ import annotations

import os
from typing import Any

from epochal.loggers.base import TrackedRun, TrackerLogger
from epochal.status import GATE_FAILED, GATE_FAILED_EXIT_CODE


def resolve_mode(mode: str) -> str:
    """auto: online when this machine has a W&B API key (env or `wandb login`), offline otherwise."""
    if mode != "auto":
        return mode
    import wandb

    try:
        logged_in = bool(os.environ.get("WANDB_API_KEY") or wandb.api.api_key)
    except Exception:  # no settings file, no network: treat as not logged in
        logged_in = False
    return "online" if logged_in else "offline"


class WandbLogger(TrackerLogger):
    tracker = "wandb"
    key = "log_wandb"

    def __init__(self, project: str = "epochal", entity: str = "", mode: str = "offline") -> None:
        super().__init__()
        self.project, self.entity, self.mode = project, entity, mode
        self.run_id: str | None = None
        self.run = None

    def import_library(self) -> None:
        import wandb  # noqa: F401

    def open(self, info: TrackedRun) -> None:
        import wandb

        settings = wandb.Settings(console="off", silent=True, disable_git=True, x_disable_stats=True)
        self.run = wandb.init(project=self.project, entity=self.entity or None, name=info.name,
                              group=info.group or None, id=self.run_id, resume="allow",
                              mode=resolve_mode(self.mode), dir=str(info.dir), config=info.config, settings=settings,
                              reinit="create_new")
        self.run_id = self.run.id

    def write(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(summary)
        self.run.finish(exit_code=exit_code(summary.get("status")))

    def state_dict(self) -> dict:
        self.wait_opened()
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state["run_id"]


def exit_code(status: str | None) -> int:
    """W&B marks a run failed by its exit code: the CLI's own codes (a gate failure is 3, not a crash's 1)."""
    return {"completed": 0, "preempted": 0, GATE_FAILED: GATE_FAILED_EXIT_CODE}.get(status, 1)
