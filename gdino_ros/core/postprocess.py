"""Engine outputs -> detections, instance masks, a label image and the no-target decision (contract §4).

Order of operations, per frame (batch 1):

1. ReLA head (5-output models): ``no_target = argmax(no_targets) == 1``; when it fires the result is empty.
2. Token probabilities ``sigmoid(pred_logits)`` (−inf gives exactly 0). Phrases mode: a phrase's score is the
   mean of its tokens' probabilities (the prompt's normalised positive map); expression mode: every
   (query, token) pair is a candidate, as in TAO.
3. The ``num_select`` best (query, class) pairs, of which those with ``score >= conf_threshold`` stay.
   Taking the confident ones first and then the best ``num_select`` of them selects the same set.
4. ReLA: intersection-over-instance filter. As in TAO's PyTorch 7.0 reference, at the mask resolution
   (H/4, W/4): the union map ``argmax(union_mask_logits)`` (H/8) is bilinearly upsampled, any value > 0 is
   foreground, and an instance mask (``sigmoid(logit) > mask_threshold``) stays when
   ``|mask ∩ union| / (|mask| + 1e-6) > ioi_threshold``. Both 3. and 4. are per-candidate filters on the
   top-k set, so evaluating 4. only on the candidates that passed 3. gives TAO's result.
5. Boxes cxcywh -> xyxy in original-image pixels, clipped (TAO Deploy); class-agnostic greedy NMS (IoU
   strictly above ``nms_threshold`` suppresses; skipped when it is 0); at most ``max_detections`` kept.
6. Masks of the survivors only, at the original resolution: exactly OpenCV's ``INTER_LINEAR`` resize of
   the (H/4, W/4) logits followed by ``sigmoid > mask_threshold`` (TAO Deploy), evaluated only where the
   answer is not already decided by the four source logits around a pixel (see :class:`MaskUpsampler`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from gdino_ros.contract import (
    CONF_THRESHOLD,
    IOI_THRESHOLD,
    MASK_THRESHOLD,
    NMS_THRESHOLD,
    NO_TARGET_INDEX,
    NO_TARGETS,
    NUM_SELECT,
    PRED_BOXES,
    PRED_LOGITS,
    PRED_MASKS,
    TEXT_THRESHOLD,
    UNION_MASK_LOGITS,
)
from gdino_ros.core.prompt import EncodedPrompt
from gdino_ros.core.result import PHRASES, Detection, Result

_LABEL_MAX = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class PostprocessParams:
    """Post-processing thresholds; the defaults are TAO's inference spec (contract §4.4).

    ``max_detections`` caps the output after NMS (the default keeps everything ``num_select`` allows).
    ``mask_threshold`` applies to ``sigmoid(mask logit)``.
    """

    conf_threshold: float = CONF_THRESHOLD
    nms_threshold: float = NMS_THRESHOLD
    text_threshold: float = TEXT_THRESHOLD
    ioi_threshold: float = IOI_THRESHOLD
    num_select: int = NUM_SELECT
    max_detections: int = NUM_SELECT
    mask_threshold: float = MASK_THRESHOLD

    def __post_init__(self) -> None:
        for name in ("conf_threshold", "nms_threshold", "text_threshold", "ioi_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}.")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be within (0, 1), got {self.mask_threshold}.")
        if self.num_select < 1:
            raise ValueError(f"num_select must be at least 1, got {self.num_select}.")
        if not 1 <= self.max_detections <= _LABEL_MAX:
            raise ValueError(f"max_detections must be within [1, {_LABEL_MAX}] (the label image is uint16), "
                             f"got {self.max_detections}.")

    @property
    def mask_logit_threshold(self) -> float:
        """``mask_threshold`` as a logit: ``sigmoid(x) > t`` exactly when ``x > log(t / (1 - t))``."""
        return math.log(self.mask_threshold / (1.0 - self.mask_threshold))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Elementwise logistic function in float32; −inf gives exactly 0 and +inf exactly 1, no NaN."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


def postprocess(
    outputs: Mapping[str, np.ndarray],
    prompt: EncodedPrompt,
    image_hw: tuple[int, int],
    params: PostprocessParams | None = None,
) -> Result:
    """Decode one frame's engine outputs into a :class:`Result` for an original image of ``image_hw``.

    ``outputs`` maps contract output names to arrays with the batch dimension: ``pred_logits``
    [1, Q, 256], ``pred_boxes`` [1, Q, 4], ``pred_masks`` [1, Q, 1, h, w] and, for ReLA models,
    ``no_targets`` [1, 2] and ``union_mask_logits`` [1, 2, hu, wu] (float32 or float16).

    Without a ReLA head ``no_target_probability`` is NaN and ``no_target`` means "nothing detected" (TAO
    Deploy's reading). ``timings_ms`` is left empty for the caller.
    """
    params = params or PostprocessParams()
    height, width = int(image_hw[0]), int(image_hw[1])
    if height < 1 or width < 1:
        raise ValueError(f"image_hw must be a positive (height, width), got {image_hw}.")
    logits, boxes, masks, no_targets, union = _read_outputs(outputs)
    label_image = np.zeros((height, width), dtype=np.uint16)

    no_target_probability = math.nan
    if no_targets is not None:
        z = no_targets.astype(np.float64)
        z = np.exp(z - z.max())
        no_target_probability = float(z[NO_TARGET_INDEX] / z.sum())
        if int(np.argmax(no_targets)) == NO_TARGET_INDEX:
            return Result(prompt.text, prompt.mode, [], label_image, True, no_target_probability)

    scores, queries, classes, token_probs = _select(logits, prompt, params)
    threshold = params.mask_logit_threshold
    if union is not None and params.ioi_threshold > 0 and queries.size:
        keep = ioi_keep(masks[queries], union, threshold, params.ioi_threshold)
        scores, queries, classes = scores[keep], queries[keep], classes[keep]

    boxes_xyxy = boxes_to_pixels(boxes[queries], height, width)
    keep = np.arange(len(scores))
    if params.nms_threshold > 0:  # TAO skips NMS at 0
        keep = nms(boxes_xyxy, scores, params.nms_threshold)
    keep = keep[: params.max_detections]
    scores, queries, classes, boxes_xyxy = scores[keep], queries[keep], classes[keep], boxes_xyxy[keep]
    labels, phrase_indices = _labels(prompt, queries, classes, token_probs, params.text_threshold)

    upsampler = MaskUpsampler.for_sizes(masks.shape[1:], (height, width))
    crops = [upsampler.crop(masks[q], threshold) for q in queries]
    instance_masks = []
    for crop in crops:
        mask = np.zeros((height, width), dtype=np.bool_)
        if crop is not None:
            y0, x0, part = crop
            mask[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]] = part
        instance_masks.append(mask)
    # Lowest score first, so that where instances overlap the higher score is written last and wins.
    for k in range(len(crops) - 1, -1, -1):
        crop = crops[k]
        if crop is not None:
            y0, x0, part = crop
            region = label_image[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]]
            np.copyto(region, np.uint16(k + 1), where=part)

    detections = [
        Detection(
            instance_id=k + 1,
            label=labels[k],
            phrase_index=phrase_indices[k],
            score=float(scores[k]),
            box_xyxy=(float(boxes_xyxy[k, 0]), float(boxes_xyxy[k, 1]),
                      float(boxes_xyxy[k, 2]), float(boxes_xyxy[k, 3])),
            mask=instance_masks[k],
        )
        for k in range(len(queries))
    ]
    no_target = False if no_targets is not None else not detections
    return Result(prompt.text, prompt.mode, detections, label_image, no_target, no_target_probability)


def _read_outputs(
    outputs: Mapping[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Check the engine outputs and drop the batch dimension (and the mask channel)."""
    missing = [name for name in (PRED_LOGITS, PRED_BOXES, PRED_MASKS) if name not in outputs]
    if missing:
        raise ValueError(f"Engine outputs lack {missing}; got {sorted(outputs)}. "
                         "Is this a Mask Grounding DINO model exported with masks?")
    if (NO_TARGETS in outputs) != (UNION_MASK_LOGITS in outputs):
        raise ValueError(f"A ReLA model has both {NO_TARGETS} and {UNION_MASK_LOGITS}; "
                         f"got {sorted(outputs)}.")
    logits = np.asarray(outputs[PRED_LOGITS])
    boxes = np.asarray(outputs[PRED_BOXES])
    masks = np.asarray(outputs[PRED_MASKS])
    if logits.ndim != 3 or logits.shape[0] != 1:
        raise ValueError(f"{PRED_LOGITS} must be [1, Q, 256], got {logits.shape}.")
    queries = logits.shape[1]
    if boxes.shape != (1, queries, 4):
        raise ValueError(f"{PRED_BOXES} must be [1, {queries}, 4], got {boxes.shape}.")
    if masks.ndim != 5 or masks.shape[:3] != (1, queries, 1):
        raise ValueError(f"{PRED_MASKS} must be [1, {queries}, 1, H/4, W/4], got {masks.shape}.")
    no_targets = union = None
    if NO_TARGETS in outputs:
        no_targets = np.asarray(outputs[NO_TARGETS]).reshape(-1)
        union = np.asarray(outputs[UNION_MASK_LOGITS])
        if no_targets.shape != (2,):
            raise ValueError(f"{NO_TARGETS} must be [1, 2], got {np.shape(outputs[NO_TARGETS])}.")
        if union.ndim != 4 or union.shape[:2] != (1, 2):
            raise ValueError(f"{UNION_MASK_LOGITS} must be [1, 2, H/8, W/8], got {union.shape}.")
        union = union[0]
    return logits[0], boxes[0], masks[0, :, 0], no_targets, union


def _select(
    logits: np.ndarray, prompt: EncodedPrompt, params: PostprocessParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores, query and class indices of the confident top-k (query, class) pairs, best first.

    A class is a phrase (phrases mode) or a token (expression mode). Also returns the token probabilities
    [Q, n] of the prompt's n real tokens, for expression labels.
    """
    num_tokens = prompt.num_tokens
    token_probs = sigmoid(logits[:, :num_tokens])
    if prompt.mode == PHRASES:
        assert prompt.positive_map is not None
        class_probs = token_probs @ prompt.positive_map[:, :num_tokens].T
    else:
        class_probs = token_probs
    flat = class_probs.reshape(-1)
    candidates = np.flatnonzero(flat >= params.conf_threshold)
    if candidates.size > params.num_select:
        best = np.argpartition(-flat[candidates], params.num_select - 1)[: params.num_select]
        candidates = candidates[best]
    scores = flat[candidates]
    order = np.lexsort((candidates, -scores))  # score descending, then (query, class) index
    candidates = candidates[order]
    num_classes = class_probs.shape[1]
    return scores[order], candidates // num_classes, candidates % num_classes, token_probs


def _labels(
    prompt: EncodedPrompt,
    queries: np.ndarray,
    classes: np.ndarray,
    token_probs: np.ndarray,
    text_threshold: float,
) -> tuple[list[str], list[int]]:
    """Phrase per detection (phrases mode) or the expression words whose tokens pass ``text_threshold``.

    Expression labels list the matched words once each, in the expression's order, with the user's casing
    (TAO decodes the matched token ids instead, which lower-cases and can cut words into word pieces).
    """
    if prompt.mode == PHRASES:
        return [prompt.phrases[c] for c in classes], [int(c) for c in classes]
    token_words = prompt.token_words[: token_probs.shape[1]]
    labels = []
    for q in queries:
        selected = token_words[(token_probs[q] > text_threshold) & (token_words >= 0)]
        labels.append(" ".join(prompt.words[w] for w in np.unique(selected)))
    return labels, [-1] * len(labels)


def boxes_to_pixels(boxes_cxcywh: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised (cx, cy, w, h) [N, 4] -> float64 pixel (x0, y0, x1, y1) [N, 4], clipped to the image."""
    b = boxes_cxcywh.astype(np.float64)
    half_w, half_h = b[:, 2] / 2, b[:, 3] / 2
    xyxy = np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], axis=1)
    xyxy *= np.array([width, height, width, height], dtype=np.float64)
    np.clip(xyxy[:, 0::2], 0, width, out=xyxy[:, 0::2])
    np.clip(xyxy[:, 1::2], 0, height, out=xyxy[:, 1::2])
    return xyxy


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy class-agnostic NMS: indices kept, best score first (ties: lower index first).

    A box is suppressed by a kept, better box when their IoU is strictly above ``iou_threshold``;
    boxes of zero area overlap nothing.
    """
    n = scores.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(n), -scores))
    b = boxes_xyxy[order]
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    x0, y0, x1, y1 = (b[:, i] for i in range(4))
    inter_w = np.clip(np.minimum(x1[:, None], x1[None, :]) - np.maximum(x0[:, None], x0[None, :]), 0, None)
    inter_h = np.clip(np.minimum(y1[:, None], y1[None, :]) - np.maximum(y0[:, None], y0[None, :]), 0, None)
    inter = inter_w * inter_h
    union = area[:, None] + area[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        over = np.where(union > 0, inter / union, 0.0) > iou_threshold
    suppressed = np.zeros(n, dtype=np.bool_)
    kept = []
    for i in range(n):
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= over[i]
    return order[np.array(kept, dtype=np.int64)]


def union_foreground(union_logits: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """TAO's union map at ``out_hw``: argmax over the 2 channels, bilinearly upsampled, > 0. Bool [h, w].

    A bilinear sample of a 0/1 map is > 0 exactly when one of the source pixels with a non-zero weight is
    1, so the upsampling is an OR over those pixels (PyTorch ``align_corners=False`` geometry).
    """
    foreground = union_logits[1] > union_logits[0]  # argmax; a tie is background (index 0)
    for axis, size in ((0, out_hw[0]), (1, out_hw[1])):
        i0, i1, w0, w1 = _torch_bilinear_axis(foreground.shape[axis], size)
        a = np.take(foreground, i0, axis=axis)
        b = np.take(foreground, i1, axis=axis)
        shape = (-1, 1) if axis == 0 else (1, -1)
        foreground = (a & (w0 > 0).reshape(shape)) | (b & (w1 > 0).reshape(shape))
    return foreground


def _torch_bilinear_axis(n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    scale = np.float32(n_src / n_dst)
    src = np.maximum((np.arange(n_dst, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    i0 = np.minimum(src.astype(np.int64), n_src - 1)
    i1 = np.minimum(i0 + 1, n_src - 1)
    w1 = src - i0.astype(np.float32)
    return i0, i1, np.float32(1) - w1, w1


def ioi_keep(
    mask_logits: np.ndarray, union_logits: np.ndarray, logit_threshold: float, ioi_threshold: float
) -> np.ndarray:
    """Bool [N]: which masks (logits [N, h, w]) lie mostly inside the union map (IoI > ``ioi_threshold``)."""
    foreground = union_foreground(union_logits, mask_logits.shape[1:])
    binary = mask_logits > logit_threshold
    inside = np.count_nonzero(binary & foreground, axis=(1, 2))
    area = np.count_nonzero(binary, axis=(1, 2))
    return inside / (area + 1e-6) > ioi_threshold


@dataclass(frozen=True, eq=False)
class _LinearAxis:
    """OpenCV ``INTER_LINEAR`` along one axis: per destination index, two source indices and weights.

    ``cell`` numbers the pair of neighbouring source samples a destination index reads, in the
    edge-replicated source: cell c reads samples c-1 and c (clamped to the array), c in [0, n_src].
    """

    i0: np.ndarray  # int64 [n_dst]
    i1: np.ndarray  # int64 [n_dst]
    w0: np.ndarray  # float32 [n_dst]
    w1: np.ndarray  # float32 [n_dst]
    cell: np.ndarray  # int64 [n_dst], non-decreasing


def _opencv_linear_axis(n_src: int, n_dst: int, edge_weight_one: bool) -> _LinearAxis:
    """Coefficients exactly as OpenCV's generic resize computes them (float32 fractions of a double map).

    OpenCV's horizontal pass gives an edge sample weight 1 outside the source (``edge_weight_one``); its
    vertical pass keeps the fraction and clamps the row indices instead.
    """
    scale = 1.0 / (n_dst / n_src)
    position = ((np.arange(n_dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(position).astype(np.int64)
    fraction = position - start.astype(np.float32)
    cell = np.clip(start + 1, 0, n_src)
    if edge_weight_one:
        outside = (start < 0) | (start >= n_src - 1)
        fraction[outside] = 0
        start = np.clip(start, 0, n_src - 1)
    i0 = np.clip(start, 0, n_src - 1)
    i1 = np.clip(start + 1, 0, n_src - 1)
    return _LinearAxis(i0, i1, np.float32(1) - fraction, fraction, cell)


class MaskUpsampler:
    """Threshold the bilinear upsampling of a low-resolution mask logit map without computing all of it.

    The result equals ``cv2.resize(logits, (W, H), interpolation=cv2.INTER_LINEAR) > threshold`` with
    OpenCV's own resize code (the Intel IPP variant that x86 wheels may dispatch to rounds differently), bit
    for bit: every output pixel is a weighted mean of the 2×2 source logits around it, so where all four
    are above the threshold (or none is) the answer is known without interpolating. Only pixels in
    source cells that straddle the threshold are interpolated, with OpenCV's float32 arithmetic, and only
    the rectangle that can hold foreground is touched. The cost therefore follows the mask's extent and
    outline, not the image size.
    """

    def __init__(self, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> None:
        self.src_hw = (int(src_hw[0]), int(src_hw[1]))
        self.dst_hw = (int(dst_hw[0]), int(dst_hw[1]))
        self._rows = _opencv_linear_axis(self.src_hw[0], self.dst_hw[0], edge_weight_one=False)
        self._cols = _opencv_linear_axis(self.src_hw[1], self.dst_hw[1], edge_weight_one=True)

    @staticmethod
    @lru_cache(maxsize=8)
    def for_sizes(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> MaskUpsampler:
        """Return a cached upsampler (the coefficient tables depend only on the two sizes)."""
        return MaskUpsampler(src_hw, dst_hw)

    def crop(self, logits: np.ndarray, threshold: float) -> tuple[int, int, np.ndarray] | None:
        """``(y0, x0, mask)``: bool ``mask`` holds every output pixel above ``threshold``; None if none is.

        ``logits`` is one float [h, w] map; ``mask`` covers rows y0.. and columns x0.. of the output.
        """
        logits = np.asarray(logits, dtype=np.float32)
        h, w = self.src_hw
        # Four samples all <= lo give a value <= threshold; all > hi give a value > threshold. At threshold
        # 0 this is exact by sign; otherwise the margin covers float32 rounding.
        margin = 0.0 if threshold == 0 else 1e-4 * (1.0 + abs(threshold))
        lo, hi = threshold - margin, threshold + margin + 1e-30
        above = logits > lo
        rows = np.flatnonzero(above.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(above.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
        # Cells r0 .. r1+1 read source rows r0-1 .. r1+1 (clamped); other cells hold no foreground.
        row_idx = np.clip(np.arange(r0 - 1, r1 + 2), 0, h - 1)
        col_idx = np.clip(np.arange(c0 - 1, c1 + 2), 0, w - 1)
        sub = logits[row_idx[:, None], col_idx[None, :]]
        cell_min = np.minimum(np.minimum(sub[:-1, :-1], sub[1:, :-1]), np.minimum(sub[:-1, 1:], sub[1:, 1:]))
        cell_max = np.maximum(np.maximum(sub[:-1, :-1], sub[1:, :-1]), np.maximum(sub[:-1, 1:], sub[1:, 1:]))
        # 1: foreground, 0: background, 2: straddles the threshold.
        status = np.where(cell_min > hi, np.uint8(1), np.where(cell_max > lo, np.uint8(2), np.uint8(0)))
        cell_y, cell_x = self._rows.cell, self._cols.cell
        y0, y1 = int(np.searchsorted(cell_y, r0, "left")), int(np.searchsorted(cell_y, r1 + 1, "right"))
        x0, x1 = int(np.searchsorted(cell_x, c0, "left")), int(np.searchsorted(cell_x, c1 + 1, "right"))
        if y1 <= y0 or x1 <= x0:
            return None
        expanded = status[:, cell_x[x0:x1] - c0][cell_y[y0:y1] - r0]
        straddling = np.flatnonzero(expanded == 2)
        if straddling.size:
            width = x1 - x0
            expanded.reshape(-1)[straddling] = self._values(
                logits, straddling // width + y0, straddling % width + x0
            ) > threshold
        return y0, x0, expanded.view(np.bool_)

    def _values(self, logits: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """OpenCV's float32 bilinear value at output pixels (ys, xs): horizontal pass, then vertical."""
        rows, cols = self._rows, self._cols
        j0, j1, a0, a1 = cols.i0[xs], cols.i1[xs], cols.w0[xs], cols.w1[xs]
        i0, i1 = rows.i0[ys], rows.i1[ys]
        top = logits[i0, j0] * a0 + logits[i0, j1] * a1
        bottom = logits[i1, j0] * a0 + logits[i1, j1] * a1
        return top * rows.w0[ys] + bottom * rows.w1[ys]

    def full_mask(self, logits: np.ndarray, threshold: float) -> np.ndarray:
        """Bool [H, W]: the whole thresholded upsampled mask."""
        mask = np.zeros(self.dst_hw, dtype=np.bool_)
        crop = self.crop(logits, threshold)
        if crop is not None:
            y0, x0, part = crop
            mask[y0 : y0 + part.shape[0], x0 : x0 + part.shape[1]] = part
        return mask
