"""epochal.fit: a user's own model and data, with exact resume, budgets, factories and warm starts."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import epochal
from epochal.audit import weights_hash
from epochal.checkpoint import CheckpointStore
from epochal.errors import ConfigError
from epochal.faults import KILL_ENV
from test_resume import SignalAtStep

README = Path(__file__).resolve().parents[1] / "README.md"
quiet = lambda _: None  # noqa: E731


def test_the_readme_example_runs_verbatim(tmp_path, monkeypatch):
    code = re.search(r"## Your own model\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 18  # "your own model in 15 lines" (plus blank lines)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.status == "completed" and result.run_dir.parent == Path("results")
    losses = result.result["curves"]["eval_loss"]
    assert losses[-1] < losses[0] / 10  # it visibly learns, not just a little
    assert (result.run_dir / "config.toml").exists() and result.weights.exists()


def regression(n=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    return x, x.sum(1, keepdim=True)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def mse(model, batch):
    inputs, targets = batch
    return nn.functional.mse_loss(model(inputs), targets)


def fit(tmp_path, run_id, model=None, data=None, **kwargs):
    config = {"train": {"max_epochs": 3, "batch_size": 32, "progress": False}, **kwargs.pop("config", {})}
    return epochal.fit(model or mlp(), data if data is not None else regression(), kwargs.pop("loss_fn", mse),
                       config=config, out_dir=tmp_path, experiment_id=run_id, log=quiet, **kwargs)


SCRIPT = '''
import sys
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
import epochal

torch.set_num_threads(1)
kind, out, run_id = sys.argv[1:4]
generator = torch.Generator().manual_seed(0)
x = torch.randn(256, 4, generator=generator)
y = x.sum(1, keepdim=True)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.1), nn.Tanh(), nn.Linear(16, 1))


class Jittered(Dataset):  # a random transform, drawn in the worker processes
    def __len__(self):
        return 256

    def __getitem__(self, i):
        return {"x": x[i] + 0.01 * torch.randn(4), "y": y[i]}


class Stream(IterableDataset):
    def __iter__(self):
        return iter(zip(x, y))


def loss_fn(model, batch):
    if kind == "nested":
        return nn.functional.mse_loss(model(batch["inputs"]["x"]), batch["targets"][0])
    if kind == "workers":
        return nn.functional.mse_loss(model(batch["x"]), batch["y"])
    inputs, targets = batch
    return nn.functional.mse_loss(model(inputs), targets)


data = {"tensordataset": TensorDataset(x, y),
        "workers": DataLoader(Jittered(), batch_size=32, shuffle=True, num_workers=2),
        "nested": {"inputs": {"x": x}, "targets": [y]},
        "iterable": DataLoader(Stream(), batch_size=32)}[kind]
# Synchronous writes: the step-9 checkpoint is on disk before the kill at step 11, so the resume is mid-epoch.
config = {"train": {"max_epochs": 3, "batch_size": 32, "progress": False},
          "checkpoint": {"every_steps": 3, "async_write": False}}
if kind == "iterable":
    config["train"]["max_steps"] = 20
result = epochal.fit(model, data, loss_fn, config=config, out_dir=out, experiment_id=run_id)
print(result.status, result.result["steps"])
'''


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tensordataset", "workers", "nested", "iterable"])
def test_a_user_model_resumes_after_sigkill_exactly(kind, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(run_id, **extra):
        return subprocess.run([sys.executable, str(script), kind, str(tmp_path), run_id], env={**env, **extra},
                              capture_output=True, text=True, timeout=300)

    straight = run("straight")
    assert straight.returncode == 0, straight.stderr
    killed = run("killed", **{KILL_ENV: "11"})  # mid-epoch 2, two steps after the step-9 checkpoint
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = run("killed")  # the script, run again, continues its run folder
    assert again.returncode == 0, again.stderr
    assert "resuming from checkpoint_step_00000009.pt" in again.stdout
    assert ("resumes by skipping the 1 batches" in again.stdout) == (kind == "iterable")  # said in the run's log
    a, b = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("straight", "killed"))
    assert a["curves"] == b["curves"] and a["steps"] == b["steps"] == (20 if kind == "iterable" else 24)
    assert weights_hash(tmp_path / "straight") == weights_hash(tmp_path / "killed")
    for name in ("config.toml", "env.json", "history.jsonl", "checkpoints/last.pt"):
        assert (tmp_path / "killed" / name).exists(), name
    env_json = json.loads((tmp_path / "killed" / "env.json").read_text())
    assert env_json["initial_weights_sha256"] and env_json["data"]["kind"]
    if kind == "workers":  # the loader's own settings are what config.toml records
        assert "num_workers = 2" in (tmp_path / "killed" / "config.toml").read_text()


def test_a_custom_optimizer_and_scheduler_resume_exactly(tmp_path):
    factories = {"optimizer": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
                 "scheduler": lambda opt, total: torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=total)}
    straight = fit(tmp_path, "straight", **factories)
    stopped = fit(tmp_path, "stopped", callbacks=[SignalAtStep(5)], **factories)
    assert stopped.status == "preempted"
    resumed = fit(tmp_path, "stopped", **factories)
    assert resumed.status == "completed" and resumed.result["curves"] == straight.result["curves"]
    a, b = (CheckpointStore(r.run_dir / "checkpoints", 3).load_states("last.pt") for r in (straight, resumed))
    assert a["optimizer"]["state"][0]["momentum_buffer"].abs().sum() > 0
    assert torch.equal(a["optimizer"]["state"][0]["momentum_buffer"], b["optimizer"]["state"][0]["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 24
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_warm_start_records_its_parent_and_reports_keys_it_could_not_load(tmp_path):
    parent = fit(tmp_path, "parent")
    child_model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1), nn.Linear(1, 1))
    child = fit(tmp_path, "child", model=child_model, init_from=parent.run_dir,
                config={"init": {"freeze": ["0.*"]}})
    env = json.loads((child.run_dir / "env.json").read_text())
    assert env["init"]["parent"]["experiment_id"] == "parent" and env["init"]["weights"] == "last"
    assert env["init"]["missing_keys"] == ["3.weight", "3.bias"] and env["init"]["frozen"] == ["0.weight", "0.bias"]
    parent_weights = CheckpointStore(parent.run_dir / "checkpoints", 3).load_states("last.pt")["model"]
    assert torch.equal(child_model[0].weight.detach(), parent_weights["0.weight"])  # frozen: never trained
    assert not torch.equal(child_model[2].weight.detach(), parent_weights["2.weight"])
    with pytest.raises(ConfigError, match="init.freeze: 'decoder.\\*' matches no parameter"):
        fit(tmp_path, "bad", init_from=parent.run_dir, config={"init": {"freeze": ["decoder.*"]}})


def test_step_budget_evaluation_inside_epochs_and_the_final_evaluation(tmp_path):
    x, y = regression()
    result = fit(tmp_path, "budget", eval_data=(x[:64], y[:64]),
                 config={"train": {"max_epochs": 50, "max_steps": 13, "eval_every_steps": 5, "batch_size": 32,
                                   "progress": False}})
    assert result.result["steps"] == 13 and result.stop_reason == "max_steps reached"
    assert result.result["eval_steps"] == [5, 8, 10, 13]  # every 5 steps, each epoch end (8), and the end
    scheduler = CheckpointStore(result.run_dir / "checkpoints", 3).load_states("last.pt")["scheduler"]
    assert scheduler["last_epoch"] == 13  # the schedule was sized for the step budget


def test_a_sum_count_loss_and_declared_metrics(tmp_path):
    def summed(model, batch):
        inputs, targets = batch
        return ((model(inputs) - targets).square().sum(), targets.numel())

    def eval_fn(model, data):
        return {"mae": float((model(data[0]) - data[1]).abs().mean())}

    x, y = regression()
    result = fit(tmp_path, "pairs", loss_fn=summed, eval_data=(x[:64], y[:64]), eval_fn=eval_fn, metrics=["mae"],
                 config={"checkpoint": {"best_metric": "mae", "best_mode": "min"}})
    assert result.status == "completed" and result.best_weights.exists() and "mae" in result.metrics
    with pytest.raises(ConfigError, match="checkpoint.best_metric: 'mse' is not a metric of task 'script'"):
        fit(tmp_path, "undeclared", eval_fn=eval_fn, metrics=["mae"], config={"checkpoint": {"best_metric": "mse"}})
    assert not (tmp_path / "undeclared").exists()


def test_training_data_of_an_unknown_kind_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="train_data: got str; allowed: a tensor"):
        fit(tmp_path, "bad", data="not data")
    with pytest.raises(ConfigError, match="train.max_steps: required for data of unknown length"):
        fit(tmp_path, "endless", data=torch.utils.data.DataLoader(_Endless(), batch_size=4))


class _Endless(torch.utils.data.IterableDataset):
    def __iter__(self):
        while True:
            yield torch.zeros(4), torch.zeros(1)


def test_epochal_resume_on_a_script_run_says_to_run_the_script_again(tmp_path, capsys):
    from epochal.cli import main

    done = fit(tmp_path, "scripted")
    assert main(["resume", str(done.run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "defined by epochal.fit in" in err and 'resume="auto"' in err


def test_running_the_same_script_again_finds_its_own_run(tmp_path):
    first = epochal.fit(mlp(), regression(), mse, config={"train": {"max_epochs": 2, "progress": False}},
                        out_dir=tmp_path, log=quiet)
    model = mlp(seed=5)
    again = epochal.fit(model, regression(), mse, config={"train": {"max_epochs": 2, "progress": False}},
                        out_dir=tmp_path, log=quiet)
    assert again.run_dir == first.run_dir and again.status == "completed"
    final = CheckpointStore(first.run_dir / "checkpoints", 3).load_states("last.pt")["model"]
    assert all(torch.equal(model.state_dict()[k], final[k]) for k in final)  # it holds the run's last weights
