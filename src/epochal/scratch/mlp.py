"""A multilayer perceptron in NumPy with a hand-written backward pass.

It follows the model protocol of ``epochal.scratch.trainer``:
``parameters()`` returns the weight arrays themselves (the optimizer updates
them in place), ``forward(inputs)`` returns logits and remembers what the
backward pass needs, ``backward(d_logits)`` returns one gradient per parameter
in ``parameters()`` order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from epochal.scratch.errors import ScratchValueError

ACTIVATIONS = ("relu", "tanh")


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of integer ``labels`` under ``softmax(logits)`` and its gradient.

    Stable for any finite logits: ``log_softmax = z - logsumexp(z)`` with the row
    maximum subtracted first, so ``exp`` never overflows (logits of 1e4 are fine).
    Returns ``(loss, d_loss/d_logits)``; the gradient is ``(softmax - onehot) / N``.
    """
    if logits.ndim != 2:
        raise ScratchValueError(f"logits must be 2-D (batch, classes), got shape {logits.shape}")
    labels = np.asarray(labels)
    n, k = logits.shape
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ScratchValueError(
            f"labels must be {n} integers (one class index per row of logits), "
            f"got shape {labels.shape} and dtype {labels.dtype}"
        )
    if n == 0:
        raise ScratchValueError("the batch is empty; a batch needs at least one example")
    if labels.min() < 0 or labels.max() >= k:
        raise ScratchValueError(
            f"labels must be class indices in [0, {k - 1}], got values in [{labels.min()}, {labels.max()}]"
        )
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_probs = shifted - np.log(sum_exp)
    rows = np.arange(n)
    loss = -log_probs[rows, labels].mean()
    d_logits = exp / sum_exp
    d_logits[rows, labels] -= 1.0
    d_logits /= n
    return float(loss), d_logits


class MLP:
    """``sizes = (in, hidden..., out)``: affine layers with ``activation`` between them.

    Weights are drawn with He (relu) or Glorot (tanh) scaling from a generator
    seeded by ``seed``; biases start at zero. ``dtype`` float64 is what the
    gradient check uses; float32 is faster.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        seed: int | np.random.Generator = 0,
        dtype: type = np.float64,
    ):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ScratchValueError(
                f"sizes must list at least an input and an output width, all >= 1, got {sizes}"
            )
        if activation not in ACTIVATIONS:
            raise ScratchValueError(f"unknown activation {activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.sizes = sizes
        self.activation = activation
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            scale = np.sqrt(2.0 / fan_in) if activation == "relu" else np.sqrt(2.0 / (fan_in + fan_out))
            self.weights.append((rng.standard_normal((fan_in, fan_out)) * scale).astype(dtype))
            self.biases.append(np.zeros(fan_out, dtype=dtype))
        self._cache: list[np.ndarray] | None = None

    def parameters(self) -> list[np.ndarray]:
        """``[W0, b0, W1, b1, ...]``: the arrays themselves, not copies."""
        return [p for pair in zip(self.weights, self.biases) for p in pair]

    def _act(self, z: np.ndarray) -> np.ndarray:
        return np.maximum(z, 0.0) if self.activation == "relu" else np.tanh(z)

    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """Logits of shape (batch, out); keeps the layer inputs for ``backward``."""
        x = np.asarray(inputs)
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ScratchValueError(
                f"inputs must have shape (batch, {self.sizes[0]}), got {x.shape}"
            )
        x = x.astype(self.weights[0].dtype, copy=False)
        cache = [x]  # the input of every layer
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = x @ w + b
            if i < last:
                x = self._act(x)
                cache.append(x)
        self._cache = cache
        return x

    def backward(self, d_logits: np.ndarray) -> list[np.ndarray]:
        """Gradients of the loss w.r.t. ``parameters()``, given d loss / d logits of the last forward."""
        if self._cache is None:
            raise ScratchValueError("backward() needs a forward() first (it uses that call's activations)")
        grads: list[np.ndarray] = []
        delta = d_logits
        for i in reversed(range(len(self.weights))):
            layer_input = self._cache[i]
            grads.append(delta.sum(axis=0))  # d bias
            grads.append(layer_input.T @ delta)  # d weight
            if i > 0:
                delta = delta @ self.weights[i].T
                # layer_input is act(z) of the previous layer; both derivatives are functions of it
                if self.activation == "relu":
                    delta = delta * (layer_input > 0)
                else:
                    delta = delta * (1.0 - layer_input * layer_input)
        self._cache = None
        return grads[::-1]

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """``forward`` for evaluation: keeps nothing, so a pending ``backward`` is not disturbed."""
        cache = self._cache
        try:
            return self.forward(inputs)
        finally:
            self._cache = cache

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Class indices: the argmax of the logits."""
        return self.logits(inputs).argmax(axis=1)
