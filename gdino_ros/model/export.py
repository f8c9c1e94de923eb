"""ONNX export of Mask Grounding DINO with TAO's exact engine interface (docs/engine_contract.md).

The graph has TAO's input and output names and dtypes, batch-1 static shapes except the text inputs'
token axis (``tokens``: any length up to 256, so a short prompt does not pay for 256 tokens; the outputs
keep their static shapes), opset 17, and metadata that records where its weights came from. Multi-scale
deformable attention is emitted either as
``grid-sample`` (pure ONNX GridSample; runs in ONNX Runtime) or as ``plugin``: one
``MultiscaleDeformableAttnPlugin_TRT`` node per attention (domain ``nvidia``, attributes
``name``/``version="1"``/``namespace=""``, INT32 ``spatial_shapes``/``level_start_index`` constants),
the node TAO writes, plus ``plugin_version="1"``/``plugin_namespace=""``: the attributes TensorRT's ONNX
parser reads to pick the plugin, explicit because its default would be the newest version (JetPack 6's
TensorRT 10.3 has only version 1). ``precision="fp16"`` converts the traced graph to mixed FP16/FP32
(:mod:`gdino_ros.model.precision`) before it is written. ``camera_input=True`` replaces the float image
input by the camera's uint8 pixels at any size, preprocessed inside the graph
(:mod:`gdino_ros.model.camera_input`): not TAO's interface, so never the default.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import torch

from gdino_ros import __version__, contract
from gdino_ros.model.camera_input import add_camera_input
from gdino_ros.model.config import MaskGDINOConfig
from gdino_ros.model.ms_deform_attn import MultiScaleDeformableAttention, ms_deform_attn_core
from gdino_ros.model.precision import (
    DEFAULT_FP32_LAYERS,
    META_FP32_LAYERS,
    META_PRECISION,
    PRECISION_FP16,
    PRECISION_FP32,
    PRECISIONS,
    check_patterns,
    convert_to_fp16,
)

if TYPE_CHECKING:
    from torch.onnx._internal.torchscript_exporter.jit_utils import GraphContext

MSDA_GRID_SAMPLE = "grid-sample"
MSDA_PLUGIN = "plugin"
MSDA_MODES: tuple[str, ...] = (MSDA_GRID_SAMPLE, MSDA_PLUGIN)
PLUGIN_DOMAIN = "nvidia"
PLUGIN_VERSION = "1"
# TAO's dummy caption "the running dog ." in bert-base-uncased ids: [CLS] the running dog . [SEP].
_EXAMPLE_IDS = (contract.CLS_ID, 1996, 2770, 3899, contract.PERIOD_ID, contract.SEP_ID)
# The text length the graph is traced at. Sizes equal to it in tensors computed from the text stay
# symbolic in the graph, so it must differ from every other size of those tensors (hidden widths, heads,
# points, levels, queries, the feature-map sides of the usual input sizes).
_TRACE_TEXT_LEN = 13
TEXT_AXIS = "tokens"  # the dim_param of the text inputs' token axis
_HEARTBEAT_S = 15.0

Progress = Callable[[str], None]


def default_msda_mode() -> str:
    """TAO's choice: the plugin when exporting on a CUDA machine, GridSample on a CPU-only one."""
    return MSDA_PLUGIN if torch.cuda.is_available() else MSDA_GRID_SAMPLE


def example_inputs(
    config: MaskGDINOConfig, seed: int = 0, length: int = contract.MAX_TEXT_LEN
) -> dict[str, torch.Tensor]:
    """Batch-1 inputs with the engine's names and dtypes: a random image and TAO's dummy caption.

    ``position_ids``/``text_token_mask`` follow docs/engine_contract.md#text-inputs for
    ``[CLS] the running dog . [SEP]`` padded to ``length`` tokens: blocks {0}, {1..4}, {5}, and every pad
    token on its own.
    """
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.zeros(1, length, dtype=torch.int64)
    input_ids[0, : len(_EXAMPLE_IDS)] = torch.tensor(_EXAMPLE_IDS)
    position_ids = torch.zeros(1, length, dtype=torch.int64)
    position_ids[0, 1:5] = torch.arange(4)
    text_token_mask = torch.eye(length, dtype=torch.bool)[None].clone()
    text_token_mask[0, 1:5, 1:5] = True
    return {
        contract.INPUT_IMAGE: torch.randn(1, 3, config.input_height, config.input_width, generator=generator),
        contract.INPUT_IDS: input_ids,
        contract.ATTENTION_MASK: input_ids != contract.PAD_ID,
        contract.POSITION_IDS: position_ids,
        contract.TOKEN_TYPE_IDS: torch.zeros(1, length, dtype=torch.int64),
        contract.TEXT_TOKEN_MASK: text_token_mask,
    }


def export_onnx(
    model: torch.nn.Module,
    config: MaskGDINOConfig,
    output: str | Path,
    *,
    source: str,
    msda: str = MSDA_GRID_SAMPLE,
    precision: str = PRECISION_FP32,
    fp32_layers: Sequence[str] = (),
    vocab: str | None = None,
    camera_input: bool = False,
    progress: Progress | None = None,
) -> onnx.ModelProto:
    """Trace ``model`` at ``config``'s input size and write the ONNX graph to ``output``.

    ``source`` goes into the metadata (``contract.RANDOM_INIT_SOURCE`` or the checkpoint's path and
    hash), and so does ``vocab``, the tokenizer's ``vocab.txt`` text that makes the file self-contained.
    ``precision="fp16"`` writes the mixed-precision graph, with the node-name patterns
    ``fp32_layers`` kept in FP32 besides :data:`~gdino_ros.model.precision.DEFAULT_FP32_LAYERS` (a
    pattern that matches no node is a :class:`~gdino_ros.model.precision.KeepListError`).
    ``camera_input`` makes the image input the camera's uint8 RGB pixels (docs/engine_contract.md). The
    file is written next to ``output`` and renamed, so a failed export leaves nothing half written.
    Returns the written model (weights included).
    """
    if msda not in MSDA_MODES:
        raise ValueError(f"msda must be one of {MSDA_MODES}, got {msda!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if fp32_layers and precision != PRECISION_FP16:
        raise ValueError("FP32 layers only apply to an FP16 export (--precision fp16)")
    say = progress or (lambda _message: None)
    output = Path(output)
    inputs = example_inputs(config, length=_TRACE_TEXT_LEN)
    model.eval()
    buffer = io.BytesIO()
    converting = _heartbeat(say, "tracing and converting")
    text_axes = {name: {1: TEXT_AXIS} for name in contract.TEXT_INPUT_NAMES}
    text_axes[contract.TEXT_TOKEN_MASK] = {1: TEXT_AXIS, 2: TEXT_AXIS}
    shapes = _static_shapes(_TRACE_TEXT_LEN)
    with _msda_cores(model, msda), shapes, torch.no_grad(), converting, _expected_warnings_hidden():
        torch.onnx.export(
            model,
            tuple(inputs.values()),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter also writes to file objects
            dynamo=False,
            opset_version=contract.ONNX_OPSET,
            input_names=list(contract.INPUT_NAMES),
            output_names=list(config.output_names),
            dynamic_axes=text_axes,
            do_constant_folding=True,
            custom_opsets={PLUGIN_DOMAIN: contract.ONNX_OPSET} if msda == MSDA_PLUGIN else None,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    del buffer
    _set_output_shapes(proto, config)
    if precision == PRECISION_FP16:
        check_patterns(proto, fp32_layers)
        say("converting to mixed FP16/FP32")
        proto = convert_to_fp16(proto, (*DEFAULT_FP32_LAYERS, *fp32_layers))
    if camera_input:  # after the FP16 pass: the preprocessing stays FP32 (gdino_ros.model.camera_input)
        add_camera_input(proto, (config.input_height, config.input_width))
    _set_metadata(proto, config, source, msda, vocab, camera_input)
    proto.metadata_props.add(key=META_PRECISION, value=precision)
    proto.metadata_props.add(key=META_FP32_LAYERS, value=json.dumps(
        [*DEFAULT_FP32_LAYERS, *fp32_layers] if precision == PRECISION_FP16 else []))
    say(f"writing {output} ({proto.ByteSize() / 2**20:.0f} MiB)")
    _write_atomically(proto, output)
    return proto


def output_shapes(config: MaskGDINOConfig) -> dict[str, tuple[int, ...]]:
    """Return the static output shapes (docs/engine_contract.md#outputs) for ``config``'s queries and size."""
    h, w = config.input_height, config.input_width
    queries, tokens = config.num_queries, config.max_text_len
    shapes = {
        contract.PRED_LOGITS: (1, queries, tokens),
        contract.PRED_BOXES: (1, queries, 4),
        contract.PRED_MASKS: (1, queries, 1, h // contract.MASK_STRIDE, w // contract.MASK_STRIDE),
        contract.NO_TARGETS: (1, 2),
        contract.UNION_MASK_LOGITS: (1, 2, h // contract.UNION_MASK_STRIDE, w // contract.UNION_MASK_STRIDE),
    }
    return {name: shapes[name] for name in config.output_names}


def metadata_of(
    config: MaskGDINOConfig, source: str, msda: str, vocab: str | None = None, camera_input: bool = False
) -> dict[str, str]:
    """Return the ONNX metadata_props for a graph exported from ``config``."""
    return {
        contract.META_SOURCE: source,
        contract.META_NUM_REGION_QUERIES: str(config.num_region_queries),
        contract.META_NUM_QUERIES: str(config.num_queries),
        contract.META_MAX_TEXT_LEN: str(config.max_text_len),
        contract.META_INPUT_HEIGHT: str(config.input_height),
        contract.META_INPUT_WIDTH: str(config.input_width),
        contract.META_MSDA: msda,
        contract.META_IMAGE_INPUT: (
            contract.IMAGE_INPUT_CAMERA if camera_input else contract.IMAGE_INPUT_TENSOR
        ),
        contract.META_LOG_SCALE: "none" if config.log_scale is None else str(config.log_scale),
        contract.META_CLASS_EMBED_BIAS: str(config.class_embed_bias),
        contract.META_VERSION: __version__,
        **({contract.META_VOCAB: vocab} if vocab is not None else {}),
    }


def plugin_msda_core(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    level_start_index: Sequence[int],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Drop-in for :func:`ms_deform_attn_core` that exports as TensorRT's MSDA plugin node.

    Computes the same values in PyTorch (the tracer needs them); the ONNX graph gets the plugin node,
    whose [N, Lq, M, D] output is reshaped to the core's [N, Lq, M*D].
    """
    shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    starts = tuple(int(start) for start in level_start_index)
    n, _, heads, dim = (int(size) for size in value.shape)
    output_shape = (n, int(sampling_locations.shape[1]), heads, dim)
    plugin = _MSDAPlugin.apply(value, sampling_locations, attention_weights, shapes, starts, output_shape)
    return plugin.flatten(2)


class _MSDAPlugin(torch.autograd.Function):
    """Export-only autograd function: PyTorch values forward, the TensorRT plugin node in ONNX."""

    @staticmethod
    def forward(
        ctx: object,
        value: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        spatial_shapes: tuple[tuple[int, int], ...],
        level_start_index: tuple[int, ...],
        output_shape: tuple[int, int, int, int],
    ) -> torch.Tensor:
        locations, weights = sampling_locations, attention_weights
        output = ms_deform_attn_core(value, spatial_shapes, level_start_index, locations, weights)
        return output.view(output_shape)

    @staticmethod
    def symbolic(
        g: GraphContext,
        value: torch.Value,
        sampling_locations: torch.Value,
        attention_weights: torch.Value,
        spatial_shapes: tuple[tuple[int, int], ...],
        level_start_index: tuple[int, ...],
        output_shape: tuple[int, int, int, int],
    ) -> torch.Value:
        shapes = g.op("Constant", value_t=torch.tensor(spatial_shapes, dtype=torch.int32))
        starts = g.op("Constant", value_t=torch.tensor(level_start_index, dtype=torch.int32))
        node = g.op(
            f"{PLUGIN_DOMAIN}::{contract.MSDA_PLUGIN_OP}",
            value,
            shapes,
            starts,
            sampling_locations,
            attention_weights,
            name_s=contract.MSDA_PLUGIN_OP,
            version_s=PLUGIN_VERSION,
            namespace_s="",
            plugin_version_s=PLUGIN_VERSION,
            plugin_namespace_s="",
        )
        node.setType(value.type().with_sizes(list(output_shape)))
        return node


@contextlib.contextmanager
def _msda_cores(model: torch.nn.Module, msda: str) -> Iterator[None]:
    """Route every deformable attention through the plugin core for the export, then restore it."""
    modules = [module for module in model.modules() if isinstance(module, MultiScaleDeformableAttention)]
    saved = [module.core for module in modules]
    if msda == MSDA_PLUGIN:
        for module in modules:
            module.core = plugin_msda_core
    try:
        yield
    finally:
        for module, core in zip(modules, saved, strict=True):
            module.core = core


@contextlib.contextmanager
def _static_shapes(text_length: int) -> Iterator[None]:
    """Fold every traced tensor size into a constant before the graph is converted to ONNX, except the text's.

    The tracer records ``x.shape[i]`` as a graph computation even though export shapes are fixed. ONNX
    shape inference loses track of such sizes at ops like ``Range`` and ``Pad``, and the exporter then
    refuses the mask head's convolutions with computed weights ("kernel of unknown shape"). Running
    TorchScript's shape peephole (which turns sizes of typed tensor dimensions into constants) and
    constant propagation on the traced graph gives a graph whose shapes are static, as the engine's are,
    except the token axis: in every tensor computed from the text inputs, a dimension of the traced
    ``text_length`` is made unknown first, so its sizes stay computed from the input and the graph runs at
    any text length. The hook wraps the exporter's private tracing step of the pinned torch (2.13).
    """
    from torch.onnx._internal.torchscript_exporter import utils as exporter

    trace = exporter._trace_and_get_graph_from_model

    def trace_static(model: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Graph, object]:
        graph, outputs = trace(model, args)
        text_inputs = list(graph.inputs())[1 : len(contract.INPUT_NAMES)]  # after the image
        _unknown_text_axis(text_inputs, text_length)
        torch._C._jit_pass_peephole(graph, False)  # False: shape peepholes enabled
        torch._C._jit_pass_constant_propagation(graph)
        return graph, outputs

    exporter._trace_and_get_graph_from_model = trace_static
    try:
        yield
    finally:
        exporter._trace_and_get_graph_from_model = trace


def _unknown_text_axis(text_inputs: list[torch.Value], text_length: int) -> None:
    """Mark every ``text_length`` dimension of the tensors computed from ``text_inputs`` as unknown."""
    seen: set[str] = set()
    pending = list(text_inputs)
    while pending:
        value = pending.pop()
        if value.debugName() in seen:
            continue
        seen.add(value.debugName())
        kind = value.type()
        sizes = kind.varyingSizes() if isinstance(kind, torch._C.TensorType) else None
        if sizes is not None:
            value.setType(kind.with_sizes([None if size == text_length else size for size in sizes]))
        for use in value.uses():
            pending.extend(use.user.outputs())


@contextlib.contextmanager
def _expected_warnings_hidden() -> Iterator[None]:
    """Hide the tracer's warnings that this export causes on purpose, so users see only real problems.

    Freezing shapes into Python ints and numpy-built constants is how the graph gets TAO's static batch-1
    shapes (:func:`_static_shapes`), and the exporter notes that it cannot fold strided slices; neither
    changes the graph's results, which the tests compare with the PyTorch forward.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        yield


@contextlib.contextmanager
def _heartbeat(say: Progress, what: str) -> Iterator[None]:
    """Report a long blocking step when it starts, every few seconds while it runs, and when it ends."""
    start = time.monotonic()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(_HEARTBEAT_S):
            say(f"... still {what} ({time.monotonic() - start:.0f} s)")

    say(what)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    say(f"{what}: done in {time.monotonic() - start:.1f} s")


def _set_output_shapes(proto: onnx.ModelProto, config: MaskGDINOConfig) -> None:
    """Declare the static output shapes (the tracer leaves some dimensions symbolic)."""
    shapes = output_shapes(config)
    for value in proto.graph.output:
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in shapes[value.name]:
            dims.add().dim_value = size


def _set_metadata(
    proto: onnx.ModelProto, config: MaskGDINOConfig, source: str, msda: str, vocab: str | None,
    camera_input: bool,
) -> None:
    del proto.metadata_props[:]
    for key, value in metadata_of(config, source, msda, vocab, camera_input).items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "gdino_ros"
    proto.producer_version = __version__


def _write_atomically(proto: onnx.ModelProto, output: Path) -> None:
    """Serialise to a temporary file in the target directory, then rename it over ``output``."""
    # A plain open() (not mkstemp, which makes the file private) so the file gets the usual permissions.
    temporary = output.with_name(f".{output.name}.{os.getpid()}.part")
    try:
        onnx.save(proto, temporary)
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
