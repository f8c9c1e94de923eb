"""A :class:`~gdino_ros.core.result.Result` as plain JSON, the one form gdino-segment and gdino-eval write.

JSON has no NaN, so an undefined probability (a 3-output model has no no-target head) becomes ``null``;
numpy scalars become Python numbers. Masks are left out (gdino-segment writes them as a label image)
unless the caller passes an encoder (gdino-eval stores COCO RLE to score the detections again later).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from gdino_ros.core.result import Detection, Result

MaskEncoder = Callable[[np.ndarray], Any]


def finite_or_none(value: float) -> float | None:
    """Return ``value`` as a float, or None for NaN (which JSON cannot hold)."""
    number = float(value)
    return None if math.isnan(number) else number


def detection_json(detection: Detection, mask: MaskEncoder | None = None) -> dict[str, Any]:
    """Return one detection: id, label, phrase, score, box (x0, y0, x1, y1 pixels), mask area (and mask)."""
    record: dict[str, Any] = {
        "instance_id": int(detection.instance_id),
        "label": detection.label,
        "phrase_index": int(detection.phrase_index),
        "score": float(detection.score),
        "box_xyxy": [float(v) for v in detection.box_xyxy],
        "mask_pixels": int(detection.mask.sum()),
    }
    if mask is not None:
        record["mask"] = mask(detection.mask)
    return record


def result_json(result: Result, mask: MaskEncoder | None = None) -> dict[str, Any]:
    """Return prompt, mode, no-target decision and probability, detections (with ``mask``), timings."""
    return {
        "prompt": result.prompt,
        "mode": result.mode,
        "no_target": bool(result.no_target),
        "no_target_probability": finite_or_none(result.no_target_probability),
        "detections": [detection_json(d, mask) for d in result.detections],
        "timings_ms": {stage: float(ms) for stage, ms in result.timings_ms.items()},
    }
