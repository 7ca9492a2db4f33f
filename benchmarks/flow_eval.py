"""Flow recipes: how much of the wall time evaluation takes, and how good the samples are.

For each recipe and training seed, a child process trains the recipe with the
epochal found on ``--src`` (and, interleaved, with an older checkout's on
``--before-src``: export it with ``git archive``), timing inside that one run every
call of the loop's ``evaluate`` and ``test`` (the task's measures with the EMA swap
around them), the set-up of the floors and the end-of-run sample plot. Their sum over
the run's wall time is the evaluation share (goal: at most 25 %); two separate runs
(with and without evaluation) would mix the machine's drift into it.
The parent then scores each run's final EMA weights (model_ema.safetensors) with
*this* checkout's quality measures, on draws of its own, so before and after are
judged by one yardstick:

- sliced Wasserstein distance (SW2) of model samples to the test set, mean and
  spread over sample draws, next to its floor (fresh draws of the generator);
- the off-support share of samples next to real data's own share;
- k-NN precision and recall;
- an exact W2 (scipy's assignment on all pairs) against its own floor, as an
  independent check of the sliced distance.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/flow_eval.py
    git archive <base> | tar -x -C /tmp/before      # then, before and after interleaved:
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/flow_eval.py \
        --before-src /tmp/before/src --before-configs /tmp/before/src/epochal/recipes
    PYTHONPATH=src python benchmarks/flow_eval.py --score-only          # rescore the saved runs
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/flow_eval.py --recipes flow-8gaussians \
        --set optim.lr=1e-3 --set train.max_epochs=500 --out /tmp/flow-lr1e-3    # a variant of a recipe

A --set that leaves training alone (task.quality_every, say) gives the same final weights: the
quality measures draw from noise of their own, not from the training random numbers.

Timings are min / median / max over the seeds; run with one thread, since other
work shares this machine's two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("flow-moons", "flow-8gaussians")
# What counts as evaluation in a run's wall time: every evaluation and test, the floors set up
# before training, and the sample plot at its end. All are timed inside the one run.
EVALUATION = ("evaluate", "test", "setup", "plot")
EVALUATION_SHARE_GOAL = 25.0  # percent of a run's wall time (issue 26)

# Runs inside the child, against whichever epochal PYTHONPATH names.
CHILD = r"""
import json, sys, time
try:
    from epochal import run as train  # epochal.run(task, config, overrides=...)
except ImportError:
    from epochal import fit as train  # checkouts before the loop rewrite named it fit
from epochal.tasks.flow import task as flow_task

recipe, seed, out_dir, experiment_id = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
overrides = json.loads(sys.argv[5])
spent = {"evaluate": [], "test": [], "plot": [], "setup": []}

def timed(kind, function):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[kind].append(time.perf_counter() - started)
    return wrapper

try:
    from epochal import training
except ImportError:
    training = None
# The loop's own evaluate/test: the task's measures plus the EMA swap, RNG and bookkeeping around them
# (the class is Training since the core was tidied, Run before).
loop_run = getattr(training, "Training", None) or getattr(training, "Run", None)
if loop_run is not None:
    loop_run.evaluate = timed("evaluate", loop_run.evaluate)
    loop_run.test = timed("test", loop_run.test)
else:  # checkouts before the loop rewrite: the task's calls only
    flow_task.FlowTask.evaluate = timed("evaluate", flow_task.FlowTask.evaluate)
    flow_task.FlowTask.test = timed("test", flow_task.FlowTask.test)
flow_task.SamplePlot.on_fit_end = timed("plot", flow_task.SamplePlot.on_fit_end)
flow_task.make_eval_context = timed("setup", flow_task.make_eval_context)
started = time.perf_counter()
result = train("flow", recipe, overrides={**overrides, "train.seed": seed, "train.progress": False}, out_dir=out_dir,
             experiment_id=experiment_id, overwrite=True, log=lambda line: None)
wall = time.perf_counter() - started
print(json.dumps({"wall": wall, "spent": spent, "timed": loop_run.__name__ if loop_run else "task", "run_dir": str(result.run_dir), "epochs": result.result["epochs"],
                  "stop_reason": result.stop_reason, "metadata": result.result["metadata"],
                  "test": result.result.get("test")}))
"""


def train(src: Path, recipe: Path, seed: int, out_dir: Path, overrides: dict | None = None) -> dict:
    """Train ``recipe`` with ``seed`` (and ``overrides``, dotted keys as --set takes them) in a child process."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    name = f"{recipe.stem}-seed{seed}"
    done = subprocess.run([sys.executable, "-c", CHILD, str(recipe), str(seed), str(out_dir), name,
                           json.dumps(overrides or {})],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training {name} failed:\n{done.stderr[-3000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record.update(recipe=recipe.stem, seed=seed)
    return record


def spread(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}g}"
    return f"{min(values):.{digits}g} / {statistics.median(values):.{digits}g} / {max(values):.{digits}g}"


def timing_lines(records: list[dict]) -> list[str]:
    walls = [r["wall"] for r in records]
    evaluation = [sum(sum(r["spent"][kind]) for kind in EVALUATION) for r in records]
    shares = [100 * e / w for e, w in zip(evaluation, walls)]
    per_eval = [1000 * statistics.median(r["spent"]["evaluate"]) for r in records]
    return [
        f"  wall time              {spread(walls)} s  (min / median / max over {len(records)} seeds)",
        f"  evaluation             {spread(evaluation)} s = {spread(shares)} % of wall time "
        f"({'within' if max(shares) <= EVALUATION_SHARE_GOAL else 'OVER'} the goal of {EVALUATION_SHARE_GOAL:g} %)",
        f"    set-up (floors)      {spread([sum(r['spent']['setup']) for r in records])} s",
        f"    evaluate(), median   {spread(per_eval)} ms, {spread([len(r['spent']['evaluate']) for r in records])} calls",
        f"    test() last + best   {spread([sum(r['spent']['test']) for r in records])} s",
        f"    sample plot          {spread([sum(r['spent']['plot']) for r in records])} s",
        f"  epochs                 {spread([r['epochs'] for r in records])}  ({'; '.join(sorted({r['stop_reason'] for r in records}))})",
    ]


# ----------------------------------------------------------------- scoring
def load_run(run_dir: Path, dim: int):
    """The run's final EMA weights in a model built from its config.toml."""
    from safetensors.torch import load_file

    from epochal.tasks.flow.model import build_velocity_model

    cfg = run_config(run_dir)
    model = build_velocity_model(cfg.arch, dim, cfg.hidden, cfg.depth, cfg.time_dim)
    model.load_state_dict(load_file(str(run_dir / "checkpoints" / "model_ema.safetensors")))
    return model.eval()


def run_config(run_dir: Path):
    """The run's task settings; keys this checkout does not know (an older run's) are dropped."""
    import dataclasses

    from epochal.config import load_toml
    from epochal.tasks.flow.task import FlowConfig

    known = {f.name for f in dataclasses.fields(FlowConfig)}
    return FlowConfig(**{k: v for k, v in load_toml(run_dir / "config.toml")["task"].items() if k in known})


def exact_w2(a, b) -> float:
    """W2 between two equal-size point sets by an exact assignment on all pairs."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def score_run(run_dir: Path, draws: int, w2_points: int = 1000, w2_draws: int = 5) -> list[str]:
    """Quality of the run's final EMA weights by this checkout's measures, on draws of their own."""
    import dataclasses

    import numpy as np
    import torch

    from epochal.tasks import RunContext
    from epochal.tasks.flow.data import SYNTHETIC, build_flow_data, load_rows
    from epochal.tasks.flow.quality import Spread
    from epochal.tasks.flow.task import draw_samples, make_eval_context

    # One yardstick for every run: the whole test set, many floor draws, noise unlike any the run used.
    cfg = dataclasses.replace(run_config(run_dir), eval_samples=2000, floor_draws=max(draws, 20), test_draws=draws)
    if cfg.dataset not in SYNTHETIC:
        raise SystemExit(f"{run_dir}: the benchmark scores synthetic datasets only (it draws fresh data)")
    rows = load_rows(cfg.dataset, cfg.n_samples, None, cfg.data_seed)
    data = build_flow_data(rows, cfg.val_fraction, cfg.test_fraction, cfg.train_fraction, cfg.data_seed)
    ctx = make_eval_context(cfg, data.val.vectors, data.test.vectors, data.stats,
                            RunContext(run_dir, torch.device("cpu"), 0, None))
    model = load_run(run_dir, rows.shape[1])
    noise = torch.randn(ctx.test_noise.shape, generator=torch.Generator().manual_seed(2024))
    with torch.no_grad():
        samples = draw_samples(model, ctx, noise)
    y = ctx.yardstick
    measured = y.measure(samples)
    lines = [f"SW2 {measured['sample_swd']:.4f} ± {measured['sample_swd_sd']:.4f} vs floor {y.swd_floor.mean:.4f} ± "
             f"{y.swd_floor.sd:.4f}: ratio {measured['swd_ratio']:.2f}, z {measured['swd_z']:.2f}  "
             f"({draws} x {samples.shape[1]} samples)"]
    off = Spread.of(y.support.off_support(samples.double() * y.std + y.mean))
    lines.append(f"off support {100 * off.mean:.2f} ± {100 * off.sd:.2f} % vs real {100 * y.real_off_support.mean:.2f} ± "
                 f"{100 * y.real_off_support.sd:.2f} %: ratio {measured['off_support_ratio']:.2f}")
    lines.append(f"k-NN precision {measured['knn_precision']:.3f} (real {y.real_precision.mean:.3f}), "
                 f"recall {measured['knn_recall']:.3f} (real {y.real_recall.mean:.3f})")
    # Exact W2 on a subset, as an independent check; its floor from fresh draws of the generator.
    reference = y.references[0, :w2_points].double().numpy()
    fresh = data.stats.normalize(load_rows(cfg.dataset, w2_points * w2_draws, None, cfg.data_seed + 999))
    model_w2 = Spread.of(torch.tensor([exact_w2(s[:w2_points].double().numpy(), reference) for s in samples[:w2_draws]]))
    floor_w2 = Spread.of(torch.tensor([exact_w2(part, reference) for part in np.split(fresh, w2_draws)]))
    lines.append(f"exact W2 at {w2_points} points {model_w2.mean:.4f} ± {model_w2.sd:.4f} vs floor {floor_w2.mean:.4f} ± "
                 f"{floor_w2.sd:.4f}: ratio {model_w2.mean / floor_w2.mean:.2f}  ({w2_draws} draws each)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=REPO / "src", help="epochal source tree to train with")
    parser.add_argument("--configs", type=Path, default=REPO / "src" / "epochal" / "recipes",
                        help="folder holding the recipes")
    parser.add_argument("--before-src", type=Path, help="also train with this older source tree, interleaved")
    parser.add_argument("--before-configs", type=Path, help="the older tree's recipes (default: --configs)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("/tmp/flow-bench"))
    parser.add_argument("--score-only", action="store_true", help="rescore the runs saved by an earlier call")
    parser.add_argument("--draws", type=int, default=20, help="sample draws (and at least 20 floor draws) per score")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe setting in every run, as `epochal run --set` does (repeatable)")
    args = parser.parse_args()
    from epochal.config import ConfigError, parse_override

    try:
        overrides = dict(parse_override(text) for text in args.overrides)
    except ConfigError as error:
        parser.error(str(error))

    trees = {"after": (args.src, args.configs)}
    if args.before_src:
        trees = {"before": (args.before_src, args.before_configs or args.configs), **trees}
    records_file = args.out / "records.json"
    if args.score_only:
        records = json.loads(records_file.read_text())
    else:
        records = []
        for recipe in args.recipes:
            for seed in args.seeds:
                for label, (src, configs) in trees.items():  # interleaved: both see the same machine load
                    record = train(src, configs / f"{recipe}.toml", seed, args.out / label, overrides)
                    records.append({**record, "label": label})
                    print(f"trained {label} {recipe} seed {seed}: {record['wall']:.1f} s", file=sys.stderr, flush=True)
                    args.out.mkdir(parents=True, exist_ok=True)
                    records_file.write_text(json.dumps(records, indent=1))
    for recipe in args.recipes:
        for label in dict.fromkeys(r["label"] for r in records):
            mine = [r for r in records if r["recipe"] == recipe and r["label"] == label]
            if not mine:
                continue
            print(f"{recipe}, {label}")
            for line in timing_lines(mine):
                print(line)
            for record in mine:
                for line in score_run(Path(record["run_dir"]), args.draws):
                    print(f"  seed {record['seed']}: {line}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
