"""The text's token axis: which models take a prompt's own length, how the prompt is cut, and that it changes
nothing but the time (docs/engine_contract.md#text-length).

Covers ``gdino_ros.backends.base.text_length``/``model_text`` (the one place every backend cuts the
text), ``check_io``'s reading of a static or dynamic token axis, a static-256 graph through the ONNX
Runtime backend, and gdino-build-engine's optimisation profile for both kinds of ONNX.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import cuda_modules
from fakes.cuda_runtime import FakeGpu
from fakes.trt_builder import make_tensorrt
from model_fixtures import TinyModel, contract_shapes, make_contract_onnx, static_text_copy
from test_export import _assert_outputs_close

from gdino_ros import contract
from gdino_ros.backends import open_backend
from gdino_ros.backends.base import TensorSpec, check_io, model_text, text_length
from gdino_ros.backends.cuda import GpuInfo
from gdino_ros.core.prompt import encode_prompt
from gdino_ros.core.tokenizer import load_tokenizer
from gdino_ros.tools import build_engine

TOKENS = "tokens"
GPU = GpuInfo(index=0, name="Orin", compute_capability=(8, 7), sm_count=8, total_memory=7620 << 20,
              integrated=True, l4t_release="36.4.3")


@pytest.fixture(scope="module")
def tokenizer(vocab_path: Path) -> Any:
    return load_tokenizer(vocab_path)


def _mask(real: int) -> np.ndarray:
    mask = np.zeros((1, contract.MAX_TEXT_LEN), dtype=np.bool_)
    mask[0, :real] = True
    return mask


@pytest.mark.parametrize(("real", "length"), [(0, 1), (2, 3), (6, 7), (254, 255), (255, 256), (256, 256)])
def test_text_length_is_the_real_tokens_and_one_padding_token_within_256(real: int, length: int) -> None:
    assert text_length(_mask(real)) == length


def test_text_length_ends_at_the_last_real_token() -> None:
    """[CLS] and [SEP] are real tokens: the cut keeps [SEP], wherever the mask has a gap before it."""
    mask = _mask(6)
    mask[0, 3] = False
    assert text_length(mask) == 7 and text_length(mask[0]) == 7


def test_a_254_token_prompt_keeps_all_its_tokens_and_one_padding_token(tokenizer: Any) -> None:
    prompt = encode_prompt(" ".join(["cat"] * 251), "expression", tokenizer)  # [CLS] 251 words . [SEP]
    assert prompt.num_tokens == 254 and prompt.input_ids[253] == contract.SEP_ID
    cut = model_text(prompt.text_inputs(), dynamic=True)
    assert {name: value.shape for name, value in cut.items()} == {
        **{name: (1, 255) for name in contract.TEXT_INPUT_NAMES}, contract.TEXT_TOKEN_MASK: (1, 255, 255)}
    assert cut[contract.INPUT_IDS][0, 253] == contract.SEP_ID and cut[contract.INPUT_IDS][0, 254] == 0
    assert not cut[contract.ATTENTION_MASK][0, 254]


def test_model_text_cuts_a_dynamic_models_text_and_leaves_a_static_ones(tokenizer: Any) -> None:
    text = encode_prompt("cup . bottle . person", "phrases", tokenizer).text_inputs()
    static = model_text(text, dynamic=False)
    assert list(static) == list(text) and all(static[name] is text[name] for name in text)  # all 256 long
    cut = model_text(text, dynamic=True)
    assert list(cut) == list(text)
    for name, value in cut.items():
        np.testing.assert_array_equal(value, text[name][(slice(None), *[slice(0, 9)] * (value.ndim - 1))])
    assert cut[contract.TEXT_TOKEN_MASK].shape == (1, 9, 9)


def _specs(text_dims: dict[str, list[int | str]]) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    shapes = {**contract_shapes((64, 96), 5), **text_dims}
    dtypes = {**contract.INPUT_DTYPES, **{n: np.dtype(np.float32) for n in contract.RELA_OUTPUT_NAMES}}

    def spec(name: str) -> TensorSpec:
        return TensorSpec(name, dtypes[name], tuple(d if isinstance(d, int) else None for d in shapes[name]))

    return ({n: spec(n) for n in contract.INPUT_NAMES}, {n: spec(n) for n in contract.RELA_OUTPUT_NAMES})


DYNAMIC = {**{name: [1, TOKENS] for name in contract.TEXT_INPUT_NAMES},
           contract.TEXT_TOKEN_MASK: [1, TOKENS, TOKENS]}


@pytest.mark.parametrize(("dims", "dynamic"), [
    ({}, False),  # TAO's ONNX and older exports: 256
    (DYNAMIC, True),
    ({**DYNAMIC, contract.POSITION_IDS: [1, 256]}, False),  # one static text input: all get 256
    ({name: [TOKENS, 256] for name in contract.TEXT_INPUT_NAMES[:-1]}, False),  # a dynamic batch only
])
def test_check_io_reads_the_token_axis(dims: dict[str, list[int | str]], dynamic: bool) -> None:
    assert check_io(*_specs(dims), "model").dynamic_text is dynamic


@pytest.mark.slow
def test_a_static_256_graph_runs_through_onnxruntime_like_the_dynamic_one(
    tiny_model_files: TinyModel, tokenizer: Any, tmp_path: Path
) -> None:
    static = static_text_copy(tiny_model_files.onnx, tmp_path)
    text = encode_prompt("person . rocket . flag", "phrases", tokenizer).text_inputs()
    image = np.random.default_rng(2).standard_normal((1, 3, 128, 224)).astype(np.float32)
    with open_backend(tiny_model_files.onnx, "cpu") as dynamic, open_backend(static, "cpu") as fixed:
        assert dynamic.dynamic_text and not fixed.dynamic_text
        short, padded = dynamic.infer(image, text), fixed.infer(image, text)
        names = dynamic.output_names
        _assert_outputs_close(names, [short[n] for n in names], [padded[n] for n in names])


class _Build:
    """gdino-build-engine against the fake TensorRT builder (as test_build_engine runs it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        module, self.state = make_tensorrt("10.3.0")
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        for name, fake_cuda in cuda_modules(FakeGpu()).items():
            monkeypatch.setitem(sys.modules, name, fake_cuda)
        monkeypatch.setattr(build_engine, "select_gpu", lambda index: GPU)
        self.capsys = capsys

    def run(self, onnx_path: Path) -> dict[str, tuple[tuple[int, ...], ...]]:
        engine = onnx_path.with_suffix(".engine")
        code = build_engine.main(["--onnx", str(onnx_path), "--output", str(engine)])
        assert code == 0, self.capsys.readouterr()
        return self.state.profile_ranges


@pytest.mark.parametrize("dynamic", [True, False])
def test_the_engine_profile_spans_1_to_256_tokens_only_for_a_dynamic_axis(
    dynamic: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path = make_contract_onnx(tmp_path / "m.onnx", shapes=DYNAMIC if dynamic else None)
    ranges = _Build(monkeypatch, capsys).run(onnx_path)
    assert ranges[contract.INPUT_IMAGE] == ((1, 3, 64, 96),) * 3
    lengths = (1, build_engine.OPT_TEXT_LEN, 256) if dynamic else (256, 256, 256)
    for name in contract.TEXT_INPUT_NAMES:
        extra = (1,) if name == contract.TEXT_TOKEN_MASK else ()
        assert ranges[name] == tuple((1, n, *[n] * len(extra)) for n in lengths), name
