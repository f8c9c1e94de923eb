"""sensor_msgs/Image and CompressedImage -> RGB numpy, for rclpy and rosbags messages alike.

Every expected image is built here from a real photo by independent means (numpy slicing, the
Bayer/YUV definitions written out by hand, OpenCV encoders), never by the code under test.
"""
from __future__ import annotations

import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from gdino_ros.conversions.encoded_size import encoded_image_size
from gdino_ros.conversions.image import (
    ImageConversionError,
    compressed_to_pixels,
    compressed_to_rgb,
    image_to_pixels,
    image_to_rgb,
    read_image_file,
)

PHOTO = np.ascontiguousarray(skdata.astronaut()[100:160, 200:290])  # uint8 [60, 90, 3] RGB, a real photo


def _rclpy_image(
    height: int, width: int, encoding: str, step: int, data: bytes, bigendian: bool = False
) -> Any:
    from sensor_msgs.msg import Image

    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=int(bigendian))
    msg.data = array.array("B", data)
    return msg


def _rosbags(name: str, **fields: Any) -> Any:
    """A rosbags (pure-Python, no ROS) message of type ``name`` with a stamped header."""
    from rosbags.typesys import Stores, get_typestore

    types = get_typestore(Stores.ROS2_JAZZY).types
    stamp = types["builtin_interfaces/msg/Time"](sec=1, nanosec=2)
    return types[name](header=types["std_msgs/msg/Header"](stamp=stamp, frame_id="cam"), **fields)


def _rosbags_image(
    height: int, width: int, encoding: str, step: int, data: bytes, bigendian: bool = False
) -> Any:
    pixels = np.frombuffer(data, dtype=np.uint8).copy()
    return _rosbags(
        "sensor_msgs/msg/Image",
        height=height, width=width, encoding=encoding, is_bigendian=int(bigendian), step=step, data=pixels,
    )


BUILDERS = pytest.mark.parametrize("make", [_rclpy_image, _rosbags_image], ids=["rclpy", "rosbags"])
Make = Callable[..., object]


def _padded(pixels: np.ndarray, pad: int) -> tuple[int, bytes]:
    """Rows of ``pixels`` (uint8 [H, W, C] or [H, W*C]) followed by ``pad`` junk bytes each: (step, data)."""
    rows = pixels.reshape(pixels.shape[0], -1)
    junk = np.full((rows.shape[0], pad), 0xAB, dtype=np.uint8)
    padded = np.concatenate([rows, junk], axis=1)
    return padded.shape[1], padded.tobytes()


@BUILDERS
@pytest.mark.parametrize(
    ("encoding", "to_wire"),
    [
        ("rgb8", lambda rgb: rgb),
        ("bgr8", lambda rgb: rgb[..., ::-1]),
        ("rgba8", lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
        ("bgra8", lambda rgb: np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)])),
    ],
)
@pytest.mark.parametrize("pad", [0, 5])
def test_colour_encodings_are_zero_copy_views(make: Make, encoding: str, to_wire: Callable, pad: int) -> None:
    step, data = _padded(np.ascontiguousarray(to_wire(PHOTO)), pad)
    msg = make(PHOTO.shape[0], PHOTO.shape[1], encoding, step, data)

    rgb = image_to_rgb(msg)

    assert rgb.shape == PHOTO.shape and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, PHOTO)
    assert np.shares_memory(rgb, np.frombuffer(msg.data, dtype=np.uint8)), "pixels were copied"
    assert not rgb.flags.writeable


@BUILDERS
@pytest.mark.parametrize(("encoding", "channels"), [("bgr8", 3), ("bgra8", 4), ("rgb8", 3)])
def test_pixels_keep_the_stored_channel_order(make: Make, encoding: str, channels: int) -> None:
    """A consumer that takes BGR gets bgr8 as a contiguous view: not even np.ascontiguousarray copies."""
    bgr_first = encoding.startswith("bgr")
    stored = PHOTO[..., ::-1] if bgr_first else PHOTO
    wire = np.dstack([stored, np.zeros(PHOTO.shape[:2], np.uint8)]) if channels == 4 else stored
    data = np.ascontiguousarray(wire).tobytes()
    msg = make(PHOTO.shape[0], PHOTO.shape[1], encoding, PHOTO.shape[1] * channels, data)

    pixels, bgr = image_to_pixels(msg)

    assert bgr is bgr_first
    np.testing.assert_array_equal(pixels, stored)
    assert np.shares_memory(pixels, np.frombuffer(msg.data, dtype=np.uint8))
    assert pixels.flags.c_contiguous is (channels == 3)


@BUILDERS
def test_mono8_is_a_grey_rgb_view(make: Make) -> None:
    grey = cv2.cvtColor(PHOTO, cv2.COLOR_RGB2GRAY)
    step, data = _padded(grey, 3)
    msg = make(grey.shape[0], grey.shape[1], "mono8", step, data)

    rgb = image_to_rgb(msg)

    assert rgb.shape == (*grey.shape, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], grey)
    assert np.shares_memory(rgb, np.frombuffer(msg.data, dtype=np.uint8))


@BUILDERS
@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 3])
def test_mono16_keeps_the_high_byte_in_either_byte_order(make: Make, bigendian: bool, pad: int) -> None:
    grey16 = (cv2.cvtColor(PHOTO, cv2.COLOR_RGB2GRAY).astype(np.uint16) << 8) | 0x5A
    wire = grey16.astype(">u2" if bigendian else "<u2").view(np.uint8)
    step, data = _padded(wire, pad)
    msg = make(grey16.shape[0], grey16.shape[1], "mono16", step, data, bigendian)

    rgb = image_to_rgb(msg)

    np.testing.assert_array_equal(rgb[..., 1], grey16 >> 8)


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample ``rgb`` through a Bayer colour filter named like ROS does (first row, then second row)."""
    channel = {"r": 0, "g": 1, "b": 2}
    out = np.empty(rgb.shape[:2], dtype=np.uint8)
    for i, colour in enumerate(pattern):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, channel[colour]]
    return out


@BUILDERS
@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_demosaic_to_the_scene_colours(make: Make, pattern: str) -> None:
    scene = np.zeros((24, 32, 3), dtype=np.uint8)
    scene[:, :16] = (220, 40, 10)  # a red patch and a blue patch: a swapped pattern turns one into the other
    scene[:, 16:] = (15, 60, 230)
    step, data = _padded(_mosaic(scene, pattern), 4)
    msg = make(24, 32, f"bayer_{pattern}8", step, data)

    rgb = image_to_rgb(msg).astype(int)

    # Away from the colour edge and the border, bilinear demosaicing of flat patches is exact.
    np.testing.assert_allclose(rgb[4:-4, 3:12], np.broadcast_to(scene[0, 0], (16, 9, 3)), atol=2)
    np.testing.assert_allclose(rgb[4:-4, 20:-3], np.broadcast_to(scene[0, -1], (16, 9, 3)), atol=2)


def _bt601_yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """Pack RGB as 8-bit limited-range BT.601 YUV 4:2:2 in byte ``order`` ("uyvy" or "yuyv")."""
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    u2, v2 = (u[:, 0::2] + u[:, 1::2]) / 2, (v[:, 0::2] + v[:, 1::2]) / 2
    planes = {"u": u2, "v": v2, "y0": y[:, 0::2], "y1": y[:, 1::2]}
    names = ["u", "y0", "v", "y1"] if order == "uyvy" else ["y0", "u", "y1", "v"]
    out = np.empty((rgb.shape[0], rgb.shape[1] * 2), dtype=np.uint8)
    for i, name in enumerate(names):
        out[:, i::4] = np.clip(np.round(planes[name]), 0, 255)
    return out


@BUILDERS
@pytest.mark.parametrize(
    ("encoding", "order"),
    [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"), ("yuyv", "yuyv")],
)
def test_yuv422_byte_orders(make: Make, encoding: str, order: str) -> None:
    scene = np.zeros((8, 16, 3), dtype=np.uint8)
    scene[:, :8] = (200, 30, 90)
    scene[:, 8:] = (20, 180, 60)
    step, data = _padded(_bt601_yuv422(scene, order), 2)
    msg = make(8, 16, encoding, step, data)

    rgb = image_to_rgb(msg).astype(int)

    np.testing.assert_allclose(rgb, scene.astype(int), atol=3)
    other = "yuyv" if order == "uyvy" else "uyvy"
    step, data = _padded(_bt601_yuv422(scene, other), 2)
    assert np.abs(image_to_rgb(make(8, 16, encoding, step, data)).astype(int) - scene).max() > 40


def _compressed(fmt: str, payload: bytes, make_rosbags: bool) -> Any:
    if make_rosbags:
        data = np.frombuffer(payload, dtype=np.uint8).copy()
        return _rosbags("sensor_msgs/msg/CompressedImage", format=fmt, data=data)
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage(format=fmt)
    msg.data = array.array("B", payload)
    return msg


@pytest.mark.parametrize("make_rosbags", [False, True], ids=["rclpy", "rosbags"])
def test_compressed_png_is_lossless_and_jpeg_close(make_rosbags: bool) -> None:
    ok, png = cv2.imencode(".png", PHOTO[..., ::-1])
    assert ok
    lossless = compressed_to_rgb(_compressed("rgb8; png compressed bgr8", png.tobytes(), make_rosbags))
    np.testing.assert_array_equal(lossless, PHOTO)
    ok, jpeg = cv2.imencode(".jpg", PHOTO[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    decoded = compressed_to_rgb(_compressed("jpeg", jpeg.tobytes(), make_rosbags))
    assert decoded.shape == PHOTO.shape
    assert np.abs(decoded.astype(int) - PHOTO).mean() < 4


def test_compressed_pixels_are_bgr() -> None:
    ok, png = cv2.imencode(".png", PHOTO[..., ::-1])
    assert ok
    pixels, bgr = compressed_to_pixels(_compressed("png", png.tobytes(), make_rosbags=False))
    assert bgr
    np.testing.assert_array_equal(pixels[..., ::-1], PHOTO)


@BUILDERS
@pytest.mark.parametrize(
    ("height", "width", "encoding", "step", "size", "message"),
    [
        (4, 4, "32FC1", 16, 64, "unsupported image encoding '32FC1'"),
        (4, 4, "16UC1", 8, 32, "unsupported image encoding '16UC1'"),
        (0, 0, "rgb8", 0, 0, "empty frame: 0x0"),
        (4, 0, "rgb8", 0, 0, "empty frame"),
        (4, 4, "rgb8", 12, 47, "truncated frame: 47 bytes"),
        (4, 4, "rgb8", 10, 48, "step 10 is smaller than width 4 x 3"),
        (4, 3, "yuv422", 6, 24, "width 3 must be even"),
    ],
)
def test_bad_frames_raise_a_clear_error(
    make: Make, height: int, width: int, encoding: str, step: int, size: int, message: str
) -> None:
    msg = make(height, width, encoding, step, bytes(size))
    with pytest.raises(ImageConversionError, match=message.replace("(", r"\(")):
        image_to_rgb(msg)


@pytest.mark.parametrize(
    ("fmt", "payload", "message"),
    [
        ("jpeg", b"", "empty compressed frame"),
        ("jpeg", b"\xff\xd8 not really a jpeg", r"not a readable JPEG or PNG \(20 bytes\)"),
        ("jpeg", b"\xff\xd8\xff\xc0\x00\x11\x08" + b"\x00" * 12, "could not decode"),
        ("16UC1; compressedDepth png", b"\x89PNG", "compressed depth image"),
    ],
)
def test_bad_compressed_frames_raise_a_clear_error(fmt: str, payload: bytes, message: str) -> None:
    with pytest.raises(ImageConversionError, match=message):
        compressed_to_rgb(_compressed(fmt, payload, make_rosbags=False))


def _png_header(width: int, height: int) -> bytes:
    size = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + size


def _jpeg_header(width: int, height: int) -> bytes:
    """SOI, an APP0 segment to skip, then a baseline start-of-frame with the size."""
    app0 = b"\xff\xe0\x00\x10JFIF\x00" + bytes(9)
    sof = b"\xff\xc0\x00\x11\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes(10)
    return b"\xff\xd8" + app0 + sof


@pytest.mark.parametrize("extension", [".jpg", ".png"])
def test_header_size_of_real_encodings(extension: str) -> None:
    image = skdata.astronaut()[:300, :457]
    ok, encoded = cv2.imencode(extension, image)
    assert ok and encoded_image_size(memoryview(encoded)) == (457, 300)


@pytest.mark.parametrize("header", [_png_header(16384, 16384), _jpeg_header(16384, 16384)])
def test_oversized_compressed_frames_are_refused_before_decoding(header: bytes) -> None:
    assert encoded_image_size(header) == (16384, 16384)
    with pytest.raises(ImageConversionError, match="16384x16384 = 268 megapixels; at most 40"):
        compressed_to_rgb(_compressed("png", header, make_rosbags=False))


@BUILDERS
def test_oversized_raw_frames_are_refused_before_conversion(make: Make) -> None:
    msg = make(20000, 20000, "bayer_rggb8", 20000, bytes(64))
    with pytest.raises(ImageConversionError, match="bayer_rggb8 frame is 20000x20000 = 400 megapixels"):
        image_to_rgb(msg)


def test_image_files(tmp_path: Path) -> None:
    good = tmp_path / "a.png"
    cv2.imwrite(str(good), skdata.astronaut())
    assert read_image_file(good).shape == (512, 512, 3)
    (tmp_path / "big.png").write_bytes(_png_header(20000, 20000) + bytes(100))
    with pytest.raises(ImageConversionError, match=r"image .*big.png is 20000x20000"):
        read_image_file(tmp_path / "big.png")
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(ImageConversionError, match=r"notes.png is not a readable JPEG or PNG"):
        read_image_file(tmp_path / "notes.png")
    with pytest.raises(ImageConversionError, match=r"cannot read image .*missing.png"):
        read_image_file(tmp_path / "missing.png")
