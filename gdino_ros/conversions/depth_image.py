"""sensor_msgs/Image depth (16UC1 millimetres, 32FC1 metres) -> a numpy view of its pixels.

Kept apart from :mod:`gdino_ros.conversions.image`, which reads colour images for the network: depth is
never resized or normalised, only read in its own units for :mod:`gdino_ros.core.depth_lifting`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gdino_ros.core.depth_lifting import DEPTH_M, DEPTH_MM, DepthInputError, check_depth_encoding

_DTYPES = {DEPTH_MM: "u2", DEPTH_M: "f4"}


def depth_to_pixels(msg: Any) -> tuple[np.ndarray, str]:
    """Return (pixels [height, width], encoding): uint16 millimetres or float32 metres, native order.

    A view of ``msg.data`` when its rows are unpadded and little-endian, else a copy. Raises
    :class:`DepthInputError` for another encoding, an empty image, a ``step`` shorter than a row or
    ``data`` shorter than the image.
    """
    encoding = str(msg.encoding)
    check_depth_encoding(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    dtype = np.dtype(("<" if not msg.is_bigendian else ">") + _DTYPES[encoding])
    if height == 0 or width == 0 or step < width * dtype.itemsize:
        raise DepthInputError(
            f"depth image is {width}x{height} with step {step}; the depth publisher must fill in width, "
            f"height and step (at least width x {dtype.itemsize} bytes)"
        )
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < step * height:
        raise DepthInputError(
            f"truncated depth image: {data.size} bytes, but step x height is {step * height}"
        )
    rows = data[: step * height].reshape(height, step)[:, : width * dtype.itemsize]
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width)
    return pixels.astype(dtype.newbyteorder("="), copy=False), encoding
