"""Depth and camera_info for segment_node: subscriptions, and pairing a colour frame with its depth image.

The executor thread stores the newest depth images (a short buffer) and the newest camera_info; the
worker asks for the depth image whose stamp is nearest its colour frame's, within the tolerance. What
cannot be paired is reported by :meth:`DepthPairing.pair` as a problem (kind, one sentence naming the
fix) so that the caller warns once per kind and carries on in 2-D.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any

from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

DEPTH_TOPIC = "depth"
CAMERA_INFO_TOPIC = "camera_info"
#: Depth images kept for pairing: at 30 Hz, a third of a second of colour-frame processing delay.
DEPTH_BUFFER = 10


def stamp_seconds(header: Any) -> float:
    """Return a header's stamp in seconds."""
    return float(header.stamp.sec) + float(header.stamp.nanosec) * 1e-9


class DepthPairing:
    """Subscribes ``depth`` and ``camera_info`` on ``node`` and pairs colour frames with depth images."""

    def __init__(self, node: Node, tolerance_s: float) -> None:
        self.tolerance_s = tolerance_s
        self._lock = threading.Lock()
        self._depth: deque[Any] = deque(maxlen=DEPTH_BUFFER)
        self._camera_info: Any = None
        # Sensor QoS (best effort) is what cameras and Isaac Sim publish; it also matches reliable ones.
        qos = QoSProfile(depth=DEPTH_BUFFER, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.BEST_EFFORT)
        self.depth_topic = node.resolve_topic_name(DEPTH_TOPIC)
        self.camera_info_topic = node.resolve_topic_name(CAMERA_INFO_TOPIC)
        node.create_subscription(Image, DEPTH_TOPIC, self._on_depth, qos)
        node.create_subscription(CameraInfo, CAMERA_INFO_TOPIC, self._on_camera_info, qos)

    def _on_depth(self, msg: Image) -> None:
        with self._lock:
            self._depth.append(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self._camera_info = msg

    def pair(self, header: Any) -> tuple[Any, Any] | tuple[str, str]:
        """Return (depth Image, CameraInfo) for the colour frame of ``header``, or (problem kind, text)."""
        with self._lock:
            depths, info = list(self._depth), self._camera_info
        if not depths:
            return "no_depth", (
                f"no depth image has arrived on {self.depth_topic}; remap 'depth' to the depth topic "
                "registered to the colour camera (e.g. aligned_depth_to_color/image_raw)"
            )
        if info is None:
            return "no_camera_info", (
                f"depth arrives but no camera_info on {self.camera_info_topic}; remap 'camera_info' to the "
                "colour camera's camera_info"
            )
        if info.header.frame_id != header.frame_id:
            return "frame_id", (
                f"camera_info frame_id '{info.header.frame_id}' differs from the image's "
                f"'{header.frame_id}'; remap 'camera_info' to the colour camera's camera_info (registered "
                "depth is in the colour camera's frame)"
            )
        wanted = stamp_seconds(header)
        nearest = min(depths, key=lambda depth: abs(stamp_seconds(depth.header) - wanted))
        offset = stamp_seconds(nearest.header) - wanted
        if abs(offset) > self.tolerance_s:
            return "unpaired", (
                f"no depth image within {self.tolerance_s:g} s of the colour frame (nearest "
                f"{offset:+.3f} s); publish depth with the colour frame's stamps (aligned depth) or raise "
                "depth_stamp_tolerance_s"
            )
        return nearest, info
