"""Token, class and state accuracy, NLL and length-binned class accuracy (seed 003, 5.6 and 5.8).

Definitions, all over the positions the targets' masks keep (t = 0 .. L, see dataset.py):

- ``token_acc`` / ``nll``: next-token argmax accuracy and mean negative log-likelihood (nats per token).
- ``class_acc``: prefix-membership accuracy at every position (what the class loss trains).
- ``state_acc``: DFA-state accuracy at every position.
- ``string_acc``: membership of the whole string, read at its last symbol (t = L): one decision per string.
- ``class_acc_len_LO_HI``: ``class_acc`` over prefixes of LO..HI symbols (inclusive, bins of
  ``bin_width`` from 1; the empty prefix is left out). Strings longer than the training
  range put their later prefixes in bins no training string reached: the out-of-distribution signal.

Counts accumulate on the device batch by batch; the host reads them once per split.
"""

from __future__ import annotations

import torch
from torch import nn


def batch_counts(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sums for one batch: scalars, plus per-position class counts [T] for the length bins."""
    next_mask, class_mask, state_mask = batch["next_mask"], batch["class_mask"], batch["state_mask"]
    log_probs = outputs["next"].float().log_softmax(dim=-1)
    nll = -log_probs.gather(-1, batch["next_target"].unsqueeze(-1)).squeeze(-1)
    class_hit = (outputs["class"].argmax(-1) == batch["class_target"]) & class_mask
    rows = torch.arange(len(batch["lengths"]), device=class_hit.device)
    return {
        "token_hits": ((log_probs.argmax(-1) == batch["next_target"]) & next_mask).sum(),
        "nll_sum": (nll * next_mask).sum(),
        "token_count": next_mask.sum(),
        "class_hits": class_hit.sum(),
        "class_count": class_mask.sum(),
        "state_hits": ((outputs["state"].argmax(-1) == batch["state_target"]) & state_mask).sum(),
        "state_count": state_mask.sum(),
        "string_hits": class_hit[rows, batch["lengths"]].sum(),
        "string_count": rows.new_tensor(len(rows)),
        "class_hits_by_position": class_hit.sum(0),
        "class_count_by_position": class_mask.sum(0),
    }


def summarize(sums: dict[str, list], prefix: str, bin_width: int | None) -> dict[str, float]:
    """Flat metric names ``{prefix}_token_acc`` ... from host-side sums."""
    def ratio(hits: float, count: float) -> float:
        return hits / count if count else float("nan")

    metrics = {
        f"{prefix}_token_acc": ratio(sums["token_hits"], sums["token_count"]),
        f"{prefix}_nll": ratio(sums["nll_sum"], sums["token_count"]),
        f"{prefix}_class_acc": ratio(sums["class_hits"], sums["class_count"]),
        f"{prefix}_state_acc": ratio(sums["state_hits"], sums["state_count"]),
        f"{prefix}_string_acc": ratio(sums["string_hits"], sums["string_count"]),
    }
    if bin_width:
        hits, counts = sums["class_hits_by_position"], sums["class_count_by_position"]
        for low in range(1, len(counts), bin_width):
            high = low + bin_width - 1
            count = sum(counts[low : high + 1])
            if count:
                metrics[f"{prefix}_class_acc_len_{low:02d}_{high:02d}"] = sum(hits[low : high + 1]) / count
    return metrics


@torch.no_grad()
def evaluate_split(
    model: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, batch_size: int, bin_width: int | None = None
) -> dict[str, float]:
    """Metrics of one split (tensors already on the model's device), in batches of ``batch_size``."""
    totals: dict[str, torch.Tensor] = {}
    for start in range(0, len(tensors["tokens"]), batch_size):
        batch = {key: value[start : start + batch_size] for key, value in tensors.items()}
        for key, value in batch_counts(model(batch["tokens"]), batch).items():
            totals[key] = totals[key] + value if key in totals else value
    sizes = [value.numel() for value in totals.values()]
    flat = torch.cat([value.reshape(-1).double() for value in totals.values()]).tolist()  # the one host read
    sums: dict[str, list] = {}
    for key, size in zip(totals, sizes):
        values, flat = flat[:size], flat[size:]
        sums[key] = values if totals[key].dim() else values[0]
    return summarize(sums, prefix, bin_width)
