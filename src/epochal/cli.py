"""The ``epochal`` command: run, resume, show, report, tasks, audit.

Bad input ends with one line on stderr naming what is wrong and what is
allowed, exit code 2 for a bad config or argument, 1 for other errors, and no
traceback. A preempted run exits with 75 after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from epochal.errors import ConfigError, EpochalError

SHORTHANDS = {  # flag -> dotted config key
    "epochs": "train.max_epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "seed": "train.seed",
    "precision": "train.precision",
    "device": "train.device",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.toml", help="TOML recipe (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting; repeatable; the value is read as TOML")
    p.add_argument("--epochs", type=int, help="train.max_epochs")
    p.add_argument("--batch-size", type=int, help="train.batch_size")
    p.add_argument("--lr", type=float, help="optim.lr")
    p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="train.precision")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (train.device)")
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic kernels (train.deterministic)")
    p.add_argument("--out", help="results folder (default: results)")
    p.add_argument("--id", dest="experiment_id", help="run folder name (default: <task>-<timestamp>; audit: audit)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="epochal", description="Reproducible, fast PyTorch training; one folder per run.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train a task")
    run.add_argument("task", help="a registered task (see `epochal tasks`)")
    _add_config_args(run)
    run.add_argument("--resume", choices=["never", "auto"], default="never",
                     help="auto: continue the run folder of the same id if it has a checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same id")
    run.add_argument("--force", action="store_true", help="resume even if the config differs from the checkpoint's")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--log", metavar="TRACKER,...", help="also log to these trackers: tensorboard, csv, mlflow, "
                     "wandb (log.trackers)")
    run.add_argument("--profile", metavar="START:STOP", help="torch.profiler trace of these optimizer steps into "
                     "the run folder (log.profile)")

    resume = sub.add_parser("resume", help="continue a run from its newest valid checkpoint")
    resume.add_argument("run_dir")
    resume.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    resume.add_argument("--force", action="store_true", help="accept settings that differ from the checkpoint's")
    resume.add_argument("--no-progress", action="store_true")

    show = sub.add_parser("show", help="summarise a run folder")
    show.add_argument("run_dir")

    report = sub.add_parser("report", help="write report.html (and the plots) of a run folder")
    report.add_argument("path", help="a run folder")
    report.add_argument("--loss-scale", choices=["auto", "linear", "log"], default="auto",
                        help="y axis of the loss plot (auto: log when the loss spans 10x)")
    report.add_argument("--out", help="where to write the report (default: PATH/report.html)")

    sub.add_parser("tasks", help="list the registered tasks")

    audit = sub.add_parser("audit", help="prove determinism and exact resume for a config")
    audit.add_argument("task")
    _add_config_args(audit)
    audit.add_argument("--kills", type=int, default=3, help="SIGKILLs at random steps (default 3)")
    audit.add_argument("--every-steps", type=int, default=7, help="mid-epoch checkpoint interval during the audit")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    from epochal.config import parse_override

    values = dict(parse_override(text) for text in args.overrides)
    for flag, key in SHORTHANDS.items():
        if getattr(args, flag, None) is not None:
            values[key] = getattr(args, flag)
    if getattr(args, "deterministic", None):
        values["train.deterministic"] = True
    if getattr(args, "no_progress", False):
        values["train.progress"] = False
    if getattr(args, "log", None) is not None:
        values["log.trackers"] = [name.strip() for name in args.log.split(",") if name.strip()]
    if getattr(args, "profile", None) is not None:
        values["log.profile"] = args.profile
    return values


def cmd_run(args: argparse.Namespace) -> int:
    from epochal.api import run

    result = run(args.task, args.config, overrides=_overrides(args), out_dir=args.out,
                 experiment_id=args.experiment_id, resume=args.resume, overwrite=args.overwrite,
                 force=args.force, callbacks=_test_hooks())
    return result.exit_code


def cmd_resume(args: argparse.Namespace) -> int:
    from epochal.api import run
    from epochal.resolve import resolve_config

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.toml").exists():
        raise EpochalError(f"{run_dir}: not a run folder (no config.toml)")
    task, config = resolve_config(None, run_dir / "config.toml", _overrides(args))
    # The folder may have moved or been renamed since: it is where the run lives now.
    run_dir = run_dir.resolve()
    config.experiment_id, config.out_dir = run_dir.name, str(run_dir.parents[1 if config.group else 0])
    result = run(task, config, resume="must", force=args.force, callbacks=_test_hooks())
    return result.exit_code


def cmd_show(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    path = run_dir / "result.json"
    if not path.exists():
        raise EpochalError(f"{run_dir}: no result.json; allowed: a run folder made by `epochal run`")
    try:
        result = json.loads(path.read_text())
    except ValueError as err:
        raise EpochalError(f"{path}: not valid JSON ({err})") from None
    meta = result.get("metadata", {})
    print(f"{run_dir}: {result['task']}  status {result['status']}  ({meta.get('stop_reason', '')})")
    print(f"epochs {result['epochs']}  steps {result['steps']}  train seconds {meta.get('train_seconds')}")
    if result["curves"].get("train_loss"):
        print(f"final train loss {result['curves']['train_loss'][-1]}")
    for name, value in result.get("metrics", {}).items():
        print(f"final {name} {value}")
    best = result.get("best")
    if best and best.get("epoch"):
        print(f"best {best['metric']} {best['value']} at epoch {best['epoch']}")
    if "gate_passed" in meta:
        print(f"gate ({meta['gate']}): {'passed at epoch ' + str(meta['gate_epoch']) if meta['gate_passed'] else 'not passed'}")
    tested = result.get("test", {})
    if tested:
        names = list(next(iter(tested.values())))
        width = max(len(name) for name in names)
        print(f"{'test metric':{width}s}  " + "  ".join(f"{split + ' weights':>12s}" for split in tested))
        for name in names:
            print(f"{name:{width}s}  " + "  ".join(f"{tested[split].get(name, float('nan')):12.4g}" for split in tested))
    print(f"checkpoints in {run_dir / 'checkpoints'}: {', '.join(result.get('checkpoints', [])) or 'none'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from epochal.report import report

    print(f"report: {report(args.path, args.loss_scale, args.out)}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from epochal.tasks import get_task, task_names

    for name in task_names():
        print(f"{name:12s} {get_task(name).summary}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from epochal.audit import audit

    return audit(args.task, args.config, _overrides(args), args.kills, args.every_steps, args.out or "results/audit",
                 args.experiment_id or "audit")


def _test_hooks() -> list:
    from epochal.audit import kill_hooks

    return kill_hooks()


COMMANDS = {"run": cmd_run, "resume": cmd_resume, "show": cmd_show, "report": cmd_report, "tasks": cmd_tasks,
            "audit": cmd_audit}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except EpochalError as err:
        print(f"epochal: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("epochal: aborted; checkpoints written before the interrupt are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
