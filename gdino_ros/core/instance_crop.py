"""One instance's own mask, cropped to the smallest rectangle holding all its pixels.

The label image gives each pixel to one instance only; overlapping instances ("mug . handle") need their
own masks, and a full-frame mask per instance would make every message image-sized per instance. The
crop is what the messages carry and what depth lifting and tracking read. Post-processing computes it
from the instance's low-resolution logits over the instance's window only (:func:`crop_from_logits`), so
no full-size mask is made for it; :attr:`~gdino_ros.core.result.Detection.crop` gives it per detection.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from gdino_ros.core.mask_resampling import MaskUpsampler


@dataclass(frozen=True)
class InstanceCrop:
    """``mask`` (bool [h, w]) placed at column ``x0``, row ``y0`` of the image; 0 x 0 at (0, 0) when empty."""

    x0: int
    y0: int
    mask: np.ndarray


EMPTY_CROP = InstanceCrop(0, 0, np.zeros((0, 0), dtype=np.bool_))


def tight_crop(window: np.ndarray, y0: int, x0: int) -> InstanceCrop:
    """Crop ``window`` (bool [h, w], its top-left pixel at row ``y0``, column ``x0``) to its true pixels.

    The crop is a view into ``window``.
    """
    if window.size == 0:
        return EMPTY_CROP
    cx, cy, width, height = cv2.boundingRect(np.ascontiguousarray(window).view(np.uint8))
    if width == 0:
        return EMPTY_CROP
    return InstanceCrop(x0 + cx, y0 + cy, window[cy : cy + height, cx : cx + width])


def crop_from_logits(logits: np.ndarray, threshold: float, image_hw: tuple[int, int]) -> InstanceCrop:
    """Crop ``cv2.resize(logits, image) > threshold`` (exactly), computing it only inside its window.

    ``logits`` is one float [h, w] mask plane. Uses its own upsampler, so any thread may call it.
    """
    painted = MaskUpsampler(logits.shape, image_hw).paint_window(logits, threshold)
    if painted is None:
        return EMPTY_CROP
    y0, x0, inside = painted
    return tight_crop(inside, y0, x0)
