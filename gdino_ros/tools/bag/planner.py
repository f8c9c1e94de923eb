"""gdino-bag's track ids and, given depth and camera_info topics, 3-D: the live node's, over a bag.

The same :class:`~gdino_ros.conversions.planner_frames.PlannerFrames` as segment_node, fed with the bag's
depth and camera_info messages as they are read. A recorder logs a depth image and its colour frame at
about the same time, in either order, so the job segments each colour frame only when the next one is
read (or the bag ends): by then its depth image is in.
"""
from __future__ import annotations

import argparse
from typing import Any

from gdino_ros.conversions.messages import CAMERA_INFO_TYPE, IMAGE_TYPE
from gdino_ros.conversions.planner_frames import PlannerFrames
from gdino_ros.core.depth_lifting import LiftingParams
from gdino_ros.core.result import Result
from gdino_ros.core.tracking import TrackingParams
from gdino_ros.errors import UsageError
from gdino_ros.settings import DEPTH_STAMP_TOLERANCE_S
from gdino_ros.tools.bag.errors import BadRecordError


def add_depth_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --depth-topic, --camera-info-topic and --depth-stamp-tolerance-s to ``parser``."""
    parser.add_argument("--depth-topic", help="depth registered to the colour camera (16UC1 mm or 32FC1 m): "
                        "also write /gdino/detections_3d")
    parser.add_argument("--camera-info-topic",
                        help="the colour camera's sensor_msgs/CameraInfo (with --depth-topic)")
    parser.add_argument(DEPTH_STAMP_TOLERANCE_S.flag, type=float, default=DEPTH_STAMP_TOLERANCE_S.default,
                        help=DEPTH_STAMP_TOLERANCE_S.describe())


def check_depth_arguments(args: argparse.Namespace) -> None:
    """Refuse one of --depth-topic and --camera-info-topic without the other."""
    if (args.depth_topic is None) != (args.camera_info_topic is None):
        raise UsageError("3-D needs both --depth-topic and --camera-info-topic (the colour camera's)")


class BagPlanner:
    """Track ids for every frame, and 3-D when the run was given a depth topic."""

    def __init__(self, args: argparse.Namespace, store: Any) -> None:
        self.store = store
        self.depth = args.depth_topic is not None
        self.topics = {args.depth_topic: IMAGE_TYPE, args.camera_info_topic: CAMERA_INFO_TYPE}
        if not self.depth:
            self.topics = {}
        self.frames = PlannerFrames(
            TrackingParams(), LiftingParams() if self.depth else None, args.depth_stamp_tolerance_s,
            str(args.depth_topic), str(args.camera_info_topic),
        )

    def take(self, topic: str, msgtype: str, raw: bytes, log_time: int) -> None:
        """Keep a depth or camera_info message of the bag for pairing."""
        if msgtype != self.topics[topic]:
            raise BadRecordError(f"topic {topic} carries {msgtype}; expected {self.topics[topic]}")
        try:
            msg = self.store.deserialize_cdr(raw, msgtype)
        except Exception as error:  # bad CDR, whichever layer says so
            raise BadRecordError(f"{topic} at log time {log_time} ns cannot be decoded: {error}") from None
        if msgtype == CAMERA_INFO_TYPE:
            self.frames.add_camera_info(msg)
        else:
            self.frames.add_depth(msg)

    def frame(self, result: Result, header: Any) -> dict[str, Any]:
        """Return result_to_messages' track_ids and lifted for one frame (problems are counted)."""
        outputs, _ = self.frames.frame(result, header)
        return outputs

    def summary(self) -> list[str]:
        """Return lines for the run's summary: frames left without 3-D, per reason."""
        frames = self.frames
        return [f"  {n} frames without 3-D: {frames.reasons[kind]}"
                for kind, n in sorted(frames.problems.items())]
