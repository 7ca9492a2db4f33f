import subprocess
import sys

import pytest

from epochal.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "toy", "--set", "optim.lr=-1"], "optim.lr"),
        (["run", "toy", "--set", "train.nope=1"], "train.nope: unknown key"),
        (["run", "toy", "--epochs", "1", "--set", "schedule.warmup_steps=100000"], "schedule.warmup_steps"),
        (["run", "no-such-task"], "unknown task 'no-such-task'"),
        (["run", "toy", "--precision", "fp8"], "invalid choice: 'fp8'"),
        (["run", "toy", "--config", "missing.toml"], "missing.toml: no such file"),
        # Metric names are checked against the task's declared metrics before any folder exists.
        (["run", "toy", "--set", "checkpoint.best_metric=\"eval_mae\""],
         "checkpoint.best_metric: 'eval_mae' is not a metric of task 'toy'; allowed: eval_mse"),
        (["run", "toy", "--set", "early_stop.enabled=true", "--set", "early_stop.metric=\"mse\""],
         "early_stop.metric: 'mse' is not a metric of task 'toy'"),
        (["run", "walks", "--set", "gate.above={edge=0.9}"], "gate.above.edge: 'edge' is not a metric of task 'walks'"),
        (["run", "toy", "--amp", "--precision", "fp16"], "--amp: chooses the precision itself, but --precision fp16"),
        (["run", "toy", "--patience", "-1"], "early_stop.patience"),
        (["run", "toy", "--save-every", "x"], "--save-every: invalid int value: 'x'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run_folder(capsys, tmp_path, args, fragment):
    code, out, err = run_cli(capsys, *args, "--out", str(tmp_path), "--id", "bad")
    assert code == 2
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_a_failed_start_leaves_no_empty_group_folder(capsys, tmp_path):
    code, _, _ = run_cli(capsys, "run", "toy", "--set", "group=\"sweep\"", "--set", "task.hidden=0",
                         "--out", str(tmp_path / "results"))
    assert code == 2 and not (tmp_path / "results").exists()


def test_run_show_and_tasks(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "run", "toy", "--epochs", "2", "--out", str(tmp_path), "--id", "r",
                           "--set", "task.n_train=128", "--no-progress")
    assert code == 0 and str(tmp_path / "r") in out
    code, out, _ = run_cli(capsys, "show", str(tmp_path / "r"))
    assert code == 0 and "status completed" in out and "final eval_mse" in out and "best eval_mse" in out
    assert "last weights  best weights" in out and any(l.startswith("eval_mse ") for l in out.splitlines())
    code, out, _ = run_cli(capsys, "tasks")
    assert code == 0 and any(line.startswith("toy") for line in out.splitlines())


def test_rerun_of_an_existing_id_refuses_without_resume_or_overwrite(capsys, tmp_path):
    args = ["run", "toy", "--epochs", "1", "--out", str(tmp_path), "--id", "r", "--set", "task.n_train=64", "--no-progress"]
    assert run_cli(capsys, *args)[0] == 0
    before = (tmp_path / "r" / "result.json").read_text()
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and "run folder exists" in err
    assert (tmp_path / "r" / "result.json").read_text() == before
    assert run_cli(capsys, *args, "--overwrite")[0] == 0


def test_shorthand_flags_reach_the_config(capsys, tmp_path):
    run_cli(capsys, "run", "toy", "--epochs", "1", "--batch-size", "32", "--lr", "0.01", "--seed", "3",
            "--out", str(tmp_path), "--id", "r", "--set", "task.n_train=64", "--no-progress")
    text = (tmp_path / "r" / "config.toml").read_text()
    for line in ("max_epochs = 1", "batch_size = 32", "lr = 0.01", "seed = 3"):
        assert line in text


def test_seed_003_flags_are_in_help_and_reach_the_config(capsys, tmp_path):
    import json

    from epochal.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for flag in ("--patience N", "--save-every N", "--amp"):
        assert flag in text
    regex = ["--set", 'task.pattern="(a|b)*a(a|b)"', "--set", 'task.alphabet="ab"', "--set", "task.n_train=200",
             "--set", "task.n_val=50", "--set", "task.n_test=50", "--set", "task.n_test_ood=20", "--set",
             "task.max_len=8", "--set", "task.ood_min_len=9", "--set", "task.ood_max_len=10", "--set",
             "task.d_model=16", "--set", "task.n_heads=2", "--set", "task.d_ff=32", "--set", "log.plots=false"]
    code, out, _ = run_cli(capsys, "run", "regex", "--patience", "3", "--save-every", "2", "--amp", "--epochs", "4",
                           "--out", str(tmp_path), "--id", "rx", "--no-progress", *regex)
    config = (tmp_path / "rx" / "config.toml").read_text()
    assert code == 0 and 'precision = "bf16"' in config  # --amp on a CPU: bf16 autocast, no loss scaling
    assert "[early_stop]\nenabled = true" in config and "patience = 3" in config and "every_epochs = 2" in config
    # Without a best.pt (which saves at its own epochs), --save-every alone decides: epochs 2 and 4.
    code, _, _ = run_cli(capsys, "run", "toy", "--save-every", "2", "--epochs", "4", "--set", "task.n_train=64",
                         "--set", 'checkpoint.best_metric=""', "--out", str(tmp_path), "--id", "t", "--no-progress")
    manifest = json.loads((tmp_path / "t" / "checkpoints" / "manifest.json").read_text())
    assert code == 0 and {e["epoch"] for e in manifest["checkpoints"] if e["kind"] == "epoch"} == {2, 4}


def test_amp_is_bf16_where_the_device_computes_it_else_fp16(monkeypatch):
    import torch

    from epochal.step import amp_precision

    assert amp_precision(torch.device("cpu")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert amp_precision(torch.device("cuda")) == "fp16"  # e.g. a V100 or T4: fp16 with a GradScaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert amp_precision(torch.device("cuda")) == "bf16"


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "epochal.cli", "run", "toy", "--set", "train.batch_size=0",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "epochal: error: train.batch_size: 0 must be positive; allowed: > 0"


def test_a_recipe_s_expected_gpu_is_a_warning_on_the_console_and_in_env_json(capsys, tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    code, out, _ = run_cli(capsys, "run", "toy", "--epochs", "1", "--set", "task.n_train=64", "--no-progress",
                           "--set", 'train.expected_gpus=["A5000", "L40S"]',
                           "--set", 'train.expected_cuda_visible_devices="1"', "--out", str(tmp_path), "--id", "g")
    assert code == 0
    env = json.loads((tmp_path / "g" / "env.json").read_text())
    assert len(env["startup_warnings"]) == 2
    assert "not one of the expected A5000, L40S" in env["startup_warnings"][0]
    assert "CUDA_VISIBLE_DEVICES is 0, not the expected 1" in env["startup_warnings"][1]
    assert "warning: GPU is no GPU (cpu)" in out and "CUDA_VISIBLE_DEVICES=0" in out  # the banner always says it


def test_only_a_failed_collective_under_torchrun_counts_as_a_lost_process(monkeypatch):
    from epochal.cli import _lost_peer

    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")
    assert not _lost_peer(gloo)  # one process: no peer to lose
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _lost_peer(gloo)
    assert not _lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))  # a bug keeps its traceback
    assert not _lost_peer(RuntimeError("ProcessGroupGloo does not support reduce_scatter"))  # nor a misuse of gloo


def test_a_warning_on_the_command_line_is_one_line_recorded_in_the_history_and_still_a_python_warning(
        capsys, tmp_path):
    import json
    import os

    args = ["run", "toy", "--epochs", "1", "--set", "task.n_train=64", "--set", "checkpoint.every_steps=1",
            "--no-progress", "--out", str(tmp_path), "--id", "w", "--resume", "auto"]
    assert run_cli(capsys, *args)[0] == 0
    manifest = tmp_path / "w" / "checkpoints" / "manifest.json"
    manifest.unlink()  # the resume rebuilds it, and warns
    proc = subprocess.run([sys.executable, "-m", "epochal", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "rebuilt from" in lines[0], proc.stderr
    assert ".py:" not in proc.stderr and "UserWarning" not in proc.stderr  # no source path, no category
    history = [json.loads(line) for line in (tmp_path / "w" / "history.jsonl").read_text().splitlines()]
    recorded = [h for h in history if h.get("event") == "warning"]
    assert len(recorded) == 1 and recorded[0]["message"] == lines[0].removeprefix("warning: ")
    manifest.unlink()
    with pytest.warns(UserWarning, match="rebuilt from"):  # in-process, the warnings machinery still sees it
        assert run_cli(capsys, *args)[0] == 0


@pytest.mark.parametrize("budget, early", [([], False), (["--set", "train.max_steps=10"], True)])
def test_a_config_refused_once_the_folders_exist_leaves_none_of_them(capsys, tmp_path, budget, early):
    out = tmp_path / "new" / "results"  # neither exists: the start makes both, and removes both
    code, stdout, err = run_cli(capsys, "run", "toy", "--epochs", "1", "--set", "schedule.warmup_steps=1000",
                                *budget, "--no-progress", "--out", str(out), "--id", "x")
    assert code == 2 and err.count("\n") == 1 and "schedule.warmup_steps: 1000 warmup steps" in err, err
    assert list(tmp_path.iterdir()) == []
    # With a step budget it is known before anything is made: no banner, no task built.
    assert ("train.max_steps is 10" in err and stdout == "") if early else "device cpu" in stdout
