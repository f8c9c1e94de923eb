"""Image preprocessing against independent computations (docs/engine_contract.md#image-preprocessing)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from gdino_ros.core.preprocess import preprocess

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def reference(image_rgb_uint8: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """TAO Deploy's path in float64: float image, bilinear stretch, /255, (x - mean) / std, CHW, batch."""
    resized = cv2.resize(image_rgb_uint8.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    normalised = (resized.astype(np.float64) / 255.0 - MEAN) / STD
    return normalised.transpose(2, 0, 1)[None]


def test_constant_colour_by_hand() -> None:
    image = np.zeros((40, 50, 3), np.uint8)
    image[..., 0] = 255  # pure red
    x = preprocess(image, (32, 64))
    assert x.shape == (1, 3, 32, 64) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], (1 - 0.485) / 0.229, rtol=1e-6)
    np.testing.assert_allclose(x[0, 1], -0.456 / 0.224, rtol=1e-6)
    np.testing.assert_allclose(x[0, 2], -0.406 / 0.225, rtol=1e-6)


def test_same_size_is_only_normalised() -> None:
    image = data.astronaut()  # 512×512 RGB
    x = preprocess(image, (512, 512))
    expected = ((image / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(x, expected, atol=2e-6)


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea", "rocket"])
def test_stretch_resize_matches_tao_within_uint8_rounding(photo: str) -> None:
    image = getattr(data, photo)()
    x = preprocess(image, (544, 960))
    # OpenCV's uint8 resize works in fixed point and rounds to integers: less than one grey level apart.
    grey_levels = np.abs(x - reference(image, (544, 960))) * 255 * STD[None, :, None, None]
    assert grey_levels.max() < 1.0 and grey_levels.mean() < 0.3
    uint8_resized = cv2.resize(image, (960, 544), interpolation=cv2.INTER_LINEAR)
    exact = ((uint8_resized / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(x, exact, atol=2e-6)


def test_bgr_input_and_non_contiguous_arrays() -> None:
    image = data.coffee()
    rgb = preprocess(image, (200, 300))
    bgr = np.ascontiguousarray(image[..., ::-1])
    np.testing.assert_array_equal(preprocess(bgr, (200, 300), bgr=True), rgb)
    np.testing.assert_array_equal(preprocess(image[..., ::-1], (200, 300), bgr=True), rgb)
    wide = np.concatenate([image, image], axis=1)
    np.testing.assert_array_equal(preprocess(wide[:, : image.shape[1]], (200, 300)), rgb)


def test_half_precision() -> None:
    image = data.chelsea()
    full = preprocess(image, (64, 96))
    half = preprocess(image, (64, 96), dtype=np.float16)
    assert half.dtype == np.float16 and full.dtype == np.float32
    np.testing.assert_allclose(half, full, atol=5e-3)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((64, 64), np.uint8), "H×W×3"),
        (np.zeros((64, 64, 4), np.uint8), "H×W×3"),
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((31, 64, 3), np.uint8), "at least 32×32"),
        (np.zeros((64, 20, 3), np.uint8), "at least 32×32"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_images_are_rejected(image: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        preprocess(image, (544, 960))  # type: ignore[arg-type]
