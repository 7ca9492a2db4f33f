"""The golden runs: every built-in task at a small size, CPU, fp32.

``python -m golden.cases`` (from the tests folder) captures their per-step
losses and final-weight hashes into ``tests/golden/<case>.json``; ``tests/test_golden.py``
reruns them and requires the same bits. Recapture only in a commit that changes the
numbers on purpose, and say why in its message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).parent

CASES: dict[str, tuple[str, dict]] = {
    # EMA, accumulation and dropout on: every piece of state a step touches.
    "toy": ("toy", {"train.max_epochs": 3, "train.grad_accum": 2, "task.n_train": 256, "task.n_eval": 64,
                    "task.dropout": 0.1, "ema.enabled": True, "ema.decay": 0.9}),
    "walks": ("walks", {"train.max_epochs": 2, "task.n_vertices": 16, "task.n_blocks": 2, "task.n_jumpers": 2,
                        "task.rule_distance": 3, "task.num_walks": 160, "task.walk_length": 34,
                        "task.eval_sequences": 40, "task.context": 16, "task.d_model": 32, "task.n_layers": 1,
                        "task.n_heads": 2}),
    "regex": ("regex", {"train.max_epochs": 2, "task.n_train": 300, "task.n_val": 60, "task.n_test": 60,
                        "task.n_test_ood": 60, "task.max_len": 8, "task.ood_min_len": 9, "task.ood_max_len": 12,
                        "task.d_model": 16, "task.d_ff": 32, "train.grad_accum": 2}),
    "flow-icfm": ("flow", {"group": "golden", "task.arch": "mlp", "task.flow": "icfm", "task.dataset": "moons",
                           "task.aug": "flip", "task.n_samples": 1000, "task.hidden": 32, "task.depth": 2,
                           "train.max_epochs": 2, "train.batch_size": 128, "schedule.warmup_steps": 4,
                           "ema.decay": 0.9}),
    "flow-otcfm": ("flow", {"group": "golden", "task.arch": "resmlp", "task.flow": "otcfm",
                            "task.dataset": "8gaussians", "task.aug": "none", "task.n_samples": 1000,
                            "task.hidden": 32, "task.depth": 2, "train.max_epochs": 2, "train.batch_size": 128,
                            "schedule.warmup_steps": 4, "ema.decay": 0.9}),
    "scratch-mlp": ("scratch-mlp", {}),
}


def run_case(name: str, out_dir: Path) -> dict:
    """Train one case; its per-step losses (exact floats) and, where exported, a hash of the final weights."""
    import torch

    import epochal
    from epochal.audit import weights_hash

    torch.set_num_threads(1)
    task, overrides = CASES[name]
    result = epochal.run(task, overrides={**overrides, "train.progress": False}, out_dir=out_dir,
                         experiment_id=name, log=lambda _: None)
    weights = result.run_dir / "checkpoints" / "model.safetensors"
    return {"train_loss": result.result["curves"]["train_loss"],
            "weights_sha256": weights_hash(result.run_dir) if weights.exists() else None}


def main() -> None:
    import tempfile

    names = sys.argv[1:] or list(CASES)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            golden = run_case(name, Path(tmp))
            (GOLDEN / f"{name}.json").write_text(json.dumps(golden, indent=0) + "\n")
            print(f"{name}: {len(golden['train_loss'])} steps, weights {golden['weights_sha256']}")


if __name__ == "__main__":
    main()
