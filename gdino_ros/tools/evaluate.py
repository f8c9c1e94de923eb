"""gdino-eval: measure a model on RefCOCO, RefCOCO+, RefCOCOg or gRefCOCO with the GRES metrics.

Runs this package's own inference core (:class:`gdino_ros.core.segmenter.Segmenter`, the same code the
ROS node runs) on every (image, expression) sample of a split, in expression mode, and scores it with
:mod:`gdino_ros.eval.metrics`. ``--data-root`` holds the datasets exactly as released (layout in
:mod:`gdino_ros.eval.datasets`).

Outputs, named after ``--out PATH`` (default ``eval_<dataset>_<split_by>_<split>.json``):

* ``PATH``: the summary (metrics, counts, skipped samples) as JSON;
* ``PATH`` with suffix ``.jsonl``: one line per sample (IoU, I, U, pred_nt, the detections as RLE).
  It is written as samples complete, so an interrupted run (Ctrl-C, SIGTERM, a full disk) resumes where
  it stopped when the same command is run again; a file from another model (by content: the header holds
  the model's SHA-256, so a different model saved at the same path is caught), dataset, split or
  thresholds is refused;
* ``.md``: the summary as a markdown table, also printed;
* ``.png``: a histogram of per-sample IoU and the precision at IoU thresholds 0.5 ... 0.95.

``--ray [ADDRESS]`` runs the samples in shards on Ray workers (:mod:`gdino_ros.tools.ray_cluster`); the
files and summary are those of a single-machine run.

The summary, table and plot are written through a temporary file and a rename, and replace only an
earlier gdino-eval summary (a JSON file it marked); any other file at those paths is refused. Exit codes
are those of :mod:`gdino_ros.errors`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gdino_ros.backends.engine_meta import file_sha256
from gdino_ros.conversions.image import ImageConversionError, read_image_file
from gdino_ros.core.result import EXPRESSION, Result
from gdino_ros.core.result_json import result_json
from gdino_ros.errors import InputError, ModelError, OutputError, UsageError
from gdino_ros.eval.datasets import DATASETS, DatasetError, Sample, Split, load_split
from gdino_ros.eval.metrics import (
    PR_THRESHOLDS,
    CocoInstance,
    CocoSample,
    SampleIoU,
    coco_ap,
    gres_metrics,
    mask_to_rle,
    precision_curve,
    precision_name,
    sample_iou,
    union_mask,
)
from gdino_ros.tools import cli, ray_cluster
from gdino_ros.tools.arguments import add_model_arguments, postprocess_params
from gdino_ros.tools.output_files import atomic_write, write_failure

LOG = logging.getLogger("gdino-eval")

DISPLAY_NAMES = {"grefcoco": "gRefCOCO", "refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg"}
TABLE_COLUMNS: tuple[str, ...] = (
    "gIoU", "cIoU", "N-acc", "T-acc", *(precision_name(t) for t in PR_THRESHOLDS),
    "mask mAP", "mask mAP50", "box AP", "box AP50",
)
PRED_NT_RULE = (
    "pred_nt = Result.no_target: the no-target (ReLA) head's argmax for 5-output models, "
    "no detection surviving post-processing for 3-output models"
)
SHARD_SAMPLES = 16  # samples per Ray task with --ray: few enough that a lost task costs little
RESULTS_FORMAT = 2  # version of the per-sample JSON lines (2: the model's SHA-256, result_json's records)
PROG = "gdino-eval"


class EvalError(InputError):
    """The evaluation cannot use its data; the message says why and what to do."""


class ResultsFileError(OutputError):
    """The results file at the output path belongs to another run or is damaged; it is left alone."""


# --- Per-sample records ---------------------------------------------------------------------------------


def sample_record(sample: Sample, result: Result) -> dict[str, Any]:
    """Score one sample and keep everything the summary needs (so it can be rebuilt from the file)."""
    shape = (sample.height, sample.width)
    predicted = union_mask([d.mask for d in result.detections], shape)
    score = sample_iou(predicted, sample.gt_mask(), pred_nt=result.no_target, gt_nt=sample.no_target)
    serialised = result_json(result, mask_to_rle)
    return {
        "key": sample.key,
        "ref_id": sample.ref_id,
        "sent_id": sample.sent_id,
        "image_id": sample.image_id,
        "image": sample.image_path.name,
        "height": sample.height,
        "width": sample.width,
        "expression": sample.expression,
        "gt_nt": sample.no_target,
        "pred_nt": serialised["no_target"],
        "no_target_probability": serialised["no_target_probability"],
        "I": score.intersection,
        "U": score.union,
        "iou": score.iou,
        "gt": [{"ann_id": i.ann_id, "bbox": list(i.bbox_xywh), "rle": i.rle} for i in sample.instances],
        "detections": serialised["detections"],
        "timings_ms": serialised["timings_ms"],
    }


def _xyxy_to_xywh(box: Sequence[float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0, y0, x1 - x0, y1 - y0)


class ResultsFile:
    """The per-sample JSON lines: a header naming model, dataset and split, then one line per sample.

    Lines are flushed as they are written, so after an interruption every complete line is kept; a
    half-written last line is cut off when the file is opened again.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = header
        self.records: dict[str, dict[str, Any]] = {}
        if path.exists():
            self._load()
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise write_failure(path.parent, error) from None
            atomic_write(path, json.dumps(header) + "\n")

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        offset = 0
        have_header = False
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    if number < len(lines):
                        raise ResultsFileError(
                            f"{self.path} line {number} is not JSON; it is left as it is: delete it to "
                            "start over, or choose another --out"
                        ) from exc
                    LOG.warning("%s: dropping a half-written last line", self.path)
                    with open(self.path, "r+b") as f:
                        f.truncate(offset)
                    data = data[:offset]
                    break
                if have_header:
                    self.records[str(obj["key"])] = obj
                elif obj != self.header:
                    raise ResultsFileError(
                        f"{self.path} holds results of another run ({_difference(obj, self.header)}); it "
                        "is left as it is: choose another --out or delete the file"
                    )
                have_header = True
            offset += len(line) + 1
        with open(self.path, "a", encoding="utf-8") as f:
            if data and not data.endswith(b"\n"):
                f.write("\n")
            if not have_header:
                f.write(json.dumps(self.header) + "\n")

    def append(self, record: dict[str, Any]) -> None:
        """Add one sample's line and flush it to disk (a half-written line is cut on the next start)."""
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
        except OSError as error:
            raise write_failure(
                self.path, error, f"the {len(self.records)} samples before are kept: run the same command "
                "again to resume"
            ) from None
        self.records[str(record["key"])] = record


def _difference(found: Any, wanted: dict[str, Any]) -> str:
    """Name the header fields that differ, e.g. ``model_sha256 abc... != def...``."""
    if not isinstance(found, dict):
        return "no gdino-eval header"
    fields = [k for k in wanted if found.get(k) != wanted[k]] or sorted(set(found) - set(wanted))
    return ", ".join(f"{k}: {found.get(k)!r}, this run: {wanted.get(k)!r}" for k in fields[:2])


# --- Summary ----------------------------------------------------------------------------------------------


def summarise(records: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[SampleIoU]]:
    """GRES metrics and COCO AP of the records, plus the per-sample scores (for the plot)."""
    scores = [
        SampleIoU(int(r["I"]), int(r["U"]), float(r["iou"]), bool(r["gt_nt"]), bool(r["pred_nt"]))
        for r in records
    ]
    coco_samples = [
        CocoSample(
            int(r["height"]),
            int(r["width"]),
            [CocoInstance(g["rle"], tuple(g["bbox"])) for g in r["gt"]],
            [
                CocoInstance(d["mask"], _xyxy_to_xywh(d["box_xyxy"]), float(d["score"]))
                for d in r["detections"]
            ],
        )
        for r in records
    ]
    gres = gres_metrics(scores).as_dict()
    confusion = gres.pop("confusion")
    metrics = {**gres, **coco_ap(coco_samples)}
    timings: dict[str, list[float]] = {}
    for r in records:
        for stage, ms in r["timings_ms"].items():
            timings.setdefault(stage, []).append(float(ms))
    return {
        "metrics": metrics,
        "confusion": confusion,
        "mean_timings_ms": {k: float(np.mean(v)) for k, v in timings.items()},
    }, scores


def markdown_table(summary: dict[str, Any]) -> str:
    """One row per dataset split, the metrics in percent; a footnote with what was left out."""
    metrics: dict[str, Any] = summary["metrics"]
    counts: dict[str, Any] = summary["counts"]
    header = ["Dataset", "Split", "Samples", *TABLE_COLUMNS]
    name = f"{DISPLAY_NAMES[str(summary['dataset'])]} ({summary['split_by']})"
    row = [name, str(summary["split"]), str(metrics["samples"]), *(_cell(metrics[c]) for c in TABLE_COLUMNS)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * len(TABLE_COLUMNS)) + "|",
        "| " + " | ".join(row) + " |",
        "",
        f"Model: `{summary['model']}`. Metrics in percent, GRES definitions (ReLA, after commit 884ef17), "
        "at the original image size; N-acc is what TAO Deploy calls T_acc. "
        f"{metrics['target_samples']} target and {metrics['no_target_samples']} no-target samples. "
        f"{PRED_NT_RULE}.",
        f"Skipped: {counts['skipped_missing_image']} sample(s) whose image is missing "
        f"({counts['missing_images']} image(s)); {counts['invalid_polygons']} polygon(s) with fewer than "
        f"3 points left out of the ground truth; {counts['dropped_refs']} target ref(s) left without any "
        "ground truth dropped whole (as the official loader does).",
    ]
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{float(value):.2f}"


# --- Plot ------------------------------------------------------------------------------------------------

_PLOT_H, _PANEL_W, _MARGIN = 420, 460, 60
_BLACK, _GREY, _BLUE, _ORANGE = (0, 0, 0), (200, 200, 200), (180, 110, 30), (40, 130, 240)
PLOT_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())


def draw_plot(scores: Sequence[SampleIoU], title: str) -> np.ndarray:
    """BGR uint8 image: histogram of target samples' IoU (left), precision at IoU thresholds (right)."""
    canvas = np.full((_PLOT_H, 2 * _PANEL_W, 3), 255, np.uint8)
    cv2.putText(canvas, title, (_MARGIN, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.6, _BLACK, 1, cv2.LINE_AA)
    target_ious = np.array([s.iou for s in scores if not s.gt_nt], dtype=np.float64)
    counts, _ = np.histogram(target_ious, bins=10, range=(0.0, 1.0))
    ymax = max(int(counts.max()) if counts.size else 0, 1)
    x0 = _MARGIN
    _axes(canvas, x0, "IoU (target samples)", "samples", [(i / 10, f"{i / 10:.1f}") for i in range(0, 11, 2)],
          [(v / ymax, str(v)) for v in sorted({0, ymax // 2, ymax})])
    pw, ph = _PANEL_W - 2 * _MARGIN, _PLOT_H - 2 * _MARGIN
    for i, c in enumerate(counts):
        left = x0 + int(i * pw / 10) + 2
        right = x0 + int((i + 1) * pw / 10) - 2
        top = _PLOT_H - _MARGIN - int(ph * c / ymax)
        if c:
            cv2.rectangle(canvas, (left, top), (right, _PLOT_H - _MARGIN), _BLUE, cv2.FILLED)

    x1 = _PANEL_W + _MARGIN
    lo, hi = PLOT_IOU_THRESHOLDS[0], PLOT_IOU_THRESHOLDS[-1]
    _axes(canvas, x1, "IoU threshold", "precision %",
          [((t - lo) / (hi - lo), f"{t:.2f}") for t in PLOT_IOU_THRESHOLDS[::2]],
          [(v / 100, str(v)) for v in (0, 25, 50, 75, 100)])
    curve = precision_curve(scores, PLOT_IOU_THRESHOLDS)
    if curve and curve[0] is not None:
        points = np.array(
            [
                (x1 + int(pw * (t - lo) / (hi - lo)), _PLOT_H - _MARGIN - int(ph * (p or 0.0) / 100))
                for t, p in zip(PLOT_IOU_THRESHOLDS, curve, strict=True)
            ],
            dtype=np.int32,
        )
        cv2.polylines(canvas, [points], False, _ORANGE, 2, cv2.LINE_AA)
        for p in points:
            cv2.circle(canvas, (int(p[0]), int(p[1])), 4, _ORANGE, cv2.FILLED, cv2.LINE_AA)
    else:
        cv2.putText(canvas, "no target samples", (x1 + 20, _PLOT_H // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    _BLACK, 1, cv2.LINE_AA)
    return canvas


def _axes(
    canvas: np.ndarray,
    x0: int,
    xlabel: str,
    ylabel: str,
    xticks: list[tuple[float, str]],
    yticks: list[tuple[float, str]],
) -> None:
    pw, ph = _PANEL_W - 2 * _MARGIN, _PLOT_H - 2 * _MARGIN
    y_axis = _PLOT_H - _MARGIN
    font = cv2.FONT_HERSHEY_SIMPLEX
    for frac, text in yticks:
        y = y_axis - int(ph * frac)
        cv2.line(canvas, (x0, y), (x0 + pw, y), _GREY, 1)
        cv2.putText(canvas, text, (x0 - 45, y + 4), font, 0.4, _BLACK, 1, cv2.LINE_AA)
    for frac, text in xticks:
        x = x0 + int(pw * frac)
        cv2.line(canvas, (x, y_axis), (x, y_axis + 5), _BLACK, 1)
        cv2.putText(canvas, text, (x - 14, y_axis + 20), font, 0.4, _BLACK, 1, cv2.LINE_AA)
    cv2.line(canvas, (x0, y_axis), (x0 + pw, y_axis), _BLACK, 1)
    cv2.line(canvas, (x0, y_axis), (x0, _MARGIN), _BLACK, 1)
    cv2.putText(canvas, xlabel, (x0 + pw // 2 - 60, y_axis + 42), font, 0.45, _BLACK, 1, cv2.LINE_AA)
    cv2.putText(canvas, ylabel, (x0 - 45, _MARGIN - 12), font, 0.45, _BLACK, 1, cv2.LINE_AA)


# --- CLI ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``gdino-eval``."""
    parser = argparse.ArgumentParser(
        prog="gdino-eval",
        description="Measure a Mask Grounding DINO model (engine, ONNX or checkpoint) on a referring "
        "segmentation split with the GRES metrics (gIoU, cIoU, N-acc, T-acc, Pr@X) and COCO mask/box AP.",
    )
    parser.add_argument("--model", required=True, type=Path, help="model file (.engine, .onnx, .pth)")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--split", default="val", help="split name (default: val)")
    parser.add_argument(
        "--split-by",
        help="split scheme: unc (RefCOCO, RefCOCO+, gRefCOCO) or umd (RefCOCOg) by default; google is "
        "also released for RefCOCO and RefCOCOg",
    )
    parser.add_argument(
        "--data-root", required=True, type=Path,
        help="folder holding <dataset>/instances.json, the refs file and images/train2014/",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples of the split")
    parser.add_argument(
        "--out", type=Path,
        help="summary JSON path; .jsonl/.md/.png are written next to it "
        "(default: eval_<dataset>_<split_by>_<split>.json)",
    )
    parser.add_argument(
        "--tokenizer", type=Path, help="bert-base-uncased vocab.txt or tokenizer folder"
    )
    add_model_arguments(parser)
    ray_cluster.add_ray_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gdino-eval``; returns the process exit code (:mod:`gdino_ros.errors`)."""
    args = build_parser().parse_args(argv)
    # Warnings (missing images, invalid polygons, a cut-off results line) go to stderr whatever the
    # root logger's configuration; they still propagate to it.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: warning: %(message)s"))
    loggers = [logging.getLogger("gdino_ros.eval"), LOG]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        return cli.run(PROG, lambda: _run(args))
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def results_header(model: Path, split: Split, args: argparse.Namespace) -> dict[str, Any]:
    """Return the results file's first line: what the samples were computed with (a rerun must match)."""
    return {
        "gdino_eval": RESULTS_FORMAT,
        "model": str(model.resolve()),
        "model_sha256": file_sha256(model),
        "dataset": split.dataset,
        "split_by": split.split_by,
        "split": split.split,
        "thresholds": dataclasses.asdict(postprocess_params(args)),
    }


def _run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be a positive number of samples, got {args.limit}")
    if not args.model.is_file():
        raise ModelError(f"model file {args.model} does not exist (or is not a file)")
    split = load_split(args.dataset, args.split, args.data_root, args.split_by)
    samples = split.samples[: args.limit] if args.limit else split.samples
    out = args.out or Path(f"eval_{split.dataset}_{split.split_by}_{split.split}.json")
    _check_summary_paths(out)
    results = ResultsFile(out.with_suffix(".jsonl"), results_header(args.model, split, args))
    todo = [s for s in samples if s.key not in results.records]
    unreadable: set[str] = set()
    if todo:
        try:
            infer = _infer if args.ray is None else _infer_on_ray
            infer(args, split, samples, todo, results, unreadable)
        except KeyboardInterrupt:
            done = sum(1 for s in samples if s.key in results.records)
            return cli.interrupted(
                PROG, f"{results.path} holds {done} of {len(samples)} samples; run the same command again "
                "to resume"
            )
    records = [results.records[s.key] for s in samples if s.key in results.records]
    if not records:
        raise EvalError(
            f"no sample of {split.dataset} {split.split} could be evaluated (are the images missing?)"
        )
    summary, scores = _summary(args, split, samples, records, unreadable)
    table = markdown_table(summary)
    title = f"{summary['model_name']}  {DISPLAY_NAMES[split.dataset]} ({split.split_by}) {split.split}"
    ok, png = cv2.imencode(".png", draw_plot(scores, title))
    if not ok:
        raise OutputError(f"cannot encode the plot {out.with_suffix('.png')} as PNG")
    with cli.deferred_signals():
        atomic_write(out, json.dumps({"gdino_eval": RESULTS_FORMAT, **summary}, indent=2) + "\n")
        atomic_write(out.with_suffix(".md"), table)
        atomic_write(out.with_suffix(".png"), png.tobytes())
    print(table, end="")
    return 0


def _check_summary_paths(out: Path) -> None:
    """Refuse summary paths taken by anything but an earlier gdino-eval summary (an input, say)."""
    paths = [out, out.with_suffix(".md"), out.with_suffix(".png")]
    taken = [p for p in paths if p.exists() or p.is_symlink()]
    if not taken:
        return
    try:
        earlier = json.loads(out.read_text(encoding="utf-8"))
        ours = isinstance(earlier, dict) and "gdino_eval" in earlier and all(p.is_file() for p in taken)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ours = False
    if not ours:
        raise OutputError(
            f"{taken[0]} exists and is not an earlier gdino-eval summary; it is left as it is: choose "
            "another --out"
        )


def _infer(
    args: argparse.Namespace,
    split: Split,
    samples: Sequence[Sample],
    todo: Sequence[Sample],
    results: ResultsFile,
    unreadable: set[str],
) -> None:
    """Run the Segmenter on the samples not yet in ``results``, one line each, with a progress bar."""
    from tqdm import tqdm

    from gdino_ros.core.segmenter import Segmenter

    desc = f"{DISPLAY_NAMES[split.dataset]} {split.split}"
    with (
        Segmenter.from_model(
            args.model, tokenizer_path=args.tokenizer, device=args.device, params=postprocess_params(args)
        ) as segmenter,
        # On a terminal only (disable=None): in logs the results file and the summary say it all.
        tqdm(
            total=len(samples), initial=len(samples) - len(todo), desc=desc, unit="sample",
            dynamic_ncols=True, disable=None,
        ) as bar,
        cli.deferred_signals() as signals,  # an interrupt stops between samples, never inside a line
    ):
        for sample, record in _evaluate(segmenter, todo):
            if signals:
                raise KeyboardInterrupt
            if record is None:
                unreadable.add(str(sample.image_path))
            else:
                results.append(record)
            bar.update()


def _evaluate(segmenter: Any, samples: Sequence[Sample]) -> Iterator[tuple[Sample, dict[str, Any] | None]]:
    """Yield each sample with its record (None: its image cannot be read), in order.

    An image is read once for consecutive samples of it. Each sample's inference is queued, with its
    own expression, before the previous sample is post-processed, so a GPU computes the one while the CPU
    finishes the other.
    """
    def queued() -> Iterator[tuple[Sample, Any]]:
        loaded_path: Path | None = None
        image_bgr: np.ndarray | None = None
        for sample in samples:
            if sample.image_path != loaded_path:
                loaded_path, image_bgr = sample.image_path, _read_image(sample)
            if image_bgr is None:
                yield sample, None
            else:
                segmenter.set_prompt(sample.expression, EXPRESSION)  # queued frames keep their own
                yield sample, segmenter.submit(image_bgr, bgr=True)

    with closing(segmenter.finish_queued(queued())) as finished:  # an interrupt closes the queued frame
        for sample, result in finished:
            yield sample, None if result is None else sample_record(sample, result)


def evaluate_shard(segmenter: Any, samples: Sequence[Sample]) -> list[tuple[str, dict[str, Any] | None]]:
    """On a Ray worker: (image path, record or None when the image cannot be read) for each sample."""
    return [(str(sample.image_path), record) for sample, record in _evaluate(segmenter, samples)]


def _infer_on_ray(
    args: argparse.Namespace,
    split: Split,
    samples: Sequence[Sample],
    todo: Sequence[Sample],
    results: ResultsFile,
    unreadable: set[str],
) -> None:
    """:func:`_infer` on Ray workers: shards of samples, each line appended as its shard comes back.

    Lines come in shard completion order; the summary is built in the split's order, so it is the
    single-machine one. An interrupt keeps every shard already back.
    """
    from tqdm import tqdm

    ray = ray_cluster.connect(ray_cluster.ray_address(args), PROG)
    ray_cluster.check_nodes(ray, args.model, [args.data_root], [])
    open_kwargs = {
        "model_path": str(args.model.resolve()), "tokenizer_path": args.tokenizer, "device": args.device,
        "params": postprocess_params(args),
    }
    workers = ray_cluster.start_workers(ray, args.workers, open_kwargs, PROG)
    shards = [list(todo[i : i + SHARD_SAMPLES]) for i in range(0, len(todo), SHARD_SAMPLES)]
    idle = list(workers)
    pending: dict[Any, Any] = {}
    try:
        with tqdm(
            total=len(samples), initial=len(samples) - len(todo), desc=f"{DISPLAY_NAMES[split.dataset]} "
            f"{split.split}", unit="sample", dynamic_ncols=True, disable=None,
        ) as bar:
            while shards or pending:
                while shards and idle:
                    worker = idle.pop(0)
                    pending[worker.call.remote(evaluate_shard, shards.pop(0))] = worker
                done, _ = ray.wait(list(pending), num_returns=1)
                idle.append(pending.pop(done[0]))
                try:
                    answers = ray.get(done[0])
                except Exception as error:  # a RayError: the worker's exception or Ray's account of it
                    raise EvalError(ray_cluster.failure_message(error)) from None
                with cli.deferred_signals():  # a shard's lines are written whole
                    for image, record in answers:
                        if record is None:
                            if image not in unreadable:
                                LOG.warning("image %s cannot be read; its expressions are skipped", image)
                            unreadable.add(image)
                        else:
                            results.append(record)
                bar.update(len(answers))
    finally:
        for worker in workers:
            ray.kill(worker)


def _read_image(sample: Sample) -> np.ndarray | None:
    try:
        bgr = read_image_file(sample.image_path)
    except ImageConversionError as error:
        LOG.warning("%s; its expressions are skipped", error)
        return None
    if bgr.shape[:2] != (sample.height, sample.width):
        raise DatasetError(
            f"{sample.image_path} is {bgr.shape[1]}x{bgr.shape[0]} but instances.json says "
            f"{sample.width}x{sample.height}: the images folder does not match the annotations"
        )
    return bgr


def _summary(
    args: argparse.Namespace,
    split: Split,
    samples: Sequence[Sample],
    records: Sequence[dict[str, Any]],
    unreadable: set[str],
) -> tuple[dict[str, Any], list[SampleIoU]]:
    body, scores = summarise(records)
    skipped_unreadable = sum(1 for s in samples if str(s.image_path) in unreadable)
    summary = {
        "model": str(args.model.resolve()),
        "model_name": args.model.name,
        "dataset": split.dataset,
        "split_by": split.split_by,
        "split": split.split,
        **body,
        "counts": {
            "samples_in_split": len(split.samples) + split.skipped_samples,
            "selected": len(samples),
            "evaluated": len(records),
            "skipped_missing_image": split.skipped_samples + skipped_unreadable,
            "missing_images": len(split.missing_images) + len(unreadable),
            "invalid_polygons": split.invalid_polygons,
            "dropped_refs": split.dropped_refs,
        },
        "limit": args.limit,
        "resolution": "original image size",
        "pred_nt": PRED_NT_RULE,
    }
    return summary, scores


if __name__ == "__main__":
    sys.exit(main())
