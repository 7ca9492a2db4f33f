import itertools
from collections import Counter

import numpy as np
import pytest

from epochal.tasks.regex.data import CompletionCounts, SplitSizes, StringSampler, count_strings, make_splits
from epochal.tasks.regex.fsm import compile_regex

SIZES = SplitSizes(n_train=600, n_val=100, n_test=200, n_test_ood=200, min_len=1, max_len=10,
                   ood_min_len=11, ood_max_len=16)


@pytest.fixture(scope="module")
def third_from_end():
    dfa = compile_regex("(a|b)*a(a|b)(a|b)", "ab")
    return dfa, make_splits(dfa, SIZES, 0.5, np.random.default_rng(0))


def one_edit_neighbours(string: str, alphabet: str):
    for i in range(len(string) + 1):
        for symbol in alphabet:
            yield string[:i] + symbol + string[i:]
    for i in range(len(string)):
        yield string[:i] + string[i + 1 :]
        for symbol in alphabet:
            yield string[:i] + symbol + string[i + 1 :]


def test_labels_match_the_automaton(third_from_end):
    dfa, splits = third_from_end
    for split in splits.values():
        assert [dfa.accepts(s) for s in split.strings] == split.accepted.tolist()


def test_lengths_lie_in_their_ranges(third_from_end):
    _, splits = third_from_end
    for name, split in splits.items():
        low, high = (11, 16) if name == "test_ood" else (1, 10)
        assert all(low <= len(s) <= high for s in split.strings), name


def test_no_string_is_in_two_splits_or_twice_in_one(third_from_end):
    _, splits = third_from_end
    every = [s for split in splits.values() for s in split.strings]
    assert len(every) == len(set(every))


def test_classes_are_balanced_at_every_length(third_from_end):
    _, splits = third_from_end
    for name, split in splits.items():
        per_length = Counter((len(s), bool(a)) for s, a in zip(split.strings, split.accepted))
        for length in {n for n, _ in per_length}:
            assert per_length[(length, True)] == per_length[(length, False)], (name, length)


def test_split_sizes_follow_the_request(third_from_end):
    _, splits = third_from_end
    for name, requested in [("train", 600), ("val", 100), ("test", 200), ("test_ood", 200)]:
        assert abs(len(splits[name]) - requested) <= 8, (name, len(splits[name]))


def test_lengths_without_accepted_strings_are_skipped(third_from_end):
    _, splits = third_from_end
    assert min(len(s) for s in splits["train"].strings) == 3  # nothing shorter ends in a??


def test_same_seed_same_splits_other_seed_other_splits():
    dfa = compile_regex("(a|b)*a(a|b)", "ab")
    first = make_splits(dfa, SIZES, 0.5, np.random.default_rng(7))
    again = make_splits(dfa, SIZES, 0.5, np.random.default_rng(7))
    other = make_splits(dfa, SIZES, 0.5, np.random.default_rng(8))
    assert all(first[k].strings == again[k].strings for k in first)
    assert first["train"].strings != other["train"].strings


def test_accepted_walk_is_uniform_over_accepted_strings():
    dfa = compile_regex("a*b*", "ab")
    counts = CompletionCounts(dfa, 3)
    rng = np.random.default_rng(0)
    drawn = Counter("".join("ab"[i] for i in row) for row in counts.sample(3, 8000, rng).tolist())
    assert set(drawn) == {"aaa", "aab", "abb", "bbb"}
    # A walk that picked uniformly among live symbols would give aaa and aab 1/8 each.
    assert all(abs(n / 8000 - 0.25) < 0.025 for n in drawn.values())


def test_count_strings_matches_enumeration():
    dfa = compile_regex("(a|b)*a(a|b)|b", "ab")
    for length in range(7):
        enumerated = sum(dfa.accepts("".join(s)) for s in itertools.product("ab", repeat=length))
        assert count_strings(dfa, length) == enumerated


def test_near_misses_are_rejected_and_one_edit_from_an_accepted_string():
    dfa = compile_regex("(ab|ba)*c", "abc")
    sampler = StringSampler(dfa, 12, np.random.default_rng(1))
    misses = sampler.near_misses(9, 200)
    assert len(misses) > 50
    for string in misses:
        assert len(string) == 9 and not dfa.accepts(string)
        assert any(dfa.accepts(n) for n in one_edit_neighbours(string, "abc")), string


def test_rejected_strings_mix_near_misses_and_uniform_ones():
    dfa = compile_regex("(ab|ba)*c", "abc")
    sampler = StringSampler(dfa, 12, np.random.default_rng(2))
    rejected = sampler.rejected_strings(9, 200, near_miss_fraction=0.5, taken=set())
    near = sum(any(dfa.accepts(n) for n in one_edit_neighbours(s, "abc")) for s in rejected)
    assert len(rejected) == 200 and not any(dfa.accepts(s) for s in rejected)
    assert 100 <= near < 200  # uniform rejected strings of this language are rarely one edit away


def test_a_range_without_both_classes_is_an_error():
    dfa = compile_regex("(a|b)*", "ab")
    with pytest.raises(ValueError, match="both accepted and rejected"):
        make_splits(dfa, SIZES, 0.5, np.random.default_rng(0))
