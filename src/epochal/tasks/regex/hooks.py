"""Capture of attention maps and hidden states after evaluation (seed 003, 5.6)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from epochal.callbacks.base import Callback
from epochal.checkpoint import save_safetensors

if TYPE_CHECKING:
    from epochal.loop import Fit


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

    def on_eval_end(self, fit: "Fit", metrics: dict[str, float]) -> None:
        model, tensors = fit.model, fit.built.eval_context.splits["val"]
        tokens = tensors["tokens"][: self.n_examples]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            outputs = model(tokens, return_internals=True)
        model.train(was_training)
        captured = {"tokens": tokens, "lengths": tensors["lengths"][: self.n_examples]}
        captured.update({name: outputs[name] for name in ("attention", "hidden", "next", "class", "state")})
        folder = fit.run.dir / "captures"
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors(
            {name: value.detach().float().cpu().contiguous() if value.is_floating_point() else value.cpu().contiguous()
             for name, value in captured.items()},
            str(folder / f"epoch_{fit.state.epoch + 1:04d}.safetensors"),  # the epoch just finished, 1-based
        )
