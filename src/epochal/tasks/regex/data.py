"""Labelled strings of a regular language: accepted, rejected and near misses (seed 003, M2).

Accepted strings of length L are drawn by walking the DFA one symbol at a time,
choosing each symbol with probability proportional to the number of accepted
completions of the remaining length: the walk only visits states from which an
accepting state is still reachable in exactly the symbols left, and every
accepted string of length L is equally likely. Uniform rejected strings are the
same walk on the complement automaton. Near misses are one edit (substitution,
insertion or deletion) away from an accepted string and rejected.

Every length of a range that has both accepted and rejected strings gets the
same number of each (balanced classes, and length says nothing about the
class). Short lengths may hold fewer distinct strings than their share; the
shortfall moves on to the next length. Strings are unique across all splits:
train, val and test are cut from one pool of distinct in-range strings, and the
out-of-distribution test split uses longer lengths only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from epochal.tasks.regex.fsm import DFA

MAX_DRAW_ROUNDS = 40  # rounds of oversampling before a length is declared exhausted


@dataclass
class LabelledStrings:
    """One split: strings over the alphabet and whether the language contains each."""

    strings: list[str]
    accepted: np.ndarray  # [N] bool

    def __len__(self) -> int:
        return len(self.strings)


@dataclass(frozen=True)
class SplitSizes:
    """Requested split sizes (both classes together) and length ranges, inclusive."""

    n_train: int
    n_val: int
    n_test: int
    n_test_ood: int
    min_len: int
    max_len: int
    ood_min_len: int
    ood_max_len: int


class CompletionCounts:
    """``weights[r][q]``: proportional to the number of strings of length r leading from q to acceptance.

    Each row is rescaled to a maximum of 1 (only ratios within a row matter to the
    walk), so long lengths do not overflow float64.
    """

    def __init__(self, dfa: DFA, max_len: int):
        self.dfa = dfa
        rows = [dfa.accepting.astype(np.float64)]
        for _ in range(max_len):
            row = rows[-1][dfa.transitions].sum(axis=1)
            rows.append(row / row.max() if row.max() > 0 else row)
        self.weights = np.stack(rows)

    def has_strings(self, length: int) -> bool:
        return bool(self.weights[length, self.dfa.start] > 0)

    def sample(self, length: int, count: int, rng: np.random.Generator) -> np.ndarray:
        """[count, length] alphabet indices of accepted strings, uniform over those of that length."""
        symbols = np.empty((count, length), dtype=np.int64)
        states = np.full(count, self.dfa.start, dtype=np.int64)
        for i in range(length):
            successors = self.dfa.transitions[states]  # [count, k]
            weights = self.weights[length - i - 1][successors]
            cumulative = np.cumsum(weights, axis=1)
            draws = rng.random(count) * cumulative[:, -1]
            choice = (draws[:, None] >= cumulative).sum(axis=1)
            symbols[:, i] = choice
            states = successors[np.arange(count), choice]
        return symbols


def count_strings(dfa: DFA, length: int) -> int:
    """The exact number of accepted strings of ``length`` (Python integers, no overflow)."""
    counts = [int(a) for a in dfa.accepting]
    for _ in range(length):
        counts = [sum(counts[t] for t in row) for row in dfa.transitions.tolist()]
    return counts[dfa.start]


def _to_strings(symbols: np.ndarray, alphabet: tuple[str, ...]) -> list[str]:
    return ["".join(alphabet[s] for s in row) for row in symbols.tolist()]


def _draw_unique(draw, needed: int, capacity: int, taken: set[str]) -> list[str]:
    """Up to ``needed`` new distinct strings from ``draw(count)``, none of them in ``taken``."""
    found: list[str] = []
    seen = set(taken)
    for _ in range(MAX_DRAW_ROUNDS):
        if len(found) >= needed:
            break
        for string in draw(2 * (needed - len(found)) + 8):
            if string not in seen:
                seen.add(string)
                found.append(string)
        if len(seen) - len(taken) >= capacity:
            break
    return found[:needed]


class StringSampler:
    """Accepted, uniform-rejected and near-miss strings of a DFA, by length."""

    def __init__(self, dfa: DFA, max_len: int, rng: np.random.Generator):
        self.dfa = dfa
        self.rng = rng
        self.accepted = CompletionCounts(dfa, max_len + 1)
        self.rejected = CompletionCounts(dfa.complement(), max_len)

    def has_both_classes(self, length: int) -> bool:
        return self.accepted.has_strings(length) and self.rejected.has_strings(length)

    def accepted_strings(self, length: int, count: int) -> list[str]:
        return _to_strings(self.accepted.sample(length, count, self.rng), self.dfa.alphabet)

    def uniform_rejected(self, length: int, count: int) -> list[str]:
        return _to_strings(self.rejected.sample(length, count, self.rng), self.dfa.alphabet)

    def near_misses(self, length: int, count: int) -> list[str]:
        """Rejected strings of ``length`` one edit from an accepted string; fewer when edits keep accepting."""
        edits = [e for e, base in (("substitute", length), ("insert", length - 1), ("delete", length + 1))
                 if base >= 0 and self.accepted.has_strings(base)]
        if not edits:
            return []
        kinds = self.rng.choice(len(edits), size=count)
        out = []
        for k, kind in enumerate(edits):
            n = int((kinds == k).sum())
            base_len = {"substitute": length, "insert": length - 1, "delete": length + 1}[kind]
            for base in self.accepted_strings(base_len, n):
                edited = self._edit(base, kind)
                if not self.dfa.accepts(edited):
                    out.append(edited)
        return out

    def _edit(self, string: str, kind: str) -> str:
        alphabet = self.dfa.alphabet
        if kind == "delete":
            i = int(self.rng.integers(len(string)))
            return string[:i] + string[i + 1 :]
        if kind == "insert":
            i = int(self.rng.integers(len(string) + 1))
            return string[:i] + alphabet[int(self.rng.integers(len(alphabet)))] + string[i:]
        i = int(self.rng.integers(len(string)))
        others = [s for s in alphabet if s != string[i]] or [string[i]]
        return string[:i] + others[int(self.rng.integers(len(others)))] + string[i + 1 :]

    def rejected_strings(self, length: int, count: int, near_miss_fraction: float, taken: set[str]) -> list[str]:
        """Distinct rejected strings: near misses first, uniform rejected strings for the rest."""
        n_near = round(count * near_miss_fraction)
        capacity = len(self.dfa.alphabet) ** length - count_strings(self.dfa, length)
        near = _draw_unique(lambda n: self.near_misses(length, n), n_near, capacity, taken)
        rest = _draw_unique(lambda n: self.uniform_rejected(length, n), count - len(near),
                            capacity - len(near), taken | set(near))
        return near + rest


def balanced_pool(sampler: StringSampler, lengths: range, n_per_class: int, near_miss_fraction: float,
                  taken: set[str]) -> dict[int, tuple[list[str], list[str]]]:
    """{length: (accepted, rejected)} with equally many of each class at every usable length."""
    usable = [L for L in lengths if sampler.has_both_classes(L)]
    if not usable:
        raise ValueError(f"no length in {lengths.start}..{lengths.stop - 1} has both accepted and rejected strings")
    pool = {}
    carried = 0
    from epochal.callbacks.console import setup_progress

    for i, length in enumerate(setup_progress(usable, "regex: sampling strings by length")):
        share = n_per_class // len(usable) + (i < n_per_class % len(usable)) + carried
        accepted = _draw_unique(lambda n: sampler.accepted_strings(length, n), share,
                                count_strings(sampler.dfa, length), taken)
        rejected = sampler.rejected_strings(length, len(accepted), near_miss_fraction, taken | set(accepted))
        kept = min(len(accepted), len(rejected))
        pool[length] = (accepted[:kept], rejected[:kept])
        carried = share - kept
    return pool


def _cut(count: int, fractions: list[float]) -> list[int]:
    """Boundaries that cut ``count`` items in the given proportions (rounded cumulative shares)."""
    edges = [round(count * f) for f in np.cumsum(fractions)]
    return [0, *edges[:-1], count]


def _labelled(accepted: list[str], rejected: list[str], rng: np.random.Generator) -> LabelledStrings:
    strings = accepted + rejected
    labels = np.array([True] * len(accepted) + [False] * len(rejected), dtype=bool)
    order = rng.permutation(len(strings))
    return LabelledStrings([strings[i] for i in order], labels[order])


def make_splits(dfa: DFA, sizes: SplitSizes, near_miss_fraction: float, rng: np.random.Generator
                ) -> dict[str, LabelledStrings]:
    """train / val / test over [min_len, max_len] and test_ood over [ood_min_len, ood_max_len].

    Each split is balanced per length and class; no string appears twice.
    """
    sampler = StringSampler(dfa, sizes.ood_max_len, rng)
    in_range = {"train": sizes.n_train, "val": sizes.n_val, "test": sizes.n_test}
    total = sum(in_range.values())
    pool = balanced_pool(sampler, range(sizes.min_len, sizes.max_len + 1), math.ceil(total / 2),
                         near_miss_fraction, set())
    fractions = [n / total for n in in_range.values()]
    parts: dict[str, tuple[list[str], list[str]]] = {name: ([], []) for name in in_range}
    for accepted, rejected in pool.values():
        for cls, strings in enumerate((accepted, rejected)):
            strings = [strings[i] for i in rng.permutation(len(strings))]
            cuts = _cut(len(strings), fractions)
            for j, name in enumerate(in_range):
                parts[name][cls].extend(strings[cuts[j] : cuts[j + 1]])
    splits = {name: _labelled(*parts[name], rng) for name in in_range}
    ood_pool = balanced_pool(sampler, range(sizes.ood_min_len, sizes.ood_max_len + 1),
                             math.ceil(sizes.n_test_ood / 2), near_miss_fraction, set())
    splits["test_ood"] = _labelled([s for a, _ in ood_pool.values() for s in a],
                                   [s for _, r in ood_pool.values() for s in r], rng)
    return splits
