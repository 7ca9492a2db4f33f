import itertools
import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epochal.tasks.regex.fsm import DFA, PatternError, compile_regex

ALPHABET = "abc"


def all_strings(alphabet: str, max_len: int):
    for n in range(max_len + 1):
        for letters in itertools.product(alphabet, repeat=n):
            yield "".join(letters)


def patterns(alphabet: str = ALPHABET):
    """Random patterns in the syntax both compile_regex and Python's re read the same way."""
    leaves = st.one_of(
        st.sampled_from(alphabet),
        st.just("."),
        st.just("()"),
        st.sets(st.sampled_from(alphabet), min_size=1).map(lambda s: "[" + "".join(sorted(s)) + "]"),
        st.sets(st.sampled_from(alphabet), min_size=1, max_size=len(alphabet) - 1).map(
            lambda s: "[^" + "".join(sorted(s)) + "]"
        ),
        st.just(f"[{alphabet[0]}-{alphabet[-1]}]"),
    )
    quantifiers = st.sampled_from(["*", "+", "?", "{2}", "{1,3}", "{,2}", "{2,}", "{0}"])

    def extend(children):
        return st.one_of(
            st.lists(children, min_size=2, max_size=3).map("".join),
            st.lists(children, min_size=2, max_size=3).map(lambda xs: "(" + "|".join(xs) + ")"),
            st.tuples(children, quantifiers).map(lambda t: f"({t[0]}){t[1]}"),
        )

    return st.recursive(leaves, extend, max_leaves=10)


@settings(max_examples=150, deadline=None)
@given(pattern=patterns())
def test_dfa_agrees_with_re_fullmatch_on_every_short_string(pattern):
    dfa = compile_regex(pattern, ALPHABET)
    compiled = re.compile(pattern)
    for string in all_strings(ALPHABET, 5):
        assert dfa.accepts(string) == bool(compiled.fullmatch(string)), (pattern, string)


@settings(max_examples=150, deadline=None)
@given(pattern=patterns(), string=st.text(alphabet=ALPHABET, min_size=6, max_size=14))
def test_dfa_agrees_with_re_fullmatch_on_random_longer_strings(pattern, string):
    assert compile_regex(pattern, ALPHABET).accepts(string) == bool(re.fullmatch(pattern, string))


def distinguishable(dfa: DFA, p: int, q: int) -> bool:
    """Some suffix leads exactly one of p, q to acceptance: a search over the pairs of states that the same
    suffix reaches from (p, q), polynomial in the states (listing every suffix is exponential)."""
    seen, frontier = {(p, q)}, [(p, q)]
    while frontier:
        a, b = frontier.pop()
        if bool(dfa.accepting[a]) != bool(dfa.accepting[b]):
            return True
        for symbol in range(len(dfa.alphabet)):
            pair = (int(dfa.transitions[a, symbol]), int(dfa.transitions[b, symbol]))
            if pair not in seen:
                seen.add(pair)
                frontier.append(pair)
    return False


def test_distinguishable_tells_equivalent_states_from_different_ones():
    # (a|b)*a with a redundant copy of the accepting state: states 1 and 2 accept the same suffixes.
    dfa = DFA(("a", "b"), np.array([[1, 0], [2, 0], [1, 0]]), np.array([False, True, True]))
    assert distinguishable(dfa, 0, 1) and distinguishable(dfa, 0, 2) and not distinguishable(dfa, 1, 2)


@settings(max_examples=40, deadline=None)
@given(pattern=patterns("ab"))
def test_every_state_is_reachable_and_distinguishable(pattern):
    dfa = compile_regex(pattern, "ab")
    reached = {dfa.start}
    frontier = [dfa.start]
    while frontier:
        state = frontier.pop()
        for target in dfa.transitions[state]:
            if int(target) not in reached:
                reached.add(int(target))
                frontier.append(int(target))
    assert reached == set(range(dfa.n_states))
    for p, q in itertools.combinations(range(dfa.n_states), 2):
        assert distinguishable(dfa, p, q), (pattern, p, q)


@pytest.mark.parametrize(
    ("pattern", "alphabet", "states"),
    [
        ("(a|b)*a(a|b)(a|b)", "ab", 8),  # third from the end: 2^3 states, no dead state
        ("(a|b)*a(a|b)", "ab", 4),
        ("a*b*", "ab", 3),
        ("(ab)*", "ab", 3),
        ("(b*ab*a)*b*", "ab", 2),  # an even number of a
        ("(a|b)*", "ab", 1),
        ("", "ab", 2),
        ("a", "ab", 3),
        ("(a|b){3}", "ab", 5),
        (".{2,4}", "ab", 6),
        ("((a|b)(a|b)(a|b))*", "ab", 3),  # length divisible by 3
        ("(a(b|c)*a|b)*", "abc", 3),
        ("[^a]c|[a-c]+", "abc", 2),  # the second option contains the first
    ],
)
def test_minimal_state_counts_of_known_languages(pattern, alphabet, states):
    assert compile_regex(pattern, alphabet).n_states == states


def test_equivalent_patterns_compile_to_the_same_automaton():
    pairs = [("(a|b)*", "(a*b*)*"), ("a(ba)*", "(ab)*a"), ("a{2,3}", "aaa?"), ("[ab]c", "ac|bc")]
    for first, second in pairs:
        one, two = compile_regex(first, "abc"), compile_regex(second, "abc")
        assert np.array_equal(one.transitions, two.transitions), (first, second)
        assert np.array_equal(one.accepting, two.accepting), (first, second)


def test_dead_state_is_the_one_state_without_a_way_to_accept():
    dfa = compile_regex("ab", "ab")
    assert dfa.dead is not None
    assert (dfa.transitions[dfa.dead] == dfa.dead).all()
    assert not dfa.accepting[dfa.dead]
    assert compile_regex("(a|b)*", "ab").dead is None


def test_json_round_trip_and_shape(tmp_path):
    dfa = compile_regex("(a|b)*a(a|b)", "ab")
    dfa.save(tmp_path / "fsm.json")
    data = json.loads((tmp_path / "fsm.json").read_text())
    assert data["alphabet"] == ["a", "b"]
    assert data["states"] == [0, 1, 2, 3]
    assert data["start"] == 0
    assert set(data["transitions"]["0"]) == {"a", "b"}
    back = DFA.from_json(data)
    assert np.array_equal(back.transitions, dfa.transitions)
    assert np.array_equal(back.accepting, dfa.accepting)


def test_states_along_and_run_batch_agree():
    dfa = compile_regex("(a|b)*a(a|b)(a|b)", "ab")
    strings = ["abba", "aaab", "bbbb"]
    batch = dfa.run_batch(np.array([dfa.encode(s) for s in strings]))
    assert batch.tolist() == [dfa.states_along(s) for s in strings]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("a(b", "missing ')'"),
        ("ab)", "unbalanced ')'"),
        ("a**", "multiple repeat"),
        ("*a", "nothing to repeat"),
        ("a{3,1}", "maximum is below the minimum"),
        ("a{x}", "invalid repetition"),
        ("a{2", "without a closing"),
        ("[ab", "without a closing ']'"),
        ("[^ab]", "empty character class"),
        ("abd", "symbol 'd' is not in the alphabet"),
        ("a{1000}", "too large"),
    ],
)
def test_bad_patterns_raise_a_clear_error(pattern, message):
    with pytest.raises(PatternError, match=re.escape(message)):
        compile_regex(pattern, "ab")


@pytest.mark.parametrize("alphabet", ["", "aa", "a*", "a b"])
def test_bad_alphabets_are_rejected(alphabet):
    with pytest.raises(PatternError, match="alphabet"):
        compile_regex("a", alphabet)


def test_escaped_metacharacter_needs_to_be_in_the_alphabet():
    with pytest.raises(PatternError, match="not in the alphabet"):
        compile_regex("a\\*", "ab")
