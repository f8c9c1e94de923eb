"""segment_node with depth over real rclpy and loopback DDS: 3-D, track ids, LabelInfo, bad depth input.

The colour, depth (16UC1, at half the colour resolution, with lens distortion) and camera_info of the
analytic scene (scene3d.py) are published by a driver node. The node's segmenter is the real one on the
tiny random-weight model, with its detections replaced by the scene's true masks (the issue's "segmenter
outputs supplied for the objects' true masks"): everything after segmentation is the node's own code.
"""
from __future__ import annotations

import array
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rosharness import spin_until
from scene3d import CAMERA, OBJECTS, PLUMB_BOB, Rendering, render

from gdino_ros.core.result import Detection, Result
from gdino_ros.core.segmenter import Segmenter, Submitted

FRAME_ID = "camera_color_optical_frame"
PROMPT = "box . crate . can"
CAMERA_D = replace(CAMERA, d=PLUMB_BOB)

pytestmark = pytest.mark.slow  # real DDS, a node in process


class SceneSegmenter(Segmenter):
    """The real segmenter, whose detections become the scene's true masks (labels = the prompt's phrases)."""

    scene: Rendering

    def finish(self, job: Submitted) -> Result:
        real = super().finish(job)
        label_image = np.zeros(job.image_hw, np.uint16)
        detections = []
        for k, (phrase, name) in enumerate(zip(real.phrases, OBJECTS, strict=True)):
            mask = self.scene.masks[name]
            ys, xs = np.nonzero(mask)
            box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            detections.append(Detection(k + 1, phrase, k, 0.9 - 0.1 * k, box, mask))
            label_image[mask & (label_image == 0)] = k + 1
        return Result(real.prompt, real.mode, detections, label_image, False, real.no_target_probability,
                      real.timings_ms, real.phrases)


def _header(msg: Any, second: int, frame_id: str = FRAME_ID) -> Any:
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000 + second, 0
    return msg


def _image(pixels: np.ndarray, encoding: str, second: int) -> Any:
    from sensor_msgs.msg import Image

    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding)
    msg.step = pixels.strides[0]
    msg.data = array.array("B", np.ascontiguousarray(pixels).tobytes())
    return _header(msg, second)


def _camera_info(frame_id: str = FRAME_ID) -> Any:
    from sensor_msgs.msg import CameraInfo

    info = CAMERA_D.camera_info()
    msg = CameraInfo(width=info.width, height=info.height, distortion_model=info.distortion_model,
                     d=list(map(float, info.d)), k=[float(v) for v in info.k])
    return _header(msg, 0, frame_id)


class DepthBench:
    """segment_node (depth on) and a driver node in one context."""

    def __init__(self, context: Any, segmenter: SceneSegmenter, model: Path, vocab: Path) -> None:
        import rclpy
        from gdino_ros.msg import SegmentationResult
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from std_msgs.msg import String
        from vision_msgs.msg import Detection2DArray, Detection3DArray, LabelInfo

        from gdino_ros.node import SegmentNode

        values = {"model": str(model), "tokenizer": str(vocab), "depth": True, "initial_prompt": PROMPT,
                  "overlay": False, "depth_stamp_tolerance_s": 0.01}
        self.node = SegmentNode(context=context, segmenter=segmenter,
                                parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        self.driver = rclpy.create_node("depth_driver", context=context)
        self.outputs: dict[str, list[Any]] = defaultdict(list)
        keep = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        for leaf, message_class in (("detections", Detection2DArray), ("detections_3d", Detection3DArray),
                                    ("result", SegmentationResult)):
            self.driver.create_subscription(message_class, f"/gdino/{leaf}", self._recorder(leaf), keep)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.driver.create_subscription(LabelInfo, "/gdino/label_info", self._recorder("label_info"), latched)
        self.images = self.driver.create_publisher(Image, "/image", keep)
        self.depth = self.driver.create_publisher(Image, "/depth", keep)
        self.info = self.driver.create_publisher(CameraInfo, "/camera_info", keep)
        self.prompts = self.driver.create_publisher(String, "/gdino/prompt", 10)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.driver)
        assert self.spin_until(lambda: self.images.get_subscription_count() > 0
                               and self.depth.get_subscription_count() > 0, 10.0)

    def _recorder(self, leaf: str) -> Callable[[Any], None]:
        return lambda msg: self.outputs[leaf].append(msg)

    def spin_until(self, done: Callable[[], bool], timeout_s: float = 60.0) -> bool:
        return spin_until(self.executor, done, timeout_s)

    def stored_depths(self) -> int:
        return self.node._planner.frames.depth_count()  # what the node holds for pairing

    def frame(self, second: int, colour: np.ndarray, depth: Any | None, info: Any | None) -> Any:
        """Send camera_info and depth (until the node holds it), then the colour frame; return its result."""
        if info is not None:
            self.info.publish(info)
        if depth is not None:
            before = self.stored_depths()
            for _ in range(5):
                self.depth.publish(depth)
                if self.spin_until(lambda: self.stored_depths() > before, 3.0):
                    break
        stamp = (1_700_000_000 + second, 0)
        received = self._received()
        for _ in range(5):  # again only if the best-effort subscription missed it
            self.images.publish(_image(colour, "rgb8", second))
            if self.spin_until(lambda: self._received() > received, 5.0):
                break
        assert self.spin_until(lambda: self._result(stamp) is not None, 120.0)
        result = self._result(stamp)
        self.spin_until(lambda: False, 0.3)  # let the frame's other outputs arrive
        return result

    def _received(self) -> int:
        return int({kv.key: kv.value for kv in self.node.diagnostics().values}["frames_received"])

    def _result(self, stamp: tuple[int, int]) -> Any:
        found = [r for r in self.outputs["result"] if (r.header.stamp.sec, r.header.stamp.nanosec) == stamp]
        return found[0] if found else None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.driver.destroy_node()


@pytest.fixture
def bench(ros_context: Any, tiny_model_files: Any, vocab_path: Path) -> Iterator[DepthBench]:
    segmenter = SceneSegmenter.from_model(tiny_model_files.onnx, tokenizer_path=vocab_path, device="cpu")
    segmenter.scene = render(CAMERA_D)
    bench = DepthBench(ros_context, segmenter, tiny_model_files.onnx, vocab_path)
    try:
        yield bench
    finally:
        bench.close()


def _colour(scene: Rendering) -> np.ndarray:
    rgb = np.full((*scene.z.shape, 3), 90, np.uint8)
    for k, mask in enumerate(scene.masks.values()):
        rgb[mask] = (200, 60 * k, 40)
    return rgb


def test_3d_ids_and_label_info_over_dds(bench: DepthBench) -> None:
    scene = bench.node._segmenter.scene  # type: ignore[attr-defined]
    colour = _colour(scene)
    depth_small = render(CAMERA_D.scaled(320, 240)).depth_16uc1()  # registered depth at half resolution
    info = _camera_info()
    results = []
    for second in (1, 2, 3):
        results.append(bench.frame(second, colour, _image(depth_small, "16UC1", second), info))

    # 3-D: one Detection3D per detection, the colour frame's header, centroids within 1 % of range.
    assert bench.spin_until(lambda: len(bench.outputs["detections_3d"]) == 3, 10.0)
    for result, lifted in zip(results, bench.outputs["detections_3d"], strict=True):
        assert lifted.header == result.header
        assert [d.results[0].hypothesis.class_id for d in lifted.detections] == ["box", "crate", "can"]
        for detection, name in zip(lifted.detections, OBJECTS, strict=True):
            truth = np.median(scene.points[scene.masks[name]], axis=0)
            position = detection.results[0].pose.pose.position
            error = np.linalg.norm(np.array([position.x, position.y, position.z]) - truth)
            assert error <= 0.01 * np.linalg.norm(truth), (name, error)
        assert list(result.valid_points) and min(result.valid_points) > 300
        assert [d.id for d in lifted.detections] == [d.id for d in result.detections]
    assert bench.node._planner.publishers["points"].get_subscription_count() == 0  # so none was built

    # Track ids: born on the second frame, the same on the third.
    assert [d.id for d in results[0].detections] == ["", "", ""]
    assert [d.id for d in results[1].detections] == ["1", "2", "3"]
    assert [d.id for d in results[2].detections] == ["1", "2", "3"]
    (label_info,) = bench.outputs["label_info"]
    classes = [(c.class_id, c.class_name) for c in label_info.class_map]
    assert classes == [(0, "box"), (1, "crate"), (2, "can")]
    assert list(results[2].phrases) == ["box", "crate", "can"]

    # A new prompt ends the tracks: new objects get new ids.
    from std_msgs.msg import String

    bench.prompts.publish(String(data="box . crate . can ."))
    assert bench.spin_until(lambda: bench.node._active_prompt == "box . crate . can .", 10.0)
    after = [bench.frame(second, colour, _image(depth_small, "16UC1", second), None) for second in (4, 5)]
    assert [d.id for d in after[0].detections] == ["", "", ""]
    assert [d.id for d in after[1].detections] == ["4", "5", "6"]


def test_bad_depth_input_leaves_2d_alone(bench: DepthBench) -> None:
    from sensor_msgs.msg import PointCloud2

    scene = bench.node._segmenter.scene  # type: ignore[attr-defined]
    colour = _colour(scene)
    depth = scene.depth_16uc1()
    problems = bench.node._planner.frames.problems

    # Depth without camera_info.
    first = bench.frame(1, colour, _image(depth, "16UC1", 1), None)
    assert problems["no_camera_info"] == 1
    # camera_info of another frame.
    second = bench.frame(2, colour, _image(depth, "16UC1", 2), _camera_info("camera_depth_frame"))
    assert problems["frame_id"] == 1
    # Stamps that never pair (depth 0.5 s older than the colour frame; tolerance 0.01 s).
    bench.info.publish(_camera_info())
    stale = _image(depth, "16UC1", 3)
    stale.header.stamp.nanosec = 500_000_000
    third = bench.frame(4, colour, stale, _camera_info())
    assert problems["unpaired"] == 1
    # An unsupported encoding.
    fourth = bench.frame(5, colour, _image(depth.astype(np.uint8), "mono8", 5), None)
    assert sum(problems.values()) == 4, problems
    # A camera_info with zero focal length.
    zero = _camera_info()
    zero.k = [0.0] * 9
    fifth = bench.frame(6, colour, _image(depth, "16UC1", 6), zero)
    assert sum(problems.values()) == 5, problems

    for result in (first, second, third, fourth, fifth):  # the 2-D outputs are all there
        assert [d.results[0].hypothesis.class_id for d in result.detections] == ["box", "crate", "can"]
        assert list(result.label_values) == [1, 2, 3] and len(result.instance_masks) == 3
        assert list(result.detections_3d) == [] and list(result.valid_points) == []
    assert len(bench.outputs["detections"]) == 5 and not bench.outputs["detections_3d"]

    # And good input again: 3-D returns, and the point cloud now that someone subscribes.
    bench.driver.create_subscription(PointCloud2, "/gdino/points", bench.outputs["cloud"].append, 10)
    points = bench.node._planner.publishers["points"]
    assert bench.spin_until(lambda: points.get_subscription_count() > 0, 10.0)
    good = bench.frame(7, colour, _image(depth, "16UC1", 7), _camera_info())
    assert len(good.detections_3d) == 3
    assert bench.spin_until(lambda: bool(bench.outputs["cloud"]), 10.0)
    cloud = bench.outputs["cloud"][0]
    assert cloud.header == good.header and cloud.width == sum(good.valid_points)

    # depth_stamp_tolerance_s changes at runtime: depth 0.5 s off pairs once the tolerance is 1 s.
    from rclpy.parameter import Parameter

    changed = bench.node.set_parameters([Parameter("depth_stamp_tolerance_s", value=1.0)])
    assert changed[0].successful
    late = _image(depth, "16UC1", 8)
    late.header.stamp.nanosec = 500_000_000
    assert len(bench.frame(8, colour, late, None).detections_3d) == 3
    refused = bench.node.set_parameters([Parameter("track_match_iou", value=1.0)])  # (0, 1): open range
    assert not refused[0].successful and "track_match_iou" in refused[0].reason


def test_undecodable_depth_and_camera_info_are_dropped(bench: DepthBench) -> None:
    frames = bench.node._planner.frames
    callbacks = {s.topic_name: s.callback for s in bench.node.subscriptions}
    for topic in ("/depth", "/camera_info"):
        callbacks[topic](b"\x00\x01\x00\x00 not a message")  # what a raw subscription hands over
    assert frames.depth_count() == 0 and frames._camera_info is None  # type: ignore[attr-defined]
    scene = bench.node._segmenter.scene  # type: ignore[attr-defined]
    good = bench.frame(1, _colour(scene), _image(scene.depth_16uc1(), "16UC1", 1), _camera_info())
    assert len(good.detections_3d) == 3  # the decoding path still serves the next good messages
