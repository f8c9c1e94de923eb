"""segment_node's outputs for manipulation planners: track ids, 3-D from depth, the class vocabulary.

The ROS side of :class:`~gdino_ros.conversions.planner_frames.PlannerFrames`: the ``depth`` and
``camera_info`` subscriptions (with the ``depth`` parameter), the ``gdino/detections_3d`` and
``gdino/points`` publishers, the latched ``gdino/label_info``, runtime changes of the tracking and
lifting parameters, and the warnings. The worker calls :meth:`PlannerOutputs.frame_outputs` once per
frame, between segmentation and :func:`~gdino_ros.conversions.messages.result_to_messages`, whose
keyword arguments it returns. A frame without 3-D keeps its 2-D outputs; each kind of depth problem is
logged at most once per :data:`WARN_PERIOD_S`, with the number of frames it affected.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from vision_msgs.msg import Detection3DArray, LabelInfo

from gdino_ros.conversions.cdr import CdrCodec, CdrDecodeError
from gdino_ros.conversions.messages import (
    CAMERA_INFO_TYPE,
    IMAGE_TYPE,
    LABEL_INFO_TOPIC,
    LABEL_INFO_TYPE,
    OUTPUT_NAMESPACE,
    label_info_msg,
)
from gdino_ros.conversions.planner_frames import DEPTH_BUFFER, PlannerFrames
from gdino_ros.core.depth_lifting import LiftingParams
from gdino_ros.core.result import Result
from gdino_ros.core.tracking import TrackingParams
from gdino_ros.settings import DEPTH, DEPTH_STAMP_TOLERANCE_S, TRACKING, settings_of

WARN_PERIOD_S = 5.0
DEPTH_TOPIC = "depth"
CAMERA_INFO_TOPIC = "camera_info"
_TRACKING_NAMES = {s.name for s in settings_of(TrackingParams)}
_LIFTING_NAMES = {s.name for s in settings_of(LiftingParams)}

#: The node parameters this module reads (declared with the others in node/parameters.py).
PLANNER_SETTINGS = (TRACKING, *settings_of(TrackingParams), DEPTH, DEPTH_STAMP_TOLERANCE_S,
                    *settings_of(LiftingParams))


class PlannerOutputs:
    """Track ids, 3-D and LabelInfo for one node; ``values`` are its parameter values.

    Messages are built with ``codec``'s types and published as its CDR bytes, as the node's own outputs.
    """

    def __init__(self, node: Node, values: dict[str, Any], codec: CdrCodec) -> None:
        self._node = node
        self._codec = codec
        tracking = TrackingParams(**{name: values[name] for name in _TRACKING_NAMES})
        lifting = LiftingParams(**{name: values[name] for name in _LIFTING_NAMES})
        self.frames = PlannerFrames(
            tracking if values[TRACKING.name] else None,
            lifting if values[DEPTH.name] else None,
            values[DEPTH_STAMP_TOLERANCE_S.name],
            node.resolve_topic_name(DEPTH_TOPIC),
            node.resolve_topic_name(CAMERA_INFO_TOPIC),
        )
        reliable = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                              reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._label_info = node.create_publisher(LabelInfo, f"{OUTPUT_NAMESPACE}/{LABEL_INFO_TOPIC}", latched)
        self._vocabulary: tuple[str, ...] | None = None
        #: Output leaf name -> publisher, for the node's publishing loop.
        self.publishers: dict[str, Any] = {}
        if values[DEPTH.name]:
            # Sensor QoS (best effort) is what cameras and Isaac Sim publish; it also matches reliable ones.
            sensor = QoSProfile(depth=DEPTH_BUFFER, history=HistoryPolicy.KEEP_LAST,
                                reliability=ReliabilityPolicy.BEST_EFFORT)
            # Raw, as the camera frames: a depth image is megabytes that rclpy would copy into Python.
            depth = partial(self._on_message, IMAGE_TYPE, self.frames.add_depth, self.frames.depth_source)
            info = partial(self._on_message, CAMERA_INFO_TYPE, self.frames.add_camera_info,
                           self.frames.camera_info_source)
            node.create_subscription(Image, DEPTH_TOPIC, depth, sensor, raw=True)
            node.create_subscription(CameraInfo, CAMERA_INFO_TOPIC, info, sensor, raw=True)
            self.publishers = {
                "detections_3d": node.create_publisher(
                    Detection3DArray, f"{OUTPUT_NAMESPACE}/detections_3d", reliable),
                "points": node.create_publisher(PointCloud2, f"{OUTPUT_NAMESPACE}/points", reliable),
            }
        self._warned_at: dict[str, float] = {}
        node.add_on_set_parameters_callback(self._on_set_parameters)

    def _on_message(self, type_name: str, add: Callable[[Any], None], topic: str, raw: bytes) -> None:
        """Decode a raw depth image or camera_info and hand it to ``add``; warn about one that is not."""
        try:
            add(self._codec.decode(raw, type_name))
        except CdrDecodeError as error:
            self._node.get_logger().warning(f"dropped a message on {topic}: {error}",
                                            throttle_duration_sec=WARN_PERIOD_S)

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Apply changed tracking and lifting settings (the node's own callback has validated them).

        Each takes effect from the next frame: the worker reads the params object once per frame, and
        replacing it is one reference assignment.
        """
        values = {p.name: p.value for p in parameters}
        tracker, lifter = self.frames.tracker, self.frames.lifter
        if tracker is not None and values.keys() & _TRACKING_NAMES:
            tracker.params = dataclasses.replace(
                tracker.params, **{k: v for k, v in values.items() if k in _TRACKING_NAMES})
        if lifter is not None and values.keys() & _LIFTING_NAMES:
            lifter.params = dataclasses.replace(
                lifter.params, **{k: v for k, v in values.items() if k in _LIFTING_NAMES})
        if DEPTH_STAMP_TOLERANCE_S.name in values:
            self.frames.tolerance_s = values[DEPTH_STAMP_TOLERANCE_S.name]
        return SetParametersResult(successful=True)

    def frame_outputs(self, result: Result, header: Any, box_threshold: float) -> dict[str, Any]:
        """Track, lift and publish LabelInfo for one frame; return result_to_messages' keyword arguments."""
        if result.phrases != self._vocabulary:
            self._vocabulary = result.phrases
            label_info = label_info_msg(result.phrases, box_threshold, header, self._codec.types)
            self._label_info.publish(self._codec.encode(label_info, LABEL_INFO_TYPE))
        outputs, problem = self.frames.frame(result, header)
        if problem is not None:
            self._warn(*problem)
        outputs["with_points"] = (outputs["lifted"] is not None
                                  and self.publishers["points"].get_subscription_count() > 0)
        return outputs

    def _warn(self, kind: str, text: str) -> None:
        """Warn about a frame left without 3-D, once per kind and period, naming the fix."""
        now = time.monotonic()
        if now - self._warned_at.get(kind, -WARN_PERIOD_S) >= WARN_PERIOD_S:
            self._warned_at[kind] = now
            self._node.get_logger().warning(
                f"3-D left out ({self.frames.problems[kind]} frame(s) so far): {text}; 2-D outputs continue"
            )
