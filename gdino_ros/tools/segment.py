"""gdino-segment: segment image files with a prompt; write overlays, label images and JSON lines.

Examples::

    gdino-segment --model model.onnx --prompt "cup . bottle" --image kitchen.jpg
    gdino-segment --model model.engine --prompt "the mug left of the plate" --image frames/*.png --out out/

Per image ``NAME`` it writes ``NAME_overlay.png`` (masks coloured per instance, boxes, labels, scores),
``NAME_labels.png`` (16-bit: 0 background, k the pixels of detection k) and one line of
``results.jsonl`` (detections, no-target decision, per-stage timings). The exit code is 0 only if every
image was processed (3 if some could not be read; codes in :mod:`gdino_ros.errors`).

Every file is written beside its final name and renamed into place, so each one is complete or absent.
``results.jsonl`` lists the images whose PNGs were written; it is written at the end, also after Ctrl-C,
SIGTERM or a write failure (then for the images done before). A file that would be overwritten is
refused unless ``--overwrite`` is given, and even then only files an earlier gdino-segment run wrote
(those its ``results.jsonl`` lists) are replaced; an input image is never an output.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from gdino_ros.core.result_json import result_json
from gdino_ros.errors import EXIT_INPUT, InputError, OutputError
from gdino_ros.tools import cli
from gdino_ros.tools.arguments import add_model_arguments, postprocess_params
from gdino_ros.tools.output_files import atomic_write, write_failure

PROG = "gdino-segment"
RESULTS = "results.jsonl"


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
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the files an earlier gdino-segment run wrote there"
    )
    parser.add_argument("--tokenizer", type=Path, help="bert-base-uncased vocab.txt or tokenizer directory")
    add_model_arguments(parser)
    return parser


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in used:
        n += 1
        stem = f"{path.stem}-{n}"
    used.add(stem)
    return stem


def _plan(images: Sequence[Path], out: Path) -> list[tuple[Path, Path, Path]]:
    """(image, overlay path, label path) per image; refuses an output name that is one of the inputs."""
    used: set[str] = set()
    plan = []
    for path in images:
        stem = _unique_stem(path, used)
        plan.append((path, out / f"{stem}_overlay.png", out / f"{stem}_labels.png"))
    inputs = {p.resolve() for p in images}
    for _, *targets in plan:
        for target in targets:
            if target.resolve() in inputs:
                raise OutputError(f"the output {target} would replace an input image; choose another --out")
    return plan


def _earlier_outputs(out: Path) -> set[str] | None:
    """Names of the files an earlier run wrote in ``out`` (from its results.jsonl); None if not one."""
    try:
        lines = (out / RESULTS).read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        return {RESULTS} | {Path(r[key]).name for r in records for key in ("overlay", "label_image")}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError):
        return None


def _check_out(out: Path, plan: list[tuple[Path, Path, Path]], overwrite: bool) -> None:
    """Create ``out``; refuse it if files this run writes exist and are not an earlier run's outputs."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; choose a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_failure(out, error) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {out}: permission denied; choose another --out")
    targets = [out / RESULTS] + [t for _, *pair in plan for t in pair]
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    if not existing:
        return
    if not overwrite:
        raise OutputError(f"{existing[0]} already exists ({len(existing)} of the outputs do); choose another "
                          "--out, or pass --overwrite to replace an earlier gdino-segment run's files")
    ours = _earlier_outputs(out) or set()
    strangers = [t for t in existing if t.name not in ours or not t.is_file()]
    if strangers:
        raise OutputError(f"--overwrite refused: {strangers[0]} was not written by gdino-segment (its "
                          f"{RESULTS} does not list it); move it away or choose another --out")


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OutputError(f"cannot encode {path} as PNG")
    atomic_write(path, encoded.tobytes())


def _save_results(out: Path, records: list[dict[str, Any]]) -> None:
    with cli.deferred_signals():
        atomic_write(out / RESULTS, "".join(json.dumps(r) + "\n" for r in records))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gdino-segment``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return cli.run(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from gdino_ros.core.segmenter import Segmenter

    out: Path = args.out
    plan = _plan(args.image, out)
    _check_out(out, plan, args.overwrite)
    segmenter = Segmenter.from_model(
        args.model,
        tokenizer_path=args.tokenizer,
        device=args.device,
        prompt=args.prompt,
        mode=args.mode,
        params=postprocess_params(args),
    )
    encoded = segmenter.prompt
    assert encoded is not None
    if encoded.dropped:
        print(f"{PROG}: warning: the prompt is too long for 256 tokens; dropped phrase(s): "
              f"{', '.join(encoded.dropped)}", file=sys.stderr)
    backend = segmenter.backend
    print(f"{PROG}: {backend.name} on {backend.device} ({backend.precision}), prompt {encoded.caption!r} "
          f"({encoded.mode})", file=sys.stderr)
    records: list[dict[str, Any]] = []
    with segmenter:
        try:
            failures = _segment_all(args, plan, segmenter, records)
        except KeyboardInterrupt:
            _save_results(out, records)
            return cli.interrupted(PROG, _kept(out, records, len(plan)))
        except OutputError as error:
            try:
                _save_results(out, records)
            except OutputError:
                raise OutputError(f"{error}; {out / RESULTS} was not written either") from None
            raise OutputError(f"{error}; {_kept(out, records, len(plan))}") from None
    _save_results(out, records)
    if failures:
        print(f"{PROG}: error: {failures} of {len(plan)} image(s) failed", file=sys.stderr)
        return EXIT_INPUT
    return 0


def _kept(out: Path, records: list[dict[str, Any]], total: int) -> str:
    return f"{out / RESULTS} lists the {len(records)} of {total} image(s) done, whose PNGs are complete"


def _segment_all(
    args: argparse.Namespace, plan: list[tuple[Path, Path, Path]], segmenter: Any,
    records: list[dict[str, Any]],
) -> int:
    """Segment every image, appending one record per image done; return how many could not be read.

    Images go through :meth:`Segmenter.stream`, so a GPU backend computes the next image while this one
    is post-processed and written; unreadable images are reported and left out before they reach it.
    """
    from gdino_ros.conversions.image import read_image_file
    from gdino_ros.core.overlay import draw_overlay
    from gdino_ros.core.preprocess import check_image

    failures = 0
    backend = segmenter.backend
    readable: deque[tuple[Path, Path, Path, np.ndarray]] = deque()  # streamed, not yet written

    def images(signals: list[int]) -> Iterator[np.ndarray]:
        nonlocal failures
        for path, overlay_path, labels_path in tqdm(
            plan, desc=PROG, unit="image", disable=len(plan) < 2, file=sys.stderr
        ):
            if signals:
                raise KeyboardInterrupt
            try:
                bgr = read_image_file(path)
                check_image(bgr, backend.max_camera_hw)
            except (InputError, ValueError) as error:
                failures += 1
                tqdm.write(f"{PROG}: error: {path}: {error}", file=sys.stderr)
                continue
            readable.append((path, overlay_path, labels_path, bgr))
            yield bgr

    with cli.deferred_signals() as signals:  # an interrupt stops between images: each has both PNGs
        for result in segmenter.stream(images(signals), bgr=True):
            path, overlay_path, labels_path, bgr = readable.popleft()
            overlay = draw_overlay(np.ascontiguousarray(bgr[..., ::-1]), result)
            _write_png(overlay_path, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            _write_png(labels_path, result.label_image.astype(np.uint16, copy=False))  # always 16-bit files
            records.append(_record(args, backend, path, bgr, result, overlay_path, labels_path))
    return failures


def _record(
    args: argparse.Namespace, backend: Any, path: Path, bgr: np.ndarray, result: Any, overlay_path: Path,
    labels_path: Path,
) -> dict[str, Any]:
    """One line of results.jsonl: the image, the model, the result, the files written."""
    return {
        "image": str(path),
        "height": int(bgr.shape[0]),
        "width": int(bgr.shape[1]),
        "model": str(args.model),
        "backend": backend.name,
        "device": backend.device,
        "precision": backend.precision,
        **result_json(result),
        "overlay": str(overlay_path),
        "label_image": str(labels_path),
    }


if __name__ == "__main__":
    sys.exit(main())
