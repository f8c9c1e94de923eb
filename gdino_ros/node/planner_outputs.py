"""segment_node's outputs for manipulation planners: track ids, 3-D from depth, the class vocabulary.

The worker calls :meth:`PlannerOutputs.frame_outputs` once per frame, between segmentation and
:func:`~gdino_ros.conversions.messages.result_to_messages`; it returns that function's keyword
arguments (track ids, lifted instances, whether to build the point cloud). It also publishes the
latched ``gdino/label_info`` whenever the prompt's vocabulary changes. Depth problems never touch the
2-D outputs: the frame goes out without 3-D, and each kind of problem is logged at most once per
:data:`WARN_PERIOD_S`, with the count of frames it affected.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from vision_msgs.msg import Detection3DArray, LabelInfo

from gdino_ros.conversions.depth_image import depth_to_pixels
from gdino_ros.conversions.messages import (
    LABEL_INFO_TOPIC,
    OUTPUT_NAMESPACE,
    MessageTypes,
    label_info_msg,
)
from gdino_ros.core.depth_lifting import CameraModel, DepthInputError, DepthLifter, Lifted, LiftingParams
from gdino_ros.core.instance_crop import instance_crop
from gdino_ros.core.result import Result
from gdino_ros.core.tracking import Tracker, TrackingParams, track_inputs
from gdino_ros.node.depth_pairing import DepthPairing
from gdino_ros.settings import DEPTH, DEPTH_STAMP_TOLERANCE_S, TRACKING, settings_of

WARN_PERIOD_S = 5.0
_TRACKING_NAMES = {s.name for s in settings_of(TrackingParams)}
_LIFTING_NAMES = {s.name for s in settings_of(LiftingParams)}

#: The node parameters this module reads (declared with the others in node/parameters.py).
PLANNER_SETTINGS = (TRACKING, *settings_of(TrackingParams), DEPTH, DEPTH_STAMP_TOLERANCE_S,
                    *settings_of(LiftingParams))


class PlannerOutputs:
    """Track ids, 3-D and LabelInfo for one node; ``values`` are its parameter values."""

    def __init__(self, node: Node, values: dict[str, Any], types: MessageTypes) -> None:
        self._node = node
        self._types = types
        tracking = TrackingParams(**{s.name: values[s.name] for s in settings_of(TrackingParams)})
        self._tracker = Tracker(tracking) if values[TRACKING.name] else None
        reliable = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                              reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._label_info = node.create_publisher(LabelInfo, f"{OUTPUT_NAMESPACE}/{LABEL_INFO_TOPIC}", latched)
        self._vocabulary: tuple[str, ...] | None = None
        #: Output leaf name -> publisher, for the node's publishing loop.
        self.publishers: dict[str, Any] = {}
        self._pairing: DepthPairing | None = None
        self._lifter: DepthLifter | None = None
        if values[DEPTH.name]:
            self._pairing = DepthPairing(node, values[DEPTH_STAMP_TOLERANCE_S.name])
            lifting = LiftingParams(**{s.name: values[s.name] for s in settings_of(LiftingParams)})
            self._lifter = DepthLifter(lifting)
            self.publishers = {
                "detections_3d": node.create_publisher(Detection3DArray, f"{OUTPUT_NAMESPACE}/detections_3d",
                                                       reliable),
                "points": node.create_publisher(PointCloud2, f"{OUTPUT_NAMESPACE}/points", reliable),
            }
        self.problems: Counter[str] = Counter()
        self._warned_at: dict[str, float] = {}
        node.add_on_set_parameters_callback(self._on_set_parameters)

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Apply changed tracking and lifting settings (the node's own callback has validated them).

        Each takes effect from the next frame: the worker reads the params object once per frame, and
        replacing it is one reference assignment.
        """
        values = {p.name: p.value for p in parameters}
        if self._tracker is not None and values.keys() & _TRACKING_NAMES:
            self._tracker.params = dataclasses.replace(
                self._tracker.params, **{k: v for k, v in values.items() if k in _TRACKING_NAMES})
        if self._lifter is not None and values.keys() & _LIFTING_NAMES:
            self._lifter.params = dataclasses.replace(
                self._lifter.params, **{k: v for k, v in values.items() if k in _LIFTING_NAMES})
        if self._pairing is not None and DEPTH_STAMP_TOLERANCE_S.name in values:
            self._pairing.tolerance_s = values[DEPTH_STAMP_TOLERANCE_S.name]
        return SetParametersResult(successful=True)

    def frame_outputs(self, result: Result, header: Any, box_threshold: float) -> dict[str, Any]:
        """Track, lift and publish LabelInfo for one frame; return result_to_messages' keyword arguments."""
        if result.phrases != self._vocabulary:
            self._vocabulary = result.phrases
            self._label_info.publish(label_info_msg(result.phrases, box_threshold, header, self._types))
        crops = [instance_crop(d) for d in result.detections]
        track_ids = None
        if self._tracker is not None:
            track_ids = self._tracker.update(track_inputs(result, crops), result.label_image.shape,
                                             (result.prompt, result.mode))
        lifted = self._lift(result, header, crops) if self._pairing is not None else None
        with_points = lifted is not None and self.publishers["points"].get_subscription_count() > 0
        return {"track_ids": track_ids, "lifted": lifted, "with_points": with_points}

    def _lift(self, result: Result, header: Any, crops: list[Any]) -> list[Lifted] | None:
        assert self._pairing is not None and self._lifter is not None
        paired = self._pairing.pair(header)
        if isinstance(paired[0], str):
            self._problem(paired[0], paired[1])
            return None
        depth_msg, info = paired
        try:
            depth, encoding = depth_to_pixels(depth_msg)
            camera = CameraModel.from_camera_info(info)
            return self._lifter.lift(crops, result.label_image.shape, depth, encoding, camera)
        except DepthInputError as error:
            self._problem(type(error).__name__ + str(error).split(";")[0], str(error))
            return None

    def _problem(self, kind: str, text: str) -> None:
        """Count a frame left without 3-D; warn once per kind and period, naming the fix."""
        self.problems[kind] += 1
        now = time.monotonic()
        if now - self._warned_at.get(kind, -WARN_PERIOD_S) >= WARN_PERIOD_S:
            self._warned_at[kind] = now
            self._node.get_logger().warning(
                f"3-D left out ({self.problems[kind]} frame(s) so far): {text}; 2-D outputs continue"
            )
