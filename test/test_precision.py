"""FP16 export (model/precision.py), FP32 equivalence of the mask-sentinel replacement, and the FP16-vs-FP32
comparison (core/precision_check.py) with its command-line tool.

The tiny random-weight network is converted in memory; graph checks read the ONNX, runs use ONNX Runtime's
CPU provider (which executes FP16 graphs, computing inside each node in FP32 where it lacks FP16 kernels).
The comparison itself is checked on hand-made outputs whose numbers are worked out below.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from model_fixtures import TinyModel
from onnx import TensorProto, helper, numpy_helper
from skimage import data
from transformers import PreTrainedTokenizerBase

from gdino_ros import contract
from gdino_ros.backends.base import Backend
from gdino_ros.backends.onnxruntime import OnnxRuntimeBackend
from gdino_ros.core.postprocess import postprocess
from gdino_ros.core.precision_check import PrecisionTolerance, compare_backends
from gdino_ros.core.preprocess import preprocess
from gdino_ros.core.prompt import EncodedPrompt, encode_prompt
from gdino_ros.core.tokenizer import load_tokenizer
from gdino_ros.errors import EXIT_INPUT, EXIT_MODEL, EXIT_USAGE
from gdino_ros.model.config import MaskGDINOConfig
from gdino_ros.model.precision import (
    DEFAULT_FP32_LAYERS,
    FP16_MAX,
    META_FP32_LAYERS,
    META_PRECISION,
    check_patterns,
    clip_mask_sentinels,
    convert_to_fp16,
    matching_nodes,
    out_of_range_constants,
)
from gdino_ros.tools import compare_precision
from gdino_ros.tools import export as export_cli

PROMPTS = ("person . cat . cup", "the cat on the left")
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


@pytest.fixture(scope="module")
def tokenizer(vocab_path: Path) -> PreTrainedTokenizerBase:
    return load_tokenizer(vocab_path)


@pytest.fixture(scope="module")
def fp32_model(tiny_model_files: TinyModel) -> onnx.ModelProto:
    return onnx.load(str(tiny_model_files.onnx))


@pytest.fixture(scope="module")
def fp16_model(fp32_model: onnx.ModelProto) -> onnx.ModelProto:
    return convert_to_fp16(fp32_model)


@pytest.fixture(scope="module")
def fp16_path(fp16_model: onnx.ModelProto, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fp16") / "tiny_fp16.onnx"
    onnx.save(fp16_model, path)
    return path


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        types[value.name] = value.type.tensor_type.elem_type
    return types


# --- the conversion -------------------------------------------------------------------------------


def test_fp16_graph_is_explicitly_typed_with_the_contracts_io(
    fp32_model: onnx.ModelProto, fp16_model: onnx.ModelProto
) -> None:
    onnx.checker.check_model(fp16_model, full_check=True)
    onnx.shape_inference.infer_shapes(fp16_model, check_type=True, strict_mode=True)
    io = {v.name: v.type.tensor_type.elem_type for v in (*fp32_model.graph.input, *fp32_model.graph.output)}
    fp16_io = (*fp16_model.graph.input, *fp16_model.graph.output)
    assert {v.name: v.type.tensor_type.elem_type for v in fp16_io} == io
    assert all(t == TensorProto.FLOAT for n, t in io.items() if n in contract.RELA_OUTPUT_NAMES)
    # Every tensor's type is written in the graph (what a strongly typed TensorRT network reads).
    types = tensor_types(fp16_model)
    untyped = [o for node in fp16_model.graph.node for o in node.output if types.get(o, 0) == 0]
    assert untyped == []
    half = [n for n in fp16_model.graph.node if n.op_type == "MatMul"
            and types[n.output[0]] == TensorProto.FLOAT16]
    assert len(half) > 100  # most of the network is FP16
    assert out_of_range_constants(fp16_model) == []


def test_fp32_export_holds_the_sentinels_the_conversion_replaces(fp32_model: onnx.ModelProto) -> None:
    found = out_of_range_constants(fp32_model)
    # BERT's finfo(float32).min mask, and the -inf masks of fusion, MultiheadAttention and the class head.
    assert any("-3.40282e+38" in line for line in found) and sum("-inf" in line for line in found) >= 10


def test_keep_list_nodes_run_in_fp32_and_a_user_pattern_adds_to_it(
    fp32_model: onnx.ModelProto, fp16_model: onnx.ModelProto
) -> None:
    def float_io(model: onnx.ModelProto, name: str) -> set[int]:
        types = tensor_types(model)
        node = next(n for n in model.graph.node if n.name == name)
        return {types[t] for t in (*node.input, *node.output) if t and types.get(t) in FLOAT_TYPES}

    kept = matching_nodes(fp16_model, DEFAULT_FP32_LAYERS)
    ops = {n.name: n.op_type for n in fp16_model.graph.node}
    bert = "/encoder/layer.0/attention/self/query/MatMul"
    msda = "/transformer/encoder/layers.0/self_attn/Softmax"
    for group in (bert, msda):
        assert group in kept and float_io(fp16_model, group) == {TensorProto.FLOAT}
    assert {ops[n] for n in kept} >= {"LayerNormalization", "Softmax", "GridSample", "MatMul"}
    decoder_matmul = "/transformer/decoder/layers.0/linear1/MatMul"
    assert float_io(fp16_model, decoder_matmul) == {TensorProto.FLOAT16}

    extended = convert_to_fp16(fp32_model, (*DEFAULT_FP32_LAYERS, "/transformer/decoder/*"))
    assert float_io(extended, decoder_matmul) == {TensorProto.FLOAT}
    assert float_io(extended, "/backbone.0/body/patch_embed/proj/Conv") == {TensorProto.FLOAT16}


def test_a_pattern_that_matches_nothing_is_one_clear_error(fp32_model: onnx.ModelProto) -> None:
    check_patterns(fp32_model, ["/transformer/decoder/*"])
    with pytest.raises(ValueError, match=r"'/decoder/\*' match no node") as error:
        check_patterns(fp32_model, ["/transformer/decoder/*", "/decoder/*"])
    assert "\n" not in str(error.value) and "/transformer/encoder/" in str(error.value)


def _tiny_graph(fill: float, weight: float) -> onnx.ModelProto:
    """y = Where(mask, fill, x) * w: a masked fill followed by a weight, as the network has them."""
    nodes = [helper.make_node("Where", ["mask", "fill", "x"], ["masked"], name="/head/Where"),
             helper.make_node("Mul", ["masked", "w"], ["y"], name="/head/Mul")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("mask", TensorProto.BOOL, [2, 3]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(fill, np.float32), "fill"),
         numpy_helper.from_array(np.full(3, weight, np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sentinels_become_the_fp16_extreme_and_other_large_constants_are_refused() -> None:
    converted = convert_to_fp16(_tiny_graph(float("-inf"), 0.5), ())
    assert out_of_range_constants(converted) == []
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    mask = np.array([[True, False, False], [False, False, True]])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (y,) = session.run(None, {"mask": mask, "x": x})
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.where(mask, -FP16_MAX * 0.5, x * 0.5))

    with pytest.raises(ValueError, match=r"outside ±65504: w \(3 value\(s\), e.g. 100000\)"):
        convert_to_fp16(_tiny_graph(float("-inf"), 1e5), ())


# --- FP32 outputs unchanged by the sentinel replacement -------------------------------------------


def test_fp32_outputs_and_results_are_unchanged_by_the_sentinel_replacement(
    fp32_model: onnx.ModelProto, tiny_model_files: TinyModel, tokenizer: PreTrainedTokenizerBase,
    tmp_path: Path,
) -> None:
    clipped = onnx.ModelProto()
    clipped.CopyFrom(fp32_model)
    assert clip_mask_sentinels(clipped) > 0 and out_of_range_constants(clipped) == []
    path = tmp_path / "clipped.onnx"
    onnx.save(clipped, path)
    with OnnxRuntimeBackend(tiny_model_files.onnx, "cpu") as before, OnnxRuntimeBackend(path, "cpu") as after:
        for prompt in PROMPTS:
            encoded = encode_prompt(prompt, "auto", tokenizer)
            text = encoded.text_inputs()
            for image in (data.astronaut(), data.chelsea()):
                tensor = preprocess(image, before.input_hw)
                want = {k: v.copy() for k, v in before.infer(tensor, text).items()}
                got = {k: v.copy() for k, v in after.infer(tensor, text).items()}
                for name, value in want.items():
                    padded = np.isneginf(value)
                    assert not np.isinf(value[~padded]).any()
                    # Bit-identical everywhere, except -inf logits at padded tokens, now -65504 ...
                    np.testing.assert_array_equal(got[name][~padded], value[~padded], err_msg=name)
                    assert (got[name][padded] == -FP16_MAX).all()
                    assert padded.any() == (name == contract.PRED_LOGITS)
                # ... whose probabilities are the same exact 0, so the results are identical.
                hw = image.shape[:2]
                a, b = postprocess(want, encoded, hw), postprocess(got, encoded, hw)
                assert len(a.detections) == len(b.detections) > 0
                for x, y in zip(a.detections, b.detections, strict=True):
                    assert (x.label, x.score, x.box_xyxy) == (y.label, y.score, y.box_xyxy)
                    np.testing.assert_array_equal(x.mask, y.mask)
                np.testing.assert_array_equal(a.label_image, b.label_image)
                assert a.no_target == b.no_target
                assert a.no_target_probability == b.no_target_probability


# --- FP16 against FP32 ----------------------------------------------------------------------------


def test_fp16_tiny_model_agrees_with_fp32_on_photos(
    tiny_model_files: TinyModel, fp16_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    with OnnxRuntimeBackend(tiny_model_files.onnx, "cpu") as fp32, \
            OnnxRuntimeBackend(fp16_path, "cpu") as fp16:
        report = compare_backends(fp32, fp16, [data.astronaut(), data.chelsea()], PROMPTS, tokenizer)
    assert report.runs == 4 and report.nan_counts == dict.fromkeys(fp32.output_names, 0)
    assert report.reference_detections > 20
    assert report.problems(PrecisionTolerance()) == [], report.table()
    assert 0 < report.per_output["no_targets"][0] < 0.01  # FP16 rounding is visible, and small


class FixedBackend(Backend):
    """A backend that returns the same outputs for every image and prompt."""

    name = "fixed"

    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        dtypes = dict(contract.INPUT_DTYPES)
        super().__init__(device="cpu", precision="fp32", input_hw=(64, 96), input_dtypes=dtypes,
                         output_names=tuple(outputs))
        self._outputs = outputs

    def _set_text(self, text_inputs: dict[str, np.ndarray]) -> None:
        pass

    def _run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self._outputs.items()}

    def _release(self) -> None:
        pass


IMAGE = np.full((100, 200, 3), 128, np.uint8)  # H0 x W0 = 100 x 200 pixels


def reference_outputs(num_tokens: int) -> dict[str, np.ndarray]:
    """Five queries; query 0 finds "cat" (token 1), query 1 "dog" (token 3); nothing else scores."""
    logits = np.full((1, 5, 256), -10.0, np.float32)
    logits[0, :, num_tokens:] = -np.inf
    logits[0, 0, 1] = logits[0, 1, 3] = 10.0
    boxes = np.array([[[0.5, 0.5, 0.4, 0.4], [0.15, 0.15, 0.2, 0.2], [0.85, 0.85, 0.2, 0.2],
                       [0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1]]], np.float32)
    masks = np.full((1, 5, 1, 16, 24), -10.0, np.float32)
    masks[0, 0] = 10.0  # query 0: the whole image
    masks[0, 1, 0, :, :12] = 10.0  # query 1: the left half
    return {contract.PRED_LOGITS: logits, contract.PRED_BOXES: boxes, contract.PRED_MASKS: masks}


@pytest.fixture
def cat_dog(tokenizer: PreTrainedTokenizerBase) -> EncodedPrompt:
    encoded = encode_prompt("cat . dog", "phrases", tokenizer)
    assert encoded.phrase_token_spans == ((1, 2), (3, 4))
    return encoded


def test_identical_backends_compare_as_equal(
    cat_dog: EncodedPrompt, tokenizer: PreTrainedTokenizerBase
) -> None:
    outputs = reference_outputs(cat_dog.num_tokens)
    report = compare_backends(FixedBackend(outputs), FixedBackend(outputs), [IMAGE], ["cat . dog"], tokenizer)
    assert report.per_output == {name: (0.0, 0.0) for name in outputs}
    assert (report.box_l1_px, report.mask_iou, report.detection_agreement, report.no_target_agreement) \
        == (0.0, 1.0, 1.0, 1.0)
    assert (report.matched, report.reference_detections, report.candidate_detections) == (2, 2, 2)
    assert report.problems() == []


def test_a_perturbed_candidate_gives_the_numbers_worked_out_by_hand(
    cat_dog: EncodedPrompt, tokenizer: PreTrainedTokenizerBase
) -> None:
    want = reference_outputs(cat_dog.num_tokens)
    got = {name: value.copy() for name, value in want.items()}
    got[contract.PRED_LOGITS][0, :, cat_dog.num_tokens:] = -FP16_MAX  # FP16 graph's padding: no difference
    got[contract.PRED_BOXES][0, 0, 0] = 0.55  # query 0 moves right by 0.05 * 200 = 10 px (x0 and x1)
    got[contract.PRED_LOGITS][0, 2, 3] = 10.0  # an extra "dog" (query 2), where the reference has none
    got[contract.PRED_MASKS][0, 0, 0, 8:] = -10.0  # query 0's mask: the top half only
    report = compare_backends(FixedBackend(want), FixedBackend(got), [IMAGE], ["cat . dog"], tokenizer)

    # Boxes: 10 px on x0 and x1 of query 0, 0 on query 1 -> mean |d| over (x0, y0, x1, y1) = (5 + 0) / 2.
    assert report.box_l1_px == pytest.approx(2.5, abs=1e-4)
    # Masks: bilinear resize of 16 -> 100 rows puts the sign change at row 49.5: top 50 of 100 rows, IoU
    # 0.5 for query 0; query 1 unchanged, IoU 1.
    assert report.mask_iou == pytest.approx(0.75)
    # Detections: 2 reference, 3 candidate, 2 matched -> 2 * 2 / (2 + 3).
    assert (report.matched, report.reference_detections, report.candidate_detections) == (2, 2, 3)
    assert report.detection_agreement == pytest.approx(0.8)
    assert report.no_target_agreement == 1.0  # both detect something
    logits_max, logits_mean = report.per_output[contract.PRED_LOGITS]
    assert (logits_max, logits_mean) == (20.0, pytest.approx(20.0 / (5 * 256)))
    boxes_max, boxes_mean = report.per_output[contract.PRED_BOXES]
    assert (boxes_max, boxes_mean) == (pytest.approx(0.05, abs=1e-7), pytest.approx(0.05 / 20, abs=1e-8))
    # 8 rows x 24 columns of query 0 change by 20, out of 5 x 16 x 24 values.
    assert report.per_output[contract.PRED_MASKS] == (20.0, pytest.approx(8 * 24 * 20 / (5 * 16 * 24)))
    problems = report.problems(PrecisionTolerance(max_box_l1_px=2.0, min_mask_iou=0.9))
    assert len(problems) == 3
    assert "2.50 px" in problems[0] and "IoU 0.750" in problems[1] and "agree 0.800" in problems[2]
    assert report.problems(PrecisionTolerance(3.0, 0.7, 0.75, 1.0)) == []
    assert "| detection agreement | 0.800 (2 matched; 2 reference, 3 candidate) |" in report.table()


def test_nan_and_a_lost_detection_set_are_problems_whatever_the_tolerance(
    cat_dog: EncodedPrompt, tokenizer: PreTrainedTokenizerBase
) -> None:
    want = reference_outputs(cat_dog.num_tokens)
    got = {name: value.copy() for name, value in want.items()}
    got[contract.PRED_LOGITS][0, :2, : cat_dog.num_tokens] = -10.0  # the candidate finds nothing
    got[contract.PRED_MASKS][0, 4, 0, 0, 0] = np.nan
    report = compare_backends(FixedBackend(want), FixedBackend(got), [IMAGE, IMAGE], ["cat . dog"], tokenizer)
    assert report.nan_counts == {contract.PRED_LOGITS: 0, contract.PRED_BOXES: 0, contract.PRED_MASKS: 2}
    # Logits: 2 values change by 20 per run; masks: unchanged, the NaN position left out of the mean.
    assert report.per_output[contract.PRED_LOGITS] == (20.0, pytest.approx(2 * 20.0 / (5 * 256)))
    assert report.per_output[contract.PRED_MASKS] == (0.0, 0.0)
    assert math.isnan(report.box_l1_px) and math.isnan(report.mask_iou)
    assert (report.detection_agreement, report.no_target_agreement) == (0.0, 0.0)
    lenient = PrecisionTolerance(1e9, 0.0, 0.0, 0.0)
    assert report.problems(lenient) == [report.problems()[0]]
    assert "pred_masks: 2 NaN" in report.problems(lenient)[0]
    assert len(report.problems()) == 3  # NaN, detections, no-target


# --- command-line tools ----------------------------------------------------------------------------


@pytest.mark.slow
def test_compare_cli_prints_the_table_and_fails_beyond_tolerance(
    tiny_model_files: TinyModel, fp16_path: Path, vocab_path: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = tmp_path / "chelsea.png"
    cv2.imwrite(str(image), data.chelsea()[:, :, ::-1])
    common = [str(tiny_model_files.onnx), str(fp16_path), "--image", str(image), "--prompt", "cat",
              "--tokenizer", str(vocab_path), "--device", "cpu"]
    assert compare_precision.main(common) == 0
    out, err = capsys.readouterr()
    assert "| `pred_masks` max / mean abs diff" in out and "| mask IoU, matched detections |" in out
    assert "1 image(s) x 1 prompt(s)" in err
    assert compare_precision.main([*common, "--max-box-l1-px", "0", "--min-mask-iou", "1.0"]) == EXIT_MODEL
    assert "beyond tolerance: matched masks overlap" in capsys.readouterr().err

    assert compare_precision.main([str(tiny_model_files.onnx), str(tmp_path / "missing.onnx")]) == EXIT_MODEL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.onnx does not exist" in err
    assert compare_precision.main([*common, "--image", str(tmp_path / "none.png")]) == EXIT_INPUT
    assert "cannot read image" in capsys.readouterr().err


def test_export_cli_fp32_layers_need_fp16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--random-init", "--config", "tiny", "--output", str(tmp_path / "m.onnx"), "--fp32-layers", "*"]
    assert export_cli.main(argv) == 2
    assert "--fp32-layers only applies to --precision fp16" in capsys.readouterr().err


@pytest.fixture(scope="module")
def plugin_fp16_export(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("plugin16") / "tiny_plugin_fp16.onnx"
    argv = ["--random-init", "--config", "tiny", "--output", str(path), "--msda", "plugin",
            "--precision", "fp16", "--fp32-layers", "/transformer/decoder/layers.5/*"]
    assert export_cli.main(argv) == 0
    yield path


@pytest.mark.slow
def test_export_cli_writes_an_fp16_plugin_graph(plugin_fp16_export: Path) -> None:
    model = onnx.load(str(plugin_fp16_export))
    onnx.checker.check_model(model, full_check=True)
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata[META_PRECISION] == "fp16"
    assert json.loads(metadata[META_FP32_LAYERS]) == [*DEFAULT_FP32_LAYERS, "/transformer/decoder/layers.5/*"]
    assert out_of_range_constants(model) == []
    types = tensor_types(model)
    assert {v.name: types[v.name] for v in model.graph.input} == {
        name: {np.dtype(np.float32): 1, np.dtype(np.int64): 7, np.dtype(np.bool_): 9}[dtype]
        for name, dtype in contract.INPUT_DTYPES.items()}
    assert {types[v.name] for v in model.graph.output} == {TensorProto.FLOAT}
    plugins = [n for n in model.graph.node if n.op_type == contract.MSDA_PLUGIN_OP]
    config = MaskGDINOConfig.tiny()
    assert len(plugins) == config.enc_layers + config.dec_layers
    for node in plugins:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["plugin_version"] == b"1" and attributes["plugin_namespace"] == b""
        # The plugin needs one float type on all its float I/O: FP32, as the keep-list says.
        floats = {types[t] for t in (*node.input, *node.output) if types[t] in FLOAT_TYPES}
        assert floats == {TensorProto.FLOAT}
    last = [n for n in model.graph.node if n.name == "/transformer/decoder/layers.5/linear1/MatMul"]
    assert types[last[0].output[0]] == TensorProto.FLOAT


@pytest.mark.slow
def test_export_cli_names_a_pattern_that_matches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.onnx"
    argv = ["--random-init", "--config", "tiny", "--output", str(path), "--precision", "fp16",
            "--fp32-layers", "/decoder/*"]
    assert export_cli.main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'/decoder/*' match no node" in err and "/transformer/" in err
    assert not path.exists() and list(tmp_path.iterdir()) == []
