"""``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` to numpy RGB, without cv_bridge.

Written against field names only (``height``, ``width``, ``encoding``, ``is_bigendian``, ``step``,
``data``; ``format`` and ``data`` for compressed images), so the same functions take rclpy messages,
rosbags messages or anything shaped like them. ``data`` may be ``bytes``, ``array.array('B')``, a
``memoryview`` or a uint8 numpy array.

For the common camera encodings (rgb8, bgr8, rgba8, bgra8, mono8) the result is a numpy *view* of
``data``: no pixel is copied, which matters at 1080p and 30 Hz. Row padding (``step`` larger than
``width * bytes per pixel``) is honoured by the view's strides. Bayer, YUV 4:2:2 and 16-bit mono
frames need arithmetic, so they come back as new arrays (OpenCV does the colour conversion).

:func:`image_to_pixels` / :func:`compressed_to_pixels` keep the stored channel order and say whether it
is BGR, for consumers that take BGR directly (the segmenter does, which spares a 1080p copy per bgr8
frame); :func:`image_to_rgb` / :func:`compressed_to_rgb` always give RGB.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gdino_ros.contract import DEFAULT_INPUT_HEIGHT, DEFAULT_INPUT_WIDTH, MAX_IMAGE_PIXELS
from gdino_ros.conversions.encoded_size import encoded_image_size
from gdino_ros.conversions.encodings import BGR8, BGRA8, MONO8, MONO16, RGB8, RGBA8
from gdino_ros.errors import InputError


class ImageConversionError(InputError, ValueError):
    """The message cannot be read as an image; the text says what was wrong and what would work."""


# Encodings read as a strided view: (channels, indices of R, G, B among those channels).
_VIEW_LAYOUTS: dict[str, tuple[int, tuple[int, int, int]]] = {
    RGB8: (3, (0, 1, 2)),
    BGR8: (3, (2, 1, 0)),
    RGBA8: (4, (0, 1, 2)),
    BGRA8: (4, (2, 1, 0)),
    MONO8: (1, (0, 0, 0)),
}

# ROS names a Bayer pattern by its first two rows (rggb: R G / G B). OpenCV's constants name it by the
# second row's second and third pixels, so ROS rggb is OpenCV "BG". These classic names exist in every
# OpenCV 4.x that Humble and Jazzy ship.
_BAYER_CODES: dict[str, int] = {
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}

# Packed YUV 4:2:2, two bytes per pixel. ROS's "yuv422" is UYVY byte order and "yuv422_yuy2" is YUYV;
# newer sensor_msgs releases name them "uyvy" and "yuyv".
_YUV422_CODES: dict[str, int] = {
    "yuv422": cv2.COLOR_YUV2RGB_UYVY,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUYV,
    "yuyv": cv2.COLOR_YUV2RGB_YUYV,
}

SUPPORTED_ENCODINGS: tuple[str, ...] = (*_VIEW_LAYOUTS, MONO16, *_BAYER_CODES, *_YUV422_CODES)


def _bytes_per_pixel(encoding: str) -> int:
    if encoding in _VIEW_LAYOUTS:
        return _VIEW_LAYOUTS[encoding][0]
    if encoding in _BAYER_CODES:
        return 1
    return 2  # mono16 and the YUV 4:2:2 family


def _rows(msg: Any, bytes_per_pixel: int) -> np.ndarray:
    """Validate the geometry and return ``data`` as a uint8 view [height, width * bytes_per_pixel]."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty frame: {width}x{height} pixels")
    check_pixel_count(width, height, f"{msg.encoding} frame")
    row_bytes = width * bytes_per_pixel
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width {width} x {bytes_per_pixel} bytes per pixel "
            f"({msg.encoding}) = {row_bytes}: the publisher filled in a wrong step"
        )
    data = np.frombuffer(msg.data, dtype=np.uint8)
    data.flags.writeable = False  # the views below share the message's buffer
    if data.size < step * height:
        raise ImageConversionError(
            f"truncated frame: {data.size} bytes of data, but step {step} x height {height} needs "
            f"{step * height}"
        )
    return data[: step * height].reshape(height, step)[:, :row_bytes]


def image_to_pixels(msg: Any) -> tuple[np.ndarray, bool]:
    """Read a ``sensor_msgs/Image`` as 3-channel pixels in the order they are stored.

    Returns (uint8 [height, width, 3], bgr): ``bgr`` is True when the channels are B, G, R (bgr8,
    bgra8), so a consumer that takes BGR (``Segmenter(image, bgr=True)``) needs no copy at all. For rgb8,
    bgr8, rgba8, bgra8 and mono8 the pixels are a read-only view sharing ``msg.data`` (alpha dropped and
    row padding skipped by strides; mono8 repeats its channel with stride 0), valid while the message
    lives. mono16 keeps its high byte (as cv_bridge does for mono16 -> mono8); Bayer and YUV 4:2:2 are
    converted by OpenCV into new RGB arrays. Raises :class:`ImageConversionError` for an unsupported
    encoding, an empty (0-pixel) frame, a ``step`` shorter than a row, or ``data`` shorter than
    ``step * height``.
    """
    encoding = str(msg.encoding)
    if encoding not in SUPPORTED_ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)} "
            "(or publish a sensor_msgs/CompressedImage and enable compressed input)"
        )
    rows = _rows(msg, _bytes_per_pixel(encoding))
    height, width = rows.shape[0], int(msg.width)

    if encoding in _VIEW_LAYOUTS:
        channels, rgb_index = _VIEW_LAYOUTS[encoding]
        pixels = rows.reshape(height, width, channels)
        if channels == 1:
            return np.broadcast_to(pixels, (height, width, 3)), False
        return (pixels[..., :3] if channels == 4 else pixels), rgb_index != (0, 1, 2)
    if encoding == MONO16:
        order = ">" if msg.is_bigendian else "<"
        high_byte = (rows.view(np.dtype(f"{order}u2")) >> 8).astype(np.uint8)
        return np.broadcast_to(high_byte[..., None], (height, width, 3)), False
    if encoding in _BAYER_CODES:
        return cv2.cvtColor(np.ascontiguousarray(rows), _BAYER_CODES[encoding]), False
    if width % 2:
        raise ImageConversionError(f"{encoding} packs two pixels into 4 bytes; width {width} must be even")
    packed = np.ascontiguousarray(rows).reshape(height, width, 2)
    return cv2.cvtColor(packed, _YUV422_CODES[encoding]), False


def image_to_rgb(msg: Any) -> np.ndarray:
    """Read a ``sensor_msgs/Image`` as uint8 [height, width, 3] RGB; see :func:`image_to_pixels`.

    BGR encodings come back as a view with a negative channel stride (still no copy).
    """
    pixels, bgr = image_to_pixels(msg)
    return pixels[..., ::-1] if bgr else pixels


def compressed_to_pixels(msg: Any) -> tuple[np.ndarray, bool]:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG, PNG, ...): (uint8 [H, W, 3] BGR, True).

    ``format`` is informative only (``"jpeg"``, ``"rgb8; jpeg compressed bgr8"``): the bytes say what
    they are. Compressed depth images (``compressedDepth``) are not camera images and are refused.
    """
    fmt = str(msg.format)
    if "compresseddepth" in fmt.lower():
        raise ImageConversionError(
            f"compressed depth image (format {fmt!r}) is not a camera image; subscribe to the colour stream"
        )
    return decode_image(np.frombuffer(msg.data, dtype=np.uint8), f"compressed frame (format {fmt!r})"), True


def check_pixel_count(width: int, height: int, what: str) -> None:
    """Refuse images over :data:`~gdino_ros.contract.MAX_IMAGE_PIXELS` before any pixel is decoded."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageConversionError(
            f"{what} is {width}x{height} = {width * height / 1e6:.0f} megapixels; at most "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} are accepted (the network sees it at "
            f"{DEFAULT_INPUT_WIDTH}x{DEFAULT_INPUT_HEIGHT} anyway): scale it down first"
        )


def decode_image(data: np.ndarray, what: str) -> np.ndarray:
    """Decode JPEG or PNG bytes (uint8 [N]) to uint8 [H, W, 3] BGR, after checking the header's size."""
    if data.size == 0:
        raise ImageConversionError(f"empty {what} (0 bytes)")
    size = encoded_image_size(memoryview(data))
    if size is None:
        raise ImageConversionError(f"{what} is not a readable JPEG or PNG ({data.size} bytes)")
    check_pixel_count(*size, what)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageConversionError(f"could not decode {what} ({data.size} bytes; damaged JPEG or PNG)")
    return bgr


def read_image_file(path: str | Path) -> np.ndarray:
    """Read a JPEG or PNG file as uint8 [H, W, 3] BGR; refuses oversized images before decoding."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageConversionError(f"cannot read image {path}: {error.strerror or error}") from None
    return decode_image(data, f"image {path}")


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` to contiguous uint8 [H, W, 3] RGB."""
    bgr, _ = compressed_to_pixels(msg)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
