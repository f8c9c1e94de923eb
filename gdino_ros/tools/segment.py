"""gdino-segment: segment image files with a prompt; write overlays, label images and JSON lines.

Examples::

    gdino-segment --model model.onnx --prompt "cup . bottle" --image kitchen.jpg
    gdino-segment --model model.engine --prompt "the mug left of the plate" --image frames/*.png --out out/

Per image ``NAME`` it writes ``NAME_overlay.png`` (masks coloured per instance, boxes, labels, scores),
``NAME_labels.png`` (16-bit: 0 background, k the pixels of detection k) and one line of
``results.jsonl`` (detections, no-target decision, per-stage timings). The exit code is 0 only if every
image was processed.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from gdino_ros.core.result import Result
from gdino_ros.tools.arguments import add_model_arguments, postprocess_params

PROG = "gdino-segment"


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``gdino-segment``."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--model", required=True, type=Path, help=".onnx, .pth or .engine/.plan model file")
    parser.add_argument("--prompt", required=True, help="'cup . red bottle' (phrases) or an expression")
    parser.add_argument(
        "--mode", choices=("auto", "phrases", "expression"), default="auto",
        help="how to read the prompt (default auto: short '.'/','-separated items are phrases)",
    )
    parser.add_argument("--image", required=True, nargs="+", type=Path, metavar="PATH", help="image file(s)")
    parser.add_argument("--out", type=Path, default=Path("."), help="output directory (default: current)")
    parser.add_argument("--tokenizer", type=Path, help="bert-base-uncased vocab.txt or tokenizer directory")
    add_model_arguments(parser)
    return parser


def result_record(result: Result) -> dict[str, Any]:
    """Return the JSON part of ``result``: detections (without mask pixels), no-target, timings."""
    probability = result.no_target_probability
    return {
        "prompt": result.prompt,
        "mode": result.mode,
        "no_target": result.no_target,
        "no_target_probability": None if math.isnan(probability) else probability,
        "detections": [
            {
                "instance_id": d.instance_id,
                "label": d.label,
                "phrase_index": d.phrase_index,
                "score": d.score,
                "box_xyxy": list(d.box_xyxy),
                "mask_pixels": int(d.mask.sum()),
            }
            for d in result.detections
        ],
        "timings_ms": result.timings_ms,
    }


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in used:
        n += 1
        stem = f"{path.stem}-{n}"
    used.add(stem)
    return stem


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gdino-segment``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from gdino_ros.backends import BackendError
    from gdino_ros.core.overlay import draw_overlay
    from gdino_ros.core.segmenter import Segmenter

    def fail(message: str) -> None:
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)

    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        segmenter = Segmenter.from_model(
            args.model,
            tokenizer_path=args.tokenizer,
            device=args.device,
            prompt=args.prompt,
            mode=args.mode,
            params=postprocess_params(args),
        )
    except (BackendError, ValueError, OSError) as error:
        fail(str(error))
        return 1
    encoded = segmenter.prompt
    assert encoded is not None
    if encoded.dropped:
        print(f"{PROG}: warning: the prompt is too long for 256 tokens; dropped phrase(s): "
              f"{', '.join(encoded.dropped)}", file=sys.stderr)
    backend = segmenter.backend
    print(f"{PROG}: {backend.name} on {backend.device} ({backend.precision}), prompt {encoded.caption!r} "
          f"({encoded.mode})", file=sys.stderr)

    failures = 0
    used: set[str] = set()
    with segmenter, (out / "results.jsonl").open("w", encoding="utf-8") as lines:
        for path in tqdm(args.image, desc=PROG, unit="image", disable=len(args.image) < 2, file=sys.stderr):
            try:
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise OSError(f"cannot read image {path} (missing, or not an image format OpenCV reads)")
                result = segmenter(bgr, bgr=True)
                stem = _unique_stem(path, used)
                overlay_path, labels_path = out / f"{stem}_overlay.png", out / f"{stem}_labels.png"
                overlay = draw_overlay(np.ascontiguousarray(bgr[..., ::-1]), result)
                _write_png(overlay_path, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
                _write_png(labels_path, result.label_image)
            except (ValueError, OSError, BackendError) as error:
                failures += 1
                tqdm.write(f"{PROG}: error: {path}: {error}", file=sys.stderr)
                continue
            record = {
                "image": str(path),
                "height": int(bgr.shape[0]),
                "width": int(bgr.shape[1]),
                "model": str(args.model),
                "backend": backend.name,
                "device": backend.device,
                "precision": backend.precision,
                **result_record(result),
                "overlay": str(overlay_path),
                "label_image": str(labels_path),
            }
            lines.write(json.dumps(record) + "\n")
            lines.flush()
    if failures:
        fail(f"{failures} of {len(args.image)} image(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
