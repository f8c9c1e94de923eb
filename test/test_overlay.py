"""draw_overlay on a hand-built Result: mask blending follows the label image, boxes and tags are drawn."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gdino_ros.core.overlay import draw_overlay, instance_color
from gdino_ros.core.result import Detection, Result

H, W = 120, 160


def make_result(no_target: bool = False) -> tuple[np.ndarray, Result]:
    image = np.full((H, W, 3), 100, np.uint8)
    first = np.zeros((H, W), bool)
    first[40:80, 30:90] = True
    second = np.zeros((H, W), bool)
    second[60:100, 70:130] = True
    labels = np.zeros((H, W), np.uint16)
    labels[second] = 2
    labels[first] = 1  # the overlap goes to the higher score
    detections = [
        Detection(1, "cup", 0, 0.9, (30.0, 40.0, 89.0, 79.0), first),
        Detection(2, "bottle", 1, 0.6, (70.0, 60.0, 129.0, 99.0), second),
    ]
    return image, Result("cup . bottle", "phrases", detections, labels, no_target, math.nan)


def blended(color: tuple[int, int, int], alpha: float = 0.5) -> np.ndarray:
    return np.round(100 * (1 - alpha) + np.array(color, np.float64) * alpha).astype(np.uint8)


def test_masks_are_blended_with_the_winning_instance_colour() -> None:
    image, result = make_result()
    overlay = draw_overlay(image, result)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    assert (image == 100).all()  # the input is left alone
    np.testing.assert_array_equal(overlay[55, 50], blended(instance_color(1)))  # first only
    np.testing.assert_array_equal(overlay[70, 80], blended(instance_color(1)))  # overlap: first wins
    np.testing.assert_array_equal(overlay[90, 110], blended(instance_color(2)))  # second only
    np.testing.assert_array_equal(overlay[110, 10], [100, 100, 100])  # background, away from drawings
    overlay = draw_overlay(image, result, alpha=0.25)
    np.testing.assert_array_equal(overlay[90, 110], blended(instance_color(2), 0.25))


def test_boxes_and_tags_are_drawn_in_the_instance_colour() -> None:
    image, result = make_result()
    overlay = draw_overlay(image, result)
    # The left edge of the second box, below the first mask: the box colour, not the mask blend.
    np.testing.assert_allclose(overlay[95, 70].astype(int), instance_color(2), atol=40)
    # A tag sits above each box: the first one's area above y=40 is no longer plain grey.
    assert (overlay[20:40, 30:90] != 100).any()
    assert (overlay[0:10, :] == 100).all()  # nothing drawn where there is no tag


def test_no_target_is_written_in_the_corner() -> None:
    image = np.full((H, W, 3), 100, np.uint8)
    result = Result("the red mug", "expression", [], np.zeros((H, W), np.uint16), True, 0.93)
    overlay = draw_overlay(image, result)
    assert (overlay[0:20, 0:60] != 100).any()
    assert (overlay[40:, :] == 100).all()


def test_distinct_colours_for_neighbouring_ids() -> None:
    colours = [instance_color(i) for i in range(1, 21)]
    assert len(set(colours)) == 20
    for a, b in zip(colours, colours[1:], strict=False):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) > 60


def test_mismatched_image_is_rejected() -> None:
    _, result = make_result()
    with pytest.raises(ValueError, match="the result is for a 160x120 image, not this 80x60 one"):
        draw_overlay(np.zeros((60, 80, 3), np.uint8), result)
    with pytest.raises(ValueError, match="uint8 \\[H, W, 3\\]"):
        draw_overlay(np.zeros((H, W), np.uint8), result)
