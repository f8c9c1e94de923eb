"""gdino-compare-precision: how far a reduced-precision model is from its FP32 reference, on real photos.

Runs both models on the same images and prompts and prints, per output, the max and mean absolute
difference, and on the post-processed results: matched boxes' L1 distance in pixels, matched masks' IoU,
detection-set and no-target agreement. Exit status 0 within the tolerance; 4 ("the model cannot be
used", gdino_ros/errors.py) when the candidate is beyond it or has NaN outputs; the other codes as in
every tool (a model that does not open is also 4, an unreadable image 3).

Examples::

    gdino-compare-precision model.onnx model_fp16.onnx
    gdino-compare-precision model.onnx model_fp16.engine --image street.jpg --prompt "car . person"
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from gdino_ros.core.precision_check import CALIBRATION_PROMPTS, PrecisionTolerance, sample_photos
from gdino_ros.errors import EXIT_MODEL, EXIT_OK, InputError
from gdino_ros.tools.cli import run

PROG = "gdino-compare-precision"


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``gdino-compare-precision``."""
    defaults = PrecisionTolerance()
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("reference", type=Path, help="the FP32 model (.onnx, .pth or .engine)")
    parser.add_argument("candidate", type=Path, help="the model to check, e.g. the FP16 export or engine")
    parser.add_argument(
        "--image", type=Path, action="append", default=[],
        help="image file (repeatable; default: scikit-image's astronaut, chelsea, coffee and rocket photos, "
        "or a synthetic scene without scikit-image)",
    )
    parser.add_argument(
        "--prompt", action="append", default=[],
        help="prompt, phrases or a referring expression (repeatable; default: "
        f"{' and '.join(map(repr, CALIBRATION_PROMPTS))})",
    )
    parser.add_argument("--tokenizer", type=Path, help="bert-base-uncased vocab.txt or tokenizer directory "
                        "(default: the one stored in the reference model, else found locally)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--box-threshold", type=float, help="post-processing score threshold "
                        "(default: TAO's 0.3; untrained weights may need less to detect anything)")
    parser.add_argument("--max-box-l1-px", type=float, default=defaults.max_box_l1_px)
    parser.add_argument("--min-mask-iou", type=float, default=defaults.min_mask_iou)
    parser.add_argument("--min-detection-agreement", type=float, default=defaults.min_detection_agreement)
    parser.add_argument("--min-no-target-agreement", type=float, default=defaults.min_no_target_agreement)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; print the table and any problems."""
    args = build_parser().parse_args(argv)
    return run(PROG, lambda: _compare(args))


def _compare(args: argparse.Namespace) -> int:
    from gdino_ros.backends import open_backend
    from gdino_ros.core.postprocess import PostprocessParams
    from gdino_ros.core.precision_check import compare_backends
    from gdino_ros.core.tokenizer import load_tokenizer

    images = [_read(path) for path in args.image] or sample_photos()
    prompts = args.prompt or list(CALIBRATION_PROMPTS)
    params = PostprocessParams() if args.box_threshold is None else PostprocessParams(
        box_threshold=args.box_threshold)
    tolerance = PrecisionTolerance(args.max_box_l1_px, args.min_mask_iou, args.min_detection_agreement,
                                   args.min_no_target_agreement)
    tokenizer = load_tokenizer(args.tokenizer, args.reference)
    with open_backend(args.reference, args.device) as reference, \
            open_backend(args.candidate, args.device) as candidate:
        print(f"{PROG}: reference {args.reference.name} ({reference.name} on {reference.device}), "
              f"candidate {args.candidate.name} ({candidate.name} on {candidate.device}); "
              f"{len(images)} image(s) x {len(prompts)} prompt(s)", file=sys.stderr, flush=True)
        report = compare_backends(reference, candidate, images, prompts, tokenizer, params=params)
    print(report.table())
    problems = report.problems(tolerance)
    for line in problems:
        print(f"{PROG}: beyond tolerance: {line}", file=sys.stderr)
    return EXIT_MODEL if problems else EXIT_OK


def _read(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"cannot read image {path} (missing, or not an image format OpenCV reads)")
    return np.ascontiguousarray(bgr[:, :, ::-1])


if __name__ == "__main__":
    sys.exit(main())
