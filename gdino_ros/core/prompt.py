"""Text prompt -> the engine's text inputs and the token maps that post-processing needs.

Two prompt modes (docs/engine_contract.md#text-inputs):

* **phrases** -- a list of things to find, ``"cup . red bottle . table"`` (commas work too). The caption is
  TAO's ``"cup . red bottle . table ."`` and every detection is labelled with one phrase. Each phrase is
  mapped to its tokens through its *own* character span in the caption, so repeated words and phrases that
  are substrings of other phrases (``"red cup . cup"``) get the right tokens (TAO Deploy and Isaac ROS use
  ``caption.find`` and map the second ``cup`` onto the first one).
* **expression** -- one referring expression, ``"the mug left of the plate"``, run through TAO's
  ``clean_caption``. Detections are labelled with the expression's words that matched.

``auto`` picks phrases when every item between ``.``/``,`` separators has at most
:data:`AUTO_MAX_PHRASE_WORDS` words (``"cup"``, ``"red bottle, table"``) and expression otherwise
(``"the mug left of the plate"``).

Encoding happens once per prompt, never per frame; :class:`EncodedPrompt` is immutable.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gdino_ros.contract import (
    ATTENTION_MASK,
    DELIMITER_IDS,
    INPUT_DTYPES,
    INPUT_IDS,
    MAX_TEXT_LEN,
    PAD_ID,
    POSITION_IDS,
    TEXT_TOKEN_MASK,
    TOKEN_TYPE_IDS,
)
from gdino_ros.core.result import EXPRESSION, PHRASES, PromptMode
from gdino_ros.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROMPT_MODES: tuple[str, ...] = ("auto", PHRASES, EXPRESSION)

#: ``auto`` mode: a prompt whose items all have at most this many words is a phrase list.
AUTO_MAX_PHRASE_WORDS = 3
#: Longer prompts are refused before tokenisation: 256 tokens never need more, and this bounds the work a
#: prompt topic message can cause.
MAX_PROMPT_CHARS = 4096

_PHRASE_SEPARATORS = re.compile(r"[.,]")


class PromptError(InputError, ValueError):
    """A prompt (or the tokenizer it needs) cannot be used; the message says what to do."""


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class EncodedPrompt:
    """A prompt encoded for the engine, plus what post-processing needs to label detections.

    Arrays are read-only and have no batch dimension: ``input_ids``, ``position_ids``,
    ``token_type_ids`` int64 [256]; ``attention_mask`` bool [256]; ``text_token_mask`` bool [256, 256].

    Phrases mode: ``phrases`` are the kept phrases (the user's text, whitespace-normalised), ``dropped``
    those that did not fit into 256 tokens, ``phrase_token_spans[i]`` the token range ``[start, end)`` of
    phrase i, and ``positive_map`` float32 [P, 256] has row i = 1/n over those n tokens (a phrase's score is
    the mean of its token probabilities, as TAO Deploy). Expression mode: ``phrases`` and ``dropped`` are
    empty and ``positive_map`` is None.

    ``words`` are the caption's words (punctuation excluded) and ``token_words`` int64 [256] gives each
    token's index into ``words``, -1 for special tokens, punctuation and padding.
    """

    text: str
    mode: PromptMode
    caption: str
    phrases: tuple[str, ...]
    dropped: tuple[str, ...]
    input_ids: np.ndarray
    attention_mask: np.ndarray
    position_ids: np.ndarray
    token_type_ids: np.ndarray
    text_token_mask: np.ndarray
    positive_map: np.ndarray | None
    phrase_token_spans: tuple[tuple[int, int], ...]
    words: tuple[str, ...]
    token_words: np.ndarray

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """The class names consumers see: the kept phrases, or the whole expression as one class."""
        return self.phrases if self.mode == PHRASES else (" ".join(self.text.split()),)

    @property
    def num_tokens(self) -> int:
        """Number of real tokens, [CLS] and [SEP] included."""
        return int(self.attention_mask.sum())

    def text_inputs(self) -> dict[str, np.ndarray]:
        """Return the five text inputs by contract name, with the batch dimension, as fresh writable arrays.

        Shapes/dtypes: ``input_ids``, ``position_ids``, ``token_type_ids`` int64 [1, 256];
        ``attention_mask`` bool [1, 256]; ``text_token_mask`` bool [1, 256, 256].
        """
        arrays = {
            INPUT_IDS: self.input_ids,
            ATTENTION_MASK: self.attention_mask,
            POSITION_IDS: self.position_ids,
            TOKEN_TYPE_IDS: self.token_type_ids,
            TEXT_TOKEN_MASK: self.text_token_mask,
        }
        return {name: np.array(array[None], dtype=INPUT_DTYPES[name]) for name, array in arrays.items()}


def split_phrases(text: str) -> list[str]:
    """Split a phrase list on ``.`` and ``,``; each phrase keeps its text with whitespace collapsed."""
    return [" ".join(item.split()) for item in _PHRASE_SEPARATORS.split(text) if item.strip()]


def clean_caption(text: str) -> str:
    """Build TAO's expression caption: sentences split on ``.``, joined by ``" . "``, plus ``" ."``."""
    text = text.strip()
    if text.endswith("."):
        text = text[:-1]
    sentences = [" ".join(s.split()) for s in text.split(".") if s.strip()]
    return " . ".join(sentences) + " ."


def resolve_mode(text: str, mode: str) -> PromptMode:
    """Turn ``auto`` into phrases or expression (see the module docstring); validate ``mode``."""
    if mode == PHRASES:
        return PHRASES
    if mode == EXPRESSION:
        return EXPRESSION
    if mode != "auto":
        raise PromptError(f"Unknown prompt mode {mode!r}; use one of {', '.join(PROMPT_MODES)}.")
    items = split_phrases(text)
    if items and all(len(item.split()) <= AUTO_MAX_PHRASE_WORDS for item in items):
        return PHRASES
    return EXPRESSION


def encode_prompt(text: str, mode: str, tokenizer: PreTrainedTokenizerBase) -> EncodedPrompt:
    """Encode ``text`` in ``mode`` ("auto", "phrases" or "expression") for the engine.

    A phrase list longer than 256 tokens keeps its phrases in order while they fit and reports the rest in
    :attr:`EncodedPrompt.dropped`. An expression that does not fit, an empty prompt or an unknown mode raise
    :class:`PromptError`.
    """
    if not isinstance(text, str) or not text.strip():
        raise PromptError("The prompt is empty. Give the things to find, e.g. 'cup . red bottle', "
                          "or a referring expression, e.g. 'the mug left of the plate'.")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(f"The prompt is {len(text)} characters long; at most {MAX_PROMPT_CHARS} are "
                          f"accepted (the model reads {MAX_TEXT_LEN - 2} tokens). Shorten it.")
    if not any(character.isalnum() for character in text):
        raise PromptError(f"The prompt {_shown(text)} has no letters or digits. Give the things to find, "
                          "e.g. 'cup . red bottle', or a referring expression.")
    if not getattr(tokenizer, "is_fast", False):
        raise PromptError("The tokenizer must be a fast (Rust) tokenizer with offsets; use load_tokenizer().")
    resolved = resolve_mode(text, mode)
    if resolved == PHRASES:
        phrases = split_phrases(text)  # not empty: the text has a letter or digit
        junk = [phrase for phrase in phrases if not any(character.isalnum() for character in phrase)]
        if junk:
            raise PromptError(f"The phrase {_shown(junk[0])} has no letters or digits; remove it from the "
                              "prompt.")
        return _encode_phrases(text, phrases, tokenizer)
    return _encode_expression(text, tokenizer)


def _shown(text: str, limit: int = 60) -> str:
    """``text`` quoted for a message, shortened with its length when long."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _tokenize(
    caption: str, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[tuple[int, int]], list[int | None]]:
    encoding = tokenizer(
        caption, add_special_tokens=True, padding=False, truncation=False, return_offsets_mapping=True
    )
    ids = [int(i) for i in encoding["input_ids"]]
    offsets = [(int(a), int(b)) for a, b in encoding["offset_mapping"]]
    return ids, offsets, encoding.word_ids()


def _phrase_caption(phrases: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """TAO's phrase caption and each phrase's own character span in it."""
    spans = []
    start = 0
    for phrase in phrases:
        spans.append((start, start + len(phrase)))
        start += len(phrase) + len(" . ")
    return " . ".join(phrases) + " .", spans


def _token_spans(
    offsets: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Each character span's token range ``[first, last)``, ``(0, 0)`` for none, in one pass.

    Both lists are in caption order and the character spans do not overlap, so one walk over the tokens
    serves every phrase (special tokens have empty offsets and belong to no phrase).
    """
    spans = []
    j, count = 0, len(offsets)
    for start, end in char_spans:
        while j < count and (offsets[j][1] <= offsets[j][0] or offsets[j][1] <= start):
            j += 1
        first = last = j
        while j < count and (offsets[j][1] <= offsets[j][0] or offsets[j][0] < end):
            if offsets[j][1] > offsets[j][0]:
                last = j + 1
            j += 1
        spans.append((first, last) if last > first else (0, 0))
    return spans


def _encode_phrases(text: str, phrases: list[str], tokenizer: PreTrainedTokenizerBase) -> EncodedPrompt:
    caption, char_spans = _phrase_caption(phrases)
    ids, offsets, word_ids = _tokenize(caption, tokenizer)
    token_spans = _token_spans(offsets, char_spans)
    for phrase, (start, end) in zip(phrases, token_spans, strict=True):
        if end <= start:
            raise PromptError(f"The phrase {phrase!r} produces no tokens; remove it or use words instead.")
    dropped: list[str] = []
    if len(ids) > MAX_TEXT_LEN:
        # Each phrase is followed by its " ." token; [SEP] closes the caption.
        kept = sum(1 for _, end in token_spans if end + 1 + 1 <= MAX_TEXT_LEN)
        if kept == 0:
            first = token_spans[0][1] - token_spans[0][0]
            raise PromptError(
                f"The first phrase {phrases[0]!r} alone is {first} tokens; a phrase may have at most "
                f"{MAX_TEXT_LEN - 3} tokens. Shorten it."
            )
        dropped = phrases[kept:]
        phrases = phrases[:kept]
        caption, char_spans = _phrase_caption(phrases)
        ids, offsets, word_ids = _tokenize(caption, tokenizer)
        token_spans = _token_spans(offsets, char_spans)
    positive_map = np.zeros((len(phrases), MAX_TEXT_LEN), dtype=np.float32)
    for row, (start, end) in enumerate(token_spans):
        positive_map[row, start:end] = 1.0 / (end - start)
    return _build(text, PHRASES, caption, tuple(phrases), tuple(dropped), ids, offsets, word_ids,
                  positive_map, tuple(token_spans))


def _encode_expression(text: str, tokenizer: PreTrainedTokenizerBase) -> EncodedPrompt:
    caption = clean_caption(text)
    ids, offsets, word_ids = _tokenize(caption, tokenizer)
    if len(ids) > MAX_TEXT_LEN:
        raise PromptError(
            f"The expression is {len(ids) - 2} tokens long after tokenization (with TAO's closing ' .'); "
            f"the model reads at most {MAX_TEXT_LEN - 2}. Shorten it."
        )
    return _build(text, EXPRESSION, caption, (), (), ids, offsets, word_ids, None, ())


def _build(
    text: str,
    mode: PromptMode,
    caption: str,
    phrases: tuple[str, ...],
    dropped: tuple[str, ...],
    ids: list[int],
    offsets: list[tuple[int, int]],
    word_ids: list[int | None],
    positive_map: np.ndarray | None,
    token_spans: tuple[tuple[int, int], ...],
) -> EncodedPrompt:
    n = len(ids)
    input_ids = np.full(MAX_TEXT_LEN, PAD_ID, dtype=np.int64)
    input_ids[:n] = ids
    attention_mask = np.zeros(MAX_TEXT_LEN, dtype=np.bool_)
    attention_mask[:n] = True
    position_ids, text_token_mask = phrase_blocks(input_ids)
    words, token_words = _words(caption, ids, offsets, word_ids)
    return EncodedPrompt(
        text=text,
        mode=mode,
        caption=caption,
        phrases=phrases,
        dropped=dropped,
        input_ids=_readonly(input_ids),
        attention_mask=_readonly(attention_mask),
        position_ids=_readonly(position_ids),
        token_type_ids=_readonly(np.zeros(MAX_TEXT_LEN, dtype=np.int64)),
        text_token_mask=_readonly(text_token_mask),
        positive_map=None if positive_map is None else _readonly(positive_map),
        phrase_token_spans=token_spans,
        words=words,
        token_words=_readonly(token_words),
    )


def phrase_blocks(input_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``position_ids`` int64 [256] and ``text_token_mask`` bool [256, 256] from padded ``input_ids``.

    The rule (docs/engine_contract.md#text-inputs): every phrase and its closing delimiter form one fully
    connected block whose positions restart at 0; a delimiter in the first or last slot is a block of its
    own; padding attends to itself.
    """
    length = input_ids.shape[0]
    position_ids = np.zeros(length, dtype=np.int64)
    mask = np.eye(length, dtype=np.bool_)
    previous = 0
    for c in np.flatnonzero(np.isin(input_ids, list(DELIMITER_IDS))).tolist():
        if 0 < c < length - 1:
            mask[previous + 1 : c + 1, previous + 1 : c + 1] = True
            position_ids[previous + 1 : c + 1] = np.arange(c - previous)
        previous = c
    return position_ids, mask


def _words(
    caption: str, ids: list[int], offsets: list[tuple[int, int]], word_ids: list[int | None]
) -> tuple[tuple[str, ...], np.ndarray]:
    """Return the caption's words (user's casing) and each token's word index, for expression labels."""
    token_words = np.full(MAX_TEXT_LEN, -1, dtype=np.int64)
    spans: dict[int, tuple[int, int]] = {}
    for j, (word, (a, b)) in enumerate(zip(word_ids, offsets, strict=True)):
        if word is None or ids[j] in DELIMITER_IDS or b <= a:
            continue
        start, end = spans.get(word, (a, b))
        spans[word] = (min(start, a), max(end, b))
    index: dict[int, int] = {}
    words: list[str] = []
    for word, (a, b) in sorted(spans.items(), key=lambda item: item[1]):
        if any(ch.isalnum() for ch in caption[a:b]):
            index[word] = len(words)
            words.append(caption[a:b])
    for j, word in enumerate(word_ids):
        if word in index and ids[j] not in DELIMITER_IDS:
            token_words[j] = index[word]
    return tuple(words), token_words
