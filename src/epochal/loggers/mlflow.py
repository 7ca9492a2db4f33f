"""MLflow: one MLflow run per epochal run, in a SQLite store shared by the runs of out_dir by default.

``log.mlflow_uri`` points anywhere else (a server, another database). The run id is
this logger's checkpointed state: a resumed run reopens the same MLflow run. MLflow
cannot delete logged points, so on resume a value is sent only for steps past the
last one the store already holds for that key (exact resume makes those equal);
after a rollback the retrained steps appear a second time, with their new values.
"""

from __future__ import annotations

import time
from typing import Any

from epochal.loggers.base import TrackedRun, TrackerLogger

# MLflow limits: values per log_batch call, characters of a parameter value.
BATCH = 1000
PARAM_CHARS = 6000
# MLflow has no "finished but failed its gate": FAILED keeps a failed config out of a filter on FINISHED runs,
# and the run's `status` tag says gate_failed.
END_STATUS = {"completed": "FINISHED", "gate_failed": "FAILED", "failed": "FAILED", "preempted": "KILLED"}


def default_uri(info: TrackedRun) -> str:
    return f"sqlite:///{(info.out_dir / 'mlflow.db').resolve()}"


class MLflowLogger(TrackerLogger):
    tracker = "mlflow"
    key = "log_mlflow"

    def __init__(self, uri: str = "", experiment: str = "") -> None:
        super().__init__()
        self.uri, self.experiment = uri, experiment
        self.run_id: str | None = None
        self.client = None
        self.logged_through: dict[str, int] = {}  # resume: the newest step the store holds per key
        self.resumed = False

    def import_library(self) -> None:
        import mlflow  # noqa: F401

    def open(self, info: TrackedRun) -> None:
        import logging

        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # table creation chatter on a new store
        self.uri = self.uri or default_uri(info)
        self.client = MlflowClient(tracking_uri=self.uri)
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            self.resumed = True
            return
        name = self.experiment or info.group or info.task
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=info.name, tags={"epochal.run_dir": str(info.dir)})
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(key, str(value)[:PARAM_CHARS]) for key, value in info.params.items() if value is not None]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def _already_logged(self, key: str, step: int) -> bool:
        """Resumed runs only: whether the store holds ``key`` at ``step`` already (written before a kill)."""
        if not self.resumed:
            return False
        if key not in self.logged_through:
            history = self.client.get_metric_history(self.run_id, key)
            self.logged_through[key] = max((m.step for m in history), default=-1)
        return step <= self.logged_through[key]

    def write_many(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for step, values in rows for key, value in values.items()
                   if not self._already_logged(key, step)]
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + BATCH])

    def write(self, step: int, values: dict[str, float]) -> None:
        self.write_many([(step, values)])

    def close(self, summary: dict[str, Any]) -> None:
        step = int(summary.get("steps") or 0)
        numbers = {f"summary/{k}": v for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("steps", "epochs")}
        self.write(step, numbers)
        for key in ("status", "stop_reason", "failure_reason"):
            if summary.get(key):
                self.client.set_tag(self.run_id, f"epochal.{key}", str(summary[key])[:PARAM_CHARS])
        self.client.set_terminated(self.run_id, END_STATUS.get(summary.get("status"), "FINISHED"))

    def state_dict(self) -> dict:
        self.wait_opened()
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state["run_id"]
