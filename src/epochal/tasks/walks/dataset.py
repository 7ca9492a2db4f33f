"""Training sequences cut from walks (seed 000's WalkDataset)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def chunk_walks(walks: np.ndarray, context: int) -> torch.Tensor:
    """[num_walks * (L // (context + 1)), context + 1] int64: non-overlapping pieces of each walk.

    Each piece gives ``context`` inputs and the same tokens shifted by one as
    targets; a walk's last ``L % (context + 1)`` vertices are dropped.
    """
    walks = np.asarray(walks)
    if walks.ndim != 2:
        raise ValueError(f"walks: expected [num_walks, walk_length], got shape {walks.shape}")
    if context < 1:
        raise ValueError(f"context: {context}; allowed: >= 1")
    width = context + 1
    per_walk = walks.shape[1] // width
    if per_walk == 0:
        raise ValueError(f"walks of length {walks.shape[1]} are shorter than context + 1 = {width}")
    pieces = walks[:, : per_walk * width].reshape(-1, width)
    return torch.from_numpy(np.ascontiguousarray(pieces, dtype=np.int64))


class WalkDataset(Dataset):
    """Map-style view of the chunks: item i is {"tokens": LongTensor [context + 1]}."""

    def __init__(self, walks: np.ndarray, context: int):
        self.tokens = chunk_walks(walks, context)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.tokens[index]}
