"""AdamW from scratch in NumPy, step for step the same as ``torch.optim.AdamW``.

The update follows torch's single-tensor (default, non-fused) path, in the
same order::

    t      += 1
    param  *= 1 - lr * weight_decay                  # decoupled weight decay, first
    m      += (1 - beta1) * (grad - m)               # torch: exp_avg.lerp_(grad, 1 - beta1)
    v       = beta2 * v + (1 - beta2) * grad * grad  # torch: mul_(beta2).addcmul_(grad, grad, 1 - beta2)
    bc1     = 1 - beta1**t
    bc2     = 1 - beta2**t
    denom   = sqrt(v) / sqrt(bc2) + eps
    param  -= (lr / bc1) * m / denom                 # torch: addcdiv_(m, denom, value=-lr / bc1)

Measured in float64 over 1000 steps: within ~1e-15 of ``torch.optim.AdamW``
(not bit for bit: torch's vectorized CPU kernels for lerp, addcmul and the
scalar division round differently from NumPy in the last bit).

Note on eps and the seed's pseudocode: the seed writes
``param - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * param)`` with
``m_hat = m / bc1`` and ``v_hat = v / bc2``. Expanded, that is
``param * (1 - lr * wd) - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)``: the same
update as torch's, eps included (in both, eps is added to the bias-corrected
``sqrt(v_hat)``, outside the square root). Only the order of floating-point
operations differs; computed the seed's way the result drifts ~1e-14 from torch
in 1000 steps, which we avoid by taking torch's order. (The Adam paper's
"efficient" form is different: it adds eps to ``sqrt(v)`` *before* the bias
correction, i.e. ``sqrt(v) + eps * sqrt(bc2)``; neither torch nor this module does that.)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from epochal.scratch.errors import ScratchValueError


def check_gradients(params: Sequence[np.ndarray], gradients: Sequence[np.ndarray]) -> None:
    """Raise ``ScratchValueError`` unless ``gradients`` match ``params`` one for one and are finite."""
    if isinstance(gradients, np.ndarray) or not isinstance(gradients, Sequence):
        raise ScratchValueError(
            f"gradients must be a list of arrays, one per parameter ({len(params)}), "
            f"got {type(gradients).__name__}"
        )
    if len(gradients) != len(params):
        raise ScratchValueError(
            f"got {len(gradients)} gradients for {len(params)} parameters; "
            "pass one gradient per parameter, in the order of parameters()"
        )
    for i, (p, g) in enumerate(zip(params, gradients)):
        if not isinstance(g, np.ndarray):
            hint = " (a numpy scalar: wrap it with np.asarray)" if isinstance(g, np.generic) else ""
            raise ScratchValueError(
                f"gradient {i} is a {type(g).__name__}{hint}; a numpy array is required"
            )
        if not np.issubdtype(g.dtype, np.floating):
            raise ScratchValueError(f"gradient {i} has dtype {g.dtype}; gradients must be floating point")
        if g.shape != p.shape:
            raise ScratchValueError(
                f"gradient {i} has shape {g.shape}; it must have its parameter's shape {p.shape}"
            )
        if not np.all(np.isfinite(g)):
            bad = int(np.count_nonzero(~np.isfinite(g)))
            raise ScratchValueError(
                f"gradient {i} (shape {g.shape}) has {bad} non-finite values (NaN or inf); "
                "only finite gradients are allowed: lower the learning rate or check the loss"
            )


class AdamW:
    """AdamW with decoupled weight decay; parameters are updated in place.

    ``params`` are the model's own arrays (floating point); ``step(gradients)``
    takes one gradient per parameter, in the same order. ``lr`` is a plain
    attribute, which ``LRScheduler`` sets before each step.
    """

    def __init__(
        self,
        params: Sequence[np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        params = list(params)
        if not params:
            raise ScratchValueError("params is empty; pass the model's parameter arrays (at least one)")
        for i, p in enumerate(params):
            if not isinstance(p, np.ndarray) or not np.issubdtype(p.dtype, np.floating):
                kind = p.dtype if isinstance(p, np.ndarray) else type(p).__name__
                raise ScratchValueError(
                    f"parameter {i} is {kind}; parameters must be floating-point numpy arrays "
                    "(they are updated in place)"
                )
        if not lr >= 0.0:
            raise ScratchValueError(f"lr must be >= 0, got {lr}")
        if not eps >= 0.0:
            raise ScratchValueError(f"eps must be >= 0, got {eps}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ScratchValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not weight_decay >= 0.0:
            raise ScratchValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.params = params
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.t = 0  # optimizer steps taken
        self.exp_avg = [np.zeros_like(p) for p in params]  # m: first moment
        self.exp_avg_sq = [np.zeros_like(p) for p in params]  # v: second moment

    def step(self, gradients: Sequence[np.ndarray]) -> None:
        """One AdamW update of every parameter, in place, in torch's order (see the module doc).

        All gradients are checked before anything changes, so a bad call leaves
        the parameters and the moments as they were.
        """
        check_gradients(self.params, gradients)
        beta1, beta2 = self.betas
        lr, wd, eps = self.lr, self.weight_decay, self.eps
        self.t += 1
        bias_correction1 = 1 - beta1**self.t
        bias_correction2 = 1 - beta2**self.t
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        for param, grad, m, v in zip(self.params, gradients, self.exp_avg, self.exp_avg_sq):
            if wd != 0:
                param *= 1 - lr * wd
            m += (1 - beta1) * (grad - m)
            v *= beta2
            v += (1 - beta2) * grad * grad
            denom = np.sqrt(v) / bias_correction2_sqrt + eps
            param += (-step_size * m) / denom

    def zero_grad(self) -> None:
        """Nothing to do: gradients are passed to ``step`` and never accumulated here.

        Kept so that a loop written for torch (zero_grad, backward, step) reads the same.
        """

    def state_dict(self) -> dict[str, Any]:
        """Copies of everything ``step`` depends on besides the parameters themselves (as torch)."""
        return {
            "step": self.t,
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "exp_avg": [m.copy() for m in self.exp_avg],
            "exp_avg_sq": [v.copy() for v in self.exp_avg_sq],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; the moments must match the parameters' shapes."""
        missing = {"step", "lr", "betas", "eps", "weight_decay", "exp_avg", "exp_avg_sq"} - set(state)
        if missing:
            raise ScratchValueError(
                f"optimizer state is missing {sorted(missing)}; pass a dict from AdamW.state_dict()"
            )
        for key in ("exp_avg", "exp_avg_sq"):
            arrays = state[key]
            if len(arrays) != len(self.params):
                raise ScratchValueError(
                    f"optimizer state has {len(arrays)} {key} arrays for {len(self.params)} parameters"
                )
            for i, (a, p) in enumerate(zip(arrays, self.params)):
                if np.shape(a) != p.shape:
                    raise ScratchValueError(
                        f"optimizer state {key}[{i}] has shape {np.shape(a)}; the parameter has {p.shape}"
                    )
        self.t = int(state["step"])
        self.lr = float(state["lr"])
        self.betas = (float(state["betas"][0]), float(state["betas"][1]))
        self.eps = float(state["eps"])
        self.weight_decay = float(state["weight_decay"])
        self.exp_avg = [np.array(a, dtype=p.dtype, copy=True) for a, p in zip(state["exp_avg"], self.params)]
        self.exp_avg_sq = [
            np.array(a, dtype=p.dtype, copy=True) for a, p in zip(state["exp_avg_sq"], self.params)
        ]
