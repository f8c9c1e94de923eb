"""ONNX Runtime and PyTorch run the same tiny random-weight network and must agree, raw and decoded.

The checkpoint and the ONNX file hold the same weights (``model_fixtures.tiny_model_files``), so any
difference beyond float rounding is a bug in a backend, in the export, or in how the text tensors reach
the network.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from model_fixtures import TinyModel

from gdino_ros import contract
from gdino_ros.backends import Backend, BackendError, open_backend
from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.preprocess import preprocess
from gdino_ros.core.prompt import encode_prompt
from gdino_ros.core.segmenter import Segmenter
from gdino_ros.core.tokenizer import load_tokenizer

PROMPTS = [("person . rocket . flag", "phrases"), ("the woman in the white space suit", "expression")]
# Random weights give low, close scores; thresholds low enough that detections survive to be compared.
PARAMS = PostprocessParams(box_threshold=0.05, text_threshold=0.05, max_detections=20)


@pytest.fixture(scope="module")
def backends(tiny_model_files: TinyModel) -> Iterator[tuple[Backend, Backend]]:
    with open_backend(tiny_model_files.onnx, "cpu") as ort:
        with open_backend(tiny_model_files.checkpoint, "cpu") as pt:
            yield ort, pt


@pytest.fixture(scope="module")
def segmenters(backends: tuple[Backend, Backend], vocab_path: Path) -> tuple[Segmenter, Segmenter]:
    tokenizer = load_tokenizer(vocab_path)
    ort, pt = backends
    return Segmenter(ort, tokenizer, params=PARAMS), Segmenter(pt, tokenizer, params=PARAMS)


def test_both_backends_describe_the_same_model(backends: tuple[Backend, Backend]) -> None:
    ort, pt = backends
    assert (ort.name, pt.name) == ("onnxruntime", "torch")
    assert ort.input_hw == pt.input_hw == (128, 224)
    assert ort.output_names == pt.output_names == contract.RELA_OUTPUT_NAMES
    assert ort.has_no_target_head and pt.has_no_target_head
    assert pt.device == "cpu" and pt.precision == "fp32"


@pytest.mark.parametrize(("text", "mode"), PROMPTS)
def test_raw_outputs_agree(backends: tuple[Backend, Backend], vocab_path: Path, text: str, mode: str) -> None:
    ort, pt = backends
    prompt = encode_prompt(text, mode, load_tokenizer(vocab_path))
    image = preprocess(skimage.data.astronaut(), ort.input_hw)
    text_inputs = prompt.text_inputs()
    expected = ort.infer(image, text_inputs)
    got = pt.infer(image, text_inputs)
    for name in ort.output_names:
        a, b = expected[name], got[name]
        assert a.shape == b.shape, name
        finite = np.isfinite(a)
        np.testing.assert_array_equal(finite, np.isfinite(b), err_msg=f"{name}: -inf at different places")
        scale = float(np.abs(a[finite]).max())
        np.testing.assert_allclose(b[finite], a[finite], rtol=1e-4, atol=1e-4 * max(scale, 1.0), err_msg=name)
    # Padded tokens are -inf in pred_logits on both (docs/engine_contract.md#outputs).
    assert np.isneginf(expected[contract.PRED_LOGITS][0, :, prompt.num_tokens:]).all()


@pytest.mark.parametrize(("text", "mode"), PROMPTS)
def test_results_agree(segmenters: tuple[Segmenter, Segmenter], text: str, mode: str) -> None:
    photo = skimage.data.astronaut()
    for segmenter in segmenters:
        segmenter.set_prompt(text, mode)
    ort, pt = (segmenter(photo) for segmenter in segmenters)
    assert ort.detections, "nothing survived: lower PARAMS' thresholds so that there is something to compare"
    assert ort.no_target == pt.no_target
    assert ort.no_target_probability == pytest.approx(pt.no_target_probability, abs=1e-4)
    assert [d.label for d in ort.detections] == [d.label for d in pt.detections]
    for a, b in zip(ort.detections, pt.detections, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-4)
        np.testing.assert_allclose(a.box_xyxy, b.box_xyxy, atol=0.05)
        # Masks may differ only where a logit sits on the threshold within float rounding.
        assert (a.mask != b.mask).sum() <= max(5, a.mask.sum() // 1000)


def test_checkpoint_runs_at_another_input_size(tiny_model_files: TinyModel) -> None:
    with open_backend(tiny_model_files.checkpoint, "cpu", input_hw=(160, 256)) as backend:
        assert backend.input_hw == (160, 256)
        outputs = backend.infer(np.zeros((1, 3, 160, 256), np.float32), _empty_text())
        assert outputs[contract.PRED_MASKS].shape[-2:] == (40, 64)
    with pytest.raises(BackendError, match="multiple of 32"):
        open_backend(tiny_model_files.checkpoint, "cpu", input_hw=(100, 100))


def _empty_text() -> dict[str, np.ndarray]:
    ids = np.zeros((1, 256), np.int64)
    ids[0, :2] = [contract.CLS_ID, contract.SEP_ID]
    return {
        contract.INPUT_IDS: ids,
        contract.ATTENTION_MASK: ids != contract.PAD_ID,
        contract.POSITION_IDS: np.zeros((1, 256), np.int64),
        contract.TOKEN_TYPE_IDS: np.zeros((1, 256), np.int64),
        contract.TEXT_TOKEN_MASK: np.eye(256, dtype=bool)[None],
    }
