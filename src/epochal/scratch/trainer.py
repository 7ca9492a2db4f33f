"""The training step and epoch of the NumPy reference trainer.

The model protocol (anything with the first two methods trains, as in seed 002)::

    model.parameters() -> list[np.ndarray]    # the arrays themselves; updated in place
    model.forward(inputs) -> outputs          # e.g. logits (batch, classes); may cache activations
    model.backward(d_outputs) -> list[np.ndarray]      # optional
        # d loss / d parameter, one per parameters() entry, same order and shapes,
        # given d loss / d outputs of the last forward()

Without ``backward`` the gradients come from central finite differences of
``forward`` (``finite_diff.py``): exact to ~1e-9 but two forward passes per
parameter element every step, so only for small models (seed 002's example model,
9,600 elements, takes ~0.4 s a step).

The loss is the trainer's, not the model's: ``loss_fn(outputs, labels) -> (loss,
d_outputs)``, by default the stable softmax cross-entropy of ``mlp.py``. A batch is
a dict with ``'labels'`` and the inputs under ``'inputs'`` or, as in the seed,
``'input_ids'`` (exactly one of the two).

One step, in the seed's order::

    outputs      = model.forward(batch inputs)
    loss, d_out  = loss_fn(outputs, labels)
    grads        = model.backward(d_out)      # or finite differences of forward()
    grad_norm    = clip_grad_norm(grads, max_grad_norm)   # pre-clip norm, as torch returns
    optimizer.step(grads)                                 # uses the lr set for this step
    scheduler.step()                                      # lr for the next step
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from epochal.scratch.adamw import AdamW, check_gradients
from epochal.scratch.errors import ScratchValueError
from epochal.scratch.finite_diff import finite_difference_gradients
from epochal.scratch.mlp import softmax_cross_entropy
from epochal.scratch.schedule import LRScheduler

INPUT_KEYS = ("inputs", "input_ids")
LossFn = Callable[[np.ndarray, np.ndarray], "tuple[float, np.ndarray]"]


class Model(Protocol):
    def parameters(self) -> list[np.ndarray]: ...
    def forward(self, inputs: np.ndarray) -> np.ndarray: ...


def clip_grad_norm(gradients: Sequence[np.ndarray], max_norm: float | None) -> float:
    """Scale ``gradients`` in place so that their global L2 norm is at most ``max_norm``.

    Same semantics as ``torch.nn.utils.clip_grad_norm_``: the total norm is the
    norm of the per-array norms; the scale is ``max_norm / (total_norm + 1e-6)``,
    applied only when it is below 1. Returns the norm *before* clipping.
    ``max_norm=None`` only measures. Gradients must be arrays (a 0-d array, not a
    numpy scalar, which could not be scaled in place).
    """
    for i, g in enumerate(gradients):
        if not isinstance(g, np.ndarray):
            raise ScratchValueError(f"gradient {i} is a {type(g).__name__}; numpy arrays are required")
    total_norm = float(np.linalg.norm([np.linalg.norm(g.ravel()) for g in gradients]))
    if max_norm is not None:
        scale = max_norm / (total_norm + 1e-6)
        if scale < 1.0:
            for g in gradients:
                g *= scale
    return total_norm


def split_batch(batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, labels)`` of a batch dict; ValueError naming the accepted keys otherwise."""
    if not isinstance(batch, dict):
        raise ScratchValueError(
            f"a batch must be a dict with 'labels' and one of {INPUT_KEYS}, got {type(batch).__name__}"
        )
    present = [k for k in INPUT_KEYS if k in batch]
    if len(present) != 1 or "labels" not in batch:
        raise ScratchValueError(
            f"a batch must have 'labels' and exactly one of {INPUT_KEYS}; got keys {sorted(batch)}"
        )
    return np.asarray(batch[present[0]]), np.asarray(batch["labels"])


def _check_updates_reach_the_model(model: Model, optimizer: AdamW) -> None:
    """Finite differences perturb ``model.parameters()`` and AdamW updates its own list: unless
    they are the same arrays, every gradient would be zero or every update lost, silently."""
    params = model.parameters()
    if len(params) != len(optimizer.params) or any(p is not q for p, q in zip(params, optimizer.params)):
        raise ScratchValueError(
            "the optimizer's arrays are not the model's parameters(); build AdamW from model.parameters(), "
            "which must return the arrays forward() reads (they are updated in place)"
        )


class Trainer:
    """Runs training steps of a model (see the module doc for the protocol).

    ``scheduler`` may be None (constant lr); ``max_grad_norm`` None turns clipping off.
    ``gradient_method`` says where the gradients come from: "backward" (the model's
    own) or "finite differences" (a model without ``backward``; slow, small models only).
    """

    def __init__(
        self,
        model: Model,
        optimizer: AdamW,
        scheduler: LRScheduler | None,
        max_grad_norm: float | None = 1.0,
        loss_fn: LossFn = softmax_cross_entropy,
    ):
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ScratchValueError(
                f"max_grad_norm must be > 0, or None for no clipping; got {max_grad_norm}"
            )
        if scheduler is not None and scheduler.optimizer is not optimizer:
            raise ScratchValueError("the scheduler drives a different optimizer than the one given")
        self.gradient_method = "backward" if callable(getattr(model, "backward", None)) else "finite differences"
        if self.gradient_method == "finite differences":
            _check_updates_reach_the_model(model, optimizer)
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_grad_norm = max_grad_norm
        self.loss_fn = loss_fn
        self.global_step = 0  # optimizer steps taken by this trainer

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One update. Returns ``loss`` (before the update), ``grad_norm`` (before clipping)
        and ``lr`` (the lr this update used; the scheduler has since moved on)."""
        inputs, labels = split_batch(batch)
        outputs = self.model.forward(inputs)
        loss, d_outputs = self.loss_fn(outputs, labels)
        if not np.isfinite(loss):
            raise ScratchValueError(
                f"the loss is {loss} at step {self.global_step + 1}; only a finite loss can be trained on"
            )
        if self.gradient_method == "backward":
            grads = self.model.backward(d_outputs)
        else:
            grads = finite_difference_gradients(self.model, inputs, d_outputs)
        check_gradients(self.optimizer.params, grads)
        grad_norm = clip_grad_norm(grads, self.max_grad_norm)
        lr = self.optimizer.lr
        self.optimizer.step(grads)
        if self.scheduler is not None:
            self.scheduler.step()
        self.global_step += 1
        return {"loss": float(loss), "grad_norm": grad_norm, "lr": lr}

    def train_epoch(
        self,
        dataloader: Iterable[dict[str, Any]],
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> dict[str, float]:
        """Train on every batch; ``on_step(global_step, metrics)`` after each.

        Returns ``loss`` (mean per example, batches weighted by their size),
        ``grad_norm`` (mean per step), ``lr`` (of the last step) and ``steps``.
        """
        loss_sum, examples, norm_sum, steps, lr = 0.0, 0, 0.0, 0, self.optimizer.lr
        for batch in dataloader:
            metrics = self.train_step(batch)
            size = len(split_batch(batch)[1])
            loss_sum += metrics["loss"] * size
            examples += size
            norm_sum += metrics["grad_norm"]
            steps += 1
            lr = metrics["lr"]
            if on_step is not None:
                on_step(self.global_step, metrics)
        if steps == 0:
            raise ScratchValueError("the dataloader yielded no batches; an epoch needs at least one")
        return {"loss": loss_sum / examples, "grad_norm": norm_sum / steps, "lr": lr, "steps": steps}
