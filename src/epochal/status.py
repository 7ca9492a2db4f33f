"""How a run ended: the statuses result.json records and what each one means to the rest of epochal.

``completed``    trained to the end of its budget or stopped by a policy; passed its gate if it has one
``gate_failed``  trained to the end, but its [gate] never passed (a failed config); final, not a crash
``failed``       stopped by an error or non-finite numbers
``preempted``    stopped by a signal after saving a checkpoint: resume it
``pruned``       stopped early by a sweep's pruner

A gate-failed run is kept out of analysis (``epochal runs --passed``, ``compare``, the sweep
report's best points and plots) unless asked for with ``--include-failed``, and the CLI exits
with its own code (3), so a script tells pass, gate failure and crash apart.
"""

from __future__ import annotations

RUNNING = "running"
COMPLETED = "completed"
GATE_FAILED = "gate_failed"
FAILED = "failed"
PREEMPTED = "preempted"
# Statuses after which there is nothing left to train: resuming such a run does nothing.
FINISHED = (COMPLETED, GATE_FAILED, FAILED)
# Exit code of a run that trained to the end without passing its gate: not 0 (a script must not take its
# weights for a passed config) and not 1 (nothing crashed; rerunning the same config will not help).
GATE_FAILED_EXIT_CODE = 3


def status_of(result: dict) -> str:
    """result.json's status; folders written before ``gate_failed`` existed say ``completed`` with
    ``metadata.gate_passed`` false, and are read as what they are."""
    status = result.get("status") or "running"
    if status == COMPLETED and (result.get("metadata") or {}).get("gate_passed") is False:
        return GATE_FAILED
    return status


def gate_failure_line(result: dict) -> str:
    """One line naming a gate failure: the gate and the values it last saw."""
    meta = result.get("metadata") or {}
    finals = ", ".join(f"{k.removeprefix('final_')} {v:.4g}" for k, v in meta.items()
                       if k.startswith("final_") and isinstance(v, (int, float)) and not isinstance(v, bool))
    reason = meta.get("failure_reason") or f"gate not passed ({meta.get('gate', '?')})"
    return reason + (f"; last: {finals}" if finals else "")
