"""Several runs in one torchrun launch (a launch costs seconds): ``torchrun ... tests/ddp_runs.py SPEC.json``.

SPEC lists runs: {"id", "out", "settings", "resume", "env", "task"} trains a task (the toy task unless "task" names
another) through ``epochal.run`` (with "env" set in the environment for that run only);
{"id", "out", "loader": true, "train"} trains a small model through ``epochal.fit`` on a shuffling DataLoader (with
"train" as more [train] settings);
{"out", "shards": SETTINGS} shards the walks task's model (after a run: the group is up) and writes each rank's
parameter count to shards-RANK.json in "out".
Exits 0 when every run completed. test_ddp.py also calls ``loader_run`` in one process.
"""

import json
import os
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

import epochal


def quiet(_message: str) -> None: ...


def squared_error(model, batch):
    """A (sum, count) loss over the positive targets only, so each rank counts differently: under torchrun
    the gradient is divided by the count over all ranks."""
    error = (model(batch[0]) - batch[1]) ** 2
    counted = batch[1] > 0
    return error[counted].sum(), counted.sum()


def loader_run(out: str, run_id: str, train: dict | None = None) -> epochal.Result:
    """A user's model and DataLoader (global batch 16) through epochal.fit, with a (sum, count) loss; ``train``:
    more [train] settings."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=generator)
    y = x @ torch.randn(8, 2, generator=generator)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    return epochal.fit(model, loader, squared_error, out_dir=out,
                       experiment_id=run_id, resume="never", log=quiet,
                       config={"train": {"max_epochs": 2, "log_every": 4, "progress": False, **(train or {})},
                               "log": {"plots": False}})


def count_shards(out: str, settings: dict) -> None:
    from pathlib import Path

    from epochal.resolve import resolve_config
    from epochal.sharding import local_parameter_count, shard
    from epochal.tasks.walks.model import TransformerLM

    _, config = resolve_config("walks", None, settings)
    task = config.task
    model = TransformerLM(task.n_vertices, task.context, task.d_model, task.n_layers, task.n_heads)
    whole = sum(p.numel() for p in model.parameters())
    held = local_parameter_count(shard(model, config.train))
    Path(out, f"shards-{os.environ['RANK']}.json").write_text(json.dumps({"whole": whole, "held": held}))


def main(spec_path: str) -> int:
    log = print if os.environ.get("RANK", "0") == "0" else quiet
    failed = 0
    for item in json.loads(open(spec_path).read()):
        if item.get("shards"):
            count_shards(item["out"], item["shards"])
            continue
        if item.get("loader"):
            result = loader_run(item["out"], item["id"], item.get("train"))
        else:
            os.environ.update(item.get("env", {}))  # a fault hook for this run alone
            try:
                result = epochal.run(item.get("task", "toy"), overrides=item["settings"], out_dir=item["out"], experiment_id=item["id"],
                                     resume=item.get("resume", "never"), log=log)
            finally:
                for name in item.get("env", {}):
                    del os.environ[name]
        failed += result.status != "completed"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
