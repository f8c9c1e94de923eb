"""A 3-D test scene with exactly known geometry, rendered analytically into colour, depth and camera_info.

Two axis-aligned boxes and an upright cylinder stand in front of a wall, in the camera's optical frame
(x right, y down, z forward, metres). Every pixel's ray is intersected with every surface in float64, so
each pixel knows which object it sees and the exact 3-D point it sees there: the true masks, the true
points and the depth image (in metres or quantised to millimetres) all come from the same exact rays.

The rays of a distorted camera are found here by fixed-point iteration on the distortion polynomial and
checked against OpenCV's forward model (``projectPoints``), independently of the ``undistortPoints`` the
code under test uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

WALL_Z = 2.5


@dataclass(frozen=True)
class Box:
    """An axis-aligned box: minimum and maximum corner."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def hit(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Depth z of the first hit of rays (x, y, 1) * z, inf where missed (slab method)."""
        ray = (x, y, np.ones_like(x))
        near = np.zeros_like(x)
        far = np.full_like(x, np.inf)
        for axis in range(3):
            with np.errstate(divide="ignore", invalid="ignore"):
                t0 = self.lo[axis] / ray[axis]
                t1 = self.hi[axis] / ray[axis]
            lo, hi = np.minimum(t0, t1), np.maximum(t0, t1)
            parallel = ray[axis] == 0
            inside = (self.lo[axis] <= 0) & (0 <= self.hi[axis])
            lo = np.where(parallel, np.where(inside, -np.inf, np.inf), lo)
            hi = np.where(parallel, np.where(inside, np.inf, -np.inf), hi)
            near, far = np.maximum(near, lo), np.minimum(far, hi)
        return np.where((near <= far) & (near > 0), near, np.inf)

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.lo), np.array(self.hi)


@dataclass(frozen=True)
class Cylinder:
    """An upright cylinder (axis along y) with its axis at (cx, cz), radius r, from y0 to y1 (y0 < y1)."""

    cx: float
    cz: float
    r: float
    y0: float
    y1: float

    def hit(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # Side: (t x - cx)^2 + (t - cz)^2 = r^2, nearest root, with t y within [y0, y1].
        a = x * x + 1.0
        b = -2.0 * (x * self.cx + self.cz)
        c = self.cx**2 + self.cz**2 - self.r**2
        disc = b * b - 4 * a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / (2 * a)
        side = np.where((disc >= 0) & (t * y >= self.y0) & (t * y <= self.y1), t, np.inf)
        # Caps: the planes y = y0 and y = y1 within the radius.
        best = side
        for cap_y in (self.y0, self.y1):
            with np.errstate(divide="ignore", invalid="ignore"):
                t = cap_y / y
            on = (t > 0) & ((t * x - self.cx) ** 2 + (t - self.cz) ** 2 <= self.r**2)
            best = np.minimum(best, np.where(on, t, np.inf))
        return best

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array((self.cx - self.r, self.y0, self.cz - self.r)),
                np.array((self.cx + self.r, self.y1, self.cz + self.r)))


OBJECTS: dict[str, Box | Cylinder] = {
    "box": Box((-0.42, -0.12, 0.9), (-0.2, 0.1, 1.05)),
    "crate": Box((0.12, 0.04, 1.25), (0.36, 0.26, 1.45)),
    "can": Cylinder(cx=0.02, cz=1.6, r=0.07, y0=-0.32, y1=-0.08),
}

PLUMB_BOB = np.array([-0.32, 0.11, 0.0012, -0.0009, -0.015])
RATIONAL = np.array([-0.3, 0.09, 0.001, -0.0007, 0.004, 0.02, -0.01, 0.002])


@dataclass(frozen=True)
class Camera:
    """A pinhole camera of ``width`` x ``height`` pixels; ``d`` with ``model`` as in sensor_msgs."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    d: np.ndarray = field(default_factory=lambda: np.zeros(5))
    model: str = "plumb_bob"

    def k(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def scaled(self, width: int, height: int) -> Camera:
        """The same view at another resolution (pixel centres scale, as an image resize does)."""
        sx, sy = width / self.width, height / self.height
        return Camera(width, height, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                      (self.cy + 0.5) * sy - 0.5, self.d, self.model)

    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """Per pixel, the undistorted ray (x/z, y/z): float64 [H, W] each."""
        u, v = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
        xd, yd = (u - self.cx) / self.fx, (v - self.cy) / self.fy
        if not np.any(self.d):
            return xd, yd
        k = np.zeros(8)
        k[: len(self.d)] = self.d
        k1, k2, p1, p2, k3, k4, k5, k6 = k
        x, y = xd.copy(), yd.copy()
        for _ in range(30):
            r2 = x * x + y * y
            radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
            dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
            dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
            x, y = (xd - dx) / radial, (yd - dy) / radial
        points = np.stack([x, y, np.ones_like(x)], axis=-1).reshape(-1, 1, 3)
        projected, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), self.k(), self.d)
        error = np.abs(projected.reshape(self.height, self.width, 2) - np.stack([u, v], axis=-1)).max()
        assert error < 1e-6, f"ray inversion off by {error} px"
        return x, y

    def camera_info(self, frame_id: str = "camera_color_optical_frame", *, binning: int = 1,
                    roi: tuple[int, int] = (0, 0)) -> Any:
        """A sensor_msgs/CameraInfo-shaped value for this image, described as ``binning`` of a sensor
        ``binning`` times larger, or as a ``roi`` at ``roi`` of a larger sensor."""
        fx, fy = self.fx * binning, self.fy * binning
        cx, cy = self.cx * binning + roi[0], self.cy * binning + roi[1]
        whole = roi == (0, 0)  # CameraInfo's roi of zero size means the full image
        roi_msg = SimpleNamespace(x_offset=roi[0], y_offset=roi[1], do_rectify=False,
                                  width=0 if whole else self.width * binning,
                                  height=0 if whole else self.height * binning)
        full = (self.width * binning + 2 * roi[0], self.height * binning + 2 * roi[1])
        return SimpleNamespace(
            header=SimpleNamespace(frame_id=frame_id), width=full[0], height=full[1],
            distortion_model=self.model, d=list(self.d), binning_x=binning, binning_y=binning, roi=roi_msg,
            k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
        )


CAMERA = Camera(640, 480, 520.0, 515.0, 322.5, 236.0)


@dataclass
class Rendering:
    """What ``camera`` sees: ``z`` metres [H, W], per-object true masks and true points [H, W, 3]."""

    z: np.ndarray
    masks: dict[str, np.ndarray]
    points: np.ndarray

    def depth_16uc1(self) -> np.ndarray:
        return np.round(self.z * 1000.0).astype(np.uint16)

    def depth_32fc1(self) -> np.ndarray:
        return self.z.astype(np.float32)


def render(camera: Camera, objects: dict[str, Box | Cylinder] | None = None) -> Rendering:
    """Ray-cast ``objects`` (default :data:`OBJECTS`) in front of the wall at :data:`WALL_Z`."""
    objects = OBJECTS if objects is None else objects
    x, y = camera.rays()
    hits = np.stack([shape.hit(x, y) for shape in objects.values()] + [np.full_like(x, WALL_Z)])
    nearest = np.argmin(hits, axis=0)
    z = np.take_along_axis(hits, nearest[None], axis=0)[0]
    masks = {name: nearest == k for k, name in enumerate(objects)}
    return Rendering(z, masks, np.stack([x * z, y * z, z], axis=-1))
