"""Gradients by central finite differences, for models that have only ``parameters()`` and ``forward()``.

Seed 002 asks only for those two methods ("The `model` object needs `parameters()`
and `forward()` methods") and its example model has no backward pass. The
``Trainer`` then gets its gradients here: for every parameter element ``θ_j``::

    d outputs / d θ_j  ≈  (forward(θ + h_j e_j) - forward(θ - h_j e_j)) / (2 h_j)
    d loss / d θ_j      =  < d outputs / d θ_j , d loss / d outputs >

``d loss / d outputs`` is the analytic gradient the Trainer's loss already returns
(softmax cross-entropy on integer labels by default), so only the model is
differenced; the error is the central difference's O(h²), about 1e-9 relative in
float64 (the test holds it to 1e-6 against the MLP's hand-written backward).

SLOW, for small models: every step costs 2 forward passes per parameter element.
Seed 002's ``SimpleModel(100, 64, 50)`` (9,600 elements) takes about 0.4 s a step
on one CPU core, against well under a millisecond with a backward pass. The
forward calls cannot be batched for a model known only by ``forward()`` (stacking
perturbed copies along a new axis needs a forward that broadcasts over it, and
measured no faster here because every copy must be written); everything around
them is vectorised: the step sizes, the perturbed values, and the chain rule,
one matrix product per block of elements.

Requirements on the model: ``parameters()`` returns the arrays ``forward()``
reads (not copies; the optimizer updates them in place too), and ``forward()`` is
deterministic (no dropout or sampling). Each element is restored bit for bit after
it is perturbed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from epochal.scratch.errors import ScratchValueError

# Rows of output differences kept before they are contracted: bounds the memory at
# about 32 MB of float64 however large the batch, while keeping the products big.
_BLOCK_VALUES = 1 << 22


def relative_step(dtype: np.dtype) -> float:
    """``eps ** (1/3)`` of the parameter's dtype: balances the O(h²) truncation error
    of a central difference against the O(eps / h) rounding error (~6e-6 in float64)."""
    return float(np.finfo(dtype).eps ** (1.0 / 3.0))


def finite_difference_gradients(model: Any, inputs: np.ndarray, d_outputs: np.ndarray) -> list[np.ndarray]:
    """``d loss / d parameter`` for every array of ``model.parameters()``, given ``d_outputs``
    (d loss / d ``model.forward(inputs)``), by central differences of ``forward``.

    Costs ``2 * (number of parameter elements)`` calls of ``model.forward(inputs)``.
    """
    d_flat = np.asarray(d_outputs, dtype=np.float64).ravel()
    grads = []
    for i, param in enumerate(model.parameters()):
        if not isinstance(param, np.ndarray) or not np.issubdtype(param.dtype, np.floating):
            raise ScratchValueError(
                f"parameter {i} is {type(param).__name__}; finite differences need floating-point numpy arrays"
            )
        grads.append(_parameter_gradient(model, param, inputs, d_flat))
    return grads


def _parameter_gradient(model: Any, param: np.ndarray, inputs: np.ndarray, d_flat: np.ndarray) -> np.ndarray:
    base = param.ravel().copy()
    step = relative_step(param.dtype) * np.maximum(1.0, np.abs(base))
    # Cast to the parameter's dtype first, so the denominator is the step actually taken.
    up = (base + step).astype(param.dtype)
    down = (base - step).astype(param.dtype)
    width = (up.astype(np.float64) - down.astype(np.float64))
    grad = np.empty(base.size, dtype=np.float64)
    rows_per_block = max(1, _BLOCK_VALUES // max(1, d_flat.size))
    flat = param.reshape(-1) if param.flags.c_contiguous else None
    target = flat if flat is not None else param.flat  # .flat writes through for any memory layout
    for start in range(0, base.size, rows_per_block):
        stop = min(base.size, start + rows_per_block)
        diffs = np.empty((stop - start, d_flat.size), dtype=np.float64)
        for row, j in enumerate(range(start, stop)):
            target[j] = up[j]
            plus = model.forward(inputs)
            target[j] = down[j]
            minus = model.forward(inputs)
            target[j] = base[j]
            diffs[row] = _difference(plus, minus, d_flat.size)
        grad[start:stop] = diffs @ d_flat / width[start:stop]
    return grad.reshape(param.shape).astype(param.dtype, copy=False)


def _difference(plus: Any, minus: Any, size: int) -> np.ndarray:
    diff = np.asarray(plus, dtype=np.float64) - np.asarray(minus, dtype=np.float64)
    if diff.size != size:
        raise ScratchValueError(
            f"forward() returned {diff.size} values for a perturbed parameter but {size} for the batch; "
            "finite differences need forward() to return the same shape every call"
        )
    return diff.ravel()
