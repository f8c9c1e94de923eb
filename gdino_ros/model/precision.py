"""FP32 ONNX -> mixed-precision ONNX: FP16 where it is safe, FP32 where Grounding DINO needs it.

TensorRT 11 builds only strongly typed networks: every tensor's type comes from the ONNX graph, so the
precision of each layer has to be decided here, with explicit ``Cast`` nodes between the FP16 and FP32
parts. :func:`convert_to_fp16` does that with its own pass: each node runs in FP16 or, when its name
matches a keep-list pattern (shell-style, case-sensitive), in FP32; a float input whose type differs from
its node's gets a ``Cast`` (constants are stored once per precision instead); the graph's inputs and
outputs keep the contract's types. (onnxconverter-common's ``convert_float_to_float16`` was tried first:
on this graph it writes a model ONNX Runtime refuses (a ``Cast`` whose declared type disagrees with its
``to``) and silently rewrites constants, e.g. the fusion clamp ±50000 to ±10000.)

FP16 holds nothing beyond ±65504. The FP32 export masks with ``-inf`` (padded tokens, PyTorch's own
``MultiheadAttention`` masks), ``+inf`` (invalid anchor boxes) and ``finfo(float32).min`` (BERT's additive
mask); :func:`clip_mask_sentinels` turns exactly these sentinels into ±65504, which masks the same way
(``exp`` and ``sigmoid`` give exactly 0 or 1 in FP32; test_precision proves the outputs are unchanged).
Any other constant outside the range is an error (:func:`check_fp16_constants`), never silently clipped.

Default keep-list (:data:`DEFAULT_FP32_LAYERS`), from the measurements in BENCHMARKS.md ("FP16 accuracy"):
BERT, every LayerNormalization and the deformable-attention sampling (sampling offsets, locations,
GridSample or the TensorRT plugin, weighting): moving any of them to FP16 measurably moved boxes and
masks. Softmax outside these parts runs in FP16: keeping it in FP32 changed nothing measurable.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gdino_ros.errors import ModelError, UsageError

FP16_MAX = 65504.0
PRECISION_FP32 = "fp32"
PRECISION_FP16 = "fp16"
PRECISIONS: tuple[str, ...] = (PRECISION_FP32, PRECISION_FP16)
# ONNX metadata_props gdino-export writes: the precision and the JSON list of FP32 node-name patterns.
META_PRECISION = "precision"
META_FP32_LAYERS = "fp32_layers"

#: Node-name patterns kept in FP32 by default (see the module docstring and BENCHMARKS.md).
DEFAULT_FP32_LAYERS: tuple[str, ...] = (
    "/embeddings/*",  # BERT: token, position and type embeddings
    "/encoder/*",  # BERT's layers (the Grounding DINO encoder is /transformer/encoder/)
    "*/LayerNormalization*",
    # Deformable-attention sampling: offsets, locations, GridSample or the TensorRT plugin, weighting.
    # Direct ops of the module only (capitalised op names), so value_proj/output_proj stay FP16.
    "/transformer/encoder/layers.*/self_attn/sampling_offsets/*",
    "/transformer/encoder/layers.*/self_attn/[A-Z]*",
    "/transformer/decoder/layers.*/cross_attn/sampling_offsets/*",
    "/transformer/decoder/layers.*/cross_attn/[A-Z]*",
)



class KeepListError(UsageError, ValueError):
    """An FP32 keep-list pattern that matches no node of the graph."""


class Fp16ConversionError(ModelError, ValueError):
    """A graph the FP16 pass cannot convert: a constant FP16 cannot hold, a subgraph, an untyped tensor."""


# Constants at or beyond this magnitude are masking sentinels (float32's extremes and infinities).
_SENTINEL = float(np.finfo(np.float32).max) / 2
# Inputs whose type the operator fixes, whatever the node's precision: Resize's roi and scales.
_FIXED_INPUTS: dict[str, frozenset[int]] = {"Resize": frozenset({1, 2})}
# Outputs of a fixed type: LayerNormalization's mean and inverse standard deviation.
_FIXED_OUTPUTS: dict[str, frozenset[int]] = {"LayerNormalization": frozenset({1, 2})}
_FLOAT_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


def clip_mask_sentinels(model: onnx.ModelProto) -> int:
    """Replace ±inf and float32-extreme values in float constants by ±65504, in place; return how many.

    These are masks: ``x + (-inf)`` before a softmax, ``masked_fill(-inf)`` of padded logits, ``+inf``
    for anchors outside the image. ±65504 is the largest magnitude FP16 holds and masks identically:
    after it ``exp`` underflows to exactly 0 and ``sigmoid`` rounds to exactly 0 or 1.
    """
    replaced = 0
    for tensor in _float_constants(model):
        values = numpy_helper.to_array(tensor)
        sentinel = np.abs(values.astype(np.float64)) >= _SENTINEL
        if sentinel.any():
            replaced += int(np.count_nonzero(sentinel))
            clipped = np.where(sentinel, np.sign(values) * FP16_MAX, values).astype(values.dtype)
            tensor.CopyFrom(numpy_helper.from_array(clipped, tensor.name))
    return replaced


def out_of_range_constants(model: onnx.ModelProto) -> list[str]:
    """Describe every float constant with a NaN, an infinity or a value beyond ±65504."""
    found = []
    for tensor in _float_constants(model):
        values = numpy_helper.to_array(tensor).astype(np.float64)
        bad = ~(np.abs(values) <= FP16_MAX)  # NaN compares False
        if bad.any():
            found.append(f"{tensor.name or '(constant)'} ({int(np.count_nonzero(bad))} value(s), "
                         f"e.g. {values[bad].flat[0]:g})")
    return found


def check_fp16_constants(model: onnx.ModelProto) -> None:
    """Raise :class:`Fp16ConversionError` when a float constant is non-finite or beyond ±65504."""
    found = out_of_range_constants(model)
    if found:
        shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
        raise Fp16ConversionError(f"the FP16 graph has {len(found)} constant(s) outside ±65504: {shown}. "
                         "Export in FP32 (--precision fp32), or report the model: its FP16 conversion "
                         "needs these values handled")


def matching_nodes(model: onnx.ModelProto, patterns: Iterable[str]) -> set[str]:
    """Return the names of the nodes matched by any of the shell-style ``patterns``."""
    names = [node.name for node in model.graph.node]
    matched: set[str] = set()
    for pattern in patterns:
        matched.update(n for n in names if fnmatch.fnmatchcase(n, pattern))
    return matched


def check_patterns(model: onnx.ModelProto, patterns: Iterable[str]) -> None:
    """Raise :class:`KeepListError` naming every pattern that matches no node, with example node names."""
    names = [node.name for node in model.graph.node]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        examples: dict[str, str] = {}  # one per top-level scope, so the user sees how names are built
        for name in names:
            if name.endswith(("/Softmax", "/MatMul", "/LayerNormalization")):
                examples.setdefault(name.split("/")[1], name)
        raise KeepListError(
            f"--fp32-layers pattern(s) {', '.join(repr(p) for p in unmatched)} match no node; patterns are "
            f"shell-style and match ONNX node names such as {', '.join(list(examples.values())[:5])} "
            "(e.g. '/transformer/decoder/*')"
        )


def convert_to_fp16(
    model: onnx.ModelProto, fp32_layers: Sequence[str] = DEFAULT_FP32_LAYERS
) -> onnx.ModelProto:
    """Return an explicitly typed mixed-precision copy of the FP32 ``model``.

    Nodes whose names match ``fp32_layers`` run in FP32, all others in FP16; graph inputs and outputs keep
    their types. Mask sentinels are clipped first (:func:`clip_mask_sentinels`); any other constant
    beyond the FP16 range raises :class:`Fp16ConversionError`. Every tensor of the result has its type
    in ``value_info``.
    """
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise Fp16ConversionError(f"node {node.name} ({node.op_type}) has a subgraph; the FP16 pass "
                                      "handles flat graphs only, as gdino-export writes them")
    clip_mask_sentinels(converted)
    check_fp16_constants(converted)
    _constant_nodes_to_initializers(graph)
    types = _tensor_types(converted)
    # Shape inference knows no custom op (the TensorRT plugin): keep the exporter's declarations of their
    # outputs, with the new types, so that everything downstream can be inferred.
    produced = {name for node in graph.node if node.domain not in ("", "ai.onnx") for name in node.output}
    custom = [value for value in graph.value_info if value.name in produced]
    retyper = _Retyper(graph, types, matching_nodes(converted, fp32_layers))
    retyper.run()
    del graph.value_info[:]
    for value in custom:
        value.type.tensor_type.elem_type = retyper.current[value.name]
        graph.value_info.append(value)
    typed = onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    declared = {v.name for v in (*typed.graph.value_info, *typed.graph.input, *typed.graph.output)}
    declared.update(t.name for t in typed.graph.initializer)
    untyped = [name for node in typed.graph.node for name in node.output if name and name not in declared]
    if untyped:
        raise Fp16ConversionError(
            f"the FP16 graph leaves {len(untyped)} tensor type(s) undecided, e.g. {untyped[0]}")
    return typed


def _float_constants(model: onnx.ModelProto) -> Iterable[TensorProto]:
    """Yield every float tensor stored in the graph: initializers and Constant/ConstantOfShape values."""
    for tensor in model.graph.initializer:
        if tensor.data_type in _FLOAT_TYPES:
            yield tensor
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type in _FLOAT_TYPES:
                yield attribute.t


def _constant_nodes_to_initializers(graph: onnx.GraphProto) -> None:
    """Turn float ``Constant`` nodes into initializers, so that every float constant is handled one way."""
    kept = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and value.data_type in _FLOAT_TYPES:
            array = numpy_helper.to_array(value)
            graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the FP32 graph, from ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.input, *graph.output, *graph.value_info):
        types[value.name] = value.type.tensor_type.elem_type
    return types


class _Retyper:
    """Rewrites the node list in order, tracking the current type of every float tensor."""

    def __init__(self, graph: onnx.GraphProto, types: dict[str, int], keep: set[str]) -> None:
        self.graph = graph
        self.types = types
        self.keep = keep
        self.current = {name: t for name, t in types.items() if t == TensorProto.FLOAT}
        self.constants = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT}
        self.casts: dict[tuple[str, int], str] = {}
        self.half_constants: dict[str, str] = {}
        self.nodes: list[onnx.NodeProto] = []

    def run(self) -> None:
        for node in self.graph.node:
            self._retype(node)
        self._fix_outputs()
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        used = {name for node in self.graph.node for name in node.input}
        used.update(output.name for output in self.graph.output)
        initializers = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(initializers)

    def _retype(self, node: onnx.NodeProto) -> None:
        target = TensorProto.FLOAT if node.name in self.keep else TensorProto.FLOAT16
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == TensorProto.FLOAT:
                to.i = target
            self.current[node.output[0]] = to.i
            self.nodes.append(node)
            return
        if node.op_type == "ConstantOfShape":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None and value.t.data_type == TensorProto.FLOAT:
                array = numpy_helper.to_array(value.t).astype(_FLOAT_TYPES[target])
                value.t.CopyFrom(numpy_helper.from_array(array, value.t.name))
                self.current[node.output[0]] = target
            self.nodes.append(node)
            return
        fixed_inputs = _FIXED_INPUTS.get(node.op_type, frozenset())
        for index, name in enumerate(node.input):
            if name and index not in fixed_inputs and self.types.get(name) == TensorProto.FLOAT:
                node.input[index] = self._as(name, target)
        fixed_outputs = _FIXED_OUTPUTS.get(node.op_type, frozenset())
        for index, name in enumerate(node.output):
            declared = self.types.get(name, TensorProto.UNDEFINED)
            custom = declared == TensorProto.UNDEFINED and node.domain not in ("", "ai.onnx")
            if index not in fixed_outputs and (declared == TensorProto.FLOAT or custom):
                self.current[name] = target
        self.nodes.append(node)

    def _as(self, name: str, target: int) -> str:
        """Name of ``name``'s value in ``target`` precision: itself, an FP16 constant copy, or a Cast."""
        if self.current.get(name, TensorProto.FLOAT) == target:
            return name
        if name in self.constants and target == TensorProto.FLOAT16:
            if name not in self.half_constants:
                half = f"{name}_fp16"
                array = numpy_helper.to_array(self.constants[name]).astype(np.float16)
                self.graph.initializer.append(numpy_helper.from_array(array, half))
                self.half_constants[name] = half
            return self.half_constants[name]
        key = (name, target)
        if key not in self.casts:
            suffix = "fp16" if target == TensorProto.FLOAT16 else "fp32"
            cast = f"{name}_to_{suffix}"
            self.nodes.append(helper.make_node("Cast", [name], [cast], name=f"{cast}_Cast", to=target))
            self.casts[key] = cast
        return self.casts[key]

    def _fix_outputs(self) -> None:
        """Keep the graph outputs' declared types: an FP16 result gets a final Cast under the output name."""
        for output in self.graph.output:
            declared = output.type.tensor_type.elem_type
            have = self.current.get(output.name, declared)
            if have == declared:
                continue
            inner = f"{output.name}_{'fp16' if have == TensorProto.FLOAT16 else 'fp32'}"
            for node in self.nodes:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            self.nodes.append(helper.make_node("Cast", [inner], [output.name], name=f"{output.name}_Cast",
                                               to=declared))
