"""Engine outputs -> detections, instance masks, a label image and the no-target decision.

The rules: docs/engine_contract.md#post-processing.

Order of operations, per frame (batch 1):

1. ReLA head (5-output models): ``no_target = argmax(no_targets) == 1``; when it fires the result is empty.
2. Token probabilities ``sigmoid(pred_logits)`` (−inf gives exactly 0). Phrases mode: a phrase's score is the
   mean of its tokens' probabilities (the prompt's normalised positive map); expression mode: every
   (query, token) pair is a candidate, as in TAO.
3. The ``num_select`` best (query, class) pairs, of which those with ``score >= box_threshold`` stay.
   Taking the confident ones first and then the best ``num_select`` of them selects the same set.
4. ReLA: intersection-over-instance filter. As in TAO's PyTorch 7.0 reference, at the mask resolution
   (H/4, W/4): the union map ``argmax(union_mask_logits)`` (H/8) is bilinearly upsampled, any value > 0 is
   foreground, and an instance mask (``sigmoid(logit) > mask_threshold``) stays when
   ``|mask ∩ union| / (|mask| + 1e-6) > ioi_threshold``.
5. Boxes cxcywh -> xyxy in original-image pixels, clipped (TAO Deploy); class-agnostic greedy NMS (IoU
   strictly above ``nms_threshold`` suppresses; skipped when it is 0); at most ``max_detections`` kept.
   3.-5. give TAO's result (top-k, IoI, confidence, NMS), but 4. is computed only for the candidates that
   3. and 5. leave, in one greedy pass (IoI and confidence are per-candidate filters, and a candidate that
   fails IoI never suppresses another).
6. Masks of the survivors only, at the original resolution: exactly OpenCV's ``INTER_LINEAR`` resize of
   the (H/4, W/4) logits followed by ``sigmoid > mask_threshold`` (TAO Deploy), computed only on the
   rectangle of each mask that can hold foreground (see :class:`MaskUpsampler`). The label image is
   painted from the lowest score up, so that overlaps go to the higher score.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from gdino_ros.backends.base import ArrayMasks, MaskPlanes
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
from gdino_ros.settings import check_settings, setting

_LABEL_MAX = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class PostprocessParams:
    """Post-processing thresholds; the defaults are TAO's inference spec.

    ``max_detections`` caps the output after NMS (the default keeps everything ``num_select`` allows).
    ``mask_threshold`` applies to ``sigmoid(mask logit)``. The fields declared with
    :func:`~gdino_ros.settings.setting` are user-facing settings: the node's parameters and every tool's
    flags of the same names are generated from them (``box_threshold`` is TAO's ``conf_threshold``).
    """

    box_threshold: float = setting(CONF_THRESHOLD, "Minimum detection score.", low=0.0, high=1.0)
    nms_threshold: float = setting(
        NMS_THRESHOLD,
        "Class-agnostic NMS: a box overlapping a better one with IoU above this is dropped; 0 disables NMS.",
        low=0.0,
        high=1.0,
    )
    text_threshold: float = setting(
        TEXT_THRESHOLD,
        "Minimum token probability for a word of the prompt to label a box.",
        low=0.0,
        high=1.0,
    )
    ioi_threshold: float = IOI_THRESHOLD
    num_select: int = NUM_SELECT
    max_detections: int = setting(
        NUM_SELECT,
        "At most this many instances per frame, best first (ids of a uint16 label image).",
        low=1,
        high=_LABEL_MAX,
    )
    mask_threshold: float = setting(
        MASK_THRESHOLD,
        "A pixel belongs to an instance when its mask probability exceeds this.",
        low=0.0,
        high=1.0,
        open_range=True,
    )

    def __post_init__(self) -> None:
        check_settings(self)  # the user-facing ones, by the names users know
        if not 0.0 <= self.ioi_threshold <= 1.0:
            raise ValueError(f"ioi_threshold must be within [0, 1], got {self.ioi_threshold}.")
        if self.num_select < 1:
            raise ValueError(f"num_select must be at least 1, got {self.num_select}.")

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
    *,
    masks: MaskPlanes | None = None,
) -> Result:
    """Decode one frame's engine outputs into a :class:`Result` for an original image of ``image_hw``.

    ``outputs`` maps contract output names to arrays with the batch dimension: ``pred_logits``
    [1, Q, 256], ``pred_boxes`` [1, Q, 4], ``pred_masks`` [1, Q, 1, h, w] and, for ReLA models,
    ``no_targets`` [1, 2] and ``union_mask_logits`` [1, 2, hu, wu] (float32 or float16). ``masks``, if
    given, replaces ``pred_masks``: only the planes of the candidates (ReLA IoI test) or of the kept
    detections are read from it.

    Without a ReLA head ``no_target_probability`` is NaN and ``no_target`` means "nothing detected" (TAO
    Deploy's reading). ``timings_ms`` is left empty for the caller.
    """
    params = params or PostprocessParams()
    height, width = int(image_hw[0]), int(image_hw[1])
    if height < 1 or width < 1:
        raise ValueError(f"image_hw must be a positive (height, width), got {image_hw}.")
    logits, boxes, masks, no_targets, union = _read_outputs(outputs, masks)
    mask_hw = (int(masks.shape[3]), int(masks.shape[4]))
    label_image = np.zeros((height, width), dtype=np.uint16)

    no_target_probability = math.nan
    if no_targets is not None:
        z = no_targets.astype(np.float64)
        z = np.exp(z - z.max())
        no_target_probability = float(z[NO_TARGET_INDEX] / z.sum())
        if int(np.argmax(no_targets)) == NO_TARGET_INDEX:
            return Result(prompt.text, prompt.mode, [], label_image, True, no_target_probability)

    scores, queries, classes, token_probs = _select(logits, prompt, params)
    boxes_xyxy = boxes_to_pixels(boxes[queries], height, width)
    if union is not None and params.ioi_threshold > 0:
        # The IoI test reads the candidates' masks: fetch each candidate query's plane once.
        candidates, rows = np.unique(queries, return_inverse=True)
        candidate_masks = masks.planes(candidates)
        keep = _filter(scores, boxes_xyxy, candidate_masks, rows, union_foreground(union, mask_hw), params)
        kept_masks = candidate_masks[rows[keep]]
    else:
        keep = _filter(scores, boxes_xyxy, np.empty((0, *mask_hw), np.float32), queries, None, params)
        kept_masks = masks.planes(queries[keep])
    scores, queries, classes, boxes_xyxy = scores[keep], queries[keep], classes[keep], boxes_xyxy[keep]
    labels, phrase_indices = _labels(prompt, queries, classes, token_probs, params.text_threshold)

    # One block for all instance masks: a single allocation whose pages are touched only where masks are.
    instance_masks = np.zeros((len(queries), height, width), dtype=np.bool_)
    upsampler = MaskUpsampler(mask_hw, (height, width))
    rectangles = [upsampler.paint(kept_masks[k], params.mask_logit_threshold, instance_masks[k])
                  for k in range(len(queries))]
    # Lowest score first, so that where instances overlap the higher score is written last and wins.
    for k in range(len(rectangles) - 1, -1, -1):
        rectangle = rectangles[k]
        if rectangle is not None:
            y0, y1, x0, x1 = rectangle
            np.copyto(label_image[y0:y1, x0:x1], np.uint16(k + 1), where=instance_masks[k, y0:y1, x0:x1])

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
    outputs: Mapping[str, np.ndarray], masks: MaskPlanes | None
) -> tuple[np.ndarray, np.ndarray, MaskPlanes, np.ndarray | None, np.ndarray | None]:
    """Check the engine outputs and drop the batch dimension of the arrays."""
    required = (PRED_LOGITS, PRED_BOXES) if masks is not None else (PRED_LOGITS, PRED_BOXES, PRED_MASKS)
    missing = [name for name in required if name not in outputs]
    if missing:
        raise ValueError(f"Engine outputs lack {missing}; got {sorted(outputs)}. "
                         "Is this a Mask Grounding DINO model exported with masks?")
    if (NO_TARGETS in outputs) != (UNION_MASK_LOGITS in outputs):
        raise ValueError(f"A ReLA model outputs both {NO_TARGETS} and {UNION_MASK_LOGITS}, but only one of "
                         f"them came: {sorted(outputs)}.")
    logits = np.asarray(outputs[PRED_LOGITS])
    boxes = np.asarray(outputs[PRED_BOXES])
    if masks is None:
        masks = ArrayMasks(np.asarray(outputs[PRED_MASKS]))
    if logits.ndim != 3 or logits.shape[0] != 1:
        raise ValueError(f"{PRED_LOGITS} must be [1, Q, 256], got {logits.shape}.")
    queries = logits.shape[1]
    if boxes.shape != (1, queries, 4):
        raise ValueError(f"{PRED_BOXES} must be [1, {queries}, 4], got {boxes.shape}.")
    if len(masks.shape) != 5 or masks.shape[:3] != (1, queries, 1):
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
    return logits[0], boxes[0], masks, no_targets, union


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
    candidates = np.flatnonzero(flat >= params.box_threshold)
    if candidates.size > params.num_select:
        # The num_select best; among equal scores at the cut, the lowest (query, class) index.
        values = flat[candidates]
        cut = np.partition(values, candidates.size - params.num_select)[candidates.size - params.num_select]
        above = candidates[values > cut]
        at_cut = candidates[values == cut][: params.num_select - above.size]
        candidates = np.concatenate([above, at_cut])
    scores = flat[candidates]
    order = np.lexsort((candidates, -scores))  # score descending, then (query, class) index
    candidates = candidates[order]
    scores = scores[order]
    num_classes = class_probs.shape[1]
    return scores, candidates // num_classes, candidates % num_classes, token_probs


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


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box [4] with each of ``boxes`` [N, 4]; 0 where the union has no area."""
    inter_w = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0.0)
    inter_h = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0.0)
    inter = inter_w * inter_h
    area = (box[2] - box[0]) * (box[3] - box[1])
    union = area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _filter(
    scores: np.ndarray,
    boxes_xyxy: np.ndarray,
    masks: np.ndarray,
    rows: np.ndarray,
    foreground: np.ndarray | None,
    params: PostprocessParams,
) -> np.ndarray:
    """Return the candidates (indices, best first) that pass the IoI filter, NMS and the cap.

    Candidate i's mask logits are ``masks[rows[i]]`` (read only when ``foreground`` is given). One greedy
    pass: a candidate that fails the IoI test neither stays nor suppresses others, exactly as if the IoI
    filter had run on all candidates before NMS; but the test is only paid for candidates that NMS has not
    already suppressed. NMS: a kept box suppresses later boxes whose IoU with it is strictly above
    ``nms_threshold`` (TAO skips NMS at 0).
    """
    threshold = params.mask_logit_threshold
    suppressed = np.zeros(scores.shape[0], dtype=np.bool_)
    kept: list[int] = []
    for i in range(scores.shape[0]):
        if suppressed[i]:
            continue
        if foreground is not None:
            binary = masks[rows[i]] > threshold
            inside = np.count_nonzero(binary & foreground) / (np.count_nonzero(binary) + 1e-6)
            if not inside > params.ioi_threshold:
                continue
        kept.append(i)
        if len(kept) == params.max_detections:
            break
        if params.nms_threshold > 0:
            suppressed |= box_iou(boxes_xyxy[i], boxes_xyxy) > params.nms_threshold
    return np.array(kept, dtype=np.int64)


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


@lru_cache(maxsize=16)
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
    """Threshold the bilinear upsampling of low-resolution mask logit maps, computing as little as needed.

    :meth:`paint` gives exactly ``cv2.resize(logits, (W, H), interpolation=cv2.INTER_LINEAR) > threshold``
    as computed by OpenCV's own resize code, bit for bit (the Intel IPP resize that OpenCV's x86 wheels
    dispatch to by default rounds differently and is not used). An output pixel is a weighted mean of the
    2×2 source logits around it, so it can only be above the threshold next to a source logit that is; only
    the output rectangle that covers those source logits is computed. A small rectangle is interpolated
    here with OpenCV's float32 arithmetic (horizontal pass, then vertical); a large one comes from OpenCV's
    full-image resize, which is then the faster of the two.

    One instance serves one thread: it keeps scratch buffers between calls, so that a frame's masks do not
    each pay for fresh memory.
    """

    #: Above this fraction of the output image, resize the whole map with OpenCV instead.
    OPENCV_FRACTION = 0.1

    def __init__(self, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> None:
        self.src_hw = (int(src_hw[0]), int(src_hw[1]))
        self.dst_hw = (int(dst_hw[0]), int(dst_hw[1]))
        self._rows = _opencv_linear_axis(self.src_hw[0], self.dst_hw[0], edge_weight_one=False)
        self._cols = _opencv_linear_axis(self.src_hw[1], self.dst_hw[1], edge_weight_one=True)
        self._scratch: np.ndarray | None = None  # float32 [3, H * W], allocated on first use

    def paint(
        self, logits: np.ndarray, threshold: float, out: np.ndarray
    ) -> tuple[int, int, int, int] | None:
        """Write ``upsampled logits > threshold`` into ``out`` and return the rectangle written.

        ``logits`` is one float [h, w] map; ``out`` is bool [H, W] and False everywhere (only the returned
        rectangle ``(y0, y1, x0, x1)`` is written; no output pixel outside it is above the threshold).
        Returns None when no pixel is above the threshold.
        """
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        # A weighted mean of samples that are all <= threshold is <= threshold: exactly so at threshold 0
        # (by sign); otherwise a margin far above float32 rounding keeps every candidate sample.
        margin = 0.0 if threshold == 0 else 1e-4 * (1.0 + abs(threshold))
        c0, r0, n_cols, n_rows = cv2.boundingRect((logits > threshold - margin).view(np.uint8))
        if n_rows == 0:
            return None
        # Output pixels that read any of the source rows r0 .. r0+n_rows-1 (and likewise for columns).
        rows, cols = self._rows, self._cols
        y0 = int(np.searchsorted(rows.i1, r0, "left"))
        y1 = int(np.searchsorted(rows.i0, r0 + n_rows - 1, "right"))
        x0 = int(np.searchsorted(cols.i1, c0, "left"))
        x1 = int(np.searchsorted(cols.i0, c0 + n_cols - 1, "right"))
        if y1 <= y0 or x1 <= x0:
            return None
        height, width = self.dst_hw
        if self._scratch is None:
            self._scratch = np.empty((3, height * width), dtype=np.float32)
        target = out[y0:y1, x0:x1]
        if (y1 - y0) * (x1 - x0) > self.OPENCV_FRACTION * height * width:
            full = self._scratch[0].reshape(height, width)
            previous = cv2.ipp.useIPP()  # a per-thread switch: other threads are not affected
            cv2.ipp.setUseIPP(False)
            try:
                full = cv2.resize(logits, (width, height), dst=full, interpolation=cv2.INTER_LINEAR)
            finally:
                cv2.ipp.setUseIPP(previous)
            np.greater(full[y0:y1, x0:x1], threshold, out=target)
        else:
            np.greater(self._interpolate(logits, y0, y1, x0, x1), threshold, out=target)
        return y0, y1, x0, x1

    def _interpolate(self, logits: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """OpenCV's float32 bilinear values in output rows y0:y1, columns x0:x1, float32 [y1-y0, x1-x0].

        A horizontal pass over the source rows involved, then a vertical pass, in OpenCV's order of
        operations; the results live in the scratch buffer until the next call.
        """
        assert self._scratch is not None
        rows, cols = self._rows, self._cols
        i0, i1 = rows.i0[y0:y1], rows.i1[y0:y1]
        first = int(i0[0])
        source = logits[first : int(i1[-1]) + 1]
        shape = (y1 - y0, x1 - x0)
        size = shape[0] * shape[1]
        across = np.take(source, cols.i0[x0:x1], axis=1)
        across *= cols.w0[x0:x1]
        across += np.take(source, cols.i1[x0:x1], axis=1) * cols.w1[x0:x1]
        top = np.take(across, i0 - first, axis=0, out=self._scratch[1, :size].reshape(shape))
        top *= rows.w0[y0:y1, None]
        bottom = np.take(across, i1 - first, axis=0, out=self._scratch[2, :size].reshape(shape))
        bottom *= rows.w1[y0:y1, None]
        top += bottom
        return top
