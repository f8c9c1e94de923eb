"""``segment_node``: the rclpy adapter around :class:`gdino_ros.core.segmenter.Segmenter`.

The only part of gdino_ros that needs ROS. One concept per module:

* :mod:`.parameters`: the node's parameters, declared once with their descriptors;
* :mod:`.frame_slot`: the one-frame buffer between the executor thread and the worker;
* :mod:`.frame_stats`: counters and per-stage timings of the frames;
* :mod:`.diagnostics`: the /diagnostics status built from them;
* :mod:`.segment_node`: the node itself (topics, threads, start-up) and ``main``.
"""
from gdino_ros.node.segment_node import SegmentNode, main

__all__ = ["SegmentNode", "main"]
