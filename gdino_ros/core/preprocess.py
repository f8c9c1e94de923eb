"""Camera image -> the engine's image tensor: stretch-resize, /255, mean/std, CHW.

The rules: docs/engine_contract.md#image-preprocessing.

The resize runs on the uint8 image (a quarter of the bytes of float32) and the normalisation is one fused
multiply-add per channel plane written straight into the output tensor, which keeps a 1080p frame within a
few milliseconds on one CPU core. TAO Deploy resizes a float32 copy instead; OpenCV's fixed-point uint8
resize differs from that by less than one grey level (0.2 on average on scikit-image's photos).

A camera-input model (gdino-export --camera-input) does the resize and normalisation in its graph, on
the GPU under TensorRT; for it :func:`camera_pixels` only hands over the RGB pixels.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from gdino_ros.contract import IMAGE_OFFSET, IMAGE_SCALE, MIN_IMAGE_SIDE

if TYPE_CHECKING:
    from gdino_ros.backends.base import Backend


class ImageSizeError(ValueError):
    """The image is smaller than the model's minimum, or (``too_large``) larger than its maximum."""

    def __init__(self, message: str, *, too_large: bool) -> None:
        super().__init__(message)
        self.too_large = too_large


def check_image(image: np.ndarray, max_hw: tuple[int, int] | None = None) -> None:
    """Raise ValueError unless ``image`` is an H×W×3 uint8 array of at least 32×32 pixels.

    A size outside the model's range raises :class:`ImageSizeError`, which says which limit it broke.

    ``max_hw``: the largest (height, width) the model takes, when it has a limit (a camera-input TensorRT
    engine's optimisation profile).
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"The image must be a numpy array, not {type(image).__name__}.")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"The image must be H×W×3 (RGB or BGR), got shape {image.shape}; convert grayscale or RGBA "
            "images to 3 channels first (e.g. cv2.cvtColor)."
        )
    if image.dtype != np.uint8:
        raise ValueError(
            f"The image must be uint8 (0-255), got {image.dtype}; convert it, e.g. with "
            "(np.clip(img, 0, 1) * 255).astype(np.uint8) for a 0-1 float image."
        )
    height, width = image.shape[:2]
    if height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
        raise ImageSizeError(
            f"The image is {width}×{height} pixels; the model needs at least "
            f"{MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE}.",
            too_large=False,
        )
    if max_hw is not None and (height > max_hw[0] or width > max_hw[1]):
        raise ImageSizeError(
            f"The image is {width}×{height} pixels; this camera-input engine takes at most "
            f"{max_hw[1]}×{max_hw[0]} (its optimisation profile); downscale the camera's images, or use "
            "a model exported without --camera-input.",
            too_large=True,
        )


def preprocess(
    image: np.ndarray,
    input_hw: tuple[int, int],
    *,
    bgr: bool = False,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Turn a uint8 H×W×3 RGB image (BGR if ``bgr``) into the engine input [1, 3, H, W] of ``dtype``.

    The image is stretched to the engine's ``input_hw`` = (H, W) with bilinear interpolation (no letterbox:
    TAO's contract, so boxes map back by plain scaling), divided by 255 and normalised with the training
    mean/std.
    """
    check_image(image)
    height, width = int(input_hw[0]), int(input_hw[1])
    if height < 1 or width < 1:
        raise ValueError(f"input_hw must be a positive (height, width), got {input_hw}.")
    dtype = np.dtype(dtype)
    if not image.flags.c_contiguous:
        image = np.ascontiguousarray(image)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    tensor = np.empty((1, 3, height, width), dtype=np.float32)
    planes = cv2.split(image)
    for rgb_channel in range(3):
        plane = planes[2 - rgb_channel] if bgr else planes[rgb_channel]
        # dst = plane * scale + 0 * plane + offset, computed in float and stored as float32, in place.
        cv2.addWeighted(plane, IMAGE_SCALE[rgb_channel], plane, 0.0, IMAGE_OFFSET[rgb_channel],
                        dst=tensor[0, rgb_channel], dtype=cv2.CV_32F)
    if dtype != np.float32:
        return tensor.astype(dtype)
    return tensor


def image_input(image: np.ndarray, backend: Backend, *, bgr: bool = False) -> np.ndarray:
    """Return what ``backend``'s image input takes for a uint8 H×W×3 RGB (BGR if ``bgr``) image.

    The normalised tensor at the network size (:func:`preprocess`), or for a camera-input model the
    pixels themselves (:func:`camera_pixels`). The one place that chooses between the two.
    """
    if backend.camera_input:
        return camera_pixels(image, bgr=bgr, max_hw=backend.max_camera_hw)
    return preprocess(image, backend.input_hw, bgr=bgr, dtype=backend.input_dtype)


def camera_pixels(
    image: np.ndarray, *, bgr: bool = False, max_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """Turn a uint8 H×W×3 RGB image (BGR if ``bgr``) into a camera-input model's [1, H, W, 3] RGB tensor.

    The model resizes and normalises (docs/engine_contract.md#camera-input), so this is one pass at most,
    and none for a contiguous RGB image. The views that image messages give are copied the fast way for
    each (a 1080p frame on this project's x86 VM): mono8's repeated channel with OpenCV's gray -> RGB
    (0.15 ms; numpy's copy of the stride-0 view takes 8 ms), rgba8/bgra8's three of four bytes one channel
    at a time, reordered in the same pass (1.5 ms; 6 ms as one numpy copy), padded rows by numpy's row
    copy, BGR -> RGB by OpenCV (0.2 ms). ``max_hw`` as in :func:`check_image`.
    """
    check_image(image, max_hw)
    if image.strides[2] == 0:  # one channel repeated (mono8): no channel order to mind
        return cv2.cvtColor(np.ascontiguousarray(image[..., 0]), cv2.COLOR_GRAY2RGB)[None]
    if image.strides[1:] != (3, 1):  # pixels with more bytes than their 3 channels (an alpha byte)
        rgb = np.empty((1, *image.shape), np.uint8)
        for channel in range(3):
            rgb[0, ..., channel] = image[..., 2 - channel if bgr else channel]
        return rgb
    pixels = np.ascontiguousarray(image)  # a copy only when rows are padded
    return (cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB) if bgr else pixels)[None]
