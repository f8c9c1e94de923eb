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
   the (H/4, W/4) logits followed by ``sigmoid > mask_threshold`` (TAO Deploy). The label image (where
   instances overlap, the higher score wins) is computed directly from the low-resolution logits, exactly
   interpolated only where a mask crosses its threshold; each detection's full-size mask is computed
   only when read (:mod:`gdino_ros.core.mask_resampling`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from gdino_ros.backends.frame import ArrayMasks, MaskPlanes
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
from gdino_ros.core.instance_crop import crop_from_logits, tight_crop
from gdino_ros.core.mask_resampling import MaskUpsampler, union_foreground, upsampled_mask
from gdino_ros.core.prompt import EncodedPrompt
from gdino_ros.core.result import PHRASES, Detection, Result, label_dtype
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

    no_target_probability = math.nan
    if no_targets is not None:
        z = no_targets.astype(np.float64)
        z = np.exp(z - z.max())
        no_target_probability = float(z[NO_TARGET_INDEX] / z.sum())
        if int(np.argmax(no_targets)) == NO_TARGET_INDEX:
            return Result(prompt.text, prompt.mode, [], np.zeros((height, width), label_dtype(0)), True,
                          no_target_probability, phrases=prompt.vocabulary)

    scores, queries, classes, token_probs = _select(logits, prompt, params)
    boxes_xyxy = boxes_to_pixels(boxes[queries], height, width)
    kept_masks: Sequence[np.ndarray]
    if union is not None and params.ioi_threshold > 0:
        # The IoI test reads the masks of the candidates NMS leaves, fetched when first needed.
        candidate_planes = _CandidatePlanes(masks, queries)
        keep = _filter(scores, boxes_xyxy, (candidate_planes, union_foreground(union, mask_hw)), params)
        kept_masks = [candidate_planes.plane(int(i)) for i in keep]
    else:
        keep = _filter(scores, boxes_xyxy, None, params)
        kept_masks = list(masks.planes(queries[keep]))
    scores, queries, classes, boxes_xyxy = scores[keep], queries[keep], classes[keep], boxes_xyxy[keep]
    labels, phrase_indices = _labels(prompt, queries, classes, token_probs, params.text_threshold)

    threshold = params.mask_logit_threshold
    label_image = np.zeros((height, width), label_dtype(len(queries)))
    upsampler = MaskUpsampler(mask_hw, (height, width))
    painted = upsampler.paint_labels(kept_masks, threshold, label_image) if len(queries) else None
    detections = []
    for k in range(len(queries)):
        if painted is None:  # painted cell by cell: each instance's own mask is computed when read
            window = upsampler.window(kept_masks[k], threshold) or (0, 0, 0, 0)
            mask = partial(upsampled_mask, kept_masks[k], threshold, (height, width))
            crop = partial(crop_from_logits, kept_masks[k], threshold, (height, width))
        else:  # painted per window: reuse the instance's thresholded window
            y0, x0, inside = painted[k] or (0, 0, np.zeros((0, 0), np.bool_))
            window = (y0, y0 + inside.shape[0], x0, x0 + inside.shape[1])
            mask = partial(_full_size, y0, x0, inside, (height, width))
            crop = partial(tight_crop, inside, y0, x0)
        detections.append(Detection(
            instance_id=k + 1,
            label=labels[k],
            phrase_index=phrase_indices[k],
            score=float(scores[k]),
            box_xyxy=(float(boxes_xyxy[k, 0]), float(boxes_xyxy[k, 1]),
                      float(boxes_xyxy[k, 2]), float(boxes_xyxy[k, 3])),
            mask_source=mask,
            mask_window=window,
            crop_source=crop,
        ))
    no_target = False if no_targets is not None else not detections
    return Result(prompt.text, prompt.mode, detections, label_image, no_target, no_target_probability,
                  phrases=prompt.vocabulary)


def _full_size(y0: int, x0: int, inside: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Place a window's mask ``inside`` (bool) at row ``y0``, column ``x0`` of an empty bool [H, W] image."""
    mask = np.zeros(image_hw, dtype=np.bool_)
    mask[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]] = inside
    return mask


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
    """IoU of xyxy ``box`` [..., 4] with each of ``boxes`` [N, 4] (broadcast); 0 where the union has no area.

    One box [4] gives [N]; all boxes as ``boxes[:, None, :]`` give the pairwise [N, N].
    """
    inter_w = np.maximum(np.minimum(box[..., 2], boxes[:, 2]) - np.maximum(box[..., 0], boxes[:, 0]), 0.0)
    inter_h = np.maximum(np.minimum(box[..., 3], boxes[:, 3]) - np.maximum(box[..., 1], boxes[:, 1]), 0.0)
    inter = inter_w * inter_h
    area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    union = area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


class _CandidatePlanes:
    """The candidates' mask planes, read from the engine's outputs when the IoI test first needs them.

    NMS leaves about half of a typical frame's candidates, so reading every candidate's plane up front
    copied twice the bytes needed (on TensorRT, from the device). Planes are read in batches of the next
    candidates not yet suppressed, doubling from :attr:`FIRST_BATCH`, so that hundreds of candidates (a
    frame without NMS) still take few reads. Each query's plane is read once, whichever of its candidates
    (one per class) asks.
    """

    FIRST_BATCH = 8

    def __init__(self, masks: MaskPlanes, queries: np.ndarray) -> None:
        self._masks = masks
        self._queries = queries
        self._read: dict[int, np.ndarray] = {}  # query index -> its plane, float [h, w]
        self._batch = self.FIRST_BATCH

    def plane(self, candidate: int, suppressed: np.ndarray | None = None) -> np.ndarray:
        """Mask logits [h, w] of ``candidate``; a read also fetches the next candidates not ``suppressed``."""
        query = int(self._queries[candidate])
        if query not in self._read:
            upcoming = self._queries[candidate:] if suppressed is None else \
                self._queries[candidate:][~suppressed[candidate:]]
            wanted = list(dict.fromkeys(q for q in upcoming.tolist() if q not in self._read))[: self._batch]
            self._read.update(zip(wanted, self._masks.planes(np.array(wanted, dtype=np.int64)), strict=True))
            self._batch *= 2
        return self._read[query]


def _filter(
    scores: np.ndarray,
    boxes_xyxy: np.ndarray,
    ioi: tuple[_CandidatePlanes, np.ndarray] | None,
    params: PostprocessParams,
) -> np.ndarray:
    """Return the candidates (indices, best first) that pass the IoI filter, NMS and the cap.

    ``ioi``: the candidates' planes and the union's foreground (bool [h, w]) for the IoI test, if any. One
    greedy pass: a candidate that fails the IoI test neither stays nor suppresses others, exactly as if the
    IoI filter had run on all candidates before NMS; but the test is only paid for candidates that NMS has
    not already suppressed. NMS: a kept box suppresses later boxes whose IoU with it is strictly above
    ``nms_threshold`` (TAO skips NMS at 0).
    """
    threshold = params.mask_logit_threshold
    suppressed = np.zeros(scores.shape[0], dtype=np.bool_)
    overlapping: np.ndarray | None = None  # [N, N] IoU above the NMS threshold, computed on first need
    kept: list[int] = []
    for i in range(scores.shape[0]):
        if suppressed[i]:
            continue
        if ioi is not None:
            planes, foreground = ioi
            binary = planes.plane(i, suppressed) > threshold
            inside = np.count_nonzero(binary & foreground) / (np.count_nonzero(binary) + 1e-6)
            if not inside > params.ioi_threshold:
                continue
        kept.append(i)
        if len(kept) == params.max_detections:
            break
        if params.nms_threshold > 0:
            if overlapping is None:
                overlapping = box_iou(boxes_xyxy[:, None, :], boxes_xyxy) > params.nms_threshold
            suppressed |= overlapping[i]
    return np.array(kept, dtype=np.int64)
