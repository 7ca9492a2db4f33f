"""Trackers, throughput and profiling: listening callbacks that ``Training`` adds from the [log] config.

    [log]
    trackers = ["tensorboard", "csv"]      # or: epochal run TASK --log tensorboard,csv

Each tracker lives in its own module and is imported only when asked for (its package
is the optional extra of the same name: ``pip install 'epochal[tensorboard]'``). A
logger of your own subclasses ``TrackerLogger`` (base.py) and is passed as a callback.
"""

from __future__ import annotations

import importlib

import torch

from epochal.callbacks.base import Callback
from epochal.config import RunConfig
from epochal.loggers.base import TrackerLogger
from epochal.loggers.perf import Perf, peak_flops
from epochal.loggers.profile import Profiler

# Tracker name -> "module:class".
LOGGERS = {
    "tensorboard": "epochal.loggers.tensorboard:TensorBoardLogger",
    "csv": "epochal.loggers.csv:CSVLogger",
    "mlflow": "epochal.loggers.mlflow:MLflowLogger",
    "wandb": "epochal.loggers.wandb:WandbLogger",
}


def tracker_logger(name: str, config: RunConfig) -> TrackerLogger:
    module, cls = LOGGERS[name].split(":")
    logger_type = getattr(importlib.import_module(module), cls)
    log = config.log
    if name == "mlflow":
        logger = logger_type(log.mlflow_uri, log.mlflow_experiment)
    elif name == "wandb":
        logger = logger_type(log.wandb_project, log.wandb_entity, log.wandb_mode)
    else:
        logger = logger_type()
    logger.import_library()
    return logger


def perf_meter(task, config: RunConfig, model: torch.nn.Module, device: torch.device) -> Perf:
    return Perf(config.train.batch_size, task.tokens_per_example(config.task),
                task.flops_per_example(config.task, model), peak_flops(device, config.log.peak_tflops))


def listeners(task, config: RunConfig, model: torch.nn.Module, device: torch.device) -> tuple[Perf, list[Callback]]:
    """(the throughput meter, the listeners that come after the run folder's writer): the trackers, the
    profiler and the plots (which read result.json)."""
    from epochal.plots import Plots

    after: list[Callback] = [tracker_logger(name, config) for name in config.log.trackers]
    window = config.log.profile_window()
    if window is not None:
        after.append(Profiler(*window))
    if config.log.plots:
        after.append(Plots(task, config.log.loss_scale))
    return perf_meter(task, config, model, device), after
