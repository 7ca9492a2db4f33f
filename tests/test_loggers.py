"""Trackers: what each one wrote, read back with its own library, before and after a preemption."""

import csv
import json
import threading

import pytest

import epochal
from epochal.errors import ConfigError
from epochal.loggers.base import TrackerLogger
from test_resume import SignalAtStep

# toy: 256 examples / 64 per step = 4 steps an epoch, 3 epochs = 12 steps; a fetch every 3 steps.
SETTINGS = {"train.max_epochs": 3, "train.progress": False, "task.n_train": 256, "task.n_eval": 128,
            "train.log_every": 3, "log.plots": False}
STEPS = 12


def train(tmp_path, experiment_id="run", settings=None, lines=None, **kwargs):
    sink = lines.append if lines is not None else (lambda _: None)
    return epochal.run("toy", overrides={**SETTINGS, **(settings or {})}, out_dir=tmp_path,
                       experiment_id=experiment_id, log=sink, **kwargs)


# ------------------------------------------------------------------- read back, each with its own library
def tensorboard_steps(run_dir, tag="train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def csv_steps(run_dir, name="train/loss"):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(row["step"]), float(row["value"])) for row in csv.DictReader(f) if row["name"] == name]


def mlflow_steps(out_dir, key="train/loss"):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("toy").experiment_id])
    history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
    return run, [(m.step, m.value) for m in history]


def wandb_offline_records(run_file):
    """The records of an offline .wandb file: its LevelDB-log framing (32 KiB blocks, 7-byte headers)
    around protobuf records that wandb's own schema (wandb_internal_pb2.Record) decodes."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, position, pending = run_file.read_bytes(), 32768, 7, b""  # 7: the ":W&B" file header
    records = []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL / FIRST start a record
        if kind in (1, 4):  # FULL / LAST end it
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_steps(run_dir, key="train/loss"):
    """{offline run folder: [(step, value), ...]} and the run ids found."""
    found, ids = {}, set()
    for run_file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        ids.add(run_file.stem.removeprefix("run-"))
        points = []
        for record in wandb_offline_records(run_file):
            if record.HasField("history"):
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                if key in items:
                    points.append((record.history.step.num, items[key]))
        found[run_file.parent.name] = points
    return found, ids


# --------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_every_tracker_has_one_loss_point_per_step_before_and_after_a_preemption(tmp_path):
    settings = {"log.trackers": ["tensorboard", "csv", "mlflow", "wandb"]}
    stopped = train(tmp_path, settings=settings, callbacks=[SignalAtStep(5)])
    assert stopped.status == "preempted" and stopped.result["steps"] == 5
    run_dir = stopped.run_dir
    truth = [(h["step"], h["loss"]) for h in map(json.loads, (run_dir / "history.jsonl").read_text().splitlines())
             if "loss" in h]
    assert [s for s, _ in tensorboard_steps(run_dir)] == list(range(1, 6))
    assert csv_steps(run_dir) == truth
    run, points = mlflow_steps(tmp_path)
    assert [s for s, _ in points] == list(range(1, 6)) and run.info.status == "KILLED"
    first_wandb, first_ids = wandb_steps(run_dir)
    assert [[s for s, _ in points] for points in first_wandb.values()] == [list(range(1, 6))]

    resumed = train(tmp_path, settings=settings, resume="must")
    assert resumed.status == "completed"
    truth = [(h["step"], h["loss"]) for h in map(json.loads, (run_dir / "history.jsonl").read_text().splitlines())
             if "loss" in h]
    assert len(truth) == STEPS
    tb = tensorboard_steps(run_dir)
    assert [s for s, _ in tb] == list(range(1, STEPS + 1))
    assert [v for _, v in tb] == pytest.approx([v for _, v in truth])
    assert csv_steps(run_dir) == truth
    run, points = mlflow_steps(tmp_path)  # one MLflow run: the resumed process reopened it
    assert [s for s, _ in points] == list(range(1, STEPS + 1)) and run.info.status == "FINISHED"
    assert [v for _, v in points] == pytest.approx([v for _, v in truth])
    assert run.data.params["train.log_every"] == "3"
    assert len(mlflow_steps(tmp_path, "eval/eval_mse")[1]) == 3
    wandb, ids = wandb_steps(run_dir)
    assert ids == first_ids and len(ids) == 1  # the same W&B run id in both processes
    steps = sorted(s for points in wandb.values() for s, _ in points)
    assert steps == list(range(1, STEPS + 1))  # offline: one folder per process, together every step once


@pytest.mark.slow
def test_steps_written_after_the_newest_checkpoint_are_not_written_twice(tmp_path):
    """A hard kill leaves tracker points past the checkpoint it resumes from: purged or skipped, never doubled."""
    settings = {"log.trackers": ["tensorboard", "csv", "mlflow"]}
    stopped = train(tmp_path, settings=settings, callbacks=[SignalAtStep(7)])
    manifest = stopped.run_dir / "checkpoints" / "manifest.json"
    entries = json.loads(manifest.read_text())
    entries["checkpoints"] = [e for e in entries["checkpoints"] if e["step"] <= 4]  # as if killed after step 7
    manifest.write_text(json.dumps(entries))
    assert csv_steps(stopped.run_dir)[-1][0] == 7  # steps 5..7 were logged; the resume starts at step 4
    resumed = train(tmp_path, settings=settings, resume="must")
    assert resumed.status == "completed"
    for steps in ([s for s, _ in tensorboard_steps(resumed.run_dir)], [s for s, _ in csv_steps(resumed.run_dir)],
                  [s for s, _ in mlflow_steps(tmp_path)[1]]):
        assert steps == list(range(1, STEPS + 1))


class Recording(TrackerLogger):
    """A tracker that keeps what it is sent, and on which thread."""

    tracker = "recording"

    def __init__(self, fail_at_step=None):
        super().__init__()
        self.rows, self.threads, self.summary, self.fail_at_step = [], set(), None, fail_at_step

    def write(self, step, values):
        self.threads.add(threading.current_thread().name)
        if step == self.fail_at_step:
            raise RuntimeError("tracker server went away\nsecond line of detail")
        self.rows.append((step, values))

    def close(self, summary):
        self.summary = summary


def test_trackers_write_every_step_and_the_throughput_off_the_training_thread(tmp_path):
    recording = Recording()
    result = train(tmp_path, settings={"gate.below": {"eval_mse": 1e-9}}, callbacks=[recording])
    assert threading.main_thread().name not in recording.threads and recording.threads == {"epochal-recording"}
    losses = [step for step, values in recording.rows if "train/loss" in values]
    assert losses == list(range(1, STEPS + 1))
    throughput = [step for step, values in recording.rows if "perf/steps_per_second" in values]
    assert throughput == [3, 4, 6, 8, 9, 12]  # every log interval, and each epoch's end
    values = dict(recording.rows)[3]
    assert values["perf/samples_per_second"] == pytest.approx(64 * values["perf/steps_per_second"])
    assert values["perf/peak_host_mb"] > 10 and 0 <= values["perf/data_wait_fraction"] <= 1
    evals = [values for _, values in recording.rows if "eval/eval_mse" in values]
    assert [v["eval/gate_passed"] for v in evals] == [0.0, 0.0, 0.0] and [v["eval/epoch"] for v in evals] == [1, 2, 3]
    assert recording.summary["status"] == "gate_failed" and recording.summary["gate_passed"] is False
    assert recording.summary["test/last/eval_mse"] == result.result["test"]["last"]["eval_mse"]


def test_a_tracker_that_raises_is_disabled_with_one_warning_line_and_training_goes_on(tmp_path):
    lines = []
    failing = Recording(fail_at_step=5)
    result = train(tmp_path, settings={"log.trackers": ["csv"]}, lines=lines, callbacks=[failing])
    assert result.status == "completed"
    warnings = [line for line in lines if "logger disabled" in line]
    assert warnings == ["warning: recording logger disabled (RuntimeError: tracker server went away); training goes "
                        "on, history.jsonl keeps every value"]
    assert failing.disabled and max(step for step, _ in failing.rows) == 4
    assert [s for s, _ in csv_steps(result.run_dir)] == list(range(1, STEPS + 1))  # the others lose nothing


def test_trackers_add_no_host_sync(monkeypatch, tmp_path):
    from test_loop import SYNCING

    import torch

    def count(experiment_id, trackers):
        calls = []
        for name in SYNCING:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, **kwargs):
                calls.append(1)
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        train(tmp_path, experiment_id, {"log.trackers": trackers, "train.max_epochs": 1})
        monkeypatch.undo()
        return len(calls)

    assert count("plain", []) == count("tracked", ["tensorboard", "csv"]) > 0


def test_tokens_per_second_and_mfu_where_the_task_declares_tokens_and_flops(tmp_path):
    from epochal.tasks import register_task
    from epochal.tasks.toy import ToyTask

    class TokenToy(ToyTask):
        name = "token-toy"

        def tokens_per_example(self, cfg):
            return 10

        def flops_per_example(self, cfg, model):
            return 2e6

    register_task(TokenToy)
    result = epochal.run("token-toy", overrides={**SETTINGS, "train.max_epochs": 1, "log.peak_tflops": 0.5},
                         out_dir=tmp_path, experiment_id="t", log=lambda _: None)
    last = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()][-2]
    assert last["tokens_per_second"] == pytest.approx(10 * last["samples_per_second"])
    assert last["mfu"] == pytest.approx(2e6 * last["samples_per_second"] / 0.5e12)
    plain = train(tmp_path, "plain", {"train.max_epochs": 1})
    last = [json.loads(line) for line in (plain.run_dir / "history.jsonl").read_text().splitlines()][-2]
    assert "samples_per_second" in last and "tokens_per_second" not in last and "mfu" not in last


def test_a_missing_tracker_package_is_one_line_naming_the_extra_before_any_folder(monkeypatch, capsys, tmp_path):
    import importlib.util

    from epochal.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code = main(["run", "toy", "--log", "csv,mlflow", "--out", str(tmp_path), "--id", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "log.trackers: 'mlflow' needs the mlflow package; install it with pip install 'epochal[mlflow]'" in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match=r"log.trackers: 'neptune' is not a tracker; allowed: tensorboard, csv"):
        train(tmp_path, settings={"log.trackers": ["neptune"]})


def test_non_terminal_progress_is_one_plain_line_per_log_interval(tmp_path):
    lines = []
    train(tmp_path, settings={"train.progress": True, "train.max_epochs": 1}, lines=lines)
    progress = [line for line in lines if " steps/s" in line]
    assert [line.split("  ")[1] for line in progress] == ["step 3/4 (3 total)", "step 4/4 (4 total)"]
    assert not any("\r" in line for line in lines)


def test_profile_window_writes_a_trace_into_the_run_folder(tmp_path):
    result = train(tmp_path, settings={"log.profile": "2:3", "train.max_epochs": 1})
    trace = json.loads((result.run_dir / "profile" / "trace_steps_2-3.json").read_text())
    assert any("aten::" in event.get("name", "") for event in trace["traceEvents"])
    with pytest.raises(ConfigError, match=r"log.profile: '3:2' is not a step window; allowed: START:STOP"):
        train(tmp_path, "bad", settings={"log.profile": "3:2"})


def test_walks_flops_estimate_is_within_15_percent_of_torch_flop_counter():
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from epochal.tasks.walks.model import TransformerLM
    from epochal.tasks.walks.task import WalksConfig, WalksTask

    cfg, task = WalksConfig(d_model=32, context=16, walk_length=40), WalksTask()
    model = TransformerLM(cfg.n_vertices, cfg.context, cfg.d_model, cfg.n_layers, cfg.n_heads)
    tokens = torch.randint(0, cfg.n_vertices, (4, cfg.context + 1))
    with FlopCounterMode(display=False) as counter:
        task.loss(model, {"tokens": tokens})["loss"].backward()
    measured = counter.get_total_flops() / len(tokens)
    assert task.flops_per_example(cfg, model) == pytest.approx(measured, rel=0.15)
    assert task.tokens_per_example(cfg) == 16
