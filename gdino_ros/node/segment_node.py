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

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from gdino_ros.conversions.image import ImageConversionError, compressed_to_pixels, image_to_pixels
from gdino_ros.conversions.messages import (
    OUTPUT_NAMESPACE,
    OUTPUT_TYPES,
    result_to_messages,
    ros_message_types,
)
from gdino_ros.core.overlay import draw_overlay
from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.prompt import PromptError
from gdino_ros.core.segmenter import ModelAccessError, Segmenter
from gdino_ros.core.tokenizer import TokenizerNotFoundError
from gdino_ros.node.diagnostics import segmentation_status
from gdino_ros.node.frame_slot import FrameSlot
from gdino_ros.node.frame_stats import FrameStats
from gdino_ros.node.parameters import PARAMETERS, descriptor, parameter_problems, thresholds_from

NODE_NAME = "segment_node"
WARN_PERIOD_S = 5.0  # throttle of the per-frame warnings (bad images, mono8 overflow, failed frames)
DIAGNOSTICS_PERIOD_S = 1.0
WORKER_STOP_TIMEOUT_S = 30.0

# detections, mask, no_target, result, overlay
OUTPUT_TOPICS = {leaf: f"{OUTPUT_NAMESPACE}/{leaf}" for leaf in OUTPUT_TYPES}
PROMPT_TOPIC = f"{OUTPUT_NAMESPACE}/prompt"
ACTIVE_PROMPT_TOPIC = f"{OUTPUT_NAMESPACE}/active_prompt"
DIAGNOSTICS_TOPIC = "/diagnostics"


class StartupError(RuntimeError):
    """The node cannot start; the message is the one thing the user is told."""


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

        self._create_publishers()
        self._create_subscriptions(values["input_qos"] == "sensor_data", values["compressed_input"])
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

    def _create_publishers(self) -> None:
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

    def _create_subscriptions(self, best_effort: bool, compressed: bool) -> None:
        input_qos = QoSProfile(
            depth=1,
            history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
        )
        self._to_pixels: Callable[[Any], tuple[np.ndarray, bool]]
        if compressed:
            self._to_pixels = compressed_to_pixels
            self._image_subscription = self.create_subscription(
                CompressedImage, "image/compressed", self._on_image, input_qos
            )
        else:
            self._to_pixels = image_to_pixels
            self._image_subscription = self.create_subscription(Image, "image", self._on_image, input_qos)
        self._prompt_subscription = self.create_subscription(String, PROMPT_TOPIC, self._on_prompt, 10)

    def _read_parameters(self) -> tuple[dict[str, Any], PostprocessParams]:
        try:
            for name, setting in PARAMETERS.items():
                self.declare_parameter(name, setting.default, descriptor(setting))
        except ParameterException as error:
            raise StartupError(f"bad parameter: {error}") from error
        values = {name: self.get_parameter(name).value for name in PARAMETERS}
        problems = parameter_problems(values)
        if problems:
            raise StartupError("bad parameter: " + "; ".join(problems))
        return values, thresholds_from(values, PostprocessParams())

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
        except ModelAccessError as error:  # an unreadable file: how to export a model is beside the point
            raise StartupError(f"cannot use model '{model}': {error}") from error
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
        problems = parameter_problems(values)
        if problems:
            return SetParametersResult(successful=False, reason="; ".join(problems))
        with self._staged_lock:
            self._requested_thresholds = thresholds_from(values, self._requested_thresholds)
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
        return segmentation_status(
            f"{self.get_fully_qualified_name()}: segmentation",
            self._stats,
            self._segmenter.backend,
            self._active_prompt,
            self._prompt_mode,
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
