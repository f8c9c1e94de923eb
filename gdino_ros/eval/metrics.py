"""Referring-segmentation metrics: the GRES (gRefCOCO) numbers and COCO mask / box AP.

One *sample* is one (image, expression) pair; every sentence of a referring expression is its own
sample. The ground truth of a sample is the union of its non-crowd target instances, empty for a
no-target expression. The prediction of a sample is the union of the detections' masks, and
``pred_nt`` ("predicted no target") is :attr:`gdino_ros.core.result.Result.no_target`: the model's own
ReLA no-target decision (``argmax(no_targets) == 1``) for a 5-output model, and "no detection survived
post-processing" for a 3-output model without the no-target head. As in ReLA, the head alone decides
for a 5-output model: a "target" decision with no surviving detection is a target prediction with an
empty mask (TAO's PyTorch VG evaluator would count it as no-target). Everything is computed at the
original image size (ReLA computes its published numbers at 480x480, so expect small differences).

The GRES definitions are those of the official evaluator (henghuiding/ReLA,
``gres_model/evaluation/refer_evaluation.py`` after commit 884ef17 "fix eval metrics"). Per sample,
with I = |pred & gt| and U = |pred | gt|:

====================  =========================  ============  ===========================
GT                    predicted                  per-sample    adds to (sum I, sum U)
====================  =========================  ============  ===========================
no target             no target                  IoU 1         (0, 0)
no target             target                     IoU 0         (0, U)
target                no target                  IoU 0         (0, U)  (the mask stays in U)
target                target                     I / U         (I, U)  (IoU 0 when U = 0)
====================  =========================  ============  ===========================

Aggregates, all reported in percent:

* ``gIoU``: mean per-sample IoU over all samples, no-target samples included.
* ``cIoU``: 100 * sum I / sum U over all samples.
* ``N-acc``: share of no-target samples predicted no-target (ReLA's TP / (TP + FN), where ReLA's
  "positive" means "no target").
* ``T-acc``: share of target samples *not* predicted no-target (ReLA's TN / (TN + FP)); no IoU condition.
* ``Pr@0.5/0.7/0.8/0.9``: share of target samples whose IoU reaches the threshold (ReLA prints 0.7,
  0.8, 0.9; 0.5 is added because the RefCOCO literature reports it).
* ``mask mAP`` / ``mask mAP50``: pycocotools ``COCOeval(iouType="segm")`` AP@[.50:.95] and AP@.50
  (``stats[0]``, ``stats[1]``), ``box AP`` / ``box AP50`` the same with ``iouType="bbox"``. Every sample
  is its own COCO image with one category; its ground truth is the individual target instances and
  its detections are the Result's detections with their real scores and their masks (binarised at
  sigmoid 0.5 by post-processing) as RLE. A detection on a no-target sample is a false positive.

A number whose denominator is empty (N-acc on a split without no-target samples, cIoU when sum U is
0, AP without any ground-truth instance) is ``None`` ("n/a" in tables) rather than ReLA's 0.

Which TAO tool reports the same number, and under which name. "TAO PyTorch VG" is the PyTorch
backend's 7.0 ``VG_Evaluator`` (``tao model mask_grounding_dino evaluate`` on a referring dataset),
"TAO PyTorch COCO" its 6.25.10 pycocotools ``CocoEvaluator``, "TAO Deploy VG" the TensorRT
``evaluate`` of TAO Deploy 6.25.11 (task VG), read from the sources and not run:

* gIoU: TAO PyTorch VG ``mIoU``; TAO Deploy VG ``gIoU`` (there pred_nt = "empty mask", and as read
  its data loader never evaluates no-target sentences).
* cIoU: TAO PyTorch VG ``overall_IoU``; TAO Deploy VG ``cIoU`` (denominator ``max(sum U, 1)``).
* N-acc: TAO PyTorch VG ``N_acc``; TAO Deploy VG **``T_acc``** (the names are swapped there).
* T-acc: TAO PyTorch VG ``T_acc``; no TAO Deploy equivalent: its ``N_acc`` is the share of target
  samples with IoU >= ``evaluate.conf_threshold``, an IoU success rate.
* Pr@0.5 / Pr@0.7 / Pr@0.9: TAO PyTorch VG ``Pr@0.5`` / ``Pr@0.7`` / ``Pr@0.9``; TAO Deploy VG ``Pr@X``
  divides by the number of non-empty predictions instead of the target samples.
* mask mAP / mask mAP50: TAO PyTorch COCO ``mAP`` / ``mAP50`` with ``iou_types`` ``segm``. Not the same
  as TAO PyTorch VG ``mAP`` (one ranked mask per sample) nor TAO Deploy VG ``mAP`` (mean over samples
  and thresholds of [IoU >= t], no ranking).
* box AP / box AP50: TAO PyTorch COCO ``mAP`` / ``mAP50`` with ``bbox``; TAO Deploy OD ``AP``.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pycocotools.coco import COCO

PR_THRESHOLDS: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())


def union_mask(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Union of instance masks (each bool [H, W]) as bool ``shape``: a sample's predicted mask.

    Overlapping pixels count once, so two detections of the same object do not inflate I or U.
    """
    out = np.zeros(shape, dtype=bool)
    for mask in masks:
        if mask.shape != shape:
            raise ValueError(f"instance mask {mask.shape} does not match the image {shape}")
        out |= mask.astype(bool, copy=False)
    return out


@dataclass(frozen=True)
class SampleIoU:
    """One sample's contribution, as the GRES evaluator counts it.

    ``intersection`` and ``union`` are pixel counts that go into cIoU's sums (both 0 for a correctly
    rejected no-target sample); ``iou`` is the per-sample score that gIoU averages.
    """

    intersection: int
    union: int
    iou: float
    gt_nt: bool
    pred_nt: bool


def sample_iou(pred_mask: np.ndarray, gt_mask: np.ndarray, *, pred_nt: bool, gt_nt: bool) -> SampleIoU:
    """Score one sample by the GRES rules (table in the module docstring).

    ``pred_mask`` and ``gt_mask`` are bool (or 0/1) arrays of the same [H, W]. ``gt_nt`` must come with
    an empty ``gt_mask``. The predicted mask stays in U even when ``pred_nt`` is set, as in ReLA.
    """
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"predicted mask {pred_mask.shape} and ground truth {gt_mask.shape} differ in size")
    pred = pred_mask.astype(bool, copy=False)
    gt = gt_mask.astype(bool, copy=False)
    if gt_nt and gt.any():
        raise ValueError("a no-target sample must have an empty ground-truth mask")
    union = int(np.count_nonzero(pred | gt))
    if gt_nt:
        if pred_nt:
            return SampleIoU(0, 0, 1.0, gt_nt=True, pred_nt=True)
        return SampleIoU(0, union, 0.0, gt_nt=True, pred_nt=False)
    intersection = 0 if pred_nt else int(np.count_nonzero(pred & gt))
    iou = intersection / union if union else 0.0
    return SampleIoU(intersection, union, iou, gt_nt=False, pred_nt=pred_nt)


@dataclass(frozen=True)
class GresMetrics:
    """The GRES aggregates over a set of samples, in percent (``None`` where undefined).

    ``confusion`` uses ReLA's labels, where "positive" means "no target": TP = no-target sample
    predicted no-target, FN = no-target sample predicted with target, FP = target sample predicted
    no-target, TN = target sample predicted with target.
    """

    samples: int
    target_samples: int
    no_target_samples: int
    gIoU: float | None
    cIoU: float | None
    N_acc: float | None
    T_acc: float | None
    precision: dict[float, float | None]
    confusion: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-ready dict with the GRES names (``N-acc``, ``Pr@0.5``, ...)."""
        out: dict[str, Any] = {
            "samples": self.samples,
            "target_samples": self.target_samples,
            "no_target_samples": self.no_target_samples,
            "gIoU": self.gIoU,
            "cIoU": self.cIoU,
            "N-acc": self.N_acc,
            "T-acc": self.T_acc,
        }
        out.update({precision_name(t): v for t, v in self.precision.items()})
        out["confusion"] = dict(self.confusion)
        return out


def precision_name(threshold: float) -> str:
    """GRES column name of a precision threshold: ``Pr@0.7``."""
    return f"Pr@{threshold:g}"


def _percent(numerator: float, denominator: float) -> float | None:
    return 100.0 * numerator / denominator if denominator else None


def gres_metrics(scores: Sequence[SampleIoU], thresholds: Sequence[float] = PR_THRESHOLDS) -> GresMetrics:
    """Aggregate per-sample scores into gIoU, cIoU, N-acc, T-acc and Pr@X (module docstring)."""
    tp = sum(1 for s in scores if s.gt_nt and s.pred_nt)
    fn = sum(1 for s in scores if s.gt_nt and not s.pred_nt)
    fp = sum(1 for s in scores if not s.gt_nt and s.pred_nt)
    tn = sum(1 for s in scores if not s.gt_nt and not s.pred_nt)
    target_ious = [s.iou for s in scores if not s.gt_nt]
    return GresMetrics(
        samples=len(scores),
        target_samples=fp + tn,
        no_target_samples=tp + fn,
        gIoU=_percent(sum(s.iou for s in scores), len(scores)),
        cIoU=_percent(sum(s.intersection for s in scores), sum(s.union for s in scores)),
        N_acc=_percent(tp, tp + fn),
        T_acc=_percent(tn, tn + fp),
        precision={t: _percent(sum(1 for v in target_ious if v >= t), len(target_ious)) for t in thresholds},
        confusion={"TP": tp, "FN": fn, "FP": fp, "TN": tn},
    )


def precision_curve(scores: Sequence[SampleIoU], thresholds: Sequence[float]) -> list[float | None]:
    """Pr@t for each t (percent of target samples with IoU >= t); the plot's precision panel."""
    target_ious = np.array([s.iou for s in scores if not s.gt_nt], dtype=np.float64)
    return [_percent(float(np.count_nonzero(target_ious >= t)), target_ious.size) for t in thresholds]


# --- COCO AP ------------------------------------------------------------------------------------------


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Binary [H, W] mask -> COCO compressed RLE with a JSON-ready ``counts`` string."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """COCO compressed RLE (``counts`` str or bytes) -> bool [H, W]."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(_pycocotools_rle(rle)).astype(bool)


def rle_area(rle: dict[str, Any]) -> int:
    """Foreground pixel count of a compressed RLE."""
    from pycocotools import mask as mask_utils

    return int(mask_utils.area(_pycocotools_rle(rle)))


def _pycocotools_rle(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": list(rle["size"]), "counts": counts}


@dataclass(frozen=True)
class CocoInstance:
    """One ground-truth instance or detection of a sample: compressed RLE, xywh box, score.

    ``score`` is ignored for ground truth.
    """

    rle: dict[str, Any]
    bbox_xywh: tuple[float, float, float, float]
    score: float = 1.0


@dataclass(frozen=True)
class CocoSample:
    """One (image, expression) sample for COCO AP: its size, ground-truth instances and detections."""

    height: int
    width: int
    ground_truth: Sequence[CocoInstance]
    detections: Sequence[CocoInstance]


def coco_ap(samples: Sequence[CocoSample]) -> dict[str, float | None]:
    """Mask and box AP (percent) with pycocotools' COCOeval over all samples (module docstring).

    Returns ``mask mAP``, ``mask mAP50``, ``box AP``, ``box AP50``; all ``None`` when there is no
    ground-truth instance at all (a split of no-target samples only).
    """
    from pycocotools.cocoeval import COCOeval

    names = ("mask mAP", "mask mAP50", "box AP", "box AP50")
    if not any(s.ground_truth for s in samples):
        return dict.fromkeys(names, None)
    images = [{"id": i + 1, "height": s.height, "width": s.width} for i, s in enumerate(samples)]
    categories = [{"id": 1, "name": "referred"}]
    gt_anns: list[dict[str, Any]] = []
    dt_anns: list[dict[str, Any]] = []
    for image_id, sample in enumerate(samples, start=1):
        for inst in sample.ground_truth:
            gt_anns.append(_coco_annotation(len(gt_anns) + 1, image_id, inst, score=None))
        for inst in sample.detections:
            dt_anns.append(_coco_annotation(len(dt_anns) + 1, image_id, inst, score=inst.score))

    out: dict[str, float | None] = {}
    for iou_type, prefix in (("segm", "mask mAP"), ("bbox", "box AP")):
        coco_gt = _coco_index(images, categories, gt_anns)
        coco_dt = _coco_index(images, categories, dt_anns)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        out[prefix] = 100.0 * float(evaluator.stats[0])
        out[prefix + "50"] = 100.0 * float(evaluator.stats[1])
    return out


def _coco_annotation(
    ann_id: int, image_id: int, inst: CocoInstance, score: float | None
) -> dict[str, Any]:
    # Ids start at 1: COCOeval treats a matched id of 0 as "unmatched".
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "segmentation": {"size": list(inst.rle["size"]), "counts": inst.rle["counts"]},
        "area": float(rle_area(inst.rle)),
        "bbox": [float(v) for v in inst.bbox_xywh],
        "iscrowd": 0,
    }
    if score is not None:
        ann["score"] = float(score)
    return ann


def _coco_index(
    images: list[dict[str, Any]], categories: list[dict[str, Any]], anns: list[dict[str, Any]]
) -> COCO:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
