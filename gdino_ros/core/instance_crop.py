"""One instance's own mask, cropped to the smallest rectangle holding all its pixels.

The label image gives each pixel to one instance only; overlapping instances ("mug . handle") need their
own masks, and a full-frame mask per instance would make every message image-sized per instance. The
crop is what the messages carry and what depth lifting reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from gdino_ros.core.result import Detection


@dataclass(frozen=True)
class InstanceCrop:
    """``mask`` (bool [h, w], a view into the detection's mask) placed at column ``x0``, row ``y0``."""

    x0: int
    y0: int
    mask: np.ndarray


def instance_crop(detection: Detection) -> InstanceCrop:
    """Crop ``detection.mask`` to its pixels, searching only its ``mask_window`` when known.

    An instance without pixels gives a 0 x 0 crop at (0, 0).
    """
    full = detection.mask
    y0, y1, x0, x1 = detection.mask_window or (0, full.shape[0], 0, full.shape[1])
    window = full[y0:y1, x0:x1]
    if window.size == 0:
        return InstanceCrop(0, 0, full[:0, :0])
    cx, cy, width, height = cv2.boundingRect(np.ascontiguousarray(window).view(np.uint8))
    if width == 0:
        return InstanceCrop(0, 0, full[:0, :0])
    top, left = y0 + cy, x0 + cx
    return InstanceCrop(left, top, full[top : top + height, left : left + width])
