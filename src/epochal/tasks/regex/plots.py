"""The regex task's own figure: test class accuracy by prefix length, in range and beyond it."""

from __future__ import annotations

import re
from typing import Any

BIN = re.compile(r"^(?P<split>.+)_class_acc_len_(?P<low>\d+)_(?P<high>\d+)$")


def length_bins(metrics: dict[str, float]) -> dict[str, list[tuple[int, int, float]]]:
    """{split: [(low, high, accuracy), ...]} from test metrics named <split>_class_acc_len_LO_HI."""
    bins: dict[str, list[tuple[int, int, float]]] = {}
    for name, value in metrics.items():
        match = BIN.match(name)
        if match and value is not None:
            bins.setdefault(match["split"], []).append((int(match["low"]), int(match["high"]), float(value)))
    return {split: sorted(values) for split, values in bins.items()}


def length_accuracy_figure(result: dict[str, Any], max_train_len: int | None):
    """Accuracy per length bin for the last and the best weights; the training lengths shaded. None without test metrics."""
    from epochal.plots import DPI, pyplot

    tested = {weights: length_bins(metrics or {}) for weights, metrics in (result.get("test") or {}).items()}
    if not any(tested.values()):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=DPI)
    styles = {"last": "-", "best": "--"}
    for weights, splits in tested.items():
        for split, values in splits.items():
            centres = [(low + high) / 2 for low, high, _ in values]
            ax.plot(centres, [acc for _, _, acc in values], linestyle=styles.get(weights, ":"), marker="o",
                    markersize=3, label=f"{split}, {weights} weights")
    if max_train_len:
        ax.axvspan(0, max_train_len + 0.5, color="tab:green", alpha=0.08, label=f"training lengths (<= {max_train_len})")
    ax.set_ylim(min(0.5, ax.get_ylim()[0]), 1.01)
    ax.set_xlabel("prefix length (bin centre)")
    ax.set_ylabel("class accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("regex: prefix-membership accuracy by length", fontsize=10)
    fig.tight_layout()
    return fig
