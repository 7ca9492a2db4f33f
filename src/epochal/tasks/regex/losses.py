"""The multi-task loss of seed 003 (5.2): masked next-token, class and state cross-entropies.

total = lambda_next * loss_next + lambda_class * loss_class + lambda_state * loss_state
        + lambda_l1 * l1

Each component is the mean cross-entropy over the positions its mask keeps
(see dataset.py for which those are); the components are returned unweighted
so that their curves compare across weightings. Everything stays on the device.

Under gradient accumulation each component must be divided by the whole batch's
count of kept positions, not a micro-batch's: ``normalisers`` (the task's
``prepare_batch``) attaches those counts to every example before the batch is
split, and ``multitask_terms`` returns (sum, count) pairs that add up over
micro-batches to exactly the whole batch's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    next: float = 1.0
    cls: float = 1.0
    state: float = 1.0
    l1: float = 0.0


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [B, T, C] against target [B, T] over the True positions of mask [B, T].

    A batch with no kept position gives 0 (not NaN), without a host synchronisation.
    """
    total, count = masked_cross_entropy_sum(logits, target, mask)
    return total / count.clamp_min(1)


COMPONENTS = ("next", "class", "state")


def masked_cross_entropy_sum(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """(sum of cross-entropies over the kept positions, their count)."""
    per_position = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), reduction="none")
    kept = mask.flatten()
    return (per_position * kept).sum(), kept.sum()


def normalisers(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, 4]: every row holds the whole batch's kept-position counts per component and its size B."""
    size = len(batch["next_mask"])
    counts = [batch[f"{name}_mask"].sum().clamp_min(1) for name in COMPONENTS]
    # torch.full, not as_tensor: a fill kernel instead of a host-to-device copy, so the step can be a CUDA graph.
    row = torch.stack([*counts, torch.full((), size, device=counts[0].device)]).float()
    return row.expand(size, -1)


def multitask_terms(
    outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: LossWeights, l1: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(sum, count) pairs of "loss", "loss_next", "loss_class", "loss_state" and "l1" whose totals over
    the micro-batches of a batch, sum over count, are that batch's ``multitask_loss``."""
    norm = batch["normalisers"][0] if "normalisers" in batch else normalisers(batch)[0]
    size = len(batch["next_mask"])
    pairs = {f"loss_{name}": masked_cross_entropy_sum(outputs[name], batch[f"{name}_target"], batch[f"{name}_mask"])
             for name in COMPONENTS}
    lambdas = (weights.next, weights.cls, weights.state)
    # Each component's share of the whole batch's mean, so that micro-batches add up.
    weighted = sum(lam * pairs[f"loss_{name}"][0] / norm[i] for i, (lam, name) in enumerate(zip(lambdas, COMPONENTS)))
    per_example = torch.full((), size, device=norm.device)
    total = (norm[3] * weighted + size * weights.l1 * l1.float(), per_example)
    return {"loss": total, **pairs, "l1": (size * l1.float(), per_example)}


def multitask_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: LossWeights, l1: torch.Tensor
) -> dict[str, torch.Tensor]:
    """{"loss": weighted total, "loss_next", "loss_class", "loss_state", "l1"}: 0-dim tensors of one batch."""
    return {name: total / count.clamp_min(1) for name, (total, count) in multitask_terms(outputs, batch, weights, l1).items()}
