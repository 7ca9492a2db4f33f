"""Nested training subsets with fixed validation and test sets, for data-scaling studies.

One seeded permutation of the rows decides everything: its head is the test set,
the next block the validation set, and the rest is the training pool. The training
subset for a fraction ``f`` is the first ``round(f * pool)`` rows of the pool, so a
smaller subset is always a prefix of (contained in) a larger one, and every subset
is evaluated on the same val/test rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The usual ladder of a data-scaling study (any fraction in (0, 1] nests the same way).
SCALING_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Splits:
    test: np.ndarray
    val: np.ndarray
    pool: np.ndarray  # every training candidate, in the order subsets take them

    def train(self, fraction: float) -> np.ndarray:
        """Row indices of the training subset holding ``fraction`` of the pool (at least one row)."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
        return self.pool[: max(1, round(fraction * len(self.pool)))]

    def sizes(self, fraction: float) -> dict[str, int]:
        return {"n_train": len(self.train(fraction)), "n_val": len(self.val), "n_test": len(self.test)}


def nested_splits(n: int, val_fraction: float, test_fraction: float, rng: np.random.Generator) -> Splits:
    """Split ``n`` rows; the test set gets at least 2 rows (it is compared half against half)."""
    n_test = max(2, round(test_fraction * n))
    n_val = max(1, round(val_fraction * n))
    if n_test + n_val >= n:
        raise ValueError(f"{n} rows leave nothing to train on after {n_val} validation and {n_test} test rows")
    order = rng.permutation(n)
    return Splits(test=order[:n_test], val=order[n_test : n_test + n_val], pool=order[n_test + n_val :])
