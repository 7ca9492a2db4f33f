import numpy as np
import pytest
import torch

from epochal.tasks.regex.data import LabelledStrings
from epochal.tasks.regex.dataset import Vocab, encode_split, encode_strings
from epochal.tasks.regex.fsm import compile_regex

DFA_ASTAR_B = compile_regex("a*b", "ab")  # states: 0 start, 1 accepting (after b), 2 dead
VOCAB = Vocab(("a", "b"))  # PAD 0, BOS 1, EOS 2, a 3, b 4


@pytest.fixture(scope="module")
def encoded():
    return encode_strings(["ab", "b"], DFA_ASTAR_B, VOCAB, max_len=3)


def test_tokens_are_bos_symbols_eos_then_pad(encoded):
    assert encoded["tokens"].tolist() == [[1, 3, 4, 2, 0], [1, 4, 2, 0, 0]]
    assert encoded["lengths"].tolist() == [2, 1]


def test_targets_by_hand(encoded):
    assert encoded["next_target"].tolist() == [[3, 4, 2, 0, 0], [4, 2, 0, 0, 0]]
    assert encoded["class_target"].tolist() == [[0, 0, 1, 0, 0], [0, 1, 0, 0, 0]]
    assert encoded["state_target"].tolist() == [[0, 0, 1, 0, 0], [0, 1, 0, 0, 0]]


def test_masks_keep_bos_and_symbols_and_drop_eos_and_pad(encoded):
    expected = [[True, True, True, False, False], [True, True, False, False, False]]
    for name in ("next_mask", "class_mask", "state_mask"):
        assert encoded[name].tolist() == expected, name
        assert not encoded[name][encoded["tokens"] == VOCAB.PAD].any(), name
        assert not encoded[name][encoded["tokens"] == VOCAB.EOS].any(), name


def test_all_tensors_have_one_row_per_string(encoded):
    assert {len(v) for v in encoded.values()} == {2}
    assert encoded["next_mask"].dtype == torch.bool and encoded["tokens"].dtype == torch.int64


def test_kept_next_targets_are_never_pad_or_bos():
    dfa = compile_regex("(a|b)*a(a|b)", "ab")
    encoded = encode_strings(["", "a", "abba", "bbbbbbb"], dfa, VOCAB)
    kept = encoded["next_target"][encoded["next_mask"]]
    assert not ((kept == VOCAB.PAD) | (kept == VOCAB.BOS)).any()
    assert (encoded["next_target"][torch.arange(4), encoded["lengths"]] == VOCAB.EOS).all()


def test_too_long_string_is_an_error():
    with pytest.raises(ValueError, match="exceeds max_len"):
        encode_strings(["aab"], DFA_ASTAR_B, VOCAB, max_len=2)


def test_split_labels_are_checked_against_the_automaton():
    good = LabelledStrings(["ab", "ba"], np.array([True, False]))
    assert encode_split(good, DFA_ASTAR_B, VOCAB)["tokens"].shape == (2, 4)
    wrong = LabelledStrings(["ab", "ba"], np.array([False, False]))
    with pytest.raises(ValueError, match="disagree"):
        encode_split(wrong, DFA_ASTAR_B, VOCAB)


def test_decode_inverts_the_symbols(encoded):
    assert [VOCAB.decode(row) for row in encoded["tokens"].tolist()] == ["ab", "b"]
