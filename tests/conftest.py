from pathlib import Path

import pytest
import torch

from epochal import io

# The test models are tiny: one thread is as fast and immune to oversubscription.
torch.set_num_threads(1)


def quiet(_message: str) -> None:
    """fit(log=...) sink that keeps test output readable."""


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Each test has its own cache folder (the runs index cache, index_cache.py): none shares or leaves one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def run_toy(tmp_path):
    """fit() of the built-in toy task into tmp_path with test-sized settings; returns the FitResult."""
    from epochal import run as fit

    def run(experiment_id: str = "run", task="toy", **overrides):
        settings = {"train.max_epochs": 3, "train.progress": False, "task.n_train": 256, "task.n_eval": 128,
                    "log.plots": False}  # the plot tests turn them on; matplotlib costs seconds a run
        settings.update({k.replace("__", "."): v for k, v in overrides.pop("settings", {}).items()})
        return fit(task, overrides=settings, out_dir=tmp_path, experiment_id=experiment_id, log=quiet, **overrides)

    return run


@pytest.fixture
def written(monkeypatch):
    """The target path of every write that goes through epochal.io (tests of the one write path), in order."""
    paths: list[Path] = []
    real = io._write

    def recording(path, f, data):
        paths.append(Path(path))
        real(path, f, data)

    monkeypatch.setattr(io, "_write", recording)
    return paths
