"""``segment_node``: the rclpy adapter around :class:`gdino_ros.core.segmenter.Segmenter`.

Translate messages, schedule work, publish; every decision about pixels lives in the core.

Scheduling. The executor thread only stores: an image callback puts the message into a one-slot
buffer (replacing, and counting as dropped, a frame that was still waiting) and returns; prompts and
parameter changes are validated, staged, and the worker is woken. One worker thread applies staged
changes between frames (a new prompt is encoded and acknowledged on gdino/active_prompt at once, even
with no camera running, and takes effect from the next frame, never inside one), takes the newest
frame, converts it, runs the segmenter and publishes. Latency is therefore bounded by one frame in flight plus
one waiting, whatever the camera rate, and memory by two frames.

Topics (relative names, so a namespace per camera works; in the root namespace they are /gdino/...):
subscribes ``image`` (sensor_msgs/Image) or, with ``compressed_input``, ``image/compressed``
(sensor_msgs/CompressedImage), and ``gdino/prompt`` (std_msgs/String); publishes for every processed
frame, stamped with the input image's header, ``gdino/detections`` (vision_msgs/Detection2DArray),
``gdino/mask`` (instance label image), ``gdino/no_target`` (std_msgs/Bool), ``gdino/result``
(gdino_ros/SegmentationResult) and, while someone subscribes, ``gdino/overlay`` (rgb8); latched
``gdino/active_prompt`` (std_msgs/String, transient local) and ``/diagnostics`` once a second.

Only API that exists in both Humble and Jazzy rclpy is used.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from gdino_ros.conversions.encodings import MASK_ENCODINGS, MONO16
from gdino_ros.conversions.image import ImageConversionError, compressed_to_pixels, image_to_pixels
from gdino_ros.conversions.messages import (
    OUTPUT_NAMESPACE,
    OUTPUT_TYPES,
    result_to_messages,
    ros_message_types,
)
from gdino_ros.core.overlay import draw_overlay
from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.prompt import PROMPT_MODES, PromptError
from gdino_ros.core.tokenizer import TokenizerNotFoundError
from gdino_ros.core.segmenter import Segmenter

NODE_NAME = "segment_node"
INPUT_QOS_CHOICES = ("sensor_data", "reliable")
WARN_PERIOD_S = 5.0  # throttle of the per-frame warnings (bad images, mono8 overflow, failed frames)
DIAGNOSTICS_PERIOD_S = 1.0
STALE_AFTER_S = 5.0  # diagnostics warn when no frame was published for this long
STATS_WINDOW = 100  # frames the diagnostics' rates and latencies are computed over
WORKER_STOP_TIMEOUT_S = 30.0

# detections, mask, no_target, result, overlay
OUTPUT_TOPICS = {leaf: f"{OUTPUT_NAMESPACE}/{leaf}" for leaf in OUTPUT_TYPES}
PROMPT_TOPIC = f"{OUTPUT_NAMESPACE}/prompt"
ACTIVE_PROMPT_TOPIC = f"{OUTPUT_NAMESPACE}/active_prompt"
DIAGNOSTICS_TOPIC = "/diagnostics"

_DEFAULT_THRESHOLDS = PostprocessParams()


class StartupError(RuntimeError):
    """The node cannot start; the message is the one thing the user is told."""


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter: default (the same value as in config/params.yaml), description and limits."""

    default: Any
    description: str
    read_only: bool = False
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    choices: tuple[str, ...] = ()

    def descriptor(self) -> ParameterDescriptor:
        """Build the descriptor ``ros2 param describe`` shows; rclpy enforces its ranges and read-only."""
        text = self.description + (f" One of: {', '.join(self.choices)}." if self.choices else "")
        descriptor = ParameterDescriptor(description=text, read_only=self.read_only)
        if self.float_range is not None:
            low, high = self.float_range
            descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
        if self.int_range is not None:
            low, high = self.int_range
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
        return descriptor


PARAMETERS: dict[str, ParameterSpec] = {
    "model": ParameterSpec(
        "", "Model file: .onnx (gdino-export), .engine (gdino-build-engine) or a TAO .pth checkpoint.", True
    ),
    "device": ParameterSpec("auto", "Where the model runs: auto, cpu, cuda or cuda:N.", True),
    "tokenizer": ParameterSpec(
        "",
        "bert-base-uncased vocab.txt or tokenizer directory; empty: a vocab.txt next to the model, else the "
        "Hugging Face cache (nothing is downloaded).",
        True,
    ),
    "prompt": ParameterSpec(
        "",
        "Prompt from the first frame on; change it at runtime on gdino/prompt (std_msgs/String). Empty: "
        "frames wait for a prompt on gdino/prompt.",
        True,
    ),
    "prompt_mode": ParameterSpec(
        "auto",
        "How prompts are read: phrases ('cup . bottle' lists things to find), expression (one referring "
        "expression), auto (phrases when every item between '.'/',' has at most three words).",
        choices=PROMPT_MODES,
    ),
    "box_threshold": ParameterSpec(
        _DEFAULT_THRESHOLDS.conf_threshold, "Minimum detection score, in [0, 1].", float_range=(0.0, 1.0)
    ),
    "text_threshold": ParameterSpec(
        _DEFAULT_THRESHOLDS.text_threshold,
        "Minimum token probability for a word of the prompt to label a box, in [0, 1].",
        float_range=(0.0, 1.0),
    ),
    "nms_threshold": ParameterSpec(
        _DEFAULT_THRESHOLDS.nms_threshold,
        "Class-agnostic NMS: a box overlapping a better one with IoU above this is dropped; 0 disables NMS.",
        float_range=(0.0, 1.0),
    ),
    "mask_threshold": ParameterSpec(
        _DEFAULT_THRESHOLDS.mask_threshold,
        "A pixel belongs to an instance when its mask probability exceeds this; in (0, 1).",
        float_range=(0.0, 1.0),
    ),
    "max_detections": ParameterSpec(
        _DEFAULT_THRESHOLDS.max_detections,
        "At most this many instances per frame, best first.",
        int_range=(1, int(np.iinfo(np.uint16).max)),
    ),
    "mask_encoding": ParameterSpec(
        MONO16, "Encoding of gdino/mask; mono8 holds at most 255 instances.", choices=MASK_ENCODINGS
    ),
    "overlay": ParameterSpec(True, "Publish gdino/overlay (drawn only while something subscribes to it)."),
    "input_qos": ParameterSpec(
        "sensor_data",
        "Image subscription QoS: sensor_data (best effort, keep last 1; matches every camera) or reliable "
        "(keep last 1).",
        True,
        choices=INPUT_QOS_CHOICES,
    ),
    "compressed_input": ParameterSpec(
        False, "Subscribe to image/compressed (sensor_msgs/CompressedImage) instead of image.", True
    ),
}

# Node parameter -> PostprocessParams field.
THRESHOLD_FIELDS = {
    "box_threshold": "conf_threshold",
    "text_threshold": "text_threshold",
    "nms_threshold": "nms_threshold",
    "mask_threshold": "mask_threshold",
    "max_detections": "max_detections",
}


def thresholds_from(
    values: dict[str, Any], base: PostprocessParams = _DEFAULT_THRESHOLDS
) -> PostprocessParams:
    """Apply the threshold parameters among ``values`` to ``base``; ValueError names a bad one."""
    changes = {THRESHOLD_FIELDS[name]: value for name, value in values.items() if name in THRESHOLD_FIELDS}
    return dataclasses.replace(base, **changes)


def choice_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not one of the choices of parameter ``name``, or None."""
    choices = PARAMETERS[name].choices
    if choices and value not in choices:
        return f"{name} must be one of {', '.join(choices)}, not {value!r}"
    return None


def model_help(model: str, reason: str) -> str:
    """Compose the one start-up message for a missing or unusable model: what it expects, how to make it."""
    head = (
        "no model given: set the 'model' parameter (launch argument model:=/path/to/model.onnx)"
        if not model
        else f"cannot use model '{model}': {reason}"
    )
    return (
        f"{head}. Expected a Mask Grounding DINO model with gdino_ros's engine interface: an ONNX file from "
        "'gdino-export --checkpoint <tao_model.pth> --output model.onnx', a TensorRT engine from "
        "'gdino-build-engine --onnx model.onnx --output model.engine --fp16', or the TAO .pth checkpoint. "
        "Without trained weights, 'gdino-export --random-init --output untrained.onnx' makes a model that "
        "runs (its detections are meaningless)."
    )


class FrameSlot:
    """One-frame buffer between the executor thread (producer) and the worker (consumer).

    :meth:`put` never blocks and returns True when it replaced a frame the worker had not taken yet
    (that frame is dropped). :meth:`take` blocks until a frame arrives, :meth:`poke` asks the worker to
    look at staged changes without a frame, or :meth:`close` stops it.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: tuple[Any, float] | None = None
        self._poked = False
        self.closed = False

    def put(self, msg: Any, received: float) -> bool:
        """Store ``msg`` (received at monotonic time ``received``); True if a waiting frame was replaced."""
        with self._condition:
            replaced = self._item is not None
            self._item = (msg, received)
            self._condition.notify()
        return replaced

    def poke(self) -> None:
        """Wake the worker even if no frame comes (a prompt must be applied and acknowledged now)."""
        with self._condition:
            self._poked = True
            self._condition.notify()

    def take(self) -> tuple[Any, float] | None:
        """Wait for a frame, a poke or :meth:`close`; return the newest frame and its receive time, if any."""
        with self._condition:
            while self._item is None and not self._poked and not self.closed:
                self._condition.wait()
            item, self._item, self._poked = self._item, None, False
            return item

    def close(self) -> None:
        """Wake the worker so that it stops."""
        with self._condition:
            self.closed = True
            self._condition.notify_all()


@dataclass
class FrameStats:
    """Counters and a window of per-frame stage timings, shared by both threads under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the one-slot buffer before the worker took them
    rejected: int = 0  # could not be converted (encoding, truncated, empty)
    failed: int = 0  # segmentation or publishing raised
    waiting_for_prompt: int = 0  # arrived before any prompt was set
    last_problem: str = ""
    received_at: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    published_at: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    stage_ms: deque[dict[str, float]] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))


def _rate_hz(times: deque[float]) -> float:
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else 0.0


class SegmentNode(Node):
    """The ROS 2 node; see the module docstring.

    ``segmenter`` replaces opening the ``model`` parameter's file (for an application or benchmark
    that builds its own); ``node_kwargs`` go to :class:`rclpy.node.Node` (``context``, ``namespace``,
    ``parameter_overrides``, ...). Raises :class:`StartupError` for an unusable model or parameter.
    """

    def __init__(self, *, segmenter: Segmenter | None = None, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        try:
            values, thresholds = self._read_parameters()
            self._owns_segmenter = segmenter is None
            self._segmenter = self._open_segmenter(values, thresholds) if segmenter is None else segmenter
            if segmenter is not None:
                self._configure(segmenter, values, thresholds)
        except StartupError:
            super().destroy_node()
            raise
        self._types = ros_message_types()
        self._stats = FrameStats()
        self._slot = FrameSlot()
        # Written by executor-thread callbacks, applied by the worker between frames.
        self._staged_lock = threading.Lock()
        self._staged_prompt: str | None = None
        self._staged_values: dict[str, Any] = {}
        self._requested_thresholds = thresholds
        # Worker-side state.
        self._mask_encoding: str = values["mask_encoding"]
        self._overlay_enabled: bool = values["overlay"]
        self._prompt_mode: str = values["prompt_mode"]
        self._active_prompt: str = self._segmenter.prompt_text or ""

        reliable = QoSProfile(
            depth=5, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE
        )
        self._output_publishers = {
            leaf: self.create_publisher(self._message_class(leaf), topic, reliable)
            for leaf, topic in OUTPUT_TOPICS.items()
        }
        latched = QoSProfile(
            depth=1,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self._active_prompt_publisher = self.create_publisher(String, ACTIVE_PROMPT_TOPIC, latched)
        self._diagnostics_publisher = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)

        best_effort = values["input_qos"] == "sensor_data"
        input_qos = QoSProfile(
            depth=1,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
        )
        self._to_pixels: Callable[[Any], tuple[np.ndarray, bool]]
        if values["compressed_input"]:
            self._to_pixels = compressed_to_pixels
            self._image_subscription = self.create_subscription(
                CompressedImage, "image/compressed", self._on_image, input_qos
            )
        else:
            self._to_pixels = image_to_pixels
            self._image_subscription = self.create_subscription(Image, "image", self._on_image, input_qos)
        self._prompt_subscription = self.create_subscription(String, PROMPT_TOPIC, self._on_prompt, 10)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diagnostics_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self._publish_active_prompt()

        self._worker = threading.Thread(target=self._work, name="gdino_worker", daemon=True)
        self._worker.start()
        backend = self._segmenter.backend
        self.get_logger().info(
            f"ready: {backend.name} on {backend.device} ({backend.precision}); images from "
            f"{self._image_subscription.topic_name}; prompt {self._active_prompt!r} ({self._prompt_mode})"
        )
        if not self._active_prompt:
            self.get_logger().warning(
                f"no prompt yet: publish one on {self.resolve_topic_name(PROMPT_TOPIC)} (std_msgs/String) or "
                "set the 'prompt' parameter; frames are not processed until then"
            )

    def _read_parameters(self) -> tuple[dict[str, Any], PostprocessParams]:
        try:
            for name, spec in PARAMETERS.items():
                self.declare_parameter(name, spec.default, spec.descriptor())
        except ParameterException as error:
            raise StartupError(f"bad parameter: {error}") from error
        values = {name: self.get_parameter(name).value for name in PARAMETERS}
        problems = [p for name, value in values.items() if (p := choice_problem(name, value))]
        try:
            thresholds = thresholds_from(values)
        except ValueError as error:
            problems.append(str(error))
        if problems:
            raise StartupError("bad parameter: " + "; ".join(problems))
        return values, thresholds

    @staticmethod
    def _configure(segmenter: Segmenter, values: dict[str, Any], thresholds: PostprocessParams) -> None:
        """Give a segmenter built by the caller this node's thresholds and initial prompt."""
        segmenter.set_params(thresholds)
        if values["prompt"].strip():
            try:
                segmenter.set_prompt(values["prompt"], values["prompt_mode"])
            except ValueError as error:
                raise StartupError(f"bad parameter: prompt {values['prompt']!r}: {error}") from error

    def _message_class(self, leaf: str) -> Any:
        return getattr(self._types, OUTPUT_TYPES[leaf].rsplit("/", 1)[1])

    def _open_segmenter(self, values: dict[str, Any], thresholds: PostprocessParams) -> Segmenter:
        model = values["model"]
        if not model:
            raise StartupError(model_help(model, ""))
        try:
            return Segmenter.from_model(
                model,
                tokenizer_path=values["tokenizer"] or None,
                device=values["device"],
                prompt=values["prompt"] if values["prompt"].strip() else None,
                mode=values["prompt_mode"],
                params=thresholds,
            )
        except TokenizerNotFoundError as error:
            raise StartupError(f"no tokenizer for the prompts: {error}") from error
        except PromptError as error:
            raise StartupError(f"bad parameter: prompt {values['prompt']!r}: {error}") from error
        except (OSError, ValueError, RuntimeError) as error:  # BackendError, CheckpointError, unreadable file
            raise StartupError(model_help(model, str(error).rstrip("."))) from error

    # --- executor-thread callbacks: validate, store, return ------------------------------------------

    def _on_image(self, msg: Any) -> None:
        now = time.monotonic()
        dropped = self._slot.put(msg, now)
        with self._stats.lock:
            self._stats.received += 1
            self._stats.dropped += int(dropped)
            self._stats.received_at.append(now)

    def _on_prompt(self, msg: String) -> None:
        if not msg.data.strip():
            self.get_logger().warning(
                f"ignored an empty prompt on {self.resolve_topic_name(PROMPT_TOPIC)}; still using "
                f"{self._active_prompt!r}"
            )
            self._publish_active_prompt()
            return
        with self._staged_lock:
            self._staged_prompt = msg.data
        self._slot.poke()

    def _on_set_parameters(self, parameters: Sequence[Parameter]) -> SetParametersResult:
        values = {p.name: p.value for p in parameters if p.name in PARAMETERS}
        for name, value in values.items():
            problem = choice_problem(name, value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
        with self._staged_lock:
            try:
                thresholds = thresholds_from(values, self._requested_thresholds)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
            self._requested_thresholds = thresholds
            self._staged_values.update(values)
        self._slot.poke()
        return SetParametersResult(successful=True)

    # --- worker thread -------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._slot.closed:
            item = self._slot.take()
            self._apply_staged()
            if item is None:
                continue
            if self._segmenter.prompt is None:
                with self._stats.lock:
                    self._stats.waiting_for_prompt += 1
                continue
            try:
                self._process(*item)
            except ImageConversionError as error:
                self._count_problem("rejected", f"bad image: {error}")
                self.get_logger().warning(
                    f"skipped a frame from {self._image_subscription.topic_name}: {error}",
                    throttle_duration_sec=WARN_PERIOD_S,
                )
            except Exception as error:  # noqa: BLE001 - one failing frame must not stop the node
                self._count_problem("failed", f"{type(error).__name__}: {error}")
                self.get_logger().error(
                    f"frame failed ({type(error).__name__}: {error}); continuing with the next one",
                    throttle_duration_sec=WARN_PERIOD_S,
                )

    def _count_problem(self, counter: str, text: str) -> None:
        with self._stats.lock:
            setattr(self._stats, counter, getattr(self._stats, counter) + 1)
            self._stats.last_problem = text

    def _apply_staged(self) -> None:
        """Apply prompt and parameter changes between two frames, so every frame sees one state."""
        with self._staged_lock:
            prompt, self._staged_prompt = self._staged_prompt, None
            values, self._staged_values = self._staged_values, {}
            thresholds = self._requested_thresholds
        if not prompt and not values:
            return
        self._segmenter.set_params(thresholds)
        self._mask_encoding = values.get("mask_encoding", self._mask_encoding)
        self._overlay_enabled = values.get("overlay", self._overlay_enabled)
        new_mode = values.get("prompt_mode", self._prompt_mode)
        if new_mode != self._prompt_mode and not prompt and self._active_prompt:
            prompt = self._active_prompt  # read the current prompt again in the new mode
        self._prompt_mode = new_mode
        if prompt:
            try:
                encoded = self._segmenter.set_prompt(prompt, self._prompt_mode)
            except ValueError as error:
                self.get_logger().warning(
                    f"rejected prompt {prompt!r}: {error} Still using {self._active_prompt!r}."
                )
            else:
                self._active_prompt = prompt
                self.get_logger().info(f"prompt is now {prompt!r} ({encoded.mode})")
                if encoded.dropped:
                    self.get_logger().warning(
                        "the prompt is longer than the model's 256 tokens; left out: "
                        + ", ".join(encoded.dropped)
                    )
            self._publish_active_prompt()

    def _process(self, msg: Any, received: float) -> None:
        started = time.monotonic()
        pixels, bgr = self._to_pixels(msg)
        converted = time.monotonic()
        result = self._segmenter(pixels, bgr=bgr)
        segmented = time.monotonic()
        overlay = None
        if self._overlay_enabled and self._output_publishers["overlay"].get_subscription_count() > 0:
            overlay = draw_overlay(pixels[..., ::-1] if bgr else pixels, result)
        drawn = time.monotonic()
        messages = result_to_messages(
            result, msg.header, self._types, mask_encoding=self._mask_encoding, overlay_rgb=overlay
        )
        for leaf, message in messages.items():
            self._output_publishers[leaf].publish(message)
        published = time.monotonic()
        if messages.dropped_instances:
            self.get_logger().warning(
                f"the mono8 mask holds 255 instances; {messages.dropped_instances} more were left out of "
                "this frame's outputs (set mask_encoding to mono16 to keep them)",
                throttle_duration_sec=WARN_PERIOD_S,
            )
        stages = {
            "queue": (started - received) * 1e3,
            "convert": (converted - started) * 1e3,
            **{name: float(ms) for name, ms in result.timings_ms.items()},
            "segmenter": (segmented - converted) * 1e3,
            "overlay": (drawn - segmented) * 1e3,
            "messages_and_publish": (published - drawn) * 1e3,
            "total": (published - received) * 1e3,
        }
        with self._stats.lock:
            self._stats.processed += 1
            self._stats.published_at.append(published)
            self._stats.stage_ms.append(stages)

    # --- status ----------------------------------------------------------------------------------------

    def _publish_active_prompt(self) -> None:
        self._active_prompt_publisher.publish(String(data=self._active_prompt))

    def diagnostics(self) -> DiagnosticStatus:
        """Summarise the node's health as one DiagnosticStatus (what /diagnostics carries)."""
        with self._stats.lock:
            stats = self._stats
            counts = {
                "frames_received": stats.received,
                "frames_processed": stats.processed,
                "frames_dropped": stats.dropped,
                "frames_rejected": stats.rejected,
                "frames_failed": stats.failed,
                "frames_waiting_for_prompt": stats.waiting_for_prompt,
            }
            input_rate, output_rate = _rate_hz(stats.received_at), _rate_hz(stats.published_at)
            stages = list(stats.stage_ms)
            problem = stats.last_problem
            idle_s = time.monotonic() - stats.published_at[-1] if stats.published_at else None
        backend = self._segmenter.backend
        values = {
            "rate_hz": f"{output_rate:.2f}",
            "input_rate_hz": f"{input_rate:.2f}",
            **{key: str(count) for key, count in counts.items()},
        }
        for stage in dict.fromkeys(key for frame in stages for key in frame):
            values[f"latency_ms.{stage}"] = f"{np.mean([f[stage] for f in stages if stage in f]):.2f}"
        if stages:
            values["latency_ms.total_p95"] = f"{np.percentile([f['total'] for f in stages], 95):.2f}"
        values.update(
            backend=backend.name,
            device=backend.device,
            precision=backend.precision,
            no_target_head=str(backend.has_no_target_head).lower(),
            active_prompt=self._active_prompt,
            prompt_mode=self._prompt_mode,
            last_problem=problem,
        )
        if not self._active_prompt:
            level, message = DiagnosticStatus.WARN, "no prompt: publish one on gdino/prompt"
        elif idle_s is None or idle_s > STALE_AFTER_S:
            level, message = DiagnosticStatus.WARN, f"no frame processed recently (input {input_rate:.1f} Hz)"
        elif counts["frames_failed"] or counts["frames_rejected"]:
            level, message = DiagnosticStatus.WARN, f"{output_rate:.1f} Hz; some frames failed: {problem}"
        else:
            level, message = DiagnosticStatus.OK, f"{output_rate:.1f} Hz"
        return DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: segmentation",
            message=message,
            hardware_id=f"{backend.name} {backend.device}",
            values=[KeyValue(key=key, value=value) for key, value in values.items()],
        )

    def _publish_diagnostics(self) -> None:
        diagnostics = DiagnosticArray(status=[self.diagnostics()])
        diagnostics.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_publisher.publish(diagnostics)

    def destroy_node(self) -> None:
        """Stop the worker (it finishes the frame in flight) before the publishers go away."""
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(WORKER_STOP_TIMEOUT_S)
        super().destroy_node()
        if self._owns_segmenter:
            self._segmenter.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``segment_node [--ros-args ...]``; return 0 after a clean shutdown, 1 if it cannot start."""
    try:
        rclpy.init(args=None if argv is None else list(argv))
    except RuntimeError as error:  # rcl could not parse the --ros-args (it has logged which one)
        print(f"segment_node: {error}", file=sys.stderr)
        return 2
    try:
        node = SegmentNode()
    except StartupError as error:
        get_logger(NODE_NAME).fatal(str(error))
        rclpy.try_shutdown()
        return 1
    spin_until_shutdown(node)
    return 0


def spin_until_shutdown(node: Node) -> None:
    """Spin ``node`` until Ctrl-C or an external shutdown, then destroy it and shut rclpy down."""
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=node.context)


if __name__ == "__main__":
    sys.exit(main())
