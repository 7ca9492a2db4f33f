"""The multi-task loss of seed 003 (5.2): masked next-token, class and state cross-entropies.

total = lambda_next * loss_next + lambda_class * loss_class + lambda_state * loss_state
        + lambda_l1 * l1

Each component is the mean cross-entropy over the positions its mask keeps
(see dataset.py for which those are); the components are returned unweighted
so that their curves compare across weightings. Everything stays on the device.
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
    per_position = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), reduction="none")
    kept = mask.flatten()
    return (per_position * kept).sum() / kept.sum().clamp_min(1)


def multitask_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: LossWeights, l1: torch.Tensor
) -> dict[str, torch.Tensor]:
    """{"loss": weighted total, "loss_next", "loss_class", "loss_state", "l1"}: 0-dim tensors."""
    components = {
        "loss_next": masked_cross_entropy(outputs["next"], batch["next_target"], batch["next_mask"]),
        "loss_class": masked_cross_entropy(outputs["class"], batch["class_target"], batch["class_mask"]),
        "loss_state": masked_cross_entropy(outputs["state"], batch["state_target"], batch["state_mask"]),
        "l1": l1.float(),
    }
    total = (
        weights.next * components["loss_next"]
        + weights.cls * components["loss_class"]
        + weights.state * components["loss_state"]
        + weights.l1 * components["l1"]
    )
    return {"loss": total, **components}
