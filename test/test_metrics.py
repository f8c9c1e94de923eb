"""GRES metrics and COCO AP pinned on hand-made masks whose values are worked out in the test."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from gdino_ros.eval.metrics import (
    CocoInstance,
    CocoSample,
    coco_ap,
    gres_metrics,
    mask_to_rle,
    precision_curve,
    rle_to_mask,
    sample_iou,
    union_mask,
)


def grid(rows: list[str]) -> np.ndarray:
    """'#' = foreground; one string per row."""
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


EMPTY = grid(["....", "....", "....", "...."])
GT4 = grid(["##..", "##..", "....", "...."])  # 4 px


# --- the four (GT empty?) x (predicted empty?) cases, plus ReLA's quirks ---------------------------------


def test_no_target_sample_predicted_no_target_scores_one_and_adds_nothing() -> None:
    s = sample_iou(EMPTY, EMPTY, pred_nt=True, gt_nt=True)
    assert (s.intersection, s.union, s.iou) == (0, 0, 1.0)


def test_no_target_sample_predicted_with_target_scores_zero_and_adds_the_predicted_area() -> None:
    pred = grid(["....", "..##", "...#", "...."])  # 3 px
    s = sample_iou(pred, EMPTY, pred_nt=False, gt_nt=True)
    assert (s.intersection, s.union, s.iou) == (0, 3, 0.0)


def test_target_sample_predicted_no_target_scores_zero_and_keeps_gt_in_union() -> None:
    s = sample_iou(EMPTY, GT4, pred_nt=True, gt_nt=False)
    assert (s.intersection, s.union, s.iou) == (0, 4, 0.0)


def test_target_sample_predicted_no_target_keeps_its_mask_in_union_like_rela() -> None:
    pred = grid(["....", ".##.", "....", "...."])  # 2 px, 1 inside GT4
    s = sample_iou(pred, GT4, pred_nt=True, gt_nt=False)
    # I is forced to 0, U = |pred | gt| = 4 + 2 - 1 = 5.
    assert (s.intersection, s.union, s.iou) == (0, 5, 0.0)


def test_target_sample_predicted_with_target_scores_intersection_over_union() -> None:
    pred = grid(["###.", "###.", "....", "...."])  # 6 px, covers GT4
    s = sample_iou(pred, GT4, pred_nt=False, gt_nt=False)
    assert (s.intersection, s.union) == (4, 6)
    assert s.iou == pytest.approx(4 / 6)


def test_target_sample_with_an_empty_prediction_scores_zero() -> None:
    s = sample_iou(EMPTY, GT4, pred_nt=False, gt_nt=False)
    assert (s.intersection, s.union, s.iou) == (0, 4, 0.0)


def test_target_sample_with_empty_gt_and_empty_prediction_scores_zero_not_nan() -> None:
    # A target ref whose only polygon was invalid: ReLA's "IoU 0 when U = 0".
    s = sample_iou(EMPTY, EMPTY, pred_nt=False, gt_nt=False)
    assert (s.intersection, s.union, s.iou) == (0, 0, 0.0)


def test_sample_iou_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        sample_iou(np.zeros((3, 4), bool), GT4, pred_nt=False, gt_nt=False)
    with pytest.raises(ValueError, match="no-target sample must have an empty"):
        sample_iou(EMPTY, GT4, pred_nt=False, gt_nt=True)


# --- unions ------------------------------------------------------------------------------------------------


def test_multi_target_ground_truth_is_scored_against_the_union_of_its_instances() -> None:
    left = grid(["#...", "#...", "....", "...."])
    right = grid(["...#", "...#", "....", "...."])
    gt = union_mask([left, right], (4, 4))
    pred = grid(["##..", "##..", "....", "...."])  # covers left only, 2 px outside
    s = sample_iou(pred, gt, pred_nt=False, gt_nt=False)
    # I = 2 (left column), U = 4 (gt) + 4 (pred) - 2 = 6
    assert (s.intersection, s.union) == (2, 6)
    assert s.iou == pytest.approx(1 / 3)


def test_overlapping_predictions_count_each_pixel_once() -> None:
    a = grid(["###.", "###.", "....", "...."])  # 6 px
    b = grid(["....", ".###", ".###", "...."])  # 6 px, 2 shared with a
    pred = union_mask([a, b], (4, 4))
    assert pred.sum() == 10
    gt = grid(["....", "####", "....", "...."])
    s = sample_iou(pred, gt, pred_nt=False, gt_nt=False)
    # I = row 1 pixels in pred = 4 (a: cols 0-2, b: cols 1-3); U = 10 + 4 - 4 = 10
    assert (s.intersection, s.union) == (4, 10)


def test_union_mask_rejects_a_mask_of_another_size() -> None:
    with pytest.raises(ValueError, match="does not match the image"):
        union_mask([np.zeros((2, 2), bool)], (4, 4))


# --- aggregates ---------------------------------------------------------------------------------------------


def test_gres_aggregates_over_the_four_cases() -> None:
    pred_overlap = grid(["....", ".##.", "....", "...."])
    good = grid(["##..", "###.", "....", "...."])  # 5 px, 4 inside GT4 -> IoU 0.8
    scores = [
        sample_iou(EMPTY, EMPTY, pred_nt=True, gt_nt=True),  # TP: IoU 1, (0, 0)
        sample_iou(grid(["....", "..##", "...#", "...."]), EMPTY, pred_nt=False, gt_nt=True),  # FN: (0, 3)
        sample_iou(EMPTY, GT4, pred_nt=True, gt_nt=False),  # FP: (0, 4)
        sample_iou(pred_overlap, GT4, pred_nt=True, gt_nt=False),  # FP: (0, 5)
        sample_iou(good, GT4, pred_nt=False, gt_nt=False),  # TN: (4, 5), IoU 0.8
        sample_iou(EMPTY, GT4, pred_nt=False, gt_nt=False),  # TN: (0, 4), IoU 0
    ]
    m = gres_metrics(scores)
    assert (m.samples, m.target_samples, m.no_target_samples) == (6, 4, 2)
    assert m.confusion == {"TP": 1, "FN": 1, "FP": 2, "TN": 2}
    assert m.gIoU == pytest.approx(100 * (1 + 0.8) / 6)
    assert m.cIoU == pytest.approx(100 * 4 / (3 + 4 + 5 + 5 + 4))
    assert m.N_acc == pytest.approx(50.0)  # 1 of 2 no-target samples rejected
    assert m.T_acc == pytest.approx(50.0)  # 2 of 4 target samples not rejected
    # Pr@X over the 4 target samples; the IoU-0.8 sample counts at 0.8 (>=) but not at 0.9.
    assert m.precision == {0.5: 25.0, 0.7: 25.0, 0.8: 25.0, 0.9: 0.0}
    d = m.as_dict()
    assert d["N-acc"] == m.N_acc and d["T-acc"] == m.T_acc and d["Pr@0.8"] == 25.0


def test_undefined_aggregates_are_none_not_zero() -> None:
    only_targets = [sample_iou(GT4, GT4, pred_nt=False, gt_nt=False)]
    m = gres_metrics(only_targets)
    assert m.N_acc is None and m.T_acc == 100.0 and m.gIoU == 100.0 and m.cIoU == 100.0
    only_rejected_nt = [sample_iou(EMPTY, EMPTY, pred_nt=True, gt_nt=True)]
    m = gres_metrics(only_rejected_nt)
    assert m.cIoU is None and m.T_acc is None and m.precision[0.5] is None
    assert m.gIoU == 100.0 and m.N_acc == 100.0
    assert gres_metrics([]).gIoU is None


def test_precision_curve_counts_target_samples_only() -> None:
    scores = [
        sample_iou(GT4, GT4, pred_nt=False, gt_nt=False),  # 1.0
        sample_iou(grid(["##..", "#...", "....", "...."]), GT4, pred_nt=False, gt_nt=False),  # 0.75
        sample_iou(EMPTY, EMPTY, pred_nt=True, gt_nt=True),  # no-target: ignored
    ]
    assert precision_curve(scores, [0.5, 0.75, 0.8, 1.0]) == [100.0, 100.0, 50.0, 50.0]


# --- COCO AP -----------------------------------------------------------------------------------------


def box_mask(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def inst(mask: np.ndarray, score: float = 1.0) -> CocoInstance:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return CocoInstance(mask_to_rle(mask), (float(x0), float(y0), float(x1 - x0), float(y1 - y0)), score)


def test_rle_round_trip() -> None:
    m = box_mask(7, 9, 2, 1, 6, 5)
    rle = mask_to_rle(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [7, 9]
    assert np.array_equal(rle_to_mask(rle), m)


def test_single_detection_with_iou_085_has_ap_08_and_ap50_1() -> None:
    gt = box_mask(40, 40, 0, 0, 20, 10)  # 200 px
    det = box_mask(40, 40, 0, 0, 17, 10)  # 170 px inside: IoU 0.85 for mask and box
    ap = coco_ap([CocoSample(40, 40, [inst(gt)], [inst(det, 0.7)])])
    # Matched at IoU thresholds 0.50, 0.55, ..., 0.85 (8 of 10) with precision 1: AP = 8/10.
    assert ap["mask mAP"] == pytest.approx(80.0)
    assert ap["mask mAP50"] == pytest.approx(100.0)
    assert ap["box AP"] == pytest.approx(80.0)
    assert ap["box AP50"] == pytest.approx(100.0)


def test_overlapping_duplicate_detections_rank_by_score() -> None:
    gt = box_mask(40, 40, 5, 5, 25, 25)
    exact = inst(gt, 0.9)
    shifted = inst(box_mask(40, 40, 5, 5, 25, 24), 0.8)  # IoU 0.95, overlaps the first one
    # The higher-scored one matches; the duplicate is a false positive after recall already reached 1.
    assert coco_ap([CocoSample(40, 40, [inst(gt)], [exact, shifted])])["mask mAP"] == pytest.approx(100.0)
    poor = inst(box_mask(40, 40, 30, 30, 40, 40), 0.95)  # no overlap: a false positive ranked first
    ap = coco_ap([CocoSample(40, 40, [inst(gt)], [poor, exact])])
    # Precision at recall 1 is 1/2 at every threshold, so the interpolated AP is 0.5.
    assert ap["mask mAP"] == pytest.approx(50.0)


def test_detection_on_a_no_target_sample_is_a_false_positive() -> None:
    gt = box_mask(20, 20, 0, 0, 10, 10)
    target = CocoSample(20, 20, [inst(gt)], [inst(gt, 0.5)])
    no_target = CocoSample(20, 20, [], [inst(box_mask(20, 20, 5, 5, 15, 15), 0.9)])
    assert coco_ap([target])["mask mAP"] == pytest.approx(100.0)
    # Ranked first, the false positive halves precision at recall 1.
    assert coco_ap([target, no_target])["mask mAP"] == pytest.approx(50.0)


def test_no_detections_give_zero_and_no_ground_truth_gives_none() -> None:
    gt = box_mask(20, 20, 0, 0, 10, 10)
    assert coco_ap([CocoSample(20, 20, [inst(gt)], [])]) == {
        "mask mAP": 0.0, "mask mAP50": 0.0, "box AP": 0.0, "box AP50": 0.0
    }
    assert set(coco_ap([CocoSample(20, 20, [], [inst(gt)])]).values()) == {None}


def test_coco_ap_equals_pycocotools_run_the_standard_way(tmp_path: Path) -> None:
    """The same toy set through pycocotools' own file + loadRes path, built independently here."""
    rng = np.random.default_rng(3)
    h, w = 48, 64
    samples: list[CocoSample] = []
    gt_json: dict[str, list] = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "thing"}]}
    results: list[dict] = []
    for image_id in range(1, 6):
        gt_json["images"].append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.jpg"})
        gts, dets = [], []
        for _ in range(int(rng.integers(0, 3))):
            x0, y0 = int(rng.integers(0, 40)), int(rng.integers(0, 30))
            m = box_mask(h, w, x0, y0, x0 + int(rng.integers(6, 24)), y0 + int(rng.integers(6, 18)))
            gts.append(m)
            # a detection near each object, jittered
            dx, dy = int(rng.integers(-3, 4)), int(rng.integers(-3, 4))
            dets.append((np.roll(np.roll(m, dx, axis=1), dy, axis=0), float(rng.uniform(0.2, 1.0))))
        for _ in range(int(rng.integers(0, 2))):  # clutter
            x0, y0 = int(rng.integers(0, 50)), int(rng.integers(0, 40))
            dets.append((box_mask(h, w, x0, y0, x0 + 10, y0 + 8), float(rng.uniform(0.0, 1.0))))
        for m in gts:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            gt_json["annotations"].append({
                "id": 100 + len(gt_json["annotations"]), "image_id": image_id, "category_id": 7,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "area": float(m.sum()), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0,
            })
        for m, score in dets:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            results.append({
                "image_id": image_id, "category_id": 7, "score": score,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "bbox": mask_utils.toBbox(rle).tolist(),
            })
        samples.append(CocoSample(h, w, [inst(m) for m in gts], [inst(m, s) for m, s in dets]))

    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    expected = {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "gt.json"))
        for iou_type, name in (("segm", "mask mAP"), ("bbox", "box AP")):
            keep = "segmentation" if iou_type == "segm" else "bbox"
            fields = ("image_id", "category_id", "score", keep)
            dt = coco_gt.loadRes([{k: v for k, v in r.items() if k in fields} for r in results])
            e = COCOeval(coco_gt, dt, iou_type)
            e.evaluate()
            e.accumulate()
            e.summarize()
            expected[name], expected[name + "50"] = 100 * e.stats[0], 100 * e.stats[1]
    assert 0.0 < expected["mask mAP"] < 100.0  # the toy set is neither trivial nor hopeless
    assert coco_ap(samples) == pytest.approx(expected)
