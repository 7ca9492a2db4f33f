"""The walks task's own figure: each evaluation's edge and rule compliance, on the way to the gate."""

from __future__ import annotations

from typing import Any


def compliance_figure(result: dict[str, Any], gate: dict[str, float]):
    """Left: both compliances per evaluation with their gate thresholds. Right: the path through
    (edge, rule) space, one point per evaluation, towards the gate's corner. None before any evaluation."""
    from epochal.plots import DPI, pyplot

    curves, epochs = result.get("curves", {}), result.get("eval_epochs", [])
    edge, rule = curves.get("edge_compliance", []), curves.get("rule_compliance", [])
    if not epochs or len(edge) != len(epochs) or len(rule) != len(epochs):
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=DPI)
    for name, values, color in (("edge_compliance", edge, "tab:blue"), ("rule_compliance", rule, "tab:orange")):
        left.plot(epochs, values, marker="o", markersize=3, color=color, label=name)
        if name in gate:
            left.axhline(gate[name], color=color, linestyle="--", linewidth=1, label=f"gate > {gate[name]:g}")
    left.set_ylim(0, 1.02)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("epoch")
    left.set_ylabel("share of generated steps")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    points = right.scatter(edge, rule, c=epochs, cmap="viridis", s=18, zorder=3)
    right.plot(edge, rule, color="grey", linewidth=0.8, zorder=2)
    edge_gate, rule_gate = gate.get("edge_compliance"), gate.get("rule_compliance")
    if edge_gate is not None and rule_gate is not None:
        right.fill_between([edge_gate, 1.0], rule_gate, 1.0, color="tab:green", alpha=0.15, label="gate passes")
        right.legend(fontsize=7, loc="lower left")
    right.set_xlim(0, 1.02)
    right.set_ylim(0, 1.02)
    right.set_xlabel("edge compliance")
    right.set_ylabel("rule compliance")
    right.grid(alpha=0.3)
    fig.colorbar(points, ax=right, label="epoch")
    fig.suptitle("walks: edge and rule compliance of greedy generations", fontsize=10)
    fig.tight_layout()
    return fig
