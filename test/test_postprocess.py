"""Post-processing on hand-built engine outputs whose answers are worked out by hand.

The rules: docs/engine_contract.md#post-processing.

Where a mask's expected pixels are needed, they come from the straightforward computation that TAO
Deploy does (full-image ``cv2.resize`` of the logits, sigmoid, ``> threshold``), with OpenCV's generic
resize (its IPP variant rounds differently) and a float64 sigmoid (float32 rounds the sigmoid of logits
below 6e-8 to exactly 0.5). The union map for the IoI filter comes from ``torch.nn.functional.interpolate``
as in TAO's PyTorch reference.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from gdino_ros.backends.frame import ArrayMasks
from gdino_ros.contract import NO_TARGETS, PRED_BOXES, PRED_LOGITS, PRED_MASKS, UNION_MASK_LOGITS
from gdino_ros.core.instance_crop import InstanceCrop, crop_from_logits
from gdino_ros.core.mask_resampling import MaskUpsampler
from gdino_ros.core.postprocess import PostprocessParams, postprocess
from gdino_ros.core.prompt import EncodedPrompt, encode_prompt
from gdino_ros.core.result import Result
from gdino_ros.core.tokenizer import load_tokenizer

MASK_HW = (8, 12)  # a 32×48 engine
UNION_HW = (4, 6)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@pytest.fixture(scope="module")
def tokenizer(vocab_path: Path):  # a transformers tokenizer
    return load_tokenizer(vocab_path)


@pytest.fixture(scope="module")
def vocab(vocab_path: Path) -> list[str]:
    return vocab_path.read_text(encoding="utf-8").split("\n")


@pytest.fixture
def generic_resize() -> Iterator[None]:
    """OpenCV's own resize code for the reference masks (a per-thread switch, restored afterwards)."""
    previous = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)
    yield
    cv2.ipp.setUseIPP(previous)


def reference_mask(logits: np.ndarray, image_hw: tuple[int, int], mask_threshold: float = 0.5) -> np.ndarray:
    up = cv2.resize(logits.astype(np.float32), (image_hw[1], image_hw[0]), interpolation=cv2.INTER_LINEAR)
    return 1.0 / (1.0 + np.exp(-up.astype(np.float64))) > mask_threshold


def blank(prompt: EncodedPrompt, queries: int = 6, mask_hw: tuple[int, int] = MASK_HW
          ) -> dict[str, np.ndarray]:
    """Engine outputs in which nothing is detected: low logits on real tokens, −inf on padding."""
    logits = np.full((1, queries, 256), -np.inf, np.float32)
    logits[0, :, : prompt.num_tokens] = -10.0
    boxes = np.tile(np.array([0.5, 0.5, 0.1, 0.1], np.float32), (1, queries, 1))
    masks = np.full((1, queries, 1, *mask_hw), -10.0, np.float32)
    return {PRED_LOGITS: logits, PRED_BOXES: boxes, PRED_MASKS: masks}


def add_rela(outputs: dict[str, np.ndarray], no_targets: tuple[float, float] = (1.0, -1.0),
             foreground: np.ndarray | None = None) -> dict[str, np.ndarray]:
    fg = np.ones(UNION_HW, np.float32) if foreground is None else foreground.astype(np.float32)
    outputs[NO_TARGETS] = np.array([no_targets], np.float32)
    outputs[UNION_MASK_LOGITS] = np.stack([1.0 - fg, fg])[None]
    return outputs


def summary(result: Result) -> list[tuple[int, str, int]]:
    return [(d.instance_id, d.label, d.phrase_index) for d in result.detections]


def test_phrase_scores_are_means_over_each_phrases_own_tokens(tokenizer) -> None:
    # [CLS] red cup . cup . [SEP]: "red cup" is tokens 1-2, the second "cup" is token 4.
    prompt = encode_prompt("red cup . cup", "phrases", tokenizer)
    out = blank(prompt)
    logits = out[PRED_LOGITS][0]
    logits[0, [1, 2, 4]] = [logit(0.9), logit(0.5), logit(0.2)]  # red cup 0.7, cup 0.2
    logits[1, [1, 2, 4]] = [logit(0.1), logit(0.1), logit(0.8)]  # red cup 0.1, cup 0.8
    out[PRED_BOXES][0, 0] = [0.25, 0.5, 0.2, 0.2]
    out[PRED_BOXES][0, 1] = [0.75, 0.5, 0.2, 0.2]
    result = postprocess(out, prompt, (80, 120))
    assert summary(result) == [(1, "cup", 1), (2, "red cup", 0)]
    assert result.detections[0].score == pytest.approx(0.8, abs=1e-6)
    assert result.detections[1].score == pytest.approx(0.7, abs=1e-6)
    assert result.detections[0].box_xyxy == pytest.approx((78, 32, 102, 48), abs=1e-4)
    assert result.detections[1].box_xyxy == pytest.approx((18, 32, 42, 48), abs=1e-4)
    assert result.mode == "phrases" and result.prompt == "red cup . cup"


def test_infinite_logits_give_no_nan(tokenizer) -> None:
    prompt = encode_prompt("cat . dog", "phrases", tokenizer)
    out = blank(prompt)
    out[PRED_LOGITS][0, :, : prompt.num_tokens] = -np.inf
    out[PRED_LOGITS][0, 2, 1] = np.inf
    with warnings.catch_warnings(), np.errstate(invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        result = postprocess(out, prompt, (40, 40))
    assert summary(result) == [(1, "cat", 0)] and result.detections[0].score == 1.0


def test_expression_labels_are_the_matched_words(tokenizer, vocab: list[str]) -> None:
    prompt = encode_prompt("the red mug near a fire hydrant", "expression", tokenizer)
    # [CLS] the red mug near a fire hydra ##nt . [SEP]
    assert prompt.input_ids[7:10].tolist() == [vocab.index("hydra"), vocab.index("##nt"), 1012]
    out = blank(prompt)
    out[PRED_LOGITS][0, 3, [2, 3, 7, 9]] = [logit(0.6), logit(0.9), logit(0.4), logit(0.35)]
    result = postprocess(out, prompt, (40, 40))
    # Four (query, token) pairs pass the confidence threshold; they share one box, so NMS keeps the best.
    assert summary(result) == [(1, "red mug hydrant", -1)]
    assert result.detections[0].score == pytest.approx(0.9, abs=1e-6)
    without_nms = postprocess(out, prompt, (40, 40), PostprocessParams(nms_threshold=0.0))
    assert [d.score for d in without_nms.detections] == pytest.approx([0.9, 0.6, 0.4, 0.35], abs=1e-6)
    assert {d.label for d in without_nms.detections} == {"red mug hydrant"}
    stricter = postprocess(out, prompt, (40, 40), PostprocessParams(text_threshold=0.5))
    assert summary(stricter) == [(1, "red mug", -1)]


def test_no_target_empties_the_result(tokenizer) -> None:
    prompt = encode_prompt("the mug on the left", "expression", tokenizer)
    out = add_rela(blank(prompt), no_targets=(0.2, 1.7))
    out[PRED_LOGITS][0, 0, 2] = 5.0
    out[PRED_MASKS][0, 0, 0, 2:5, 2:5] = 5.0
    result = postprocess(out, prompt, (32, 48))
    assert result.no_target and result.detections == [] and not result.label_image.any()
    assert result.no_target_probability == pytest.approx(1 / (1 + math.exp(0.2 - 1.7)), rel=1e-6)
    assert result.label_image.shape == (32, 48) and result.label_image.dtype == np.uint8


@pytest.mark.parametrize("no_targets", [(1.7, 0.2), (0.5, 0.5)])
def test_no_target_false_keeps_the_detections(tokenizer, no_targets: tuple[float, float]) -> None:
    prompt = encode_prompt("the mug on the left", "expression", tokenizer)
    out = add_rela(blank(prompt), no_targets=no_targets)
    out[PRED_LOGITS][0, 0, 2] = 5.0
    out[PRED_MASKS][0, 0, 0, 2:5, 2:5] = 5.0
    result = postprocess(out, prompt, (32, 48))
    assert not result.no_target and summary(result) == [(1, "mug", -1)]
    expected = 1 / (1 + math.exp(no_targets[0] - no_targets[1]))
    assert result.no_target_probability == pytest.approx(expected, rel=1e-6)


def test_without_rela_head(tokenizer) -> None:
    prompt = encode_prompt("cat", "phrases", tokenizer)
    out = blank(prompt)
    nothing = postprocess(out, prompt, (32, 48))
    assert nothing.no_target and math.isnan(nothing.no_target_probability)
    out[PRED_LOGITS][0, 1, 1] = 3.0
    something = postprocess(out, prompt, (32, 48))
    assert not something.no_target and math.isnan(something.no_target_probability)
    assert len(something.detections) == 1


def torch_ioi(mask_logits: np.ndarray, union_logits: np.ndarray) -> float:
    """TAO PyTorch 7.0's intersection over instance for one mask, written out with torch."""
    import torch
    import torch.nn.functional as F

    union = torch.from_numpy(union_logits[None]).argmax(dim=1, keepdim=True).float()
    union = F.interpolate(union, size=mask_logits.shape, mode="bilinear", align_corners=False)
    foreground = union.sigmoid() > 0.5
    mask = torch.from_numpy(mask_logits).sigmoid() > 0.5
    return float((mask & foreground[0, 0]).sum() / (mask.sum() + 1e-6))


def test_ioi_filter_against_the_union_map(tokenizer) -> None:
    prompt = encode_prompt("cat", "phrases", tokenizer)
    foreground = np.zeros(UNION_HW)
    foreground[:, :3] = 1  # union columns 0-2; upsampled ×2 the foreground reaches mask column 6
    out = add_rela(blank(prompt), foreground=foreground)
    logits, boxes, masks = out[PRED_LOGITS][0], out[PRED_BOXES][0], out[PRED_MASKS][0, :, 0]
    a, b, c, d = 0, 1, 2, 3
    logits[[a, b, c, d], 1] = [logit(0.6), logit(0.9), logit(0.8), logit(0.95)]
    masks[a, 2:6, 0:6] = 5.0  # inside: IoI 1
    masks[b, :, 4:] = 5.0  # 24 of 64 pixels inside: IoI 0.375, removed
    masks[c, 0:2, 5:8] = 5.0  # 4 of 6 inside, thanks to column 6: IoI 0.667, kept
    # d's mask is empty: IoI 0, removed
    boxes[a] = boxes[b] = [0.25, 0.5, 0.4, 0.9]  # b would suppress a in NMS if it survived IoI
    boxes[c] = [0.75, 0.5, 0.3, 0.3]
    boxes[d] = [0.5, 0.1, 0.1, 0.1]
    union = out[UNION_MASK_LOGITS][0]
    ioi = {q: torch_ioi(masks[q], union) for q in (a, b, c, d)}
    assert ioi[a] > 0.5 and ioi[b] == pytest.approx(0.375) and ioi[c] == pytest.approx(4 / 6) and ioi[d] == 0
    result = postprocess(out, prompt, (32, 48))
    assert [d.score for d in result.detections] == pytest.approx([0.8, 0.6], abs=1e-6)
    unfiltered = postprocess(out, prompt, (32, 48), PostprocessParams(ioi_threshold=0.0))
    assert [d.score for d in unfiltered.detections] == pytest.approx([0.95, 0.9, 0.8], abs=1e-6)


def test_nms_is_class_agnostic_and_strict(tokenizer) -> None:
    prompt = encode_prompt("cat . dog", "phrases", tokenizer)
    out = blank(prompt)
    logits, boxes = out[PRED_LOGITS][0], out[PRED_BOXES][0]
    # On a 128×128 image (xyxy pixels): a (0,0,16,16); b (8,0,24,16), IoU(a,b) = 1/3; c (16,0,32,16);
    # d (0,0,80,16), IoU(a,d) = IoU(c,d) = 0.2 exactly, which does not suppress.
    for q, (x0, x1), token, score in [(0, (0, 16), 1, 0.9), (1, (8, 24), 3, 0.8),
                                      (2, (16, 32), 1, 0.7), (3, (0, 80), 3, 0.6)]:
        boxes[q] = [(x0 + x1) / 256, 8 / 128, (x1 - x0) / 128, 16 / 128]
        logits[q, token] = logit(score)
    result = postprocess(out, prompt, (128, 128))
    labels = [(d.label, round(d.score, 4)) for d in result.detections]
    assert labels == [("cat", 0.9), ("cat", 0.7), ("dog", 0.6)]
    assert result.detections[2].box_xyxy == (0.0, 0.0, 80.0, 16.0)
    no_nms = postprocess(out, prompt, (128, 128), PostprocessParams(nms_threshold=0.0))
    assert len(no_nms.detections) == 4


def test_num_select_max_detections_and_ties(tokenizer) -> None:
    prompt = encode_prompt("cat", "phrases", tokenizer)
    out = blank(prompt)
    for q, score in enumerate([0.5, 0.9, 0.7, 0.7, 0.8]):
        out[PRED_LOGITS][0, q, 1] = logit(score)
        out[PRED_BOXES][0, q] = [0.1 + 0.2 * q, 0.5, 0.1, 0.1]
    top3 = postprocess(out, prompt, (64, 64), PostprocessParams(num_select=3))
    # 0.9 (query 1), 0.8 (query 4), then the tie at 0.7 goes to the lower query index (2, not 3).
    x0 = [(0.05 + 0.2 * q) * 64 for q in (1, 4, 2)]
    assert [d.box_xyxy[0] for d in top3.detections] == pytest.approx(x0, abs=1e-4)
    capped = postprocess(out, prompt, (64, 64), PostprocessParams(max_detections=2))
    assert [d.instance_id for d in capped.detections] == [1, 2]
    assert [d.score for d in capped.detections] == pytest.approx([0.9, 0.8], abs=1e-6)
    everything = postprocess(out, prompt, (64, 64))
    scores = [d.score for d in everything.detections]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)


def test_boxes_and_masks_at_the_image_border(tokenizer, generic_resize: None) -> None:
    prompt = encode_prompt("cat", "phrases", tokenizer)
    out = blank(prompt)
    out[PRED_LOGITS][0, 0, 1] = 3.0
    out[PRED_BOXES][0, 0] = [0.02, 0.99, 0.1, 0.1]
    out[PRED_MASKS][0, 0, 0, -2:, :2] = 6.0  # bottom-left corner
    result = postprocess(out, prompt, (100, 200))
    (det,) = result.detections
    assert det.box_xyxy == pytest.approx((0.0, 94.0, 14.0, 100.0), abs=1e-4)
    expected = reference_mask(out[PRED_MASKS][0, 0, 0], (100, 200))
    assert expected[-1, 0] and expected.sum() > 0
    np.testing.assert_array_equal(det.mask, expected)
    np.testing.assert_array_equal(result.label_image, expected.astype(np.uint16))


def test_one_pixel_detection(tokenizer) -> None:
    prompt = encode_prompt("cat", "phrases", tokenizer)
    out = blank(prompt, mask_hw=(40, 40))
    out[PRED_LOGITS][0, 0, 1] = 3.0
    out[PRED_BOXES][0, 0] = [7.5 / 40, 5.5 / 40, 1 / 40, 1 / 40]
    out[PRED_MASKS][0, 0, 0, 5, 7] = 1.0
    result = postprocess(out, prompt, (40, 40))  # the image has the mask's size: one logit, one pixel
    (det,) = result.detections
    assert det.box_xyxy == pytest.approx((7.0, 5.0, 8.0, 6.0), abs=1e-5)
    assert np.argwhere(det.mask).tolist() == [[5, 7]]
    assert np.argwhere(result.label_image).tolist() == [[5, 7]] and result.label_image[5, 7] == 1


def test_tiny_mask_upsampled(tokenizer, generic_resize: None) -> None:
    prompt = encode_prompt("cat", "phrases", tokenizer)
    out = blank(prompt)
    out[PRED_LOGITS][0, 0, 1] = 3.0
    # Barely positive among barely negative logits: at scale 4, only the 2×2 output pixels closest to the
    # positive sample (weight 0.875² = 0.77 on it) come out positive: 0.77 * 0.02 - 0.23 * 0.05 > 0.
    out[PRED_MASKS][0, 0, 0] = -0.05
    out[PRED_MASKS][0, 0, 0, 4, 6] = 0.02
    result = postprocess(out, prompt, (32, 48))
    expected = reference_mask(out[PRED_MASKS][0, 0, 0], (32, 48))
    assert np.argwhere(expected).tolist() == [[17, 25], [17, 26], [18, 25], [18, 26]]
    np.testing.assert_array_equal(result.detections[0].mask, expected)


def test_overlapping_masks_higher_score_wins(tokenizer, generic_resize: None) -> None:
    prompt = encode_prompt("cat . dog", "phrases", tokenizer)
    out = blank(prompt)
    logits, boxes, masks = out[PRED_LOGITS][0], out[PRED_BOXES][0], out[PRED_MASKS][0, :, 0]
    logits[4, 3] = logit(0.7)  # dog, lower score, first query
    logits[5, 1] = logit(0.9)  # cat
    boxes[4] = [0.6, 0.6, 0.4, 0.4]
    boxes[5] = [0.3, 0.3, 0.4, 0.4]
    masks[5, 1:5, 1:7] = 4.0
    masks[4, 3:7, 4:11] = 4.0
    result = postprocess(out, prompt, (32, 48))
    assert summary(result) == [(1, "cat", 0), (2, "dog", 1)]
    cat, dog = reference_mask(masks[5], (32, 48)), reference_mask(masks[4], (32, 48))
    assert (cat & dog).any()
    np.testing.assert_array_equal(result.detections[0].mask, cat)
    np.testing.assert_array_equal(result.detections[1].mask, dog)  # the overlap is in both masks
    expected = np.where(cat, 1, np.where(dog, 2, 0)).astype(np.uint16)
    np.testing.assert_array_equal(result.label_image, expected)


@pytest.mark.parametrize("mask_threshold", [0.5, 0.8])
@pytest.mark.parametrize("image_hw", [(720, 1280), (37, 61)])
def test_masks_equal_the_full_image_resize(image_hw: tuple[int, int], mask_threshold: float,
                                           generic_resize: None) -> None:
    rng = np.random.default_rng(7)
    mask_hw = (136, 240)
    coarse = rng.normal(0.0, 6.0, (4, 9, 16)).astype(np.float32)
    maps = [cv2.resize(c, mask_hw[::-1], interpolation=cv2.INTER_CUBIC) for c in coarse]
    maps[1] = maps[1] - 12.0  # a few small blobs
    maps[2] = np.abs(maps[2]) + 0.5  # foreground everywhere
    blob = np.full(mask_hw, -8.0, np.float32)
    blob[60:70, 100:130] = 3.0
    maps.append(blob)
    upsampler = MaskUpsampler(mask_hw, image_hw)
    threshold = logit(mask_threshold)
    for logits in maps:
        painted = np.zeros(image_hw, dtype=bool)
        upsampler.paint(logits, threshold, painted)
        np.testing.assert_array_equal(painted, reference_mask(logits, image_hw, mask_threshold))


def assert_tight_crop(crop: InstanceCrop, full: np.ndarray) -> None:
    """``crop`` is ``full`` cut to the smallest rectangle holding its pixels."""
    rows, cols = np.nonzero(full)
    assert (crop.y0, crop.x0) == (rows.min(), cols.min())
    np.testing.assert_array_equal(crop.mask, full[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])


def _edge_maps(mask_hw: tuple[int, int]) -> list[np.ndarray]:
    """Small masks touching each image edge, some with infinite logits there (the one-sample columns)."""
    maps = []
    for top, left, value in ((0, 0, np.inf), (60, mask_hw[1] - 6, np.inf), (mask_hw[0] - 4, 100, 5.0),
                             (20, 0, 5.0), (30, mask_hw[1] - 3, -np.inf)):
        plane = np.full(mask_hw, -8.0, np.float32)
        plane[top : top + 4, left : left + 6] = 2.0
        plane[top + 1, left] = value
        plane[top + 1, min(left + 5, mask_hw[1] - 1)] = value
        maps.append(plane)
    return maps


@pytest.mark.parametrize("image_hw", [(720, 1280), (37, 61)])
def test_windows_and_crops_equal_the_full_image_resize(image_hw: tuple[int, int],
                                                       generic_resize: None) -> None:
    mask_hw = (136, 240)
    rng = np.random.default_rng(3)
    big = cv2.resize(rng.normal(0.0, 6.0, (9, 16)).astype(np.float32), mask_hw[::-1],
                     interpolation=cv2.INTER_CUBIC)  # windows above OpenCV's share of the image
    upsampler = MaskUpsampler(mask_hw, image_hw)
    threshold = logit(0.5)
    for logits in [*_edge_maps(mask_hw), big, np.full(mask_hw, -3.0, np.float32)]:
        with np.errstate(invalid="ignore"):
            expected = reference_mask(logits, image_hw)
        painted = np.zeros(image_hw, dtype=bool)
        upsampler.paint(logits, threshold, painted)
        np.testing.assert_array_equal(painted, expected)
        crop = crop_from_logits(logits, threshold, image_hw)
        if not expected.any():
            assert crop.mask.shape == (0, 0)
        y0, x0, inside = upsampler.paint_window(logits, threshold) or (0, 0, np.zeros((0, 0), bool))
        np.testing.assert_array_equal(inside, expected[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]])
        assert inside.sum() == expected.sum()
        if expected.any():
            assert_tight_crop(crop, expected)


@pytest.mark.parametrize("coverage", ["small masks", "large overlapping masks"])
def test_each_detection_mask_and_crop_equal_the_full_image_resize(coverage: str, tokenizer,
                                                                  generic_resize: None) -> None:
    """Both ways of painting (per window, per cell) give every instance its exact own mask and crop."""
    prompt = encode_prompt("cat . dog", "phrases", tokenizer)
    mask_hw, image_hw = (34, 60), (61, 83)
    out = blank(prompt, queries=5, mask_hw=mask_hw)
    logits, masks = out[PRED_LOGITS][0], out[PRED_MASKS][0, :, 0]
    rng = np.random.default_rng(11)
    for q in range(4):
        logits[q, 1 + 2 * (q % 2)] = logit(0.9 - 0.1 * q)  # "cat" or "dog"
        if coverage == "small masks":
            masks[q, 3 + 6 * q : 7 + 6 * q, 5 + 10 * q : 12 + 10 * q] = rng.normal(2.0, 1.0, (4, 7))
        else:
            coarse = rng.normal(1.0, 4.0, (4, 6)).astype(np.float32)
            masks[q] = cv2.resize(coarse, mask_hw[::-1], interpolation=cv2.INTER_CUBIC)
    per_window = MaskUpsampler(mask_hw, image_hw).paint_labels(
        masks[:4], logit(0.5), np.zeros(image_hw, np.uint16)) is not None
    assert per_window == (coverage == "small masks")
    result = postprocess(out, prompt, image_hw, PostprocessParams(nms_threshold=0.0))
    assert len(result.detections) == 4
    for detection in result.detections:
        query = [q for q in range(4) if detection.score == pytest.approx(0.9 - 0.1 * q, abs=1e-6)][0]
        expected = reference_mask(masks[query], image_hw)
        np.testing.assert_array_equal(detection.mask, expected)
        assert_tight_crop(detection.crop, expected)
        y0, y1, x0, x1 = detection.mask_window or (0, 0, 0, 0)
        assert expected[y0:y1, x0:x1].sum() == expected.sum() > 0


def test_half_precision_outputs(tokenizer) -> None:
    prompt = encode_prompt("red cup . cup", "phrases", tokenizer)
    out = blank(prompt)
    out[PRED_LOGITS][0, 0, [1, 2]] = [2.0, 1.0]
    out[PRED_LOGITS][0, 1, 4] = 1.5
    out[PRED_BOXES][0, 1] = [0.2, 0.2, 0.2, 0.2]
    out[PRED_MASKS][0, 0, 0, 2:5, 2:5] = 3.0
    half = postprocess({k: v.astype(np.float16) for k, v in out.items()}, prompt, (32, 48))
    assert summary(half) == [(1, "cup", 1), (2, "red cup", 0)]
    assert half.detections[1].mask.sum() > 0


def test_bad_outputs_and_params(tokenizer) -> None:
    prompt = encode_prompt("cat", "phrases", tokenizer)
    out = blank(prompt)
    with pytest.raises(ValueError, match="lack"):
        postprocess({k: v for k, v in out.items() if k != PRED_MASKS}, prompt, (32, 48))
    with pytest.raises(ValueError, match=PRED_BOXES):
        postprocess({**out, PRED_BOXES: out[PRED_BOXES][:, :3]}, prompt, (32, 48))
    with pytest.raises(ValueError, match="both"):
        postprocess({**out, NO_TARGETS: np.zeros((1, 2), np.float32)}, prompt, (32, 48))
    with pytest.raises(ValueError, match="image_hw"):
        postprocess(out, prompt, (0, 48))
    with pytest.raises(ValueError, match="box_threshold"):
        PostprocessParams(box_threshold=1.5)
    with pytest.raises(ValueError, match="max_detections"):
        PostprocessParams(max_detections=70000)


def test_label_image_is_uint8_up_to_255_instances_and_uint16_above(tokenizer) -> None:
    prompt = encode_prompt("dot", "phrases", tokenizer)
    n = 300
    out = blank(prompt, queries=n, mask_hw=(30, 40))
    out[PRED_LOGITS][0, :, 1] = np.linspace(3.0, 1.0, n)  # scores in query order
    masks = out[PRED_MASKS][0, :, 0]
    for q in range(n):  # one mask sample each, on a 30 x 40 grid: no overlaps
        masks[q, q // 10, q % 10 * 4] = 5.0
    params = PostprocessParams(nms_threshold=0.0)
    every = postprocess(out, prompt, (120, 160), params)
    assert len(every.detections) == n and every.label_image.dtype == np.uint16
    assert set(np.unique(every.label_image)) == set(range(n + 1))
    fewer = postprocess(out, prompt, (120, 160), dataclasses.replace(params, max_detections=255))
    assert fewer.label_image.dtype == np.uint8
    np.testing.assert_array_equal(fewer.label_image, np.where(every.label_image > 255, 0, every.label_image))


def reference_labels(planes: np.ndarray, image_hw: tuple[int, int], threshold: float) -> np.ndarray:
    """TAO's full-size masks painted from the last plane to the first: the first plane above wins."""
    labels = np.zeros(image_hw, np.uint16)
    for k in range(len(planes) - 1, -1, -1):
        with np.errstate(invalid="ignore"):
            up = cv2.resize(planes[k], (image_hw[1], image_hw[0]), interpolation=cv2.INTER_LINEAR)
        labels[up > threshold] = k + 1
    return labels


@pytest.mark.parametrize(
    "image_hw", [pytest.param((1080, 1920), marks=pytest.mark.slow), (240, 427), (37, 61), (5, 7)]
)
@pytest.mark.parametrize("threshold", [0.0, logit(0.8), -1.0])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_image_equals_painting_every_full_size_mask(image_hw: tuple[int, int], threshold: float,
                                                          dtype: type, generic_resize: None) -> None:
    rng = np.random.default_rng(11)
    for mask_hw in ((136, 240), (8, 12), (17, 5)):
        n = 30
        coarse = rng.normal(0.0, 6.0, (n, 5, 7)).astype(np.float32)
        planes = np.stack([cv2.resize(c, mask_hw[::-1], interpolation=cv2.INTER_CUBIC) for c in coarse])
        planes += rng.normal(-2.0, 3.0, (n, 1, 1)).astype(np.float32)  # from small blobs to most of the image
        planes[3] = np.round(planes[3])  # samples exactly at the threshold 0
        labels = np.zeros(image_hw, dtype)
        MaskUpsampler(mask_hw, image_hw).paint_labels(planes, threshold, labels)
        np.testing.assert_array_equal(labels, reference_labels(planes, image_hw, threshold))
        blobs = np.full((3, *mask_hw), -8.0, np.float32)  # small masks: painted window by window
        for k, blob in enumerate(blobs):
            blob[k : k + 2, 2 * k : 2 * k + 3] = 3.0 - k
        labels[...] = 0
        MaskUpsampler(mask_hw, image_hw).paint_labels(blobs, threshold, labels)
        np.testing.assert_array_equal(labels, reference_labels(blobs, image_hw, threshold))
        planes[0, :2] = np.inf  # non-finite logits take OpenCV's own resize
        planes[-1, -2:] = -np.inf
        planes[1, 1, 1] = np.nan
        labels[...] = 0
        MaskUpsampler(mask_hw, image_hw).paint_labels(planes, threshold, labels)
        np.testing.assert_array_equal(labels, reference_labels(planes, image_hw, threshold))


def test_half_precision_planes_are_windowed_in_float32(generic_resize: None) -> None:
    # In float16 the window's bound (the threshold less a small margin) would round up to this sample
    # value, which is above the threshold: the samples equal to it would be left out of the window.
    value = np.float16(1420 / 1024)
    threshold = float(value) - 1e-4
    plane = np.full((8, 12), -5.0, np.float16)
    plane[3:6, 5:8] = value
    labels = np.zeros((32, 48), np.uint8)
    MaskUpsampler((8, 12), (32, 48)).paint_labels([plane], threshold, labels)
    expected = reference_labels(plane[None].astype(np.float32), (32, 48), threshold)
    assert expected.any()
    np.testing.assert_array_equal(labels, expected)


def test_full_size_masks_are_computed_when_read(tokenizer, generic_resize: None) -> None:
    prompt = encode_prompt("cat . dog", "phrases", tokenizer)
    out = blank(prompt)
    logits, masks = out[PRED_LOGITS][0], out[PRED_MASKS][0, :, 0]
    logits[2, 1] = logit(0.9)
    masks[2, 2:6, 3:9] = 4.0
    result = postprocess(out, prompt, (32, 48))
    detection = result.detections[0]
    assert callable(detection.mask_source) and "mask" not in vars(detection)  # not computed yet
    expected = reference_mask(masks[2], (32, 48))
    np.testing.assert_array_equal(detection.mask, expected)
    assert detection.mask is detection.mask  # computed once
    y0, y1, x0, x1 = detection.mask_window or (0, 0, 0, 0)
    assert expected[y0:y1, x0:x1].sum() == expected.sum() > 0
    crop = result.detections[0].crop  # from the logits: no full-size mask is made for it
    assert callable(detection.crop_source)
    assert_tight_crop(crop, expected)


class CountingMasks(ArrayMasks):
    """ArrayMasks that records the query of every plane read."""

    def __init__(self, array: np.ndarray) -> None:
        super().__init__(array)
        self.read: list[int] = []

    def planes(self, queries: np.ndarray) -> np.ndarray:
        self.read.extend(int(q) for q in queries)
        return super().planes(queries)


def test_ioi_reads_each_plane_once_and_not_those_nms_suppressed_first(tokenizer) -> None:
    prompt = encode_prompt("cat", "phrases", tokenizer)
    objects, copies = 10, 3  # each object found by three queries with near-identical boxes, as engines do
    out = add_rela(blank(prompt, queries=objects * copies, mask_hw=(16, 40)))
    logits, boxes, masks = out[PRED_LOGITS][0], out[PRED_BOXES][0], out[PRED_MASKS][0, :, 0]
    for k in range(objects):
        for copy in range(copies):
            q = copy * objects + k  # every object's best query first, then the second-best ones, ...
            logits[q, 1] = logit(0.9 - 0.01 * k - 0.2 * copy)
            boxes[q] = [(k + 0.5) / objects, 0.5, 0.08, 0.5]
            masks[q, 4:12, 4 * k : 4 * k + 3] = 5.0
    counting = CountingMasks(out[PRED_MASKS])
    result = postprocess(out, prompt, (64, 160), masks=counting)
    best = [round(0.9 - 0.01 * k, 4) for k in range(objects)]
    assert [round(d.score, 4) for d in result.detections] == best
    assert len(counting.read) == len(set(counting.read))  # no plane read twice
    assert len(counting.read) < objects * copies  # not every candidate's plane: NMS suppressed some first
    expected = postprocess(out, prompt, (64, 160))
    np.testing.assert_array_equal(result.label_image, expected.label_image)
    for found in result.detections:
        assert_tight_crop(found.crop, reference_mask(masks[found.instance_id - 1], (64, 160)))
