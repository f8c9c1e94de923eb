"""segment_node on a GPU backend: the next frame's inference is queued before this frame is published.

The backend is the real TensorRT backend over the test doubles of ``test/fakes`` (a fake GPU that runs
queued work only when the host waits for it, and an engine that runs the tiny network's ONNX graph in
ONNX Runtime), so a frame's outputs are right only if every wait is where it must be. A camera faster
than the node is simulated by offering the next frame the moment a frame is queued; the node must then
queue that one before finishing the previous, and still publish every frame's own outputs, in order,
equal to ONNX Runtime's one frame at a time.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
from fakes import Fakes, install
from fakes.tensorrt_runtime import write_engine
from model_fixtures import TinyModel
from rosharness import spin_until

from gdino_ros.backends import open_backend
from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.segmenter import Segmenter, Submitted
from gdino_ros.core.tokenizer import load_tokenizer

PARAMS = PostprocessParams(box_threshold=0.05, text_threshold=0.05, max_detections=20)
PROMPT = "person . rocket . flag"
IMAGES = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
FRAMES = 6

pytestmark = pytest.mark.slow  # real DDS, a node in process, the tiny model exported


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    installed = install(monkeypatch)
    yield installed
    assert installed.gpu.violations == []


def _image_cdr(index: int) -> bytes:
    """Frame ``index`` as the bytes the node's raw image subscription receives."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    pixels = IMAGES[index % len(IMAGES)]
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding="rgb8", step=pixels.shape[1] * 3)
    msg.data = pixels.tobytes()
    msg.header.frame_id = "camera"
    msg.header.stamp.sec = index
    return bytes(serialize_message(msg))


def _label_digest(mask_or_image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(mask_or_image, dtype="<u2").tobytes()).hexdigest()


class _RecordingSegmenter(Segmenter):
    """Records the order of submit and finish, and offers the next camera frame as each frame is queued."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, int]] = []
        self.offer: Any = None  # called with the number of frames queued so far

    def submit(self, image: np.ndarray, *, bgr: bool = False) -> Submitted:
        job = super().submit(image, bgr=bgr)
        index = sum(1 for kind, _ in self.events if kind == "submit")
        self.events.append(("submit", index))
        if self.offer is not None:
            self.offer(index + 1)
        return job

    def finish(self, job: Submitted) -> Any:
        index = sum(1 for kind, _ in self.events if kind == "finish")
        self.events.append(("finish", index))
        return super().finish(job)


def test_gpu_frames_overlap_and_each_publishes_its_own_outputs(
    fakes: Fakes, tiny_model_files: TinyModel, vocab_path: Path, tmp_path: Path, ros_context: Any,
    ros_executor: Any,
) -> None:
    import rclpy
    from gdino_ros.msg import SegmentationResult
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from gdino_ros.node import SegmentNode

    tokenizer = load_tokenizer(vocab_path)
    with Segmenter(open_backend(tiny_model_files.onnx, "cpu"), tokenizer, params=PARAMS) as reference:
        reference.set_prompt(PROMPT, "phrases")
        expected = [reference(IMAGES[i % len(IMAGES)]) for i in range(FRAMES)]
        job = reference.submit(IMAGES[0])
        assert not job.computing  # a CPU backend computes in submit: the node does not overlap its frames
        job.close()
    assert any(r.detections for r in expected), "nothing detected: nothing to compare"

    engine = write_engine(tiny_model_files.onnx, tmp_path / "model.engine")
    segmenter = _RecordingSegmenter(open_backend(engine, "cuda"), tokenizer, params=PARAMS)
    overrides = [Parameter("initial_prompt", value=PROMPT), Parameter("prompt_mode", value="phrases"),
                 Parameter("tracking", value=False), Parameter("box_threshold", value=PARAMS.box_threshold),
                 Parameter("text_threshold", value=PARAMS.text_threshold),
                 Parameter("max_detections", value=PARAMS.max_detections)]
    node = SegmentNode(context=ros_context, segmenter=segmenter, parameter_overrides=overrides)
    driver = rclpy.create_node("overlap_driver", context=ros_context)
    results: list[Any] = []
    masks: list[Any] = []
    reliable = QoSProfile(depth=FRAMES, reliability=ReliabilityPolicy.RELIABLE)
    driver.create_subscription(SegmentationResult, "/gdino/result", results.append, reliable)
    driver.create_subscription(Image, "/gdino/mask", masks.append, reliable)
    ros_executor.add_node(node)
    ros_executor.add_node(driver)
    try:
        publishers = node._output_publishers
        assert spin_until(ros_executor, lambda: publishers["mask"].get_subscription_count() > 0
                          and publishers["result"].get_subscription_count() > 0, 10.0)
        # The camera is faster than the node: the next frame is waiting whenever one has been queued.
        segmenter.offer = lambda index: node._on_image(_image_cdr(index)) if index < FRAMES else None
        node._on_image(_image_cdr(0))
        assert spin_until(ros_executor, lambda: len(results) == FRAMES and len(masks) == FRAMES, 60.0), (
            len(results), segmenter.events)
    finally:
        node.destroy_node()
        driver.destroy_node()

    # Frame k + 1 was queued before frame k was finished, for every k.
    order = {event: position for position, event in enumerate(segmenter.events)}
    assert all(order[("submit", k + 1)] < order[("finish", k)] for k in range(FRAMES - 1)), segmenter.events
    assert [r.header.stamp.sec for r in results] == list(range(FRAMES))
    for result, mask, want in zip(results, masks, expected, strict=True):
        assert mask.header.stamp.sec == result.header.stamp.sec
        assert mask.encoding == "mono8"  # mask_encoding auto, few instances
        labels = np.frombuffer(bytes(mask.data), dtype=np.uint8).reshape(mask.height, mask.width)
        assert _label_digest(labels) == _label_digest(want.label_image)
        assert [d.results[0].hypothesis.score for d in result.detections] == pytest.approx(
            [d.score for d in want.detections], rel=1e-6)
