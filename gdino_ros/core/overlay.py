"""Draw a :class:`Result` over its image: instance masks in per-instance colours, boxes, labels, scores.

Used by ``gdino-segment``, ``gdino-bag --overlay`` and the node's ``gdino/overlay`` topic, so that all
three show the same picture.
"""
from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from gdino_ros.core.result import Result

_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def instance_color(instance_id: int) -> tuple[int, int, int]:
    """Return a saturated RGB colour for ``instance_id``; consecutive ids get clearly different hues."""
    hue = (instance_id * _GOLDEN_RATIO_CONJUGATE) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(red * 255), int(green * 255), int(blue * 255)


def draw_overlay(image_rgb: np.ndarray, result: Result, *, alpha: float = 0.5) -> np.ndarray:
    """Return a new uint8 [H, W, 3] RGB image: ``image_rgb`` with ``result`` drawn over it.

    Mask pixels are blended with their instance colour (``alpha`` is the colour's weight), following
    ``result.label_image`` so that overlaps show the instance that won them. Each detection gets its
    box and a "label score" tag in the same colour; a no-target decision is written in the top-left.
    """
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"image_rgb must be uint8 [H, W, 3], got {image_rgb.dtype} {image_rgb.shape}")
    if result.label_image.shape != image_rgb.shape[:2]:
        raise ValueError(
            f"the result is for a {result.label_image.shape[1]}x{result.label_image.shape[0]} image, "
            f"not this {image_rgb.shape[1]}x{image_rgb.shape[0]} one"
        )
    canvas = image_rgb.copy()
    if result.detections:
        top = max(d.instance_id for d in result.detections)
        palette = np.array([(0, 0, 0)] + [instance_color(i) for i in range(1, top + 1)], dtype=np.float32)
        labels = result.label_image
        covered = labels > 0
        colors = palette[labels[covered]]
        canvas[covered] = (canvas[covered] * (1.0 - alpha) + colors * alpha).round().astype(np.uint8)

    height, width = canvas.shape[:2]
    scale = max(0.5, min(height, width) / 800)  # font scale: 0.5 up to 480 px, 1.35 at 1080p
    thickness = max(1, round(1.5 * scale))
    for detection in sorted(result.detections, key=lambda d: d.score):  # best drawn last, on top
        color = instance_color(detection.instance_id)
        x0, y0, x1, y1 = (int(round(v)) for v in detection.box_xyxy)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, thickness, cv2.LINE_AA)
        _tag(canvas, f"{detection.label} {detection.score:.2f}", (x0, y0), color, scale, thickness)
    if result.no_target:
        p = result.no_target_probability
        probability = "" if math.isnan(p) else f" (p={p:.2f})"
        _tag(canvas, f"no target{probability}", (0, 0), (255, 255, 255), scale, thickness, inside=True)
    return canvas


def _tag(
    canvas: np.ndarray,
    text: str,
    corner: tuple[int, int],
    color: tuple[int, int, int],
    scale: float,
    thickness: int,
    inside: bool = False,
) -> None:
    """Write ``text`` on a filled ``color`` box above ``corner`` (below it if no room, or if ``inside``)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    pad = max(2, thickness)
    x = min(max(corner[0], 0), max(canvas.shape[1] - text_w - 2 * pad, 0))
    box_h = text_h + baseline + 2 * pad
    y_top = corner[1] if inside or corner[1] - box_h < 0 else corner[1] - box_h
    cv2.rectangle(canvas, (x, y_top), (x + text_w + 2 * pad, y_top + box_h), color, cv2.FILLED)
    ink = (0, 0, 0) if sum(color) > 382 else (255, 255, 255)
    cv2.putText(canvas, text, (x + pad, y_top + pad + text_h), font, scale, ink, thickness, cv2.LINE_AA)
