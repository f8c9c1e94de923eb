"""Result -> ROS messages: the one implementation the live node and ``gdino-bag`` share.

Every message is built by calling its class with *all* fields as keyword arguments. rclpy message
classes accept that, and rosbags dataclasses require it, so the mapping below serves both unchanged;
the only framework difference, how a ``uint8[]`` field wants its bytes, sits in :class:`MessageTypes`.

API::

    types = ros_message_types()                      # rclpy: the generated *.msg Python classes
    types = rosbags_message_types(project_typestore())  # rosbags: dataclasses (no ROS needed)

    out = result_to_messages(result, image_msg.header, types, mask_encoding=MASK_AUTO, overlay_rgb=None,
                             track_ids=None, lifted=None, with_points=False, standalone=False)
    out.detections     # vision_msgs/Detection2DArray (id = track id, "" untracked)
    out.mask           # sensor_msgs/Image, instance label image (mono8 or mono16, see below)
    out.no_target      # std_msgs/Bool
    out.result         # gdino_ros/SegmentationResult (all of these plus each instance's own mask; its
                       # label image only when ``standalone``: a stream has it once, in ``out.mask``)
    out.overlay        # sensor_msgs/Image rgb8, or None when no overlay_rgb was given
    out.detections_3d  # vision_msgs/Detection3DArray, or None without ``lifted``
    out.points         # sensor_msgs/PointCloud2, or None unless ``lifted`` and ``with_points``
    for name, msg in out.items(): ...  # (topic leaf name, message); types in (DEPTH_)OUTPUT_TYPES
    label_info_msg(result.phrases, box_threshold, header, types)  # the latched LABEL_INFO_TOPIC

Every output carries the input image's header unchanged (stamp = capture time, frame_id = camera
frame); boxes are in that image's pixels. The building blocks (:func:`detection_msgs`,
:func:`label_image_msg`, :func:`rgb_image_msg`, ...) are public for callers that need one message.

The label image's encoding (``mask_encoding``): MASK_AUTO, the default, gives mono8 when the frame's
instance ids fit in it (at most 255 instances) and mono16 otherwise, so nothing is ever dropped and a
typical frame's label image is half the bytes; consumers read the message's ``encoding``, as for any
image. MONO16 always gives mono16. MONO8 always gives mono8, which holds at most 255 instances: rather
than wrap ids silently, an instance whose id exceeds 255 is left out of *every* output of that frame (its
pixels become background and its detection is dropped), so each published label value still names
exactly its detection's pixels in the mask; :attr:`ResultMessages.dropped_instances` counts them so the
caller can warn.
"""
from __future__ import annotations

import array
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from gdino_ros.conversions.encodings import MASK_AUTO, MASK_ENCODINGS, MONO8, MONO16, PIXEL_LAYOUT, RGB8
from gdino_ros.core.class_id import class_id_of
from gdino_ros.core.depth_lifting import Lifted
from gdino_ros.core.result import UINT8_MAX_INSTANCES, Detection, Result

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
    "RegionOfInterest": "sensor_msgs/msg/RegionOfInterest",
    "Detection3DArray": "vision_msgs/msg/Detection3DArray",
    "Detection3D": "vision_msgs/msg/Detection3D",
    "BoundingBox3D": "vision_msgs/msg/BoundingBox3D",
    "Vector3": "geometry_msgs/msg/Vector3",
    "PointCloud2": "sensor_msgs/msg/PointCloud2",
    "PointField": "sensor_msgs/msg/PointField",
    "LabelInfo": "vision_msgs/msg/LabelInfo",
    "VisionClass": "vision_msgs/msg/VisionClass",
}
# The messages the node and gdino-bag read: camera frames (raw or compressed), depth images, camera info.
IMAGE_TYPE = MESSAGE_TYPE_NAMES["Image"]
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"

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

# The outputs that exist only with depth (ResultMessages fields too), kept apart so that a consumer of
# OUTPUT_TYPES (the node's publishers, a bag's topics) adds them only when 3-D is on.
DEPTH_OUTPUT_TYPES: dict[str, str] = {
    "detections_3d": MESSAGE_TYPE_NAMES["Detection3DArray"],
    "points": MESSAGE_TYPE_NAMES["PointCloud2"],
}

# The latched class vocabulary topic (leaf name) and its type; sent when the prompt changes, not per frame.
LABEL_INFO_TOPIC = "label_info"
LABEL_INFO_TYPE = MESSAGE_TYPE_NAMES["LabelInfo"]

COVARIANCE_SIZE = 36  # geometry_msgs/PoseWithCovariance.covariance is float64[36]


@dataclass(frozen=True)
class MessageTypes:
    """The message classes of one framework, plus how its ``uint8[]`` fields take bytes.

    ``uint8_sequence`` turns a C-contiguous uint8 array into the value a ``uint8[]`` field accepts:
    rosbags keeps numpy arrays; rclpy wants ``array.array('B')`` (its generic sequence check walks
    every element, which would cost seconds per camera image). ``keep_arrays`` are the constructor
    arguments under which a message keeps such a value as given: rclpy from Iron on copies it again
    unless the message checks its fields (``check_fields=True``); Humble's rclpy always checks, and
    rosbags never copies.
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
    RegionOfInterest: Callable[..., Any]
    Detection3DArray: Callable[..., Any]
    Detection3D: Callable[..., Any]
    BoundingBox3D: Callable[..., Any]
    Vector3: Callable[..., Any]
    PointCloud2: Callable[..., Any]
    PointField: Callable[..., Any]
    LabelInfo: Callable[..., Any]
    VisionClass: Callable[..., Any]
    uint8_sequence: Callable[[np.ndarray], Any]
    keep_arrays: Mapping[str, Any] = field(default_factory=dict)


def _byte_array(data: np.ndarray) -> array.array:
    out = array.array("B")
    out.frombytes(data.data)
    return out


def ros_message_class(type_name: str) -> Any:
    """Return the rosidl-generated rclpy class of ``type_name`` ("package/msg/Name")."""
    package, _, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def ros_message_types() -> MessageTypes:
    """Collect the rosidl-generated Python classes (needs the built vision_msgs and gdino_ros messages)."""
    classes = {attribute: ros_message_class(type_name) for attribute, type_name in MESSAGE_TYPE_NAMES.items()}
    # Messages generated from Iron on take a check_fields argument (and keep it in a slot of that name).
    keep_arrays = {"check_fields": True} if "_check_fields" in classes["Image"].__slots__ else {}
    return MessageTypes(**classes, uint8_sequence=_byte_array, keep_arrays=keep_arrays)


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
    detections_3d: Any | None = None
    points: Any | None = None

    def items(self) -> Iterator[tuple[str, Any]]:
        """(leaf topic name, message) for every output present: :data:`OUTPUT_TYPES`, then the 3-D ones."""
        for f in fields(self):
            message = getattr(self, f.name)
            if (f.name in OUTPUT_TYPES or f.name in DEPTH_OUTPUT_TYPES) and message is not None:
                yield f.name, message


_NO_BYTES = np.zeros(0, dtype=np.uint8)


def _image_msg(pixels: np.ndarray, header: Any, encoding: str, types: MessageTypes) -> Any:
    """sensor_msgs/Image from [H, W] or [H, W, C] pixels already in ``encoding``'s layout."""
    channels, dtype = PIXEL_LAYOUT[encoding]
    height, width = pixels.shape[:2]
    little = np.ascontiguousarray(pixels, dtype=dtype.newbyteorder("<"))
    message = types.Image(
        header=header,
        height=int(height),
        width=int(width),
        encoding=encoding,
        is_bigendian=0,
        step=int(width * channels * dtype.itemsize),
        data=types.uint8_sequence(_NO_BYTES),
        **types.keep_arrays,
    )
    # Assigned, not passed: rclpy's constructor copies its data argument (megabytes per label image),
    # while its setter keeps an array.array as given (with keep_arrays on Iron and later).
    message.data = types.uint8_sequence(little.reshape(-1).view(np.uint8))
    return message


def label_image_msg(label_image: np.ndarray, header: Any, types: MessageTypes, encoding: str) -> Any:
    """Instance label image (uint [H, W], 0 background) -> sensor_msgs/Image ``encoding`` (mono8 or mono16).

    Ids above 255 must already be removed for mono8 (:func:`result_to_messages` does it); a
    ValueError here means a caller tried to wrap them.
    """
    if encoding not in (MONO8, MONO16):
        raise ValueError(f"label image encoding {encoding!r} is not supported; use {MONO8} or {MONO16}")
    if label_image.ndim != 2 or label_image.dtype.kind != "u":
        raise ValueError(f"label image must be unsigned [H, W], got {label_image.dtype} {label_image.shape}")
    if (encoding == MONO8 and label_image.dtype != np.uint8 and label_image.size
            and int(label_image.max()) > UINT8_MAX_INSTANCES):
        raise ValueError(
            f"label image has ids up to {int(label_image.max())}; mono8 holds at most {UINT8_MAX_INSTANCES}"
        )
    return _image_msg(label_image, header, encoding, types)


def rgb_image_msg(rgb: np.ndarray, header: Any, types: MessageTypes) -> Any:
    """uint8 [H, W, 3] RGB pixels (e.g. an overlay) -> sensor_msgs/Image rgb8."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 [H, W, 3] RGB pixels, got {rgb.dtype} {rgb.shape}")
    return _image_msg(rgb, header, RGB8, types)


def _pose(position: Sequence[float], types: MessageTypes) -> Any:
    """geometry_msgs/Pose at ``position`` with the identity orientation (axis-aligned in its frame)."""
    return types.Pose(
        position=types.Point(x=float(position[0]), y=float(position[1]), z=float(position[2])),
        orientation=types.Quaternion(x=0.0, y=0.0, z=0.0, w=1.0),
    )


def hypothesis_msg(
    class_id: str, score: float, types: MessageTypes, position: Sequence[float] = (0.0, 0.0, 0.0)
) -> Any:
    """vision_msgs/ObjectHypothesisWithPose: class and score, the pose at ``position``, zero covariance."""
    return types.ObjectHypothesisWithPose(
        hypothesis=types.ObjectHypothesis(class_id=class_id, score=float(score)),
        pose=types.PoseWithCovariance(
            pose=_pose(position, types), covariance=np.zeros(COVARIANCE_SIZE, dtype=np.float64)
        ),
    )


def detection_msg(
    detection: Detection, header: Any, types: MessageTypes, *, class_id: str | None = None, track_id: str = ""
) -> Any:
    """One Detection -> vision_msgs/Detection2D.

    The single hypothesis is ``class_id`` (default: the detection's label) with its score, at the
    identity pose (a 2-D detector has none); ``id`` is ``track_id``, "" when the detection is not tracked.
    """
    x0, y0, x1, y1 = (float(v) for v in detection.box_xyxy)
    label = str(detection.label) if class_id is None else class_id
    hypothesis = hypothesis_msg(label, detection.score, types)
    bbox = types.BoundingBox2D(
        center=types.Pose2D(position=types.Point2D(x=(x0 + x1) / 2.0, y=(y0 + y1) / 2.0), theta=0.0),
        size_x=x1 - x0,
        size_y=y1 - y0,
    )
    return types.Detection2D(header=header, results=[hypothesis], bbox=bbox, id=track_id)


def detection_msgs(
    detections: Sequence[Detection],
    header: Any,
    types: MessageTypes,
    *,
    class_ids: Sequence[str] | None = None,
    track_ids: Sequence[str] | None = None,
) -> list[Any]:
    """Convert detections (best first) to vision_msgs/Detection2D, same order (see :func:`detection_msg`)."""
    return [
        detection_msg(d, header, types, class_id=None if class_ids is None else class_ids[k],
                      track_id="" if track_ids is None else track_ids[k])
        for k, d in enumerate(detections)
    ]


def no_target_msg(result: Result, types: MessageTypes) -> Any:
    """std_msgs/Bool carrying the image-level no-target decision."""
    return types.Bool(data=bool(result.no_target))


def instance_mask_msgs(
    detections: Sequence[Detection], header: Any, types: MessageTypes
) -> tuple[list[Any], list[Any]]:
    """Each detection's own mask, cropped: (sensor_msgs/RegionOfInterest list, mono8 Image list).

    A crop is the smallest rectangle holding all of the instance's pixels (overlaps included), 255 inside
    and 0 outside; the ROI is its offset and size in the input image. An instance without pixels has a
    0 x 0 ROI and image.
    """
    rois, images = [], []
    for detection in detections:
        crop = detection.crop
        height, width = crop.mask.shape
        rois.append(types.RegionOfInterest(x_offset=crop.x0, y_offset=crop.y0, height=height, width=width,
                                           do_rectify=False))
        images.append(_image_msg(crop.mask.view(np.uint8) * np.uint8(255), header, MONO8, types))
    return rois, images


def detection_3d_msg(
    lifted: Lifted, class_id: str, score: float, header: Any, types: MessageTypes, track_id: str = ""
) -> Any:
    """One lifted instance -> vision_msgs/Detection3D in the header's (optical) frame, metres.

    The hypothesis pose is the median centroid; the box is axis-aligned (identity orientation), centred
    between the trimmed extremes. Without valid points the centroid and centre are NaN and the size 0.
    """
    lo, hi = np.asarray(lifted.box_min), np.asarray(lifted.box_max)
    size = np.nan_to_num(hi - lo, nan=0.0)
    bbox = types.BoundingBox3D(
        center=_pose((lo + hi) / 2.0, types),
        size=types.Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])),
    )
    return types.Detection3D(header=header, results=[hypothesis_msg(class_id, score, types, lifted.centroid)],
                             bbox=bbox, id=track_id)


# PointCloud2 layout of gdino/points: x, y, z float32 metres, then the instance's label-image value.
POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("instance", "<u4")])
_POINTFIELD_FLOAT32, _POINTFIELD_UINT32 = 7, 6  # sensor_msgs/PointField datatype constants


def point_cloud_msg(
    lifted: Sequence[Lifted], instances: Sequence[int], header: Any, types: MessageTypes
) -> Any:
    """Put the lifted points of every instance in one sensor_msgs/PointCloud2 (unorganised, all valid).

    ``instances[k]`` is the value written in the ``instance`` field of ``lifted[k]``'s points.
    """
    cloud = np.empty(sum(item.points for item in lifted), dtype=POINT_DTYPE)
    start = 0
    for item, instance in zip(lifted, instances, strict=True):
        end = start + item.points
        for axis, name in enumerate("xyz"):
            cloud[name][start:end] = item.xyz[:, axis]
        cloud["instance"][start:end] = instance
        start = end
    point_fields = [
        types.PointField(name=name, offset=4 * k, count=1,
                         datatype=_POINTFIELD_UINT32 if name == "instance" else _POINTFIELD_FLOAT32)
        for k, name in enumerate(("x", "y", "z", "instance"))
    ]
    return types.PointCloud2(
        header=header, height=1, width=len(cloud), fields=point_fields, is_bigendian=False,
        point_step=POINT_DTYPE.itemsize, row_step=POINT_DTYPE.itemsize * len(cloud),
        data=types.uint8_sequence(cloud.view(np.uint8).reshape(-1)), is_dense=True, **types.keep_arrays,
    )


def label_info_msg(phrases: Sequence[str], threshold: float, header: Any, types: MessageTypes) -> Any:
    """Build the vision_msgs/LabelInfo of a vocabulary: class k is ``phrases[k]``, at box ``threshold``."""
    return types.LabelInfo(
        header=header,
        class_map=[types.VisionClass(class_id=k, class_name=phrase) for k, phrase in enumerate(phrases)],
        threshold=float(threshold),
    )


def result_to_messages(
    result: Result,
    header: Any,
    types: MessageTypes,
    *,
    mask_encoding: str = MASK_AUTO,
    overlay_rgb: np.ndarray | None = None,
    track_ids: Sequence[str] | None = None,
    lifted: Sequence[Lifted] | None = None,
    with_points: bool = False,
    standalone: bool = False,
) -> ResultMessages:
    """All outputs of one frame, each stamped with ``header`` (the input image's header).

    The label image goes into ``mask``; the SegmentationResult carries it too only when ``standalone``
    (a service answer, which has no gdino/mask beside it). Streamed, it would be the same megabytes a
    second time per frame; there the result's ``mask`` is an empty image with the frame's header.

    ``mask_encoding`` is MASK_AUTO, MONO8 or MONO16 (see the module docstring);
    ``overlay_rgb`` (uint8 [H, W, 3]) becomes the rgb8 overlay image when given. ``track_ids`` and
    ``lifted`` (both one per ``result.detections`` entry) give the detections' ids and their 3-D results;
    with ``lifted`` the frame also has ``detections_3d``, and, if ``with_points``, ``points``.
    """
    if mask_encoding not in MASK_ENCODINGS:
        raise ValueError(f"mask encoding {mask_encoding!r} is not supported; use one of {MASK_ENCODINGS}")
    kept = list(range(len(result.detections)))
    label_image = result.label_image
    fits_mono8 = all(d.instance_id <= UINT8_MAX_INSTANCES for d in result.detections)
    encoding = mask_encoding
    if mask_encoding == MASK_AUTO:
        encoding = MONO8 if fits_mono8 else MONO16
    elif mask_encoding == MONO8 and not fits_mono8:
        kept = [k for k in kept if result.detections[k].instance_id <= UINT8_MAX_INSTANCES]
        label_image = np.where(label_image > UINT8_MAX_INSTANCES, 0, label_image)
    shown = [result.detections[k] for k in kept]
    class_ids = [class_id_of(d, result) for d in shown]
    ids = [""] * len(kept) if track_ids is None else [track_ids[k] for k in kept]
    detections = detection_msgs(shown, header, types, class_ids=class_ids, track_ids=ids)
    mask = label_image_msg(label_image, header, types, encoding)
    rois, instance_masks = instance_mask_msgs(shown, header, types)
    detections_3d, points = [], None
    if lifted is not None:
        shown_3d = [lifted[k] for k in kept]
        detections_3d = [detection_3d_msg(item, class_ids[i], shown[i].score, header, types, ids[i])
                         for i, item in enumerate(shown_3d)]
        if with_points:
            points = point_cloud_msg(shown_3d, [d.instance_id for d in shown], header, types)
    segmentation = types.SegmentationResult(
        header=header,
        prompt=result.prompt,
        prompt_mode=result.mode,
        phrases=list(result.phrases),
        detections=detections,
        mask=mask if standalone else _image_msg(label_image[:0, :0], header, encoding, types),
        no_target=bool(result.no_target),
        no_target_probability=float(result.no_target_probability),
        label_values=np.array([d.instance_id for d in shown], dtype=np.uint16),
        mask_rois=rois,
        instance_masks=instance_masks,
        matched_words=[str(d.label) for d in shown],
        detections_3d=detections_3d,
        valid_points=np.array([] if lifted is None else [lifted[k].points for k in kept], dtype=np.uint32),
    )
    return ResultMessages(
        detections=types.Detection2DArray(header=header, detections=detections),
        mask=mask,
        no_target=no_target_msg(result, types),
        result=segmentation,
        overlay=None if overlay_rgb is None else rgb_image_msg(overlay_rgb, header, types),
        dropped_instances=len(result.detections) - len(kept),
        detections_3d=(None if lifted is None
                       else types.Detection3DArray(header=header, detections=detections_3d)),
        points=points,
    )
