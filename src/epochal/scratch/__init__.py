"""The NumPy reference trainer (seed 002): AdamW, schedules, clipping and an MLP, from scratch.

It exists to check the torch path against something small enough to read:
``AdamW`` agrees with ``torch.optim.AdamW`` to rounding, ``LRScheduler`` uses the
same schedule functions as the torch path (``epochal.optim``), and
``clip_grad_norm`` has the semantics of ``torch.nn.utils.clip_grad_norm_``.
``train_mlp`` trains the MLP end to end (``epochal run scratch-mlp``). A model
with only ``parameters()`` and ``forward()`` (seed 002's example) trains too, on
gradients from ``finite_difference_gradients`` (slow: for small models).
"""

from epochal.scratch.adamw import AdamW, check_gradients
from epochal.scratch.data import iterate_batches, make_blobs, make_dataset, make_spirals, num_batches
from epochal.scratch.errors import ScratchConfigError, ScratchValueError
from epochal.scratch.finite_diff import finite_difference_gradients
from epochal.scratch.mlp import MLP, softmax_cross_entropy
from epochal.scratch.run import ScratchMLPConfig, ScratchTaskConfig, evaluate, train_mlp
from epochal.scratch.schedule import LRScheduler
from epochal.scratch.trainer import Trainer, clip_grad_norm

__all__ = [
    "AdamW",
    "LRScheduler",
    "MLP",
    "ScratchConfigError",
    "ScratchMLPConfig",
    "ScratchTaskConfig",
    "ScratchValueError",
    "Trainer",
    "check_gradients",
    "clip_grad_norm",
    "evaluate",
    "finite_difference_gradients",
    "iterate_batches",
    "make_blobs",
    "make_dataset",
    "make_spirals",
    "num_batches",
    "softmax_cross_entropy",
    "train_mlp",
]
