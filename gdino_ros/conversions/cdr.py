"""Messages as CDR bytes through the project's rosbags typestore: how segment_node reads and writes frames.

rclpy turns a received message into Python objects field by field (a 1080p rgb8 frame's 6.2 MB are
copied into an ``array.array``) and walks every field of a message it publishes, one attribute at a time
(twenty detections are thousands of them). The node therefore subscribes to camera frames raw and
publishes its per-frame outputs as serialised bytes (``create_subscription(..., raw=True)`` and
``Publisher.publish(bytes)``, both in Humble's rclpy), and uses this codec in between:

* :meth:`CdrCodec.decode` gives a rosbags message whose ``uint8[]`` fields are numpy views of the
  received bytes, so a camera frame's pixels are never copied before the engine reads them;
* :meth:`CdrCodec.encode` serialises the rosbags dataclasses that
  :func:`~gdino_ros.conversions.messages.result_to_messages` builds with :attr:`CdrCodec.types`, the
  same builder and types gdino-bag writes bags with. An image (the label image, the overlay) is its
  other fields serialised and its pixels appended in one copy, as rclpy's ``publish(bytes)`` needs
  ``bytes``: a label image is 4 MB at 1080p and every copy of it costs.

Both sides are generated from the same ``.msg`` files as the rclpy classes, and the bytes are standard
CDR: a subscriber cannot tell them from rclpy's (only padding bytes, which CDR leaves unspecified, are
zero here rather than whatever rclpy's buffer held).
"""
from __future__ import annotations

import dataclasses
import struct
import sys
from typing import Any

import numpy as np
from rosbags.serde import SerdeError

from gdino_ros.conversions.messages import IMAGE_TYPE, MessageTypes, rosbags_message_types
from gdino_ros.conversions.typestore import project_typestore
from gdino_ros.errors import InputError

_NO_PIXELS = np.zeros(0, dtype=np.uint8)
_COUNT = struct.Struct("<I" if sys.byteorder == "little" else ">I")  # a sequence's element count


class CdrDecodeError(InputError, ValueError):
    """Received bytes are not a CDR message of the expected type."""


class CdrCodec:
    """Decode received CDR bytes into rosbags messages and encode rosbags messages into CDR bytes."""

    def __init__(self) -> None:
        self.typestore = project_typestore()
        #: The message classes to build outputs with (:func:`result_to_messages`'s ``types``).
        self.types: MessageTypes = rosbags_message_types(self.typestore)

    def decode(self, raw: bytes, type_name: str) -> Any:
        """Return the ``type_name`` message in ``raw``; its ``uint8[]`` fields are read-only views of it."""
        try:
            return self.typestore.deserialize_cdr(memoryview(raw), type_name)
        except SerdeError as error:
            raise CdrDecodeError(
                f"{len(raw)} bytes are not a {type_name} message ({error}); check the publisher's type"
            ) from error

    def encode(self, message: Any, type_name: str) -> bytes:
        """Serialise a rosbags ``type_name`` message (CDR in this machine's byte order, as rclpy writes)."""
        if type_name != IMAGE_TYPE:
            return bytes(self.typestore.serialize_cdr(message, type_name))
        # sensor_msgs/Image ends with uint8[] data: a 4-byte count then the bytes, unaligned. So the message
        # is everything before the count, serialised without pixels, then the count and the pixels.
        head = self.typestore.serialize_cdr(dataclasses.replace(message, data=_NO_PIXELS), type_name)
        pixels = np.ascontiguousarray(message.data, dtype=np.uint8)
        return b"".join((head[:-_COUNT.size], _COUNT.pack(pixels.size), pixels))
