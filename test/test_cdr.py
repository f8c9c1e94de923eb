"""The node's CDR codec: camera frames decoded without copying their pixels, outputs that rclpy reads back."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from message_values import plain

from gdino_ros.conversions.cdr import CdrCodec, CdrDecodeError
from gdino_ros.conversions.image import compressed_to_pixels, image_to_pixels
from gdino_ros.conversions.messages import (
    LABEL_INFO_TYPE,
    MESSAGE_TYPE_NAMES,
    label_image_msg,
    label_info_msg,
    rgb_image_msg,
    ros_message_class,
)

pytestmark = pytest.mark.usefixtures("ros_context")


@pytest.fixture(scope="module")
def codec() -> CdrCodec:
    return CdrCodec()


def _rclpy_frame(pixels: np.ndarray, encoding: str, row_padding: int = 0) -> Any:
    from sensor_msgs.msg import Image

    height, width, channels = pixels.shape
    step = width * channels + row_padding
    rows = np.zeros((height, step), np.uint8)
    rows[:, : width * channels] = pixels.reshape(height, -1)
    msg = Image(height=height, width=width, encoding=encoding, step=step)
    msg.data = rows.tobytes()
    msg.header.frame_id = "camera"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000, 123
    return msg


@pytest.mark.parametrize(("encoding", "row_padding"), [("rgb8", 0), ("bgr8", 0), ("rgb8", 5)])
def test_a_frame_is_decoded_as_a_view_of_the_received_bytes(
    codec: CdrCodec, encoding: str, row_padding: int
) -> None:
    from rclpy.serialization import serialize_message

    pixels = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    sent = _rclpy_frame(pixels, encoding, row_padding)
    raw = bytes(serialize_message(sent))  # what a raw subscription hands the node

    frame = codec.decode(raw, "sensor_msgs/msg/Image")
    stamp = frame.header.stamp
    assert (frame.header.frame_id, stamp.sec, stamp.nanosec) == ("camera", 1_700_000_000, 123)
    assert (frame.height, frame.width, frame.encoding, frame.step) == (37, 53, encoding, sent.step)
    image, bgr = image_to_pixels(frame)
    assert bgr == (encoding == "bgr8")
    np.testing.assert_array_equal(image, pixels)
    assert np.shares_memory(image, np.frombuffer(raw, np.uint8)), "the pixels were copied"


def test_a_compressed_frame_is_decoded(codec: CdrCodec) -> None:
    import cv2
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage

    pixels = np.random.default_rng(4).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    sent = CompressedImage(format="png")
    sent.data = cv2.imencode(".png", pixels[..., ::-1])[1].tobytes()
    frame = codec.decode(bytes(serialize_message(sent)), "sensor_msgs/msg/CompressedImage")
    image, bgr = compressed_to_pixels(frame)
    np.testing.assert_array_equal(image[..., ::-1] if bgr else image, pixels)


def test_encoded_messages_read_back_by_rclpy_equal_what_was_built(codec: CdrCodec) -> None:
    from rclpy.serialization import deserialize_message

    types = codec.typestore.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=5, nanosec=6),
                                          frame_id="camera")
    built = label_info_msg(("red cup", "bottle"), 0.375, header, codec.types)
    received = deserialize_message(codec.encode(built, LABEL_INFO_TYPE), ros_message_class(LABEL_INFO_TYPE))
    assert plain(received) == plain(built)


def test_bytes_of_another_type_are_refused_with_the_type_named(codec: CdrCodec) -> None:
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Bool

    with pytest.raises(CdrDecodeError, match="not a sensor_msgs/msg/Image message"):
        codec.decode(bytes(serialize_message(Bool(data=True))), "sensor_msgs/msg/Image")


@pytest.mark.parametrize("frame_id", ["", "c", "cam", "camera_color_optical_frame"])
@pytest.mark.parametrize(("encoding", "shape", "dtype"), [
    ("mono16", (5, 7), np.uint16), ("mono8", (3, 1), np.uint8), ("rgb8", (4, 6, 3), np.uint8),
    ("mono16", (0, 0), np.uint16),
])
def test_an_image_is_encoded_as_rosbags_serialises_it(
    codec: CdrCodec, frame_id: str, encoding: str, shape: tuple[int, ...], dtype: type
) -> None:
    """Images take a shortcut (fields, then the pixels in one copy); the bytes must be rosbags' own."""
    types = codec.typestore.types
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=-3, nanosec=9),
                                          frame_id=frame_id)
    pixels = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    image = (rgb_image_msg(pixels, header, codec.types) if encoding == "rgb8"
             else label_image_msg(pixels, header, codec.types, encoding))
    type_name = MESSAGE_TYPE_NAMES["Image"]
    assert codec.encode(image, type_name) == bytes(codec.typestore.serialize_cdr(image, type_name))


def test_every_truncation_of_a_frame_is_refused_cleanly(codec: CdrCodec) -> None:
    """The node decodes whatever arrives on its raw subscription: a cut frame must not raise anything else."""
    from rclpy.serialization import serialize_message

    raw = bytes(serialize_message(_rclpy_frame(np.zeros((2, 3, 3), np.uint8), "rgb8")))
    for size in range(len(raw)):
        with pytest.raises(CdrDecodeError):
            codec.decode(raw[:size], "sensor_msgs/msg/Image")
