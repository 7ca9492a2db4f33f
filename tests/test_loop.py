import json
import math

import pytest
import torch

from epochal.checkpoint import CheckpointStore


def read_history(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tiny_run_reaches_a_loss_threshold_and_writes_the_run_folder(run_toy):
    result = run_toy(settings={"train.max_epochs": 8, "task.n_train": 1024})
    run_dir = result.run_dir
    assert result.status == "completed"
    assert result.metrics["eval_mse"] < 0.1  # initial MSE is ~0.5; the noise floor is 1e-4
    for name in ("config.toml", "env.json", "history.jsonl", "result.json", "checkpoints/model.safetensors",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).exists(), name
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["status"] == "completed" and saved["epochs"] == 8
    steps = saved["steps"]
    assert steps == 8 * 16 and len(saved["curves"]["train_loss"]) == steps
    assert len(saved["curves"]["eval_mse"]) == 8 and saved["eval_epochs"] == list(range(1, 9))
    assert saved["test"]["last"]["eval_mse"] == pytest.approx(result.metrics["eval_mse"])
    env = json.loads((run_dir / "env.json").read_text())
    for key in ("epochal", "git", "python", "torch", "device", "host", "seed", "command", "started"):
        assert key in env
    history = read_history(run_dir)
    step_lines = [h for h in history if "epoch_end" not in h]
    assert [h["step"] for h in step_lines] == list(range(1, steps + 1))
    assert {"step", "epoch", "loss", "lr", "grad_norm"} <= set(step_lines[0])
    assert [h["epoch"] for h in history if "epoch_end" in h] == list(range(1, 9))


def test_per_step_lr_follows_warmup_cosine(run_toy):
    result = run_toy(settings={"train.max_epochs": 2, "schedule.warmup_steps": 4, "optim.lr": 0.01})
    lrs = [h["lr"] for h in read_history(result.run_dir) if "epoch_end" not in h]
    assert len(lrs) == 8  # 256 examples / 64 per step x 2 epochs
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(0.005) and lrs[4] == pytest.approx(0.01)
    assert lrs[7] == pytest.approx(0.01 * (0.1 + 0.45 * (1 + math.cos(math.pi * 3 / 4))))


def test_gate_failure_is_flagged_in_result(run_toy):
    result = run_toy(settings={"train.max_epochs": 1, "gate.below": {"eval_mse": 1e-9}})
    meta = result.result["metadata"]
    assert result.status == "gate_failed" and result.exit_code == 3
    assert meta["gate_passed"] is False and "gate not passed" in meta["failure_reason"]
    assert meta["final_eval_mse"] == result.metrics["eval_mse"]


def test_gate_pass_stops_and_keeps_a_gate_checkpoint(run_toy):
    result = run_toy(settings={"train.max_epochs": 20, "gate.below": {"eval_mse": 10.0}})
    assert result.result["epochs"] == 1 and result.result["metadata"]["gate_passed"] is True
    assert "checkpoint_gate.pt" in result.result["checkpoints"]


def test_early_stopping_keeps_a_best_that_differs_from_last(run_toy):
    # A huge learning rate makes the eval metric get worse after the first epochs.
    result = run_toy(settings={"train.max_epochs": 30, "optim.lr": 0.5, "early_stop.enabled": True,
                               "early_stop.metric": "eval_mse", "early_stop.patience": 2})
    best = result.result["best"]
    assert "early stopping" in result.stop_reason and result.result["epochs"] < 30
    assert best["epoch"] < result.result["epochs"]
    store = CheckpointStore(result.run_dir / "checkpoints", keep_last=3)
    best_model, last_model = store.load_states("best.pt")["model"], store.load_states("last.pt")["model"]
    assert any(not torch.equal(best_model[k], last_model[k]) for k in best_model)
    assert result.result["test"]["best"]["eval_mse"] < result.result["test"]["last"]["eval_mse"]


def test_retention_keeps_the_last_k_rolling_checkpoints(run_toy):
    result = run_toy(settings={"train.max_epochs": 6, "checkpoint.keep_last": 2})
    rolling = [name for name in result.result["checkpoints"] if name.startswith("checkpoint_epoch")]
    assert rolling == ["checkpoint_epoch_0005.pt", "checkpoint_epoch_0006.pt"]
    assert sorted(p.name for p in (result.run_dir / "checkpoints").glob("checkpoint_*")) == rolling


SYNCING = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


def count_host_syncs(monkeypatch, run_toy, n_train):
    """Tensor-to-host conversions during a whole one-epoch run (eval, checkpoints and test included)."""
    calls = []
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    run_toy(f"syncs-{n_train}", settings={"train.max_epochs": 1, "task.n_train": n_train, "train.log_every": 10_000,
                                          "ema.enabled": True, "ema.decay": 0.9})
    monkeypatch.undo()
    return len(calls)


def test_no_host_sync_per_step_between_log_intervals(monkeypatch, run_toy):
    short = count_host_syncs(monkeypatch, run_toy, 64 * 8)
    long = count_host_syncs(monkeypatch, run_toy, 64 * 32)
    assert short > 0  # the counter sees the end-of-epoch fetch and the evaluation
    assert long == short


# --- settings that must matter end to end ---------------------------------------------------------

def last_weights(run_dir):
    return CheckpointStore(run_dir / "checkpoints", 3).load_states("last.pt")["model"]


def test_a_nonzero_seed_changes_the_run_and_is_reproducible(run_toy):
    one = {"train.max_epochs": 1, "task.dropout": 0.2}  # dropout: the seed reaches the step's draws too
    default = run_toy("seed0", settings=one)
    first, again = (run_toy(name, settings={**one, "train.seed": 7}) for name in ("seed7", "seed7-again"))
    assert first.result["curves"] == again.result["curves"]
    assert all(torch.equal(a, b) for a, b in zip(last_weights(first.run_dir).values(),
                                                 last_weights(again.run_dir).values()))
    assert first.result["curves"]["train_loss"] != default.result["curves"]["train_loss"]
    assert any(not torch.equal(a, b) for a, b in zip(last_weights(first.run_dir).values(),
                                                     last_weights(default.run_dir).values()))
    assert json.loads((first.run_dir / "env.json").read_text())["data"]["tensors_sha256"] != \
        json.loads((default.run_dir / "env.json").read_text())["data"]["tensors_sha256"]


def slow_checkpoint_writes(monkeypatch, seconds):
    """Checkpoint files take ``seconds`` to write: one still in flight when it should be done would show."""
    import time

    from epochal import io

    real = io._write

    def slow(path, f, data):
        if str(path).endswith(".pt"):
            time.sleep(seconds)
        real(path, f, data)

    monkeypatch.setattr(io, "_write", slow)


def test_a_run_returns_only_once_its_final_checkpoint_is_complete(run_toy, monkeypatch):
    slow_checkpoint_writes(monkeypatch, 0.3)
    # no epoch or best checkpoints: the final one is the only one
    result = run_toy("final", settings={"train.max_epochs": 1, "checkpoint.every_epochs": 0,
                                        "checkpoint.best_metric": ""})
    assert "last.pt" in result.result["checkpoints"] and "checkpoint_epoch_0001.pt" in result.result["checkpoints"]
    assert last_weights(result.run_dir)  # complete and listed: the only checkpoint is the final one
    store = CheckpointStore(result.run_dir / "checkpoints", 3)
    assert store.load_states("last.pt")["state"]["step"] == 4


def test_steps_are_numbered_by_epoch_and_evaluated_once_per_epoch_and_where_a_step_budget_ends(run_toy):
    by_epochs = run_toy("epochs", settings={"train.max_epochs": 2})
    assert by_epochs.result["eval_steps"] == [4, 8] and len(by_epochs.result["curves"]["eval_mse"]) == 2
    steps = [h for h in read_history(by_epochs.run_dir) if "epoch_end" not in h]
    assert [(h["step"], h["epoch"]) for h in steps] == [(s, 1 + (s - 1) // 4) for s in range(1, 9)]
    by_steps = run_toy("steps", settings={"train.max_epochs": 3, "train.max_steps": 6})
    assert by_steps.result["eval_steps"] == [4, 6] and by_steps.result["steps"] == 6
    assert by_steps.stop_reason == "max_steps reached" and by_epochs.stop_reason == "max_epochs reached"


def test_a_checkpoint_is_written_only_when_decided_and_never_once_the_run_has_failed(tmp_path):
    from test_checkpoint import PoisonedToy

    from epochal import run
    from epochal.checkpoint import read_manifest

    settings = {"train.max_epochs": 3, "train.progress": False, "task.n_train": 256, "train.log_every": 2,
                "log.plots": False, "checkpoint.keep_last": 10}  # 4 steps an epoch, a checkpoint at each epoch end

    def saved(bad_calls, run_id):
        result = run(PoisonedToy(bad_calls), overrides=settings, out_dir=tmp_path, experiment_id=run_id,
                     log=lambda _: None)
        return result, sorted((e["step"], e["file"]) for e in read_manifest(result.run_dir / "checkpoints"))

    clean, files = saved(set(), "clean")
    assert clean.status == "completed"
    assert [step for step, _ in files] == [4, 8, 12, 12, 12]  # the epoch ends, then best.pt and last.pt: no more
    failed, files = saved({6}, "failed")  # NaN at step 6, seen at its fetch: the run fails (nan_policy stop)
    assert failed.status == "failed"
    assert {step for step, _ in files} == {4}  # the epoch-1 checkpoint: nothing of the failed state after it


@pytest.mark.parametrize("rank, written", [(0, 1), (1, 0)])
def test_under_torchrun_every_rank_gathers_a_checkpoint_s_state_and_only_rank_0_writes_it(tmp_path, rank, written):
    from types import SimpleNamespace

    from epochal.decisions import Save
    from epochal.distributed import World
    from epochal.state import TrainState
    from epochal.training import Training

    gathered, submitted = [], []
    run = SimpleNamespace(state=TrainState(step=4, epoch=1), world=World(rank=rank, size=2), config_dict={},
                          suffix=".pt", sharded_checkpoints=False,
                          config_hash="", store=SimpleNamespace(folder=tmp_path),
                          registry=SimpleNamespace(state_dict=lambda: gathered.append(rank) or {}),
                          writer=SimpleNamespace(submit=lambda job, what: submitted.append(what), wait=lambda: None))
    Training.save(run, [Save("epoch")])
    assert gathered == [rank] and run.last_saved_step == 4  # the gather is a collective: every rank joins it
    assert len(submitted) == written


class ActedOn:
    """What ``act`` may touch of a training run, recording what it did; a real TrainState."""

    def __init__(self, status: str, rollback_finds_checkpoint: bool):
        from epochal.state import TrainState

        self.state = TrainState(step=5, status=status, stop_reason="" if status == "running" else f"was {status}")
        self.finds = rollback_finds_checkpoint
        self.effects: list = []

    def split(self, decision):
        self.effects.append(("split", decision.micro_batches))

    def roll_back(self, decision):
        from epochal.decisions import Stop

        self.effects.append(("rolled back", decision.reason))
        return None if self.finds else Stop(f"{decision.reason}; no checkpoint to roll back to", "failed")

    def save(self, saves):
        self.effects.append(("saved", sorted(s.kind for s in saves)))


def _act_rules():
    from epochal.decisions import Continue, Resume, RollBack, Save, Split, Stop

    # (decisions, the run's status before, a rollback finds a checkpoint) -> (effects, status after, act's answer)
    return [
        ([], "running", True, [], "running", True),
        ([Continue()], "running", True, [], "running", True),
        ([Save("step")], "running", True, [("saved", ["step"])], "running", True),
        ([Save("best"), Save("epoch")], "running", True, [("saved", ["best", "epoch"])], "running", True),
        ([Stop("patience")], "running", True, [], "completed", False),
        ([Stop("first"), Stop("second", "failed")], "running", True, [], "completed", False),
        ([Stop("signal", "preempted"), Save("preempt", wait=True)], "running", True, [("saved", ["preempt"])],
         "preempted", False),
        ([Stop("nan at step 5", "failed"), Save("step")], "running", True, [], "failed", False),
        ([Save("final")], "failed", True, [], "failed", False),
        ([RollBack("nan"), Save("step"), Stop("patience")], "running", True, [("rolled back", "nan")], "running",
         False),
        ([RollBack("nan"), Save("step")], "running", False, [("rolled back", "nan")], "failed", False),
        ([Split(2, "out of memory")], "running", True, [("split", 2)], "running", True),
        ([Resume("preempted at step 5")], "preempted", True, [], "running", True),
        ([Resume("preempted at step 5"), Save("step")], "preempted", True, [("saved", ["step"])], "running", True),
    ]


@pytest.mark.parametrize("decisions, before, finds, effects, after, answer", _act_rules())
def test_act_carries_out_each_decision_by_the_loop_s_rules(decisions, before, finds, effects, after, answer):
    from epochal.loop import act

    run = ActedOn(before, finds)
    assert act(run, decisions) is answer
    assert run.effects == effects
    assert run.state.status == after
    assert run.state.stopped is (after != "running")


def test_resumption_is_decided_for_a_preempted_run_only():
    from epochal.decisions import Resume
    from epochal.loop import resumption
    from epochal.state import TrainState

    assert resumption(TrainState(status="preempted", stop_reason="preempted by SIGTERM at step 3")) == [
        Resume("preempted by SIGTERM at step 3")]
    assert resumption(TrainState()) == [] and resumption(TrainState(status="completed", stop_reason="done")) == []
