"""`epochal run scratch-mlp`: the NumPy reference trainer, recorded in a standard run folder.

It trains without torch, so it brings its own loop (``own_loop``) instead of the
core's: all of its settings live in [task]; the core's [train]/[optim] sections
do not apply, and there are no checkpoints (a run takes about a second).
"""

from __future__ import annotations

import time

import torch

from epochal import provenance
from epochal.records import RunFolder
from epochal.scratch.run import ScratchMLPConfig, train_mlp
from epochal.tasks import Task


class ScratchMLPTask(Task):
    name = "scratch-mlp"
    summary = "NumPy MLP trained by the from-scratch AdamW reference trainer (seed 002)"
    Config = ScratchMLPConfig

    def own_loop(self, config, folder: RunFolder, log) -> dict:
        cfg: ScratchMLPConfig = config.task
        folder.write_json("env.json", provenance.collect(torch.device("cpu"), cfg.seed))
        curves: dict[str, list[float]] = {"train_loss": []}
        started = time.perf_counter()

        def on_step(step: int, epoch: int, metrics: dict) -> None:
            curves["train_loss"].append(metrics["loss"])
            folder.append_history([{"step": step, "epoch": epoch + 1, **metrics}])

        def on_epoch(epoch: int, metrics: dict) -> None:
            for name in ("val_loss", "val_accuracy"):
                curves.setdefault(name, []).append(metrics[name])
            folder.append_history([{"epoch_end": True, "epoch": epoch + 1, "step": len(curves["train_loss"]),
                                    **metrics}])
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {metrics['train_loss']:.4g}  "
                f"val_accuracy {metrics['val_accuracy']:.4g}")

        final = train_mlp(cfg, on_step, on_epoch)
        return {
            "experiment_id": config.experiment_id, "task": self.name, "status": "completed",
            "epochs": cfg.epochs, "steps": final["steps"], "metrics": final, "best": None,
            "eval_epochs": list(range(1, cfg.epochs + 1)), "curves": curves, "checkpoints": [],
            "metadata": {"stop_reason": "max_epochs reached", "config_hash": config.hash(),
                         "train_seconds": round(time.perf_counter() - started, 3)},
        }
