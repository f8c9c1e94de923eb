"""3-D from masks and aligned depth, on the analytic scene of scene3d.py (exactly known geometry).

The segmenter's outputs are supplied as the objects' true masks; every variant of depth encoding,
lens distortion, depth resolution and camera_info reduction must put each centroid within 1 % of its
range of the true one (the median of the exact surface points the mask sees), and the box must lie on
the object (its exact extent grown by that tolerance) and hold the exact points under the eroded mask
but for the share the percentile trimming leaves out.
"""
from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
from scene3d import CAMERA, OBJECTS, PLUMB_BOB, RATIONAL, Camera, Rendering, render

from gdino_ros.core.depth_lifting import (
    DEPTH_M,
    DEPTH_MM,
    CameraModel,
    DepthInputError,
    DepthLifter,
    Lifted,
    LiftingParams,
    depth_metres,
)
from gdino_ros.core.instance_crop import InstanceCrop
from gdino_ros.core.result import Detection

TOLERANCE = 0.01  # of the range to the true centroid


def _crops(rendering: Rendering) -> list[InstanceCrop]:
    crops = []
    for name, mask in rendering.masks.items():
        assert mask.sum() > 500, name  # the scene shows every object
        crops.append(Detection(1, name, 0, 0.9, (0.0, 0.0, 1.0, 1.0), mask).crop)
    return crops


def _check(lifted: list[Lifted], truth: Rendering, erosion_px: int) -> list[float]:
    """Assert centroids and boxes against the exact geometry; return each centroid's relative error."""
    errors = []
    for (name, shape), result in zip(OBJECTS.items(), lifted, strict=True):
        seen = truth.points[truth.masks[name]]
        true_centroid = np.median(seen, axis=0)
        distance = float(np.linalg.norm(true_centroid))
        error = float(np.linalg.norm(np.array(result.centroid) - true_centroid)) / distance
        errors.append(error)
        assert error <= TOLERANCE, (name, result.centroid, true_centroid)
        assert result.points > 300, name
        # The box lies on the object (its exact extent, grown by the tolerance) ...
        tolerance = TOLERANCE * distance
        lo, hi = shape.aabb()
        assert np.all(np.array(result.box_min) >= lo - tolerance), (name, result.box_min, lo)
        assert np.all(np.array(result.box_max) <= hi + tolerance), (name, result.box_max, hi)
        # ... and holds what the camera sees of it: the exact points under the eroded mask (erosion keeps
        # depth edges out), all but the share the percentile trimming may leave out of the 3 axes.
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erosion_px + 1, 2 * erosion_px + 1))
        eroded = cv2.erode(truth.masks[name].astype(np.uint8), kernel, borderValue=0).astype(bool)
        visible = truth.points[eroded]
        inside = np.all((visible >= np.array(result.box_min) - tolerance)
                        & (visible <= np.array(result.box_max) + tolerance), axis=1)
        trimmed_share = 3 * 2 * LiftingParams().depth_trim_percent / 100
        assert inside.mean() >= 1 - trimmed_share, (name, inside.mean())
        assert result.xyz.shape == (result.points, 3)
    return errors


@pytest.mark.parametrize("encoding", [DEPTH_MM, DEPTH_M])
@pytest.mark.parametrize("distortion", ["none", "plumb_bob", "rational_polynomial"])
def test_centroids_and_boxes_match_the_exact_scene(encoding: str, distortion: str) -> None:
    d = {"none": np.zeros(5), "plumb_bob": PLUMB_BOB, "rational_polynomial": RATIONAL}[distortion]
    camera = replace(CAMERA, d=d, model="plumb_bob" if distortion == "none" else distortion)
    scene = render(camera)
    depth = scene.depth_16uc1() if encoding == DEPTH_MM else scene.depth_32fc1()
    lifter = DepthLifter()
    lifted = lifter.lift(_crops(scene), scene.z.shape, depth, encoding,
                         CameraModel.from_camera_info(camera.camera_info()))
    _check(lifted, scene, lifter.params.depth_erosion_px)


def test_distortion_matters_in_this_scene() -> None:
    """The distorted scene lifted as if undistorted misses the tolerance: the test above can fail."""
    camera = replace(CAMERA, d=PLUMB_BOB)
    scene = render(camera)
    ignorant = CameraModel.from_camera_info(replace(camera, d=np.zeros(5)).camera_info())
    lifted = DepthLifter().lift(_crops(scene), scene.z.shape, scene.depth_32fc1(), DEPTH_M, ignorant)
    with pytest.raises(AssertionError):
        _check(lifted, scene, 2)


@pytest.mark.parametrize("depth_size", [(320, 240), (1280, 960), (424, 318)])
def test_depth_at_another_resolution(depth_size: tuple[int, int]) -> None:
    """Registered depth rendered at its own resolution (same view) serves the colour image's masks."""
    camera = replace(CAMERA, d=PLUMB_BOB)
    colour = render(camera)
    depth = render(camera.scaled(*depth_size))
    lifter = DepthLifter(LiftingParams(depth_erosion_px=4))
    lifted = lifter.lift(_crops(colour), colour.z.shape, depth.depth_16uc1(), DEPTH_MM,
                         CameraModel.from_camera_info(camera.camera_info()))
    _check(lifted, colour, 4)


@pytest.mark.parametrize("reduction", ["binning", "roi", "calibrated_at_double_size"])
def test_binning_roi_and_camera_info_of_another_size(reduction: str) -> None:
    camera = replace(CAMERA, d=RATIONAL, model="rational_polynomial")
    scene = render(camera)
    if reduction == "binning":
        info = camera.camera_info(binning=2)
    elif reduction == "roi":
        info = camera.camera_info(roi=(96, 40))
    else:  # the colour image is a half-size copy of the image the calibration describes
        info = camera.scaled(1280, 960).camera_info()
    lifted = DepthLifter().lift(_crops(scene), scene.z.shape, scene.depth_32fc1(), DEPTH_M,
                                CameraModel.from_camera_info(info))
    _check(lifted, scene, 2)


def test_pixels_without_depth_are_left_out_and_an_instance_without_any_is_nan() -> None:
    scene = render(CAMERA)
    depth = scene.depth_16uc1()
    crops = _crops(scene)
    # Knock out every second row of depth over the first object, and all depth over the second.
    box, crate = scene.masks["box"], scene.masks["crate"]
    holes = box.copy()
    holes[::2] = False
    depth[holes] = 0
    depth[crate] = 0
    model = CameraModel.from_camera_info(CAMERA.camera_info())
    lifted = DepthLifter(LiftingParams(depth_erosion_px=0)).lift(crops, scene.z.shape,
                                                                 depth, DEPTH_MM, model)
    assert 0 < lifted[0].points < int(box.sum()) * 0.6
    assert np.allclose(lifted[0].centroid, np.median(scene.points[box], axis=0), atol=0.01)
    assert lifted[1].points == 0 and all(math.isnan(v) for v in lifted[1].centroid + lifted[1].box_min)
    assert lifted[2].points > 0


def test_32fc1_invalid_readings() -> None:
    metres = depth_metres(np.array([[0.0, -1.0, np.nan, np.inf, 1.25]], dtype=np.float32), DEPTH_M)
    assert np.isnan(metres[0, :4]).all() and metres[0, 4] == np.float32(1.25)
    assert np.isnan(depth_metres(np.array([[0, 1500]], dtype=np.uint16), DEPTH_MM)[0, 0])
    assert np.isclose(depth_metres(np.array([[0, 1500]], dtype=np.uint16), DEPTH_MM)[0, 1], 1.5, rtol=1e-6)


def test_bad_input_names_the_fix() -> None:
    with pytest.raises(DepthInputError, match="16UC1.*32FC1"):
        depth_metres(np.zeros((4, 4), np.uint8), "mono8")
    info = CAMERA.camera_info()
    info.k = [0.0] * 9
    with pytest.raises(DepthInputError, match="focal"):
        CameraModel.from_camera_info(info)
    fisheye = replace(CAMERA, d=np.array([0.1, 0.01, 0.0, 0.0]), model="equidistant").camera_info()
    with pytest.raises(DepthInputError, match="equidistant"):
        CameraModel.from_camera_info(fisheye)
    scene = render(CAMERA)
    model = CameraModel.from_camera_info(CAMERA.camera_info())
    with pytest.raises(DepthInputError, match="aligned"):
        DepthLifter().lift(_crops(scene), scene.z.shape, np.ones((480, 480), np.float32), DEPTH_M, model)
    wide = CameraModel.from_camera_info(Camera(800, 450, 500, 500, 400, 225).camera_info())
    with pytest.raises(DepthInputError, match="camera_info"):
        DepthLifter().lift(_crops(scene), scene.z.shape, scene.depth_32fc1(), DEPTH_M, wide)


def test_settings_are_declared_with_ranges() -> None:
    with pytest.raises(ValueError, match="depth_erosion_px"):
        LiftingParams(depth_erosion_px=-1)
    with pytest.raises(ValueError, match="depth_trim_percent"):
        LiftingParams(depth_trim_percent=60.0)


def test_instance_crop_is_tight_and_complete() -> None:
    mask = np.zeros((40, 50), bool)
    mask[5:9, 30:33] = True
    mask[20, 12] = True
    for window in (None, (0, 40, 0, 50), (4, 25, 10, 34)):
        crop = Detection(1, "a", 0, 0.5, (0, 0, 1, 1), mask, window).crop
        assert (crop.x0, crop.y0, crop.mask.shape) == (12, 5, (16, 21))
        assert crop.mask.sum() == mask.sum()
    empty = Detection(1, "a", 0, 0.5, (0, 0, 1, 1), np.zeros((4, 4), bool), (0, 0, 0, 0)).crop
    assert empty.mask.shape == (0, 0)
