"""Which layers must stay FP32: FP16 variants of one FP32 export compared with it on real photos.

For each keep-list variant the FP32 ONNX is converted with ``gdino_ros.model.precision.convert_to_fp16``
and both graphs run in ONNX Runtime's CPU provider on scikit-image's astronaut, coffee, chelsea and
rocket photos with a phrase list and a referring expression (``precision_check.compare_backends``).
The CPU provider has FP16 kernels for few operators; for the others it inserts Casts and computes in FP32,
so every tensor is *stored* in FP16 between nodes (rounding and overflow beyond ±65504 as on a GPU) while
the arithmetic inside a node is FP32, like TensorRT's FP32-accumulating FP16 kernels.

Variants: ``default`` (DEFAULT_FP32_LAYERS), ``all-fp16`` (no keep-list), the default with one group
moved to FP16: ``bert``, ``layernorm``, ``msda`` (deformable-attention sampling), the default with
every Softmax added (``softmax->fp32``), and
``fp32-sentinels``: the FP32 graph itself with only its mask sentinels (±inf, finfo.min) replaced by
±65504, which must give the FP32 results unchanged.

``--headroom`` instead runs the FP32 graph once (astronaut, the phrase prompt) and reports, per group of
nodes, the largest FP32 magnitudes an FP16 engine would have to hold: every node output's max |x|
(masking sentinels excluded), and for LayerNormalization inputs the largest sum of squares over the
normalised axis, which a kernel accumulating in FP16 would need below 65504.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_precision.py model.onnx --tokenizer vocab.txt``
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from skimage import data
from transformers import PreTrainedTokenizerBase

from gdino_ros.backends.onnxruntime import OnnxRuntimeBackend
from gdino_ros.contract import CONF_THRESHOLD
from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.precision_check import compare_backends
from gdino_ros.core.preprocess import preprocess
from gdino_ros.core.prompt import encode_prompt
from gdino_ros.core.tokenizer import load_tokenizer
from gdino_ros.model.precision import DEFAULT_FP32_LAYERS, clip_mask_sentinels, convert_to_fp16

GROUPS = {
    "bert": ("/embeddings/*", "/encoder/*"),
    "layernorm": ("*/LayerNormalization*",),
    "msda": tuple(p for p in DEFAULT_FP32_LAYERS if "_attn/" in p),
}
PROMPTS = ("person . rocket . cup", "the cat on the left")
FP16_MAX_SENTINEL = 65504.0  # at or beyond: a mask value, not an activation


def variants(chosen: list[str]) -> dict[str, tuple[str, ...] | None]:
    """Name -> keep-list for every requested variant (None: FP32 with the sentinels clipped)."""
    every: dict[str, tuple[str, ...] | None] = {"default": DEFAULT_FP32_LAYERS, "all-fp16": ()}
    for group, patterns in GROUPS.items():
        every[f"{group}->fp16"] = tuple(p for p in DEFAULT_FP32_LAYERS if p not in patterns)
    every["softmax->fp32"] = (*DEFAULT_FP32_LAYERS, "*/Softmax*")
    every["fp32-sentinels"] = None
    return {name: every[name] for name in chosen} if chosen else every


def variant_model(model: onnx.ModelProto, keep: tuple[str, ...] | None) -> onnx.ModelProto:
    """The FP16 conversion with keep-list ``keep``, or (None) the FP32 graph with its sentinels clipped."""
    if keep is not None:
        return convert_to_fp16(model, keep)
    clipped = onnx.ModelProto()
    clipped.CopyFrom(model)
    print(f"clipped {clip_mask_sentinels(clipped)} sentinel value(s)")
    return clipped


def group_of(name: str) -> str:
    """The part of the network a node belongs to, for the headroom table."""
    if name.startswith(("/embeddings/", "/encoder/")):
        return "BERT"
    parts = name.split("/")
    if len(parts) > 3 and parts[1] == "transformer":
        return "/".join(parts[1:3])
    return parts[1] if len(parts) > 2 else "(top level)"


def headroom(path: Path, tokenizer: PreTrainedTokenizerBase, chunk_bytes: int = 2**30) -> None:
    """Print the largest FP32 magnitudes per node group (see the module docstring).

    The float tensors are requested as graph outputs in chunks of about ``chunk_bytes``, one run each,
    so that the full-size network's thousands of intermediate tensors never sit in memory together.
    """
    model = onnx.load(path)
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    sizes = {v.name: int(np.prod([d.dim_value or 1 for d in v.type.tensor_type.shape.dim])) * 4
             for v in inferred if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    node_of = {o: n for n in model.graph.node for o in n.output if n.op_type != "Constant"}
    norm_inputs = {n.input[0] for n in model.graph.node if n.op_type == "LayerNormalization"}
    wanted = sorted(name for name in sizes if name in node_of)
    chunks: list[list[str]] = [[]]
    total = 0
    for name in wanted:
        if chunks[-1] and total + sizes[name] > chunk_bytes:
            chunks.append([])
            total = 0
        chunks[-1].append(name)
        total += sizes[name]
    image = data.astronaut()
    largest: dict[str, float] = {}
    squares: dict[str, float] = {}
    for names in chunks:
        del model.graph.output[:]
        model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                  for n in names)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        height, width = session.get_inputs()[0].shape[2:]
        feeds = {"inputs": preprocess(image, (height, width))}
        feeds.update(encode_prompt(PROMPTS[0], "auto", tokenizer).text_inputs())
        for name, value in zip(names, session.run(names, feeds), strict=True):
            group = group_of(node_of[name].name)
            real = np.abs(value[np.abs(value) < FP16_MAX_SENTINEL])
            largest[group] = max(largest.get(group, 0.0), float(real.max(initial=0.0)))
            if name in norm_inputs:
                total_squares = float((value.astype(np.float64) ** 2).sum(-1).max())
                squares[group] = max(squares.get(group, 0.0), total_squares)
        del session
    print(f"{len(wanted)} float tensors in {len(chunks)} runs")
    print("| node group | max abs output (FP32) | max sum of squares into a LayerNorm |\n|---|---|---|")
    for group in sorted(largest):
        print(f"| {group} | {largest[group]:.4g} | {squares.get(group, float('nan')):.4g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path, help="FP32 grid-sample export")
    parser.add_argument("--tokenizer", type=Path, required=True, help="bert-base-uncased vocab.txt")
    parser.add_argument("--variant", action="append", default=[], help="run only these variants")
    parser.add_argument("--box-threshold", type=float, default=CONF_THRESHOLD,
                        help="post-processing score threshold (untrained full-size weights score below "
                        "TAO's 0.3, so nothing would be detected)")
    parser.add_argument("--images", type=int, default=4, help="use the first N of the four photos")
    parser.add_argument("--headroom", action="store_true", help="report FP32 magnitudes per node group")
    args = parser.parse_args()
    ort.set_default_logger_severity(3)
    print(f"box_threshold {args.box_threshold}, {args.images} image(s) x {len(PROMPTS)} prompts")
    print(f"load average before: {open('/proc/loadavg').read().strip()}")
    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()][: args.images]
    params = PostprocessParams(box_threshold=args.box_threshold)
    tokenizer = load_tokenizer(args.tokenizer, None)
    if args.headroom:
        headroom(args.onnx, tokenizer)
        return
    model = onnx.load(args.onnx)
    reference = OnnxRuntimeBackend(args.onnx, "cpu")
    with tempfile.TemporaryDirectory() as folder:
        for name, keep in variants(args.variant).items():
            path = Path(folder) / f"{name}.onnx"
            started = time.monotonic()
            onnx.save(variant_model(model, keep), path)
            converted = time.monotonic() - started
            with OnnxRuntimeBackend(path, "cpu") as candidate:
                started = time.monotonic()
                report = compare_backends(reference, candidate, images, PROMPTS, tokenizer, params=params)
            print(f"\n### {name} (keep-list {keep}; conversion {converted:.1f} s, "
                  f"comparison {time.monotonic() - started:.0f} s)\n")
            print(report.table())
            os.remove(path)
    print(f"\nload average after: {open('/proc/loadavg').read().strip()}")


if __name__ == "__main__":
    main()
