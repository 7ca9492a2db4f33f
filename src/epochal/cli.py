"""The ``epochal`` command: run, resume, show, report, tasks, recipe, audit, sweep, runs, compare, diff, tune.

Bad input ends with one line on stderr naming what is wrong and what is
allowed, exit code 2 for a bad config or argument, 1 for other errors, and no
traceback. A preempted run exits with 75 after saving a checkpoint; a run that trained to the end
without passing its gate exits with 3 (status ``gate_failed``, status.py).

Each command imports what it needs when it runs: ``--help``, ``--version``,
``tasks`` and ``recipe`` answer without importing torch or any task.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from epochal._version import __version__
from epochal.console import console_warnings
from epochal.errors import ConfigError, EpochalError
from epochal.signals import Interrupted, ignore_after_the_command, install_outside_runs

SHORTHANDS = {  # flag -> dotted config key
    "epochs": "train.max_epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "seed": "train.seed",
    "precision": "train.precision",
    "device": "train.device",
    "init_from": "init.path",
    "patience": "early_stop.patience",
    "save_every": "checkpoint.every_epochs",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="RECIPE|FILE.toml",
                   help="a shipped recipe by name (`epochal tasks` lists them) or a TOML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting; repeatable; the value is read as TOML")
    p.add_argument("--epochs", type=int, help="train.max_epochs")
    p.add_argument("--batch-size", type=int, help="train.batch_size")
    p.add_argument("--lr", type=float, help="optim.lr")
    p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="train.precision")
    p.add_argument("--amp", action="store_true", default=None,
                   help="mixed precision: bf16 autocast where the device supports it, else fp16 with loss "
                        "scaling (train.precision = \"amp\"); not together with --precision")
    p.add_argument("--patience", type=int, metavar="N", help="early stopping after N evaluations without "
                   "improvement of early_stop.metric (early_stop.patience; turns early_stop.enabled on)")
    p.add_argument("--save-every", type=int, metavar="N", help="checkpoint every N epochs (checkpoint.every_epochs)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (train.device)")
    p.add_argument("--init-from", metavar="PATH", help="start from a run folder's, .pt's, .dcp folder's or .safetensors' weights (init.path)")
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic kernels (train.deterministic)")
    p.add_argument("--out", help="results folder (default: results)")
    p.add_argument("--id", dest="experiment_id", help="run folder name: A-Z a-z 0-9 . _ -, not starting with '.', "
                   "at most 100 characters (default: <task>-<timestamp>-<random>)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="epochal", description="Reproducible, fast PyTorch training; one folder per run.")
    parser.add_argument("--version", action="version", version=f"epochal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train a task")
    run.add_argument("task", help="a registered task (see `epochal tasks`) or an import path package.module:TaskClass")
    _add_config_args(run)
    run.add_argument("--resume", choices=["never", "auto"], default="never",
                     help="auto: continue the run folder of the same id if it has a checkpoint")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an existing run folder of the same id (only a folder epochal made)")
    run.add_argument("--force", action="store_true",
                     help="resume with changed settings that can change mid-run (see README); refuse others")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--log", metavar="TRACKER,...", help="also log to these trackers: tensorboard, csv, mlflow, "
                     "wandb (log.trackers)")
    run.add_argument("--profile", metavar="START:STOP", help="torch.profiler trace of these optimizer steps into "
                     "the run folder (log.profile)")

    resume = sub.add_parser("resume", help="continue a run from its newest valid checkpoint")
    resume.add_argument("run_dir")
    resume.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    resume.add_argument("--force", action="store_true",
                        help="apply changed settings that can change mid-run (see README); refuse others")
    resume.add_argument("--restart", action="store_true",
                        help="start the run over from step 0 with its config.toml, replacing its history, result "
                             "and checkpoints (for a folder with no checkpoint left to resume from)")
    resume.add_argument("--no-progress", action="store_true")

    show = sub.add_parser("show", help="summarise a run folder")
    show.add_argument("run_dir")

    report = sub.add_parser("report", help="write report.html (and the plots) of a run folder or a sweep folder")
    report.add_argument("path", help="a run folder or a sweep folder")
    report.add_argument("--loss-scale", choices=["auto", "linear", "log"], default="auto",
                        help="y axis of a run's loss plot (auto: log when the loss spans 10x)")
    report.add_argument("--out", help="where to write the report (default: PATH/report.html)")
    report.add_argument("--include-failed", action="store_true",
                        help="sweep report: plot gate-failed points and rank them among the best (default: listed apart)")

    export = sub.add_parser("export", help="one safetensors file of a run's weights (a sharded checkpoint "
                                           "consolidated, under the model's own parameter names)")
    export.add_argument("run_dir")
    export.add_argument("--weights", choices=["last", "best", "ema"], default="last",
                        help="the last or best checkpoint's model, or the last checkpoint's EMA weights")
    export.add_argument("--to", required=True, metavar="FILE.safetensors")

    sub.add_parser("tasks", help="list the built-in tasks and their recipes")

    recipe = sub.add_parser("recipe", help="print a shipped recipe, comments included (epochal recipe NAME > my.toml)")
    recipe.add_argument("name", help="a recipe name, as `epochal tasks` lists them")

    audit = sub.add_parser("audit", help="prove determinism and exact resume for a config")
    audit.add_argument("task")
    _add_config_args(audit)
    audit.add_argument("--kills", type=int, default=3, help="SIGKILLs at random steps (default 3)")
    audit.add_argument("--every-steps", type=int, default=7, help="mid-epoch checkpoint interval during the audit")

    tune = sub.add_parser("tune", help="before a run: the largest batch that fits, or a learning-rate range test")
    tune.add_argument("what", choices=["batch-size", "lr"])
    tune.add_argument("task")
    _add_config_args(tune)
    tune.add_argument("--max", type=int, metavar="N", help="batch-size: never above N (required on a CPU)")
    tune.add_argument("--steps", type=int, default=200, help="lr: steps of the range test (default 200)")
    tune.add_argument("--start", type=float, default=1e-7, help="lr: the first learning rate (default 1e-7)")
    tune.add_argument("--end", type=float, default=10.0, help="lr: the last learning rate (default 10)")

    sweep = sub.add_parser("sweep", help="run a search space of settings (Optuna): grid, random or tpe")
    sweep.add_argument("spec", nargs="?", metavar="SPEC.toml", help="the sweep spec (see README, Sweeps)")
    sweep.add_argument("--resume", metavar="SWEEP_DIR", help="continue a sweep folder instead of starting one")
    sweep.add_argument("--workers", type=int, default=None, help="worker processes on this machine (default 1)")
    sweep.add_argument("--workers-per-gpu", type=int, metavar="K",
                       help="K workers on each visible GPU (small models share a GPU well); instead of --workers")
    sweep.add_argument("--storage", metavar="URL",
                       help="SQLAlchemy URL of a shared database (postgresql://...); default: a journal file "
                            "in the sweep folder")
    sweep.add_argument("--launcher", choices=["local", "slurm"], default="local",
                       help="local: worker processes on this machine; slurm: the workers as one SLURM job array "
                            "(submitit), requeued at the time limit, each continuing from its checkpoint")
    sweep.add_argument("--partition", help="--launcher slurm: the SLURM partition (default: the cluster's)")
    sweep.add_argument("--gpus-per-worker", type=int, metavar="G", help="--launcher slurm: GPUs per worker (default 0)")
    sweep.add_argument("--time", metavar="LIMIT", help="--launcher slurm: each job's time limit, MINUTES, HH:MM:SS or "
                                                       "D-HH:MM:SS (default 4:00:00); a job that reaches it is requeued")
    sweep.add_argument("--out", default="results", help="where the sweep folder goes (default: results)")
    sweep.add_argument("--id", dest="sweep_id", help="sweep folder name (default: <spec name>-<time>-<hex>); "
                                                     "the same id and --storage on another machine joins it")

    runs = sub.add_parser("runs", help="list run folders (single runs and sweep trials) as a table")
    runs.add_argument("paths", nargs="*", metavar="PATH", help="run folders or folders holding them (default: results)")
    runs.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                      help="keep runs whose column, setting or metric matches; also !=, <, <=, >, >=; repeatable")
    runs.add_argument("--sort", metavar="KEY", help="sort by a metric, setting or column (--sort=-KEY: descending)")
    runs.add_argument("--desc", action="store_true", help="sort in descending order")
    runs.add_argument("--format", choices=["table", "csv", "json"], default="table")
    runs.add_argument("--columns", metavar="A,B,...", help="show these columns (any setting, metric or column)")
    runs.add_argument("--passed", action="store_true",
                      help="only runs that completed and passed their gate (if any): what analysis should read")

    diff = sub.add_parser("diff", help="only what differs between two runs: settings, environment, hashes, "
                                      "results with deltas, where the loss curves part")
    diff.add_argument("run_a", metavar="RUN_A")
    diff.add_argument("run_b", metavar="RUN_B")
    diff.add_argument("--rtol", type=float, default=0.0, help="relative difference below which losses count as equal")

    compare = sub.add_parser("compare", help="settings that differ, metrics side by side, where curves diverge")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN")
    compare.add_argument("--rtol", type=float, default=0.0,
                         help="relative difference below which curve values count as equal (default 0: exact)")
    compare.add_argument("--include-failed", action="store_true",
                         help="compare gate-failed runs too (by default they are listed apart)")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    from epochal.config import parse_override

    values = dict(parse_override(text) for text in args.overrides)
    for flag, key in SHORTHANDS.items():
        if getattr(args, flag, None) is not None:
            values[key] = getattr(args, flag)
    if getattr(args, "deterministic", None):
        values["train.deterministic"] = True
    if getattr(args, "patience", None) is not None:
        values["early_stop.enabled"] = True  # asking for a patience is asking for early stopping
    if getattr(args, "amp", None):
        if getattr(args, "precision", None) is not None:
            raise ConfigError(f"--amp: chooses the precision itself, but --precision {args.precision} was given too; "
                              "allowed: one of them")
        values["train.precision"] = "amp"
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
                 force=args.force)
    return result.exit_code


def cmd_resume(args: argparse.Namespace) -> int:
    from epochal.api import run
    from epochal.config import load_toml
    from epochal.run_folder import check_name
    from epochal.resolve import resolve_config

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.toml").exists():
        raise EpochalError(f"{run_dir}: not a run folder (no config.toml); allowed: a folder made by `epochal run`")
    _refuse_script_run(run_dir)
    task, config = resolve_config(None, load_toml(run_dir / "config.toml", label=""), _overrides(args))
    check_name(f"{run_dir}: folder name", run_dir.resolve().name)
    # The folder may have moved or been renamed since: it is where the run lives now.
    run_dir = run_dir.resolve()
    config.experiment_id, config.out_dir = run_dir.name, str(run_dir.parents[1 if config.group else 0])
    if args.restart:  # asked for by name: the folder's earlier attempt is replaced, as --overwrite does
        result = run(task, config, resume="never", overwrite=True, force=args.force)
    else:
        result = run(task, config, resume="must", force=args.force)
    return result.exit_code


def _refuse_script_run(run_dir: Path) -> None:
    """A run defined by epochal.fit in a script lives in that script: say how to continue it."""
    from epochal.config import load_toml
    from epochal.script import SCRIPT_TASK

    table = load_toml(run_dir / "config.toml").get("task", {})
    if isinstance(table, dict) and table.get("name") == SCRIPT_TASK:
        script = table.get("script") or "the Python session that made it"
        raise EpochalError(f"{run_dir}: this run was defined by epochal.fit in {script}; run that script again "
                           "with the same settings: fit(..., resume=\"auto\") continues it from its last checkpoint")


def cmd_show(args: argparse.Namespace) -> int:
    from epochal.run_folder import check_result, read_json
    from epochal.status import status_of

    run_dir = Path(args.run_dir)
    path = run_dir / "result.json"
    if not path.exists():
        raise EpochalError(f"{run_dir}: no result.json; allowed: a run folder made by `epochal run`")
    result = check_result(read_json(path, "a result.json written by epochal"), path)
    meta = result["metadata"]
    print(f"{run_dir}: {result['task']}  status {status_of(result)}  ({meta.get('stop_reason', '')})")
    print(f"epochs {result['epochs']}  steps {result['steps']}  train seconds {meta.get('train_seconds')}")
    if result["curves"].get("train_loss"):
        print(f"final train loss {result['curves']['train_loss'][-1]}")
    for name, value in result.get("metrics", {}).items():
        print(f"final {name} {value}")
    best = result.get("best")
    if best and best.get("epoch"):
        print(f"best {best.get('metric')} {best.get('value')} at epoch {best['epoch']}")
    if "gate_passed" in meta:
        print(f"gate ({meta.get('gate')}): {'passed at epoch ' + str(meta.get('gate_epoch')) if meta['gate_passed'] else 'not passed'}")
    tested = {split: values for split, values in result.get("test", {}).items() if isinstance(values, dict)}
    names = list(next(iter(tested.values()), {}))
    if names:
        width = max(len(name) for name in names)
        print(f"{'test metric':{width}s}  " + "  ".join(f"{split + ' weights':>12s}" for split in tested))
        for name in names:
            print(f"{name:{width}s}  " + "  ".join(_cell(tested[split].get(name)) for split in tested))
    print(f"checkpoints in {run_dir / 'checkpoints'}: {', '.join(result.get('checkpoints', [])) or 'none'}")
    return 0


def _cell(value) -> str:
    """A table cell: a number to 4 significant digits; anything else (null for a non-finite value) as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:12.4g}"
    return f"{str(value):>12s}"


def cmd_report(args: argparse.Namespace) -> int:
    from epochal.report import report

    print(f"report: {report(args.path, args.loss_scale, args.out, include_failed=args.include_failed)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from epochal.analysis import export

    print(export(args.run_dir, args.weights, args.to))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    # The static catalog, not the registry: listing must not import the tasks (and torch).
    from epochal import recipes
    from epochal.task import plugin_tasks
    from epochal.catalog import BUILTIN_TASKS

    grouped = recipes.by_task()
    for name, entry in BUILTIN_TASKS.items():
        print(f"{name:12s} {entry.summary}")
        shipped = ", ".join(grouped.get(name, [])) or "none; the task's defaults apply"
        print(f"{'':12s} recipes: {shipped}")
    for name, target in sorted(plugin_tasks().items()):  # advertised by installed packages; not imported here
        print(f"{name:12s} plugin task {target} (entry point group epochal.tasks)")
    print("Any Task subclass also runs by import path: epochal run package.module:TaskClass")
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    from epochal import recipes

    sys.stdout.write(recipes.text(args.name))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from epochal.audit import audit

    return audit(args.task, args.config, _overrides(args), args.kills, args.every_steps, args.out or "results/audit",
                 args.experiment_id or "audit")


def cmd_sweep(args: argparse.Namespace) -> int:
    from epochal.sweep import resume_sweep, start_sweep

    if (args.spec is None) == (args.resume is None):
        raise ConfigError("sweep: give SPEC.toml to start a sweep or --resume SWEEP_DIR to continue one, not both")
    if args.workers is not None and args.workers_per_gpu is not None:
        raise ConfigError("sweep: --workers and --workers-per-gpu both given; allowed: one of them")
    workers = 1 if args.workers is None else args.workers
    cluster = _cluster_launch(args)
    if args.resume:
        return resume_sweep(args.resume, workers, args.storage, workers_per_gpu=args.workers_per_gpu, cluster=cluster)
    return start_sweep(args.spec, args.out, args.sweep_id, workers, args.storage, workers_per_gpu=args.workers_per_gpu,
                       cluster=cluster)


def _cluster_launch(args: argparse.Namespace):
    """--launcher slurm's job settings, or None; those settings without it are refused."""
    from epochal.sweep.launcher import ClusterLaunch, parse_time, require_submitit

    given = [flag for flag, value in (("--partition", args.partition), ("--gpus-per-worker", args.gpus_per_worker),
                                      ("--time", args.time)) if value is not None]
    if args.launcher == "local":
        if given:
            what = "is a SLURM job setting" if len(given) == 1 else "are SLURM job settings"
            raise ConfigError(f"sweep: {' and '.join(given)} {what}; allowed only with --launcher slurm")
        return None
    if args.workers_per_gpu is not None:
        raise ConfigError("sweep: --workers-per-gpu with --launcher slurm; allowed: --workers N --gpus-per-worker G")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker: {args.gpus_per_worker} is negative; allowed: >= 0")
    launch = ClusterLaunch(partition=args.partition, gpus_per_worker=args.gpus_per_worker or 0)
    if args.time is not None:
        launch.time_minutes = parse_time(args.time)
    require_submitit()
    return launch


def cmd_runs(args: argparse.Namespace) -> int:
    from epochal.runs import format_rows, runs_index

    sort = f"-{args.sort.lstrip('-')}" if args.sort and args.desc else args.sort
    columns = [name.strip() for name in args.columns.split(",") if name.strip()] if args.columns else []
    print(format_rows(runs_index(args.paths, args.where, sort, passed=args.passed, columns=columns), args.format))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from epochal.runs import compare

    print(compare(args.run_dirs, args.rtol, include_failed=args.include_failed))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from epochal.runs import diff

    print(diff(args.run_a, args.run_b, args.rtol))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from epochal import tune

    if args.what == "batch-size":
        size, peak = tune.find_batch_size(args.task, args.config, _overrides(args), args.max)
        memory = f", {peak:.0f} MiB at the peak" if peak else ""
        print(f"largest batch that fits: {size}{memory} (train.batch_size = {size})")
        return 0
    test = tune.tune_task_lr(args.task, args.config, _overrides(args), args.start, args.end, args.steps,
                             Path(args.out or "results") / "tune")
    shown = f"; the curve: {test.plot}" if test.plot else ""
    print(f"suggested learning rate: {test.suggestion:.3g} (optim.lr = {test.suggestion:.3g}){shown}")
    return 0


COMMANDS = {"diff": cmd_diff, "tune": cmd_tune, "run": cmd_run, "resume": cmd_resume, "show": cmd_show,
            "report": cmd_report, "tasks": cmd_tasks, "recipe": cmd_recipe, "audit": cmd_audit, "sweep": cmd_sweep,
            "runs": cmd_runs, "compare": cmd_compare, "export": cmd_export}


def main(argv: list[str] | None = None) -> int:
    """The command line. ``argv`` None is this process's own command line (the ``epochal`` program,
    ``python -m epochal``): a signal after the command has ended is then ignored, so that the process exits
    with the command's code (signals.ignore_after_the_command). Called with a list (in-process, as the
    tests do), it puts back the signal handlers it found."""
    # First thing, before any heavy import: until a run installs its own handlers (signals.py), a signal
    # ends the command with one line and epochal's exit code (75 for a scheduler's, which requeues the job).
    previous = install_outside_runs() if _main_thread() else {}
    code = None
    try:
        code = _command(argv)
        return code
    finally:
        if argv is None and previous and code is not None:
            ignore_after_the_command()
        else:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _command(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with console_warnings():  # one line each, recorded in the history of a run that trains
            return COMMANDS[args.command](args)
    except Interrupted as err:
        print(f"epochal: {_rank()}{err}{_again(argv, err)}", file=sys.stderr)
        return err.exit_code
    except EpochalError as err:
        if not getattr(err, "quiet", False):  # a quiet error is one rank 0 of torchrun's processes reports
            print(f"epochal: error: {_rank()}{err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a file operation no layer above named: still one line, not a traceback
        where = f"{err.filename}: " if err.filename else ""
        print(f"epochal: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("epochal: aborted; checkpoints written before the interrupt are intact", file=sys.stderr)
        return 130
    except RuntimeError as err:
        if not _lost_peer(err):
            raise  # a bug keeps its traceback
        print(f"epochal: error: {_rank()}another process of this run stopped ({str(err).splitlines()[0][:200]}); "
              "checkpoints written before it are intact: resume the run", file=sys.stderr)
        return 1


def _again(argv: list[str] | None, err: Interrupted) -> str:
    """How to carry on after a preemption before the run trained: what the requeued job (or the user) runs."""
    if err.signum == signal.SIGINT:
        return ""
    command = next((word for word in (sys.argv[1:] if argv is None else argv) if not word.startswith("-")), "")
    if command == "run":
        return "; the same command with --resume auto starts or continues the run"
    return "; run the same command again" if command in COMMANDS else ""


def _rank() -> str:
    """"rank K: " in the errors of torchrun's processes other than rank 0."""
    rank = os.environ.get("RANK", "0")
    return f"rank {rank}: " if int(os.environ.get("WORLD_SIZE", 1)) > 1 and rank != "0" else ""


def _lost_peer(err: RuntimeError) -> bool:
    """Under torchrun: a collective failed because another process is gone (killed, crashed, out of memory).
    NCCL's failures are DistErrors; gloo's name its transport, which a usage error of gloo does not."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(err, getattr(dist, "DistError", ())):
        return True
    return "gloo/transport" in str(err)  # gloo's errors are plain RuntimeErrors, raised from its transport


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
