"""Token tensors, per-position targets and loss masks (seed 003, M3).

A string s_1 .. s_L becomes the row ``BOS s_1 .. s_L EOS PAD ..``; position t
(0 <= t <= L + 1) has read BOS and the first t symbols. Its targets:

- ``next_target[t]``: the token at t + 1 (s_{t+1}, or EOS at t = L).
- ``class_target[t]``: 1 if the prefix s_1 .. s_t (the empty string at t = 0) is in the language.
- ``state_target[t]``: the DFA state after reading s_1 .. s_t.

Where a target is undefined its mask is False and the target holds a filler (0):

- PAD positions (t > L + 1): nothing was read, every mask is False.
- The EOS position (t = L + 1), the row's last real position: nothing follows EOS,
  and EOS is not a symbol, so no prefix membership or state belongs to it. The
  next-token, class and state masks all exclude it (seed 003 masks the last
  position for the class loss; the same reason holds for the other two).

All three masks therefore cover exactly t = 0 .. L; they are kept separate so
that a loss or metric names the mask of its own target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from epochal.tasks.regex.data import LabelledStrings
from epochal.tasks.regex.fsm import DFA


@dataclass(frozen=True)
class Vocab:
    """PAD = 0, BOS = 1, EOS = 2, then the alphabet's symbols in order."""

    alphabet: tuple[str, ...]
    PAD = 0
    BOS = 1
    EOS = 2
    SPECIALS = ("<pad>", "<bos>", "<eos>")

    @property
    def size(self) -> int:
        return len(self.SPECIALS) + len(self.alphabet)

    @property
    def first_symbol(self) -> int:
        return len(self.SPECIALS)

    def decode(self, tokens: list[int]) -> str:
        """Symbols of a token row, without BOS, EOS and PAD."""
        return "".join(self.alphabet[t - self.first_symbol] for t in tokens if t >= self.first_symbol)


def encode_strings(strings: list[str], dfa: DFA, vocab: Vocab, max_len: int | None = None) -> dict[str, torch.Tensor]:
    """The tensors of one split, rows padded to ``max_len + 2`` (default: the longest string).

    Keys: tokens [N, T] (int64), next_target / class_target / state_target [N, T]
    (int64), next_mask / class_mask / state_mask [N, T] (bool), lengths [N] (int64).
    """
    lengths = np.array([len(s) for s in strings], dtype=np.int64)
    width = int(lengths.max(initial=0)) if max_len is None else max_len
    if len(lengths) and lengths.max() > width:
        raise ValueError(f"a string of length {lengths.max()} exceeds max_len {width}")
    index = {symbol: i for i, symbol in enumerate(dfa.alphabet)}
    symbols = np.zeros((len(strings), width), dtype=np.int64)
    for row, string in enumerate(strings):
        symbols[row, : len(string)] = [index[c] for c in string]
    positions = np.arange(width + 2)
    read = positions[None, :] <= lengths[:, None]  # t = 0 .. L: a prefix was read and every target exists
    in_string = (positions[None, 1:-1] <= lengths[:, None])  # symbol slots 1 .. L

    tokens = np.full((len(strings), width + 2), vocab.PAD, dtype=np.int64)
    tokens[:, 0] = vocab.BOS
    tokens[:, 1:-1] = np.where(in_string, symbols + vocab.first_symbol, vocab.PAD)
    tokens[np.arange(len(strings)), lengths + 1] = vocab.EOS

    next_target = np.full_like(tokens, vocab.PAD)
    next_target[:, :-1] = tokens[:, 1:]
    states = np.zeros_like(tokens)
    states[:, :-1] = dfa.run_batch(symbols)  # states past a string's end are never unmasked
    as_tensor = torch.from_numpy
    mask = as_tensor(read)
    return {
        "tokens": as_tensor(tokens),
        "next_target": as_tensor(np.where(read, next_target, 0)),
        "class_target": as_tensor(np.where(read, dfa.accepting[states], False).astype(np.int64)),
        "state_target": as_tensor(np.where(read, states, 0)),
        "next_mask": mask.clone(),
        "class_mask": mask.clone(),
        "state_mask": mask.clone(),
        "lengths": as_tensor(lengths),
    }


def encode_split(split: LabelledStrings, dfa: DFA, vocab: Vocab, max_len: int | None = None) -> dict[str, torch.Tensor]:
    """encode_strings of a split, checking its labels against the automaton."""
    tensors = encode_strings(split.strings, dfa, vocab, max_len)
    final = tensors["class_target"][torch.arange(len(split)), tensors["lengths"]]
    if not torch.equal(final.bool(), torch.from_numpy(split.accepted)):
        raise ValueError("split labels disagree with the automaton")
    return tensors
