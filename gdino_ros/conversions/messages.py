"""Result -> ROS messages: the one implementation the live node and ``gdino-bag`` share.

Every message is built by calling its class with *all* fields as keyword arguments. rclpy message
classes accept that, and rosbags dataclasses require it, so the mapping below serves both unchanged;
the only framework difference, how a ``uint8[]`` field wants its bytes, sits in :class:`MessageTypes`.

API::

    types = ros_message_types()                      # rclpy: the generated *.msg Python classes
    types = rosbags_message_types(project_typestore())  # rosbags: dataclasses (no ROS needed)

    out = result_to_messages(result, image_msg.header, types, mask_encoding=MONO16, overlay_rgb=None)
    out.detections   # vision_msgs/Detection2DArray
    out.mask         # sensor_msgs/Image, instance label image (mono16, or mono8)
    out.no_target    # std_msgs/Bool
    out.result       # gdino_ros/SegmentationResult (all of the above in one message)
    out.overlay      # sensor_msgs/Image rgb8, or None when no overlay_rgb was given
    for name, msg in out.items(): ...  # (topic leaf name, message); type names in OUTPUT_TYPES

Every output carries the input image's header unchanged (stamp = capture time, frame_id = camera
frame); boxes are in that image's pixels. The building blocks (:func:`detection_msgs`,
:func:`label_image_msg`, :func:`rgb_image_msg`, ...) are public for callers that need one message.

mono8 masks hold at most 255 instances. Rather than wrap ids silently, an instance whose id exceeds
255 is left out of *every* output of that frame (its pixels become background and its detection is
dropped), so each published detection id still names exactly its pixels in the mask;
:attr:`ResultMessages.dropped_instances` counts them so the caller can warn. mono16 never drops.
"""
from __future__ import annotations

import array
import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from gdino_ros.conversions.encodings import MASK_ENCODINGS, MONO8, MONO16, PIXEL_LAYOUT, RGB8
from gdino_ros.core.result import Detection, Result

# MessageTypes attribute -> ROS type name.
MESSAGE_TYPE_NAMES: dict[str, str] = {
    "Detection2DArray": "vision_msgs/msg/Detection2DArray",
    "Detection2D": "vision_msgs/msg/Detection2D",
    "ObjectHypothesisWithPose": "vision_msgs/msg/ObjectHypothesisWithPose",
    "ObjectHypothesis": "vision_msgs/msg/ObjectHypothesis",
    "BoundingBox2D": "vision_msgs/msg/BoundingBox2D",
    "Pose2D": "vision_msgs/msg/Pose2D",
    "Point2D": "vision_msgs/msg/Point2D",
    "PoseWithCovariance": "geometry_msgs/msg/PoseWithCovariance",
    "Pose": "geometry_msgs/msg/Pose",
    "Point": "geometry_msgs/msg/Point",
    "Quaternion": "geometry_msgs/msg/Quaternion",
    "Image": "sensor_msgs/msg/Image",
    "Bool": "std_msgs/msg/Bool",
    "SegmentationResult": "gdino_ros/msg/SegmentationResult",
}

# Namespace of every output topic: relative in the node (so a node namespace applies), "/gdino" in bags.
OUTPUT_NAMESPACE = "gdino"

# ResultMessages field (the topic's leaf name) -> ROS type name of that output.
OUTPUT_TYPES: dict[str, str] = {
    "detections": MESSAGE_TYPE_NAMES["Detection2DArray"],
    "mask": MESSAGE_TYPE_NAMES["Image"],
    "no_target": MESSAGE_TYPE_NAMES["Bool"],
    "result": MESSAGE_TYPE_NAMES["SegmentationResult"],
    "overlay": MESSAGE_TYPE_NAMES["Image"],
}

MONO8_MAX_INSTANCES = 255
COVARIANCE_SIZE = 36  # geometry_msgs/PoseWithCovariance.covariance is float64[36]


@dataclass(frozen=True)
class MessageTypes:
    """The message classes of one framework, plus how its ``uint8[]`` fields take bytes.

    ``uint8_sequence`` turns a C-contiguous uint8 array into the value a ``uint8[]`` field accepts:
    rosbags keeps numpy arrays; rclpy wants ``array.array('B')`` (its generic sequence check walks
    every element, which would cost seconds per camera image).
    """

    Detection2DArray: Callable[..., Any]
    Detection2D: Callable[..., Any]
    ObjectHypothesisWithPose: Callable[..., Any]
    ObjectHypothesis: Callable[..., Any]
    BoundingBox2D: Callable[..., Any]
    Pose2D: Callable[..., Any]
    Point2D: Callable[..., Any]
    PoseWithCovariance: Callable[..., Any]
    Pose: Callable[..., Any]
    Point: Callable[..., Any]
    Quaternion: Callable[..., Any]
    Image: Callable[..., Any]
    Bool: Callable[..., Any]
    SegmentationResult: Callable[..., Any]
    uint8_sequence: Callable[[np.ndarray], Any]


def _byte_array(data: np.ndarray) -> array.array:
    out = array.array("B")
    out.frombytes(data.data)
    return out


def ros_message_types() -> MessageTypes:
    """Collect the rosidl-generated Python classes (needs the built vision_msgs and gdino_ros messages)."""
    classes = {}
    for attribute, type_name in MESSAGE_TYPE_NAMES.items():
        package, _, name = type_name.split("/")
        classes[attribute] = getattr(importlib.import_module(f"{package}.msg"), name)
    return MessageTypes(**classes, uint8_sequence=_byte_array)


def rosbags_message_types(typestore: Any) -> MessageTypes:
    """Collect the dataclasses of a rosbags typestore that has the project's types (``typestore.py``)."""
    missing = [name for name in MESSAGE_TYPE_NAMES.values() if name not in typestore.types]
    if missing:
        raise ValueError(
            f"typestore lacks {missing}; build it with gdino_ros.conversions.typestore.project_typestore()"
        )
    classes = {attribute: typestore.types[name] for attribute, name in MESSAGE_TYPE_NAMES.items()}
    return MessageTypes(**classes, uint8_sequence=lambda data: data)


@dataclass
class ResultMessages:
    """The messages of one frame; field names are the output topics' leaf names."""

    detections: Any
    mask: Any
    no_target: Any
    result: Any
    overlay: Any | None
    dropped_instances: int = 0

    def items(self) -> Iterator[tuple[str, Any]]:
        """(leaf topic name, message) for every output present, in :data:`OUTPUT_TYPES` order."""
        for f in fields(self):
            if f.name in OUTPUT_TYPES and (message := getattr(self, f.name)) is not None:
                yield f.name, message


def _image_msg(pixels: np.ndarray, header: Any, encoding: str, types: MessageTypes) -> Any:
    """sensor_msgs/Image from [H, W] or [H, W, C] pixels already in ``encoding``'s layout."""
    channels, dtype = PIXEL_LAYOUT[encoding]
    height, width = pixels.shape[:2]
    little = np.ascontiguousarray(pixels, dtype=dtype.newbyteorder("<"))
    return types.Image(
        header=header,
        height=int(height),
        width=int(width),
        encoding=encoding,
        is_bigendian=0,
        step=int(width * channels * dtype.itemsize),
        data=types.uint8_sequence(little.reshape(-1).view(np.uint8)),
    )


def label_image_msg(label_image: np.ndarray, header: Any, types: MessageTypes, encoding: str = MONO16) -> Any:
    """Instance label image (uint [H, W], 0 background) -> sensor_msgs/Image mono16 or mono8.

    Ids above 255 must already be removed for mono8 (:func:`result_to_messages` does it); a
    ValueError here means a caller tried to wrap them.
    """
    if encoding not in MASK_ENCODINGS:
        raise ValueError(f"mask encoding {encoding!r} is not supported; use one of {MASK_ENCODINGS}")
    if label_image.ndim != 2 or label_image.dtype.kind != "u":
        raise ValueError(f"label image must be unsigned [H, W], got {label_image.dtype} {label_image.shape}")
    if encoding == MONO8 and label_image.size and int(label_image.max()) > MONO8_MAX_INSTANCES:
        raise ValueError(f"label image has ids up to {int(label_image.max())}; mono8 holds at most 255")
    return _image_msg(label_image, header, encoding, types)


def rgb_image_msg(rgb: np.ndarray, header: Any, types: MessageTypes) -> Any:
    """uint8 [H, W, 3] RGB pixels (e.g. an overlay) -> sensor_msgs/Image rgb8."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 [H, W, 3] RGB pixels, got {rgb.dtype} {rgb.shape}")
    return _image_msg(rgb, header, RGB8, types)


def detection_msg(detection: Detection, header: Any, types: MessageTypes) -> Any:
    """One Detection -> vision_msgs/Detection2D (label and score as the single hypothesis)."""
    x0, y0, x1, y1 = (float(v) for v in detection.box_xyxy)
    hypothesis = types.ObjectHypothesisWithPose(
        hypothesis=types.ObjectHypothesis(class_id=str(detection.label), score=float(detection.score)),
        pose=types.PoseWithCovariance(  # 2-D detector: identity pose, zero covariance (the msg defaults)
            pose=types.Pose(
                position=types.Point(x=0.0, y=0.0, z=0.0),
                orientation=types.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0),
            ),
            covariance=np.zeros(COVARIANCE_SIZE, dtype=np.float64),
        ),
    )
    bbox = types.BoundingBox2D(
        center=types.Pose2D(position=types.Point2D(x=(x0 + x1) / 2.0, y=(y0 + y1) / 2.0), theta=0.0),
        size_x=x1 - x0,
        size_y=y1 - y0,
    )
    instance_id = str(int(detection.instance_id))
    return types.Detection2D(header=header, results=[hypothesis], bbox=bbox, id=instance_id)


def detection_msgs(detections: Sequence[Detection], header: Any, types: MessageTypes) -> list[Any]:
    """Convert detections (best first) to vision_msgs/Detection2D, same order."""
    return [detection_msg(d, header, types) for d in detections]


def no_target_msg(result: Result, types: MessageTypes) -> Any:
    """std_msgs/Bool carrying the image-level no-target decision."""
    return types.Bool(data=bool(result.no_target))


def result_to_messages(
    result: Result,
    header: Any,
    types: MessageTypes,
    *,
    mask_encoding: str = MONO16,
    overlay_rgb: np.ndarray | None = None,
) -> ResultMessages:
    """All outputs of one frame, each stamped with ``header`` (the input image's header).

    ``mask_encoding`` is MONO16 or MONO8 (see the module docstring for mono8's 255-instance cap);
    ``overlay_rgb`` (uint8 [H, W, 3]) becomes the rgb8 overlay image when given.
    """
    if mask_encoding not in MASK_ENCODINGS:
        raise ValueError(f"mask encoding {mask_encoding!r} is not supported; use one of {MASK_ENCODINGS}")
    kept, label_image = list(result.detections), result.label_image
    if mask_encoding == MONO8:
        kept = [d for d in kept if d.instance_id <= MONO8_MAX_INSTANCES]
        if label_image.size and int(label_image.max()) > MONO8_MAX_INSTANCES:
            label_image = np.where(label_image > MONO8_MAX_INSTANCES, 0, label_image)
    detections = detection_msgs(kept, header, types)
    mask = label_image_msg(label_image, header, types, mask_encoding)
    segmentation = types.SegmentationResult(
        header=header,
        prompt=result.prompt,
        prompt_mode=result.mode,
        detections=detections,
        mask=mask,
        no_target=bool(result.no_target),
        no_target_probability=float(result.no_target_probability),
    )
    return ResultMessages(
        detections=types.Detection2DArray(header=header, detections=detections),
        mask=mask,
        no_target=no_target_msg(result, types),
        result=segmentation,
        overlay=None if overlay_rgb is None else rgb_image_msg(overlay_rgb, header, types),
        dropped_instances=len(result.detections) - len(kept),
    )
