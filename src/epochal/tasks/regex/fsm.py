"""Regular expression -> complete minimal DFA over a declared alphabet (seed 003, M1).

Pipeline: a recursive-descent parser builds a small syntax tree; Thompson's
construction turns it into an NFA with epsilon moves; the subset construction
makes it deterministic (the empty subset becomes the dead state, so the DFA is
complete); Moore's partition refinement minimises it; states are renumbered in
breadth-first order from the start state, so two equivalent patterns compile to
the very same DFA.

Supported syntax (symbols are single characters of the alphabet)::

    a        a literal symbol           .        any symbol of the alphabet
    [abc]    a class; [a-c] a range     [^ab]    every alphabet symbol but a and b
    xy       concatenation              x|y      alternation ("" matches the empty string)
    x* x+ x? repetition                 x{m} x{m,} x{,n} x{m,n}  counted repetition
    (x)      grouping                   \\c       the symbol c, when c is a metacharacter

Stacked quantifiers such as ``a**`` are rejected, as in Python's ``re``
(where ``a*+`` and ``a*?`` would mean something else); write ``(a*)*``.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from epochal.io import atomic_write_text

METACHARACTERS = frozenset(".[]()|*+?{}\\^$-")
SUPPORTED_SYNTAX = (
    "literals over the alphabet, '.', classes [abc] [a-c] [^ab], '|', '*', '+', '?', "
    "'{m}', '{m,}', '{,n}', '{m,n}', parentheses, '\\' before a metacharacter"
)
MAX_REPEAT = 64  # a counted repetition copies its operand this many times at most
MAX_NFA_STATES = 20_000  # guards the subset construction against patterns that explode


class PatternError(ValueError):
    """A pattern that does not parse, uses unsupported syntax or a symbol outside the alphabet."""


# --------------------------------------------------------------------------- syntax tree


@dataclass(frozen=True)
class Symbols:
    """One position that reads any of ``symbols`` (alphabet indices)."""

    symbols: frozenset[int]


@dataclass(frozen=True)
class Concat:
    parts: tuple  # empty: the empty string


@dataclass(frozen=True)
class Alternation:
    options: tuple


@dataclass(frozen=True)
class Repeat:
    body: object
    low: int
    high: int | None  # None: unbounded


class _Parser:
    """Recursive descent over: alternation := concat ('|' concat)*; concat := repeat*;
    repeat := atom quantifier?; atom := symbol | '.' | class | '(' alternation ')'."""

    def __init__(self, pattern: str, alphabet: tuple[str, ...]):
        self.pattern = pattern
        self.alphabet = alphabet
        self.index = {symbol: i for i, symbol in enumerate(alphabet)}
        self.pos = 0

    def parse(self):
        tree = self._alternation()
        if self.pos < len(self.pattern):
            char = self.pattern[self.pos]
            reason = "unbalanced ')'" if char == ")" else f"unexpected {char!r}"
            self._fail(reason)
        return tree

    def _fail(self, reason: str):
        raise PatternError(f"{reason} at position {self.pos} of {self.pattern!r}")

    def _peek(self) -> str | None:
        return self.pattern[self.pos] if self.pos < len(self.pattern) else None

    def _take(self) -> str:
        char = self._peek()
        if char is None:
            self._fail("unexpected end of pattern")
        self.pos += 1
        return char

    def _alternation(self):
        options = [self._concat()]
        while self._peek() == "|":
            self.pos += 1
            options.append(self._concat())
        return options[0] if len(options) == 1 else Alternation(tuple(options))

    def _concat(self):
        parts = []
        while self._peek() not in (None, "|", ")"):
            parts.append(self._repeat())
        return parts[0] if len(parts) == 1 else Concat(tuple(parts))

    def _repeat(self):
        atom = self._atom()
        char = self._peek()
        if char in ("*", "+", "?"):
            self.pos += 1
            atom = Repeat(atom, *{"*": (0, None), "+": (1, None), "?": (0, 1)}[char])
        elif char == "{":
            atom = Repeat(atom, *self._counts())
        if self._peek() in ("*", "+", "?", "{"):
            self._fail("multiple repeat (write (x*)* rather than x**)")
        return atom

    def _counts(self) -> tuple[int, int | None]:
        start = self.pos
        close = self.pattern.find("}", start)
        if close < 0:
            self._fail("'{' without a closing '}'")
        body = self.pattern[start + 1 : close]
        low_text, comma, high_text = body.partition(",")
        digits_ok = all(part.isdigit() or part == "" for part in (low_text, high_text))
        if not digits_ok or not (low_text or high_text) or (not comma and not low_text):
            self._fail(f"invalid repetition {{{body}}}; allowed: {{m}}, {{m,}}, {{,n}}, {{m,n}}")
        low = int(low_text) if low_text else 0
        high = (int(high_text) if high_text else None) if comma else low
        if high is not None and high < low:
            self._fail(f"invalid repetition {{{body}}}: the maximum is below the minimum")
        if max(low, high or 0) > MAX_REPEAT:
            self._fail(f"repetition {{{body}}} too large; allowed: counts up to {MAX_REPEAT}")
        self.pos = close + 1
        return low, high

    def _atom(self):
        char = self._take()
        if char == "(":
            inner = self._alternation()
            if self._peek() != ")":
                self._fail("missing ')'")
            self.pos += 1
            return inner
        if char == ".":
            return Symbols(frozenset(range(len(self.alphabet))))
        if char == "[":
            return self._class()
        if char in ("*", "+", "?", "{"):
            self.pos -= 1
            self._fail(f"nothing to repeat before {char!r}")
        if char == "\\":
            char = self._take()
        elif char in METACHARACTERS:
            self.pos -= 1
            self._fail(f"unexpected {char!r}")
        return Symbols(frozenset([self._symbol(char)]))

    def _class(self):
        negated = self._peek() == "^"
        if negated:
            self.pos += 1
        members: set[int] = set()
        while self._peek() != "]":
            if self._peek() is None:
                self._fail("'[' without a closing ']'")
            first = self._class_char()
            if self._peek() == "-" and self.pos + 1 < len(self.pattern) and self.pattern[self.pos + 1] != "]":
                self.pos += 1
                last = self._class_char()
                if ord(last) < ord(first):
                    self._fail(f"bad range {first}-{last}")
                for endpoint in (first, last):
                    self._symbol(endpoint)  # a range's ends must be symbols themselves
                members |= {i for s, i in self.index.items() if ord(first) <= ord(s) <= ord(last)}
            else:
                members.add(self._symbol(first))
        self.pos += 1
        if negated:
            members = set(range(len(self.alphabet))) - members
        if not members:
            self._fail("empty character class")
        return Symbols(frozenset(members))

    def _class_char(self) -> str:
        char = self._take()
        return self._take() if char == "\\" else char

    def _symbol(self, char: str) -> int:
        if char not in self.index:
            self.pos -= 1
            self._fail(f"symbol {char!r} is not in the alphabet {''.join(self.alphabet)!r}")
        return self.index[char]


def parse(pattern: str, alphabet: tuple[str, ...]):
    """The syntax tree of ``pattern``; PatternError naming the position otherwise."""
    return _Parser(pattern, alphabet).parse()


# --------------------------------------------------------------------------- Thompson NFA


class _NFA:
    """States are integers; ``epsilon[s]`` and ``moves[s]`` (pairs of symbol set, target) are its edges."""

    def __init__(self):
        self.epsilon: list[list[int]] = []
        self.moves: list[list[tuple[frozenset[int], int]]] = []

    def new_state(self) -> int:
        if len(self.epsilon) >= MAX_NFA_STATES:
            raise PatternError(f"pattern too large: more than {MAX_NFA_STATES} automaton states")
        self.epsilon.append([])
        self.moves.append([])
        return len(self.epsilon) - 1

    def build(self, node) -> tuple[int, int]:
        """A fragment recognising ``node``: (entry state, exit state)."""
        entry, exit_ = self.new_state(), self.new_state()
        if isinstance(node, Symbols):
            self.moves[entry].append((node.symbols, exit_))
        elif isinstance(node, Concat):
            current = entry
            for part in node.parts:
                start, end = self.build(part)
                self.epsilon[current].append(start)
                current = end
            self.epsilon[current].append(exit_)
        elif isinstance(node, Alternation):
            for option in node.options:
                start, end = self.build(option)
                self.epsilon[entry].append(start)
                self.epsilon[end].append(exit_)
        else:
            self._repeat(node, entry, exit_)
        return entry, exit_

    def _repeat(self, node: Repeat, entry: int, exit_: int) -> None:
        current = entry
        for _ in range(node.low):
            start, end = self.build(node.body)
            self.epsilon[current].append(start)
            current = end
        if node.high is None:
            start, end = self.build(node.body)
            self.epsilon[current] += [start, exit_]
            self.epsilon[end] += [start, exit_]
            return
        for _ in range(node.high - node.low):
            start, end = self.build(node.body)
            self.epsilon[current] += [start, exit_]
            current = end
        self.epsilon[current].append(exit_)

    def closure(self, states) -> frozenset[int]:
        seen = set(states)
        stack = list(states)
        while stack:
            for target in self.epsilon[stack.pop()]:
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        return frozenset(seen)


def _subset_construction(nfa: _NFA, start: int, accept: int, n_symbols: int) -> tuple[np.ndarray, np.ndarray]:
    """(transitions [n, k], accepting [n]) of the reachable subsets; the empty subset is a state too."""
    first = nfa.closure([start])
    ids = {first: 0}
    queue = deque([first])
    rows: list[list[int]] = []
    while queue:
        subset = queue.popleft()
        row = []
        for symbol in range(n_symbols):
            targets = [t for s in subset for symbols, t in nfa.moves[s] if symbol in symbols]
            successor = nfa.closure(targets)
            if successor not in ids:
                ids[successor] = len(ids)
                queue.append(successor)
            row.append(ids[successor])
        rows.append(row)
    accepting = np.zeros(len(ids), dtype=bool)
    for subset, i in ids.items():
        accepting[i] = accept in subset
    return np.array(rows, dtype=np.int64).reshape(len(ids), n_symbols), accepting


# --------------------------------------------------------------------------- minimisation


def _minimise(transitions: np.ndarray, accepting: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Moore's partition refinement: split blocks by (own block, successors' blocks) until stable.

    Returns the quotient automaton (transitions, accepting, start). Assumes every
    state is reachable, which is true of the subset construction's output.
    """
    _, block = np.unique(accepting, return_inverse=True)
    n_blocks = int(block.max()) + 1
    while True:
        signature = np.concatenate([block[:, None], block[transitions]], axis=1)
        _, refined = np.unique(signature, axis=0, return_inverse=True)
        refined = refined.reshape(-1)
        n_refined = int(refined.max()) + 1
        if n_refined == n_blocks:
            break
        block, n_blocks = refined, n_refined
    _, representative = np.unique(block, return_index=True)  # one state of each block, in block order
    return block[transitions[representative]], accepting[representative], int(block[start])


def _breadth_first_order(transitions: np.ndarray, accepting: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber states in BFS order from ``start`` (symbols in alphabet order): a canonical form."""
    order = [start]
    new_id = {start: 0}
    for state in order:
        for target in transitions[state]:
            if int(target) not in new_id:
                new_id[int(target)] = len(order)
                order.append(int(target))
    relabel = np.array([new_id[s] for s in range(len(order))], dtype=np.int64)
    order_arr = np.array(order, dtype=np.int64)
    return relabel[transitions[order_arr]], accepting[order_arr]


# --------------------------------------------------------------------------- the DFA


@dataclass(frozen=True, eq=False)
class DFA:
    """A complete deterministic automaton: state 0 is the start; every (state, symbol) has a successor.

    ``transitions[q, a]`` is the state after reading alphabet symbol ``a`` in state ``q``;
    ``accepting[q]`` says whether ``q`` accepts; ``dead`` is the state from which no
    accepting state can be reached (None when the language leaves none, e.g. ``.*``).
    """

    alphabet: tuple[str, ...]
    transitions: np.ndarray
    accepting: np.ndarray
    pattern: str = ""

    start: int = 0

    @property
    def n_states(self) -> int:
        return self.transitions.shape[0]

    @property
    def live(self) -> np.ndarray:
        """[n_states] bool: an accepting state is reachable from the state."""
        live = self.accepting.copy()
        while True:
            grown = live | live[self.transitions].any(axis=1)
            if (grown == live).all():
                return live
            live = grown

    @property
    def dead(self) -> int | None:
        dead = np.flatnonzero(~self.live)
        return int(dead[0]) if len(dead) else None

    def encode(self, string: str) -> list[int]:
        """Alphabet indices of ``string``; ValueError for a character outside the alphabet."""
        index = {s: i for i, s in enumerate(self.alphabet)}
        try:
            return [index[c] for c in string]
        except KeyError as err:
            raise ValueError(f"symbol {err.args[0]!r} is not in the alphabet {''.join(self.alphabet)!r}") from None

    def states_along(self, string: str) -> list[int]:
        """The state after each prefix: ``len(string) + 1`` states, the start state first."""
        states = [self.start]
        for symbol in self.encode(string):
            states.append(int(self.transitions[states[-1], symbol]))
        return states

    def accepts(self, string: str) -> bool:
        return bool(self.accepting[self.states_along(string)[-1]])

    def run_batch(self, symbols: np.ndarray) -> np.ndarray:
        """States after each prefix of a batch: symbols [N, L] (padding ignored by the caller) -> [N, L + 1]."""
        states = np.empty((symbols.shape[0], symbols.shape[1] + 1), dtype=np.int64)
        states[:, 0] = self.start
        for t in range(symbols.shape[1]):
            states[:, t + 1] = self.transitions[states[:, t], symbols[:, t]]
        return states

    def complement(self) -> "DFA":
        """The DFA of the strings over the alphabet that this one rejects (not re-minimised)."""
        return DFA(self.alphabet, self.transitions, ~self.accepting, f"not({self.pattern})", self.start)

    def to_json(self) -> dict:
        """fsm.json: states, start, accepting states and transitions keyed by state then symbol."""
        return {
            "pattern": self.pattern,
            "alphabet": list(self.alphabet),
            "states": list(range(self.n_states)),
            "start": self.start,
            "accepting": [int(q) for q in np.flatnonzero(self.accepting)],
            "dead": self.dead,
            "transitions": {
                str(q): {symbol: int(self.transitions[q, a]) for a, symbol in enumerate(self.alphabet)}
                for q in range(self.n_states)
            },
        }

    @classmethod
    def from_json(cls, data: dict) -> "DFA":
        alphabet = tuple(data["alphabet"])
        transitions = np.array(
            [[data["transitions"][str(q)][symbol] for symbol in alphabet] for q in data["states"]], dtype=np.int64
        )
        accepting = np.zeros(len(data["states"]), dtype=bool)
        accepting[data["accepting"]] = True
        return cls(alphabet, transitions, accepting, data.get("pattern", ""), data["start"])

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")


def check_alphabet(alphabet: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The alphabet as a tuple of distinct single characters that are not metacharacters."""
    symbols = tuple(alphabet)
    problems = [s for s in symbols if len(s) != 1 or s in METACHARACTERS or s.isspace()]
    if not symbols or problems or len(set(symbols)) != len(symbols):
        what = f"bad symbols {problems}" if problems else ("empty" if not symbols else "repeated symbols")
        raise PatternError(
            f"alphabet {''.join(symbols)!r}: {what}; allowed: distinct single characters, "
            f"no whitespace and none of {''.join(sorted(METACHARACTERS))}"
        )
    return symbols


def compile_regex(pattern: str, alphabet: str | tuple[str, ...] | list[str]) -> DFA:
    """The complete minimal DFA of ``pattern`` over ``alphabet`` (full-string match semantics)."""
    symbols = check_alphabet(alphabet)
    nfa = _NFA()
    start, accept = nfa.build(parse(pattern, symbols))
    transitions, accepting = _subset_construction(nfa, start, accept, len(symbols))
    transitions, accepting, start_block = _minimise(transitions, accepting, start=0)
    transitions, accepting = _breadth_first_order(transitions, accepting, start_block)
    return DFA(symbols, transitions, accepting, pattern)
