"""Capture of attention maps and hidden states after evaluation (seed 003, 5.6)."""

from __future__ import annotations

from epochal.callbacks.base import Callback
from epochal.checkpoint import save_safetensors


class CaptureInternals(Callback):
    """At each evaluation, run the first ``n_examples`` validation strings through the model
    with its internals on, and save them to ``<run>/captures/epoch_NNNN.safetensors``
    (NNNN: the epoch just evaluated, counted from 1 as in best.pt).

    Tensors saved: tokens [N, T], lengths [N], attention [layers, N, heads, T, T],
    hidden [layers + 1, N, T, d_model], and the three heads' logits.
    """

    key = "regex_capture"

    def __init__(self, n_examples: int):
        self.n_examples = n_examples

    def on_eval_end(self, run, metrics: dict[str, float]) -> None:
        tensors = run.eval_context.splits["val"]
        tokens = tensors["tokens"][: self.n_examples]
        with run.evaluating() as model:  # the weights evaluation used (EMA, if on), restored afterwards
            outputs = model(tokens, return_internals=True)
        captured = {"tokens": tokens, "lengths": tensors["lengths"][: self.n_examples]}
        captured.update({name: outputs[name] for name in ("attention", "hidden", "next", "class", "state")})
        folder = run.dir / "captures"
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors(
            {name: value.detach().float().cpu().contiguous() if value.is_floating_point() else value.cpu().contiguous()
             for name, value in captured.items()},
            str(folder / f"epoch_{run.state.epoch:04d}.safetensors"),  # the epoch just finished, 1-based
        )
