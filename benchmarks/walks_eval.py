"""Evaluation of the walks task: epochal's generation + compliance against the seed's reference.

The reference (seed 001) generates each token with one full forward over the
last w tokens of all 1000 sequences, then measures compliance with a Python
loop over sequences and steps. epochal generates with a KV cache while the
sequence fits the window, a last-position-only final layer once it slides, and
once per distinct start vertex (see src/epochal/tasks/walks/generate.py), then
measures compliance with array operations. Both must give the same tokens and
the same two numbers; the script asserts that and prints the time ratio.

The model is the default config's, briefly trained (random initial weights
make greedy walks settle on one vertex, an unrealistically easy case).

    python benchmarks/walks_eval.py [--threads 2] [--train-steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from epochal.resolve import resolve
from epochal.tasks import RunContext, get_task
from epochal.tasks.walks.compliance import evaluate_compliance
from epochal.tasks.walks.generate import greedy_generate, greedy_generate_each
from epochal.tasks.walks.reference import reference_compliance, reference_generate


def briefly_train(task, built, steps: int, batch_size: int, lr: float) -> float:
    """A plain AdamW loop over the task's loss; returns training tokens per second."""
    model, tokens = built.model, built.train_data["tokens"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    model.train()
    started = time.perf_counter()
    for _ in range(steps):
        batch = {"tokens": tokens[torch.randint(len(tokens), (batch_size,), generator=generator)]}
        loss = task.loss(model, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    model.eval()
    return steps * batch_size * (tokens.shape[1] - 1) / seconds


def best_time(fn, repeats: int):
    """(result, fastest wall time of ``repeats`` calls)."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return result, min(times)


def time_to_gate() -> None:
    """The default recipe through epochal.run: wall time to the gate, and training tokens per second."""
    import epochal

    started = time.perf_counter()
    result = epochal.run("walks", overrides={"train.progress": False}, out_dir=tempfile.mkdtemp(),
                         experiment_id="gate", log=lambda _: None)
    wall = time.perf_counter() - started
    meta, cfg = result.result["metadata"], resolve("walks", []).task
    tokens = result.result["steps"] * resolve("walks", []).train.batch_size * cfg.context
    print(f"epochal run walks: gate passed={meta['gate_passed']} at epoch {meta['gate_epoch']}, "
          f"{wall:.1f} s wall ({meta['train_seconds']:.1f} s training, {tokens / meta['train_seconds']:,.0f} tokens/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--train-steps", type=int, default=200, help="brief training before measuring")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of epochal's path (best is kept)")
    parser.add_argument("--no-gate", action="store_true", help="skip timing the full default run to the gate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    task = get_task("walks")
    config = resolve("walks", [])
    cfg = config.task
    with tempfile.TemporaryDirectory() as folder:
        built = task.build(cfg, RunContext(Path(folder), torch.device("cpu"), 0, config))
    train_rate = briefly_train(task, built, args.train_steps, config.train.batch_size, lr=3e-3)
    model, ctx = built.model, built.eval_context
    print(f"default walks config: n={cfg.n_vertices} w={cfg.context} d_model={cfg.d_model} layers={cfg.n_layers} "
          f"heads={cfg.n_heads}; {len(ctx.starts)} sequences of {ctx.walk_length} tokens; {args.threads} threads")
    print(f"brief training: {args.train_steps} steps, {train_rate:,.0f} tokens/s")

    r = cfg.rule_distance
    with torch.no_grad():
        ref_tokens, ref_gen_s = best_time(lambda: reference_generate(model, ctx.starts, ctx.walk_length), 1)
    ref_metrics, ref_comp_s = best_time(
        lambda: reference_compliance(ref_tokens.cpu().numpy(), ctx.graph, ctx.graph.blocks, ctx.jumpers, r), 1)

    ours_each, each_s = best_time(lambda: greedy_generate_each(model, ctx.starts, ctx.walk_length), args.repeats)
    ours_tokens, gen_s = best_time(lambda: greedy_generate(model, ctx.starts, ctx.walk_length), args.repeats)
    ours_metrics, comp_s = best_time(
        lambda: evaluate_compliance(ours_tokens, ctx.graph, ctx.graph.blocks, ctx.jumpers, r), args.repeats)

    assert torch.equal(ours_each, ref_tokens), "generation without deduplication differs from the reference"
    assert torch.equal(ours_tokens, ref_tokens), "generation differs from the reference"
    assert ours_metrics == ref_metrics, f"compliance differs: {ours_metrics} vs {ref_metrics}"
    print(f"edge compliance {ours_metrics[0]:.4f}, rule compliance {ours_metrics[1]:.4f} (identical in both)")
    print(f"distinct greedy sequences: {len(torch.unique(ref_tokens, dim=0))} of {len(ref_tokens)}")

    rows = [
        ("reference generation (full window per token)", ref_gen_s),
        ("reference compliance (Python loop)", ref_comp_s),
        ("epochal generation, every sequence (KV cache + last-only layer)", each_s),
        ("epochal generation (+ once per distinct start)", gen_s),
        ("epochal compliance (vectorised)", comp_s),
    ]
    for name, seconds in rows:
        print(f"  {name:<66} {seconds * 1000:9.1f} ms")
    reference, ours = ref_gen_s + ref_comp_s, gen_s + comp_s
    print(f"generation alone, same batch: {ref_gen_s / each_s:.1f}x faster")
    print(f"compliance alone: {ref_comp_s / comp_s:.1f}x faster")
    print(f"evaluation (generation + compliance): reference {reference:.3f} s, epochal {ours:.3f} s, "
          f"ratio {reference / ours:.1f}x")
    if not args.no_gate:
        time_to_gate()


if __name__ == "__main__":
    main()
