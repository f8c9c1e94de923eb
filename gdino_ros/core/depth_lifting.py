"""Instance masks + an aligned depth image -> 3-D points, a robust centroid and a box per instance.

The depth image is registered to the colour camera (RealSense ``aligned_depth_to_color``, Isaac Sim's
``distance_to_image_plane``): a depth pixel holds the z coordinate, along the optical axis, of what the
colour pixel at the same place in the image sees. It may have another resolution than the colour image
as long as it covers the same field of view (same aspect ratio); colour pixel (u, v) then reads the depth
pixel under its centre. ``16UC1`` is millimetres (0 = no reading), ``32FC1`` metres (0, NaN or inf = no
reading).

The camera model is the colour camera's ``sensor_msgs/CameraInfo``: K and D describe the full-resolution
sensor; ``binning`` and ``roi`` say how the published image was reduced from it, and the image the
CameraInfo describes may itself be scaled relative to the colour image the masks are in. A colour
pixel is mapped to the full-resolution sensor pixel (the convention of ROS's image_geometry:
``u_sensor = u_image * binning_x + roi.x_offset``), then to a ray: with non-zero D through OpenCV's
``undistortPoints`` (plumb_bob and rational_polynomial), else through K alone. Rays depend only on the
camera and the image size, so :class:`RayTable` computes them once and every frame looks them up.

Per instance: its own mask is eroded (depth at object edges mixes foreground and background), at most
:data:`MAX_POINTS` of its pixels are taken on a regular grid, those with a depth reading become points
``z * (x_ray, y_ray, 1)`` in the camera's optical frame (x right, y down, z forward, metres), and the
centroid is their per-axis median; the box is axis-aligned in that frame, from the ``trim_percent`` to
the ``100 - trim_percent`` percentile of each axis (percentiles by nearest rank).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from gdino_ros.core.instance_crop import InstanceCrop
from gdino_ros.errors import InputError
from gdino_ros.settings import check_settings, setting

DEPTH_MM = "16UC1"
DEPTH_M = "32FC1"
DEPTH_ENCODINGS = (DEPTH_MM, DEPTH_M)
DISTORTION_MODELS = ("plumb_bob", "rational_polynomial")

#: At most this many mask pixels per instance become points: the median and percentiles of a regular
#: sample are those of the whole mask to well under a pixel's footprint, at a bounded cost per frame.
MAX_POINTS = 2048

#: Relative difference of aspect ratio (width / height) up to which two images count as the same view.
ASPECT_TOLERANCE = 0.01


class DepthInputError(InputError):
    """Depth, camera model or their pairing cannot be used; the message names the fix."""


@dataclass(frozen=True)
class LiftingParams:
    """How instance masks are lifted to 3-D (node parameters and tool flags are generated from these)."""

    depth_erosion_px: int = setting(
        2,
        "Pixels eroded from each instance mask before its depth is read, to keep depth edges out.",
        low=0, high=50,
    )
    depth_trim_percent: float = setting(
        2.0,
        "Percent of an instance's 3-D points left out at each end of each axis of its 3-D box.",
        low=0.0, high=25.0,
    )

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class CameraModel:
    """The parts of a ``sensor_msgs/CameraInfo`` that turn pixels into rays.

    ``width``/``height`` are the published image's size (after binning and roi); ``k`` is the 3x3
    intrinsic matrix of the full-resolution sensor, ``d`` its distortion coefficients.
    """

    frame_id: str
    width: int
    height: int
    k: np.ndarray
    d: np.ndarray
    distortion_model: str
    binning: tuple[int, int]
    roi_offset: tuple[int, int]

    @classmethod
    def from_camera_info(cls, info: Any) -> CameraModel:
        """Read an rclpy or rosbags CameraInfo; raise :class:`DepthInputError` if it cannot map pixels."""
        k = np.asarray(info.k, dtype=np.float64).reshape(3, 3)
        d = np.asarray(info.d, dtype=np.float64).reshape(-1)
        fx, fy = float(k[0, 0]), float(k[1, 1])
        if not (math.isfinite(fx) and math.isfinite(fy) and fx > 0 and fy > 0):
            raise DepthInputError(
                f"camera_info has focal lengths fx={fx:g}, fy={fy:g}; publish the calibrated K of the colour "
                "camera (fx = K[0], fy = K[4] > 0)"
            )
        model = str(info.distortion_model)
        if np.any(d != 0) and model not in DISTORTION_MODELS:
            raise DepthInputError(
                f"camera_info distortion_model {model!r} is not supported; use one of "
                f"{', '.join(DISTORTION_MODELS)}, or publish rectified images with D = 0"
            )
        bx, by = max(int(info.binning_x), 1), max(int(info.binning_y), 1)
        roi = info.roi
        full_w, full_h = int(info.width), int(info.height)
        roi_w = int(roi.width) or full_w
        roi_h = int(roi.height) or full_h
        if roi_w < 1 or roi_h < 1:
            raise DepthInputError(
                f"camera_info has size {full_w}x{full_h}; publish the colour camera's calibrated size"
            )
        return cls(
            frame_id=str(info.header.frame_id),
            width=roi_w // bx,
            height=roi_h // by,
            k=k,
            d=d,
            distortion_model=model,
            binning=(bx, by),
            roi_offset=(int(roi.x_offset), int(roi.y_offset)),
        )

    def key(self) -> tuple[Any, ...]:
        """Hashable identity of the model, for caching rays."""
        return (self.width, self.height, self.k.tobytes(), self.d.tobytes(), self.distortion_model,
                self.binning, self.roi_offset)


def _same_view(a_hw: tuple[int, int], b_hw: tuple[int, int]) -> bool:
    """Whether two image sizes have the same aspect ratio (one is a scaled copy of the other)."""
    return abs((a_hw[1] / a_hw[0]) / (b_hw[1] / b_hw[0]) - 1.0) <= ASPECT_TOLERANCE


def _pixel_centres(n_out: int, n_in: int) -> np.ndarray:
    """Coordinates, in an axis of ``n_in`` pixels, of the centres of ``n_out`` pixels spanning it."""
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


class RayTable:
    """Per colour pixel, the ray (x/z, y/z) through it: a float32 [H * W, 2] table, or two 1-D axes.

    Without distortion x/z depends on the column only and y/z on the row only, so two 1-D axes suffice;
    with distortion every pixel is undistorted once here.
    """

    def __init__(self, camera: CameraModel, image_hw: tuple[int, int]) -> None:
        height, width = image_hw
        if not _same_view(image_hw, (camera.height, camera.width)):
            raise DepthInputError(
                f"the image is {width}x{height} but camera_info describes {camera.width}x{camera.height} "
                "(another aspect ratio); publish the camera_info of the colour camera"
            )
        bx, by = camera.binning
        ox, oy = camera.roi_offset
        u = _pixel_centres(width, camera.width) * bx + ox
        v = _pixel_centres(height, camera.height) * by + oy
        fx, fy, cx, cy = camera.k[0, 0], camera.k[1, 1], camera.k[0, 2], camera.k[1, 2]
        self.distorted = bool(np.any(camera.d != 0))
        if not self.distorted:
            skew = camera.k[0, 1]
            self.y_axis = ((v - cy) / fy).astype(np.float32)
            # x/z = (u - cx - skew * y/z) / fx; skew is 0 for every ROS camera, kept exact anyway.
            self.x_axis = ((u - cx) / fx).astype(np.float32)
            self.skew = float(skew / fx)
            return
        grid = np.empty((height, width, 2), dtype=np.float64)
        grid[..., 0] = u[None, :]
        grid[..., 1] = v[:, None]
        normalised = cv2.undistortPoints(grid.reshape(-1, 1, 2), camera.k, camera.d)
        self.width = width
        self.xy = normalised.reshape(-1, 2).astype(np.float32)  # row-major pixel index -> (x/z, y/z)

    def rays(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(x/z, y/z) of the pixels at ``rows``, ``cols``: float32 [n, 2]."""
        if self.distorted:
            taken: np.ndarray = self.xy.take(rows * self.width + cols, axis=0)
            return taken
        xy = np.empty((len(rows), 2), dtype=np.float32)
        xy[:, 1] = self.y_axis.take(rows)
        xy[:, 0] = self.x_axis.take(cols)
        if self.skew:
            xy[:, 0] -= self.skew * xy[:, 1]
        return xy


def check_depth_encoding(encoding: str) -> None:
    """Raise :class:`DepthInputError` naming the supported encodings unless ``encoding`` is one."""
    if encoding not in DEPTH_ENCODINGS:
        raise DepthInputError(
            f"depth encoding {encoding!r} is not supported; publish 16UC1 (millimetres) or 32FC1 (metres) "
            "depth registered to the colour camera"
        )


def depth_metres(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """Convert depth pixels in ``encoding`` to float32 metres with NaN where there is no reading."""
    check_depth_encoding(encoding)
    if encoding == DEPTH_MM:
        metres = pixels.astype(np.float32) * np.float32(0.001)
        metres[pixels == 0] = np.nan
        return metres
    metres = np.array(pixels, dtype=np.float32)
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


@dataclass(frozen=True)
class Lifted:
    """One instance in 3-D, in the camera's optical frame, metres.

    ``centroid`` is the per-axis median of its points; ``box_min``/``box_max`` the trimmed extent.
    All NaN when ``points`` (the number of points used) is 0.
    """

    points: int
    centroid: tuple[float, float, float]
    box_min: tuple[float, float, float]
    box_max: tuple[float, float, float]
    xyz: np.ndarray  # float32 [points, 3], for the point cloud


def _nearest(n_in: int, n_out: int) -> np.ndarray:
    """Index of the pixel of an ``n_out`` axis under the centre of each pixel of an ``n_in`` axis."""
    return np.minimum(((np.arange(n_in) + 0.5) * (n_out / n_in)).astype(np.intp), n_out - 1)


_NAN3 = (math.nan, math.nan, math.nan)


class DepthLifter:
    """Lifts the instances of one camera's frames; keeps the ray table while the camera and size stay."""

    def __init__(self, params: LiftingParams | None = None) -> None:
        self.params = params or LiftingParams()
        self._rays: RayTable | None = None
        self._rays_key: tuple[Any, ...] | None = None

    def ray_table(self, camera: CameraModel, image_hw: tuple[int, int]) -> RayTable:
        """Return the rays of ``camera`` at ``image_hw``, computed on first use."""
        key = (camera.key(), image_hw)
        if self._rays is None or key != self._rays_key:
            self._rays, self._rays_key = RayTable(camera, image_hw), key
        return self._rays

    def lift(
        self,
        crops: Sequence[InstanceCrop],
        image_hw: tuple[int, int],
        depth: np.ndarray,
        encoding: str,
        camera: CameraModel,
    ) -> list[Lifted]:
        """Lift instances, given as their mask crops in the colour pixels of an ``image_hw`` image.

        ``depth`` is the depth image's pixels in ``encoding`` (uint16 millimetres or float32 metres), at
        any size with the colour image's aspect ratio; only the pixels sampled are converted.
        """
        check_depth_encoding(encoding)
        depth_hw = (int(depth.shape[0]), int(depth.shape[1]))
        if not _same_view(image_hw, depth_hw):
            raise DepthInputError(
                f"depth is {depth_hw[1]}x{depth_hw[0]} but the colour image {image_hw[1]}x{image_hw[0]} "
                "(another aspect ratio); publish depth registered (aligned) to the colour camera"
            )
        sampler = _DepthSampler(depth, encoding, image_hw)
        rays = self.ray_table(camera, image_hw)
        return [self._lift_one(c, sampler, rays) for c in crops]

    def _lift_one(self, crop: InstanceCrop, sampler: _DepthSampler, rays: RayTable) -> Lifted:
        empty = Lifted(0, _NAN3, _NAN3, _NAN3, np.empty((0, 3), np.float32))
        if crop.mask.size == 0:
            return empty
        erosion = self.params.depth_erosion_px
        kept: np.ndarray = crop.mask.view(np.uint8)
        if erosion:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erosion + 1, 2 * erosion + 1))
            # Outside the crop is outside the mask: a constant 0 border erodes the crop's edges too.
            kept = cv2.erode(kept, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        area = int(cv2.countNonZero(kept))
        if area == 0:
            return empty
        stride = max(1, math.ceil(math.sqrt(area / MAX_POINTS)))
        rows, cols = np.nonzero(kept[::stride, ::stride])
        rows = rows * stride + crop.y0
        cols = cols * stride + crop.x0
        z = sampler.metres(rows, cols)
        valid = ~np.isnan(z)
        if not valid.all():
            if not valid.any():
                return empty
            z, rows, cols = z[valid], rows[valid], cols[valid]
        xyz = np.empty((len(z), 3), dtype=np.float32)
        xyz[:, :2] = rays.rays(rows, cols)
        xyz[:, :2] *= z[:, None]
        xyz[:, 2] = z
        trim = self.params.depth_trim_percent
        low, median, high = _nearest_rank(xyz, (trim, 50.0, 100.0 - trim))
        return Lifted(points=len(z), centroid=median, box_min=low, box_max=high, xyz=xyz)


class _DepthSampler:
    """Reads the depth under colour pixels: the pixel under each colour pixel's centre, in metres."""

    def __init__(self, depth: np.ndarray, encoding: str, image_hw: tuple[int, int]) -> None:
        self.encoding = encoding
        self.same_size = depth.shape[:2] == tuple(image_hw)
        self.flat = np.ascontiguousarray(depth).reshape(-1)
        self.width = int(depth.shape[1])
        self.rows = _nearest(image_hw[0], int(depth.shape[0]))
        self.cols = _nearest(image_hw[1], int(depth.shape[1]))

    def metres(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Float32 metres (NaN for no reading) under the colour pixels at ``rows``, ``cols``."""
        if not self.same_size:
            rows, cols = self.rows[rows], self.cols[cols]
        return depth_metres(self.flat.take(rows * self.width + cols), self.encoding)


def _nearest_rank(
    xyz: np.ndarray, percents: tuple[float, float, float]
) -> tuple[tuple[float, float, float], ...]:
    """Per-axis percentiles of [n, 3] points by nearest rank: one partial sort per axis."""
    n = len(xyz)
    ranks = [min(n - 1, max(0, round(p / 100.0 * (n - 1)))) for p in percents]
    per_axis = [np.partition(xyz[:, axis], ranks)[ranks] for axis in range(3)]
    return tuple((float(per_axis[0][k]), float(per_axis[1][k]), float(per_axis[2][k])) for k in range(3))
