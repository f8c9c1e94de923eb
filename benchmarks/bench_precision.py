"""Which layers must stay FP32: FP16 variants of one FP32 export compared with it on real photos.

For each keep-list variant the FP32 ONNX is converted with ``gdino_ros.model.precision.convert_to_fp16``
and both graphs run in ONNX Runtime's CPU provider on scikit-image's astronaut, coffee, chelsea and
rocket photos with a phrase list and a referring expression (``precision_check.compare_backends``).
The CPU provider has FP16 kernels for few operators; for the others it inserts Casts and computes in FP32,
so every tensor is *stored* in FP16 between nodes (rounding and overflow beyond ±65504 as on a GPU) while
the arithmetic inside a node is FP32, like TensorRT's FP32-accumulating FP16 kernels.

Variants: ``default`` (DEFAULT_FP32_LAYERS), ``all-fp16`` (no keep-list), the default with one group
moved to FP16: ``bert``, ``layernorm``, ``softmax``, ``msda`` (deformable-attention sampling), and
``fp32-sentinels``: the FP32 graph itself with only its mask sentinels (±inf, finfo.min) replaced by
±65504, which must give the FP32 results unchanged.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_precision.py model.onnx --tokenizer vocab.txt``
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort
from skimage import data

from gdino_ros.backends.onnxruntime import OnnxRuntimeBackend
from gdino_ros.contract import CONF_THRESHOLD
from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.precision_check import compare_backends
from gdino_ros.core.tokenizer import load_tokenizer
from gdino_ros.model.precision import DEFAULT_FP32_LAYERS, clip_mask_sentinels, convert_to_fp16

GROUPS = {
    "bert": ("/embeddings/*", "/encoder/*"),
    "layernorm": ("*/LayerNormalization*",),
    "softmax": ("*/Softmax*",),
    "msda": tuple(p for p in DEFAULT_FP32_LAYERS if "_attn/" in p),
}
PROMPTS = ("person . rocket . cup", "the cat on the left")


def variants(chosen: list[str]) -> dict[str, tuple[str, ...] | None]:
    """Name -> keep-list for every requested variant (None: FP32 with the sentinels clipped)."""
    every: dict[str, tuple[str, ...] | None] = {"default": DEFAULT_FP32_LAYERS, "all-fp16": ()}
    for group, patterns in GROUPS.items():
        every[f"{group}->fp16"] = tuple(p for p in DEFAULT_FP32_LAYERS if p not in patterns)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path, help="FP32 grid-sample export")
    parser.add_argument("--tokenizer", type=Path, required=True, help="bert-base-uncased vocab.txt")
    parser.add_argument("--variant", action="append", default=[], help="run only these variants")
    parser.add_argument("--box-threshold", type=float, default=CONF_THRESHOLD,
                        help="post-processing score threshold (untrained full-size weights score below "
                        "TAO's 0.3, so nothing would be detected)")
    parser.add_argument("--images", type=int, default=4, help="use the first N of the four photos")
    args = parser.parse_args()
    ort.set_default_logger_severity(3)
    print(f"box_threshold {args.box_threshold}, {args.images} image(s) x {len(PROMPTS)} prompts")
    print(f"load average before: {open('/proc/loadavg').read().strip()}")
    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()][: args.images]
    params = PostprocessParams(box_threshold=args.box_threshold)
    tokenizer = load_tokenizer(args.tokenizer, None)
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
