"""Track ids and 3-D for a stream of frames: what segment_node and gdino-bag add after segmentation.

Depth images and camera_info messages (rclpy or rosbags alike) are handed in as they arrive; for each
colour frame :meth:`PlannerFrames.frame` pairs the depth image of the nearest stamp within the tolerance,
lifts the detections with it and tracks them, and returns
:func:`~gdino_ros.conversions.messages.result_to_messages`' keyword arguments. A frame that cannot have
3-D gets none, and the reason comes back as (kind, one sentence naming the fix) for the caller to report;
the 2-D outputs never depend on depth.
"""
from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

from gdino_ros.conversions.depth_image import depth_to_pixels
from gdino_ros.core.depth_lifting import CameraModel, DepthInputError, DepthLifter, Lifted, LiftingParams
from gdino_ros.core.instance_crop import InstanceCrop
from gdino_ros.core.result import Result
from gdino_ros.core.tracking import Tracker, TrackingParams, track_inputs

#: Depth images kept for pairing: at 30 Hz a third of a second of delay between depth and colour frame.
DEPTH_BUFFER = 10

Problem = tuple[str, str]


def stamp_seconds(header: Any) -> float:
    """Return a header's stamp in seconds."""
    return float(header.stamp.sec) + float(header.stamp.nanosec) * 1e-9


class PlannerFrames:
    """Track ids (``tracking`` given) and 3-D (``lifting`` given) for one camera's frames.

    ``depth_source`` and ``camera_info_source`` name where depth and camera_info come from (topics), for
    the problem texts. :meth:`add_depth` and :meth:`add_camera_info` may run on another thread than
    :meth:`frame`.
    """

    def __init__(
        self,
        tracking: TrackingParams | None,
        lifting: LiftingParams | None,
        tolerance_s: float,
        depth_source: str = "depth",
        camera_info_source: str = "camera_info",
    ) -> None:
        self.tracker = None if tracking is None else Tracker(tracking)
        self.lifter = None if lifting is None else DepthLifter(lifting)
        self.tolerance_s = tolerance_s
        self.depth_source, self.camera_info_source = depth_source, camera_info_source
        self._lock = threading.Lock()
        self._depths: deque[Any] = deque(maxlen=DEPTH_BUFFER)
        self._camera_info: Any = None
        #: Frames left without 3-D, per kind of problem, and the newest text of each kind.
        self.problems: Counter[str] = Counter()
        self.reasons: dict[str, str] = {}

    def add_depth(self, msg: Any) -> None:
        """Keep a depth image (sensor_msgs/Image) for pairing."""
        with self._lock:
            self._depths.append(msg)

    def add_camera_info(self, msg: Any) -> None:
        """Keep the newest sensor_msgs/CameraInfo."""
        with self._lock:
            self._camera_info = msg

    def depth_count(self) -> int:
        """Return how many depth images are held for pairing."""
        with self._lock:
            return len(self._depths)

    def frame(self, result: Result, header: Any) -> tuple[dict[str, Any], Problem | None]:
        """Return result_to_messages' ``track_ids`` and ``lifted`` for one frame, and why 3-D is missing."""
        crops = [d.crop for d in result.detections]
        track_ids = None
        if self.tracker is not None:
            track_ids = self.tracker.update(track_inputs(result, crops), result.label_image.shape,
                                            (result.prompt, result.mode))
        lifted, problem = None, None
        if self.lifter is not None:
            paired = self._pair(header)
            if isinstance(paired[0], str):
                problem = paired
            else:
                try:
                    lifted = self._lift(result, crops, *paired)
                except DepthInputError as error:
                    problem = (str(error).split(";")[0], str(error))
            if problem is not None:
                self.problems[problem[0]] += 1
                self.reasons[problem[0]] = problem[1]
        return {"track_ids": track_ids, "lifted": lifted}, problem

    def _lift(self, result: Result, crops: list[InstanceCrop], depth_msg: Any, info: Any) -> list[Lifted]:
        assert self.lifter is not None
        depth, encoding = depth_to_pixels(depth_msg)
        camera = CameraModel.from_camera_info(info)
        return self.lifter.lift(crops, result.label_image.shape, depth, encoding, camera)

    def _pair(self, header: Any) -> tuple[Any, Any] | Problem:
        """Return (depth Image, CameraInfo) for the colour frame of ``header``, or (problem kind, text)."""
        with self._lock:
            depths, info = list(self._depths), self._camera_info
        if not depths:
            return "no_depth", (
                f"no depth image has arrived on {self.depth_source}; give the depth topic registered to the "
                "colour camera (e.g. aligned_depth_to_color/image_raw)"
            )
        if info is None:
            return "no_camera_info", (
                f"depth arrives but no camera_info on {self.camera_info_source}; give the colour camera's "
                "camera_info topic"
            )
        if info.header.frame_id != header.frame_id:
            return "frame_id", (
                f"camera_info frame_id '{info.header.frame_id}' differs from the image's "
                f"'{header.frame_id}'; give the colour camera's camera_info (registered depth is in the "
                "colour camera's frame)"
            )
        wanted = stamp_seconds(header)
        nearest = min(depths, key=lambda depth: abs(stamp_seconds(depth.header) - wanted))
        offset = stamp_seconds(nearest.header) - wanted
        if abs(offset) > self.tolerance_s:
            return "unpaired", (
                f"no depth image within {self.tolerance_s:g} s of the colour frame (nearest "
                f"{offset:+.3f} s); record depth with the colour frame's stamps (aligned depth) or raise "
                "depth_stamp_tolerance_s"
            )
        return nearest, info
