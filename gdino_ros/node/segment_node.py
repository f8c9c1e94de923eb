"""``segment_node``: the rclpy adapter around :class:`gdino_ros.core.segmenter.Segmenter`.

Translate messages, schedule work, publish; every decision about pixels lives in the core.

Scheduling. The executor thread only stores: an image callback puts the message into a one-slot
buffer (replacing, and counting as dropped, a frame that was still waiting) and returns; prompts and
parameter changes are validated, staged, and the worker is woken. One worker thread applies staged
changes between frames (a new prompt is encoded and acknowledged on gdino/active_prompt at once, even
with no camera running, and takes effect from the next frame, never inside one), takes the newest
frame, converts it, runs the segmenter and publishes. With a GPU backend, whose inference runs after
``submit`` returns, a frame already waiting when the previous one is to be finished is queued first, so
the GPU computes it while the CPU post-processes and publishes the previous one; no frame waits for a
later one to arrive. Latency is therefore bounded by one frame in flight (two while they overlap) plus
one waiting, whatever the camera rate, and memory by four frames (those and the newest frame received,
kept for gdino/segment requests).

Topics (relative names, so a namespace per camera works; in the root namespace they are /gdino/...):
subscribes ``image`` (sensor_msgs/Image) or, with ``compressed_input``, ``image/compressed``
(sensor_msgs/CompressedImage), and ``gdino/prompt`` (std_msgs/String); publishes for every processed
frame, stamped with the input image's header, ``gdino/detections`` (vision_msgs/Detection2DArray),
``gdino/mask`` (instance label image), ``gdino/no_target`` (std_msgs/Bool), ``gdino/result``
(gdino_ros/SegmentationResult) and, while someone subscribes, ``gdino/overlay`` (rgb8); latched
``gdino/active_prompt`` (std_msgs/String, transient local) and ``/diagnostics`` once a second, on the
steady clock (so with use_sim_time and no /clock yet they still come).

Messages. Camera frames arrive as CDR bytes (a raw subscription) and are decoded without copying their
pixels; every per-frame output is built with rosbags classes and published as its CDR bytes
(:mod:`gdino_ros.conversions.cdr` says why). Service and action answers are rclpy messages read back
from the same bytes. The node makes the process heap keep freed frame-sized buffers
(:mod:`gdino_ros.node.heap`), so the copies of each frame reuse memory instead of faulting in new pages.

Requests. The ``gdino/segment`` service (gdino_ros/srv/Segment), and the action of the same name
(gdino_ros/action/Segment, which a client can cancel), segment one frame with the caller's prompt and
thresholds without touching the streaming prompt: the callback queues the request and awaits it (a
coroutine, so the executor keeps receiving frames meanwhile); the worker runs queued requests in arrival
order between two streaming frames, each on the frame it asked for, and wakes the
executor through a guard condition; a steady-clock timer fails requests whose timeout ran out.
Encoded request prompts are kept (:mod:`.prompt_cache`).

Enable. The ``enabled`` parameter (``ros2 param set ... enabled false``) drops the image subscription,
the waiting frame and the pending requests; the model, the prompt and everything else stay, so
``enabled true`` resumes at once. It is a parameter rather than a managed lifecycle node: the node is
useful from ``ros2 run`` without a lifecycle manager, rclpy's lifecycle (Humble and Jazzy) manages only
publishers, and a parameter is set through a standard service that tools and planners already call.

Shutdown. Once it starts nothing is published or logged from the worker; the worker is given
:data:`WORKER_STOP_TIMEOUT_S` to finish, and :func:`main` ends the process without waiting for a frame
still inside the engine. Further SIGINT/SIGTERM are ignored while shutting down.

Only API that exists in both Humble and Jazzy rclpy is used.
"""
from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.action.server import ActionServer, CancelResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType  # type: ignore[attr-defined]  # defined here in Humble, re-exported in Jazzy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rclpy.task import Future
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from gdino_ros.action import Segment as SegmentAction
from gdino_ros.conversions.cdr import CdrCodec, CdrDecodeError
from gdino_ros.conversions.image import ImageConversionError, compressed_to_pixels, image_to_pixels
from gdino_ros.conversions.messages import (
    COMPRESSED_IMAGE_TYPE,
    DEPTH_OUTPUT_TYPES,
    IMAGE_TYPE,
    OUTPUT_NAMESPACE,
    OUTPUT_TYPES,
    result_to_messages,
    ros_message_class,
)
from gdino_ros.core.overlay import draw_overlay
from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.prompt import PromptError
from gdino_ros.core.result import UINT8_MAX_INSTANCES
from gdino_ros.core.segmenter import ModelAccessError, Segmenter, Submitted
from gdino_ros.core.tokenizer import TokenizerNotFoundError
from gdino_ros.node.diagnostics import NodeState, segmentation_status
from gdino_ros.node.frame_slot import FrameSlot
from gdino_ros.node.frame_stats import FAILED, PROCESSED, REJECTED, FrameStats
from gdino_ros.node.hardware import device_name
from gdino_ros.node.heap import keep_large_buffers
from gdino_ros.node.parameters import (
    PARAMETERS,
    descriptor,
    parameter_problems,
    thresholds_from,
)
from gdino_ros.node.planner_outputs import PlannerOutputs
from gdino_ros.node.prompt_cache import PromptCache
from gdino_ros.node.request_checks import REQUEST_TIMEOUT_S, request_problem
from gdino_ros.node.requests import Outcome, RequestQueue, SegmentRequest
from gdino_ros.node.shown import shown
from gdino_ros.srv import Segment

NODE_NAME = "segment_node"
WARN_PERIOD_S = 5.0  # throttle of the per-frame warnings (bad images, mono8 overflow, failed frames)
DIAGNOSTICS_PERIOD_S = 1.0
# Shutdown waits this long for the worker, well inside the 2 s a user (or ros2 launch's SIGKILL after
# 10 s) will wait; a frame that takes longer is not waited for.
WORKER_STOP_TIMEOUT_S = 1.0
REQUEST_CHECK_PERIOD_S = 0.05  # how often the deadlines of pending requests are checked

# detections, mask, no_target, result, overlay
OUTPUT_TOPICS = {leaf: f"{OUTPUT_NAMESPACE}/{leaf}" for leaf in OUTPUT_TYPES}
PROMPT_TOPIC = f"{OUTPUT_NAMESPACE}/prompt"
ACTIVE_PROMPT_TOPIC = f"{OUTPUT_NAMESPACE}/active_prompt"
SEGMENT_SERVICE = f"{OUTPUT_NAMESPACE}/segment"
DIAGNOSTICS_TOPIC = "/diagnostics"
PUBLISHED_TYPES = OUTPUT_TYPES | DEPTH_OUTPUT_TYPES  # every per-frame output leaf -> its type name


@dataclass(frozen=True)
class _FrameTimes:
    """Monotonic times of a streaming frame: received, processing started, converted, inference queued."""

    received: float
    started: float
    converted: float
    submitted: float


@dataclass(frozen=True)
class _Started:
    """A streaming frame whose inference is queued, with the output settings in force when it started."""

    msg: Any
    pixels: np.ndarray
    bgr: bool
    job: Submitted
    times: _FrameTimes
    mask_encoding: str
    overlay: bool


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
        keep_large_buffers()  # frames and label images reuse heap pages instead of faulting in new ones
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
        # Frames arrive and outputs leave as CDR bytes, read and built with rosbags types (cdr.py).
        self._codec = CdrCodec()
        self._stats = FrameStats()
        self._slot = FrameSlot()
        self._requests = RequestQueue()
        self._prompt_cache = PromptCache(self._segmenter)
        self._hardware_id = device_name(self._segmenter.backend.device)
        # The newest frame received and when (monotonic): what gdino/segment requests run on.
        self._newest_lock = threading.Lock()
        self._newest_frame: tuple[Any, float] | None = None
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
        self._enabled: bool = values["enabled"]  # written by the executor thread only

        self._create_publishers()
        self._planner = PlannerOutputs(self, values, self._codec)  # track ids, 3-D, gdino/label_info
        self._output_publishers.update(self._planner.publishers)
        self._create_subscriptions(values["input_qos"] == "sensor_data", values["compressed_input"])
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Steady clock: with use_sim_time and no /clock (a paused simulator) ROS time stands still.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._diagnostics_timer = self.create_timer(
            DIAGNOSTICS_PERIOD_S, self._publish_diagnostics, clock=steady
        )
        self._request_timer = self.create_timer(REQUEST_CHECK_PERIOD_S, self._expire_requests, clock=steady)
        self._request_timer.cancel()  # runs only while requests are pending
        self._wake = self.create_guard_condition(lambda: None)  # the worker finished a request
        # A callback group of its own: a callback holds its group until its coroutine returns, and waiting
        # requests must neither block one another nor the image callback that brings their frame.
        requests_group = ReentrantCallbackGroup()
        self._segment_service = self.create_service(
            Segment, SEGMENT_SERVICE, self._on_segment, callback_group=requests_group
        )
        self._goal_requests: dict[bytes, SegmentRequest] = {}  # action goals being served, by goal id
        self._segment_action = ActionServer(
            self, SegmentAction, SEGMENT_SERVICE, execute_callback=self._on_segment_goal,
            cancel_callback=self._on_cancel_goal, callback_group=requests_group,
        )
        self._publish_active_prompt()

        # Everything loaded so far (model, tokenizer, libraries: about 10^5 objects) lives as long as the
        # node. Frozen, it is no longer traversed by the collector's full collections, which otherwise
        # stalled one frame in a few hundred by 50 ms on the development VM (docs/design.md).
        gc.collect()  # the start-up's own garbage first, so that none of it is frozen
        gc.freeze()
        self._worker = threading.Thread(target=self._work, name="gdino_worker", daemon=True)
        self._worker.start()
        backend = self._segmenter.backend
        self.get_logger().info(
            f"ready: {backend.name} on {backend.device} ({self._hardware_id}, {backend.precision}); images "
            f"from {self._image_topic}{'' if self._enabled else ' once enabled (enabled is false)'}; "
            f"prompt '{shown(self._active_prompt)}' ({self._prompt_mode}); requests on "
            f"{self.resolve_topic_name(SEGMENT_SERVICE)}"
        )
        if not self._active_prompt:
            self.get_logger().warning(
                f"no streaming prompt yet: publish one on {self.resolve_topic_name(PROMPT_TOPIC)} "
                "(std_msgs/String) or set 'initial_prompt'; until then frames are only used for "
                "gdino/segment requests"
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
        self._image_input: tuple[type, str, QoSProfile]
        if compressed:
            self._to_pixels = compressed_to_pixels
            self._image_input = (CompressedImage, "image/compressed", input_qos)
            self._image_type = COMPRESSED_IMAGE_TYPE
        else:
            self._to_pixels = image_to_pixels
            self._image_input = (Image, "image", input_qos)
            self._image_type = IMAGE_TYPE
        self._image_topic = self.resolve_topic_name(self._image_input[1])
        self._image_subscription: Any = None
        if self._enabled:
            self._subscribe_images()
        self._prompt_subscription = self.create_subscription(String, PROMPT_TOPIC, self._on_prompt, 10)

    def _subscribe_images(self) -> None:
        message_type, topic, qos = self._image_input
        # Raw: the callback gets the CDR bytes, decoded without copying the pixels (_on_image).
        self._image_subscription = self.create_subscription(
            message_type, topic, self._on_image, qos, raw=True
        )

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
        if values["initial_prompt"].strip():
            try:
                segmenter.set_prompt(values["initial_prompt"], values["prompt_mode"])
            except ValueError as error:
                raise StartupError(
                    f"bad parameter: initial_prompt '{shown(values['initial_prompt'])}': {error}"
                ) from error

    @staticmethod
    def _message_class(leaf: str) -> Any:
        return ros_message_class(OUTPUT_TYPES[leaf])

    def _open_segmenter(self, values: dict[str, Any], thresholds: PostprocessParams) -> Segmenter:
        model = values["model"]
        if not model:
            raise StartupError(model_help(model, ""))
        try:
            return Segmenter.from_model(
                model,
                tokenizer_path=values["tokenizer"] or None,
                device=values["device"],
                prompt=values["initial_prompt"] if values["initial_prompt"].strip() else None,
                mode=values["prompt_mode"],
                params=thresholds,
            )
        except TokenizerNotFoundError as error:
            raise StartupError(f"no tokenizer for the prompts: {error}") from error
        except PromptError as error:
            raise StartupError(
                f"bad parameter: initial_prompt '{shown(values['initial_prompt'])}': {error}"
            ) from error
        except ModelAccessError as error:  # an unreadable file: how to export a model is beside the point
            raise StartupError(f"cannot use model '{model}': {error}") from error
        except (OSError, ValueError, RuntimeError) as error:  # BackendError, CheckpointError, unreadable file
            raise StartupError(model_help(model, str(error).rstrip("."))) from error

    # --- executor-thread callbacks: validate, store, return ------------------------------------------

    def _on_image(self, raw: bytes) -> None:
        if not self._enabled:  # taken just before the subscription was dropped
            return
        now = time.monotonic()
        with self._stats.lock:
            self._stats.received += 1
            self._stats.received_at.append(now)
        try:
            msg = self._codec.decode(raw, self._image_type)
        except CdrDecodeError as error:
            self._frame_failed(error)
            return
        with self._newest_lock:
            self._newest_frame = (msg, now)
        dropped = self._slot.put(msg, now)
        with self._stats.lock:
            self._stats.dropped += int(dropped)

    def _on_prompt(self, msg: String) -> None:
        if not msg.data.strip():
            self.get_logger().warning(
                f"ignored an empty prompt on {self.resolve_topic_name(PROMPT_TOPIC)}; still using "
                f"'{shown(self._active_prompt)}'"
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
        if values.get("enabled", self._enabled) != self._enabled:
            self._set_enabled(values["enabled"])
        self._slot.poke()
        return SetParametersResult(successful=True)

    def _set_enabled(self, enabled: bool) -> None:
        """Subscribe to images again, or drop the subscription, the waiting frame and pending requests."""
        self._enabled = enabled
        if enabled:
            self._subscribe_images()
            self.get_logger().info(
                f"enabled: processing frames from {self._image_topic} again with prompt "
                f"'{shown(self._active_prompt)}'"
            )
            return
        self.destroy_subscription(self._image_subscription)
        self._image_subscription = None
        self._slot.discard()
        with self._newest_lock:
            self._newest_frame = None
        for request in self._requests.unfinished():
            self._requests.finish(request, Outcome(False, "segment_node was disabled before the request ran"))
        self.get_logger().info(
            f"disabled: unsubscribed from {self._image_topic}; the model and the prompt stay loaded "
            f"(ros2 param set {self.get_fully_qualified_name()} enabled true resumes)"
        )

    async def _on_segment(self, request: Any, response: Any) -> Any:
        """gdino/segment: queue the request, wait (without blocking the executor) for its outcome."""
        _, future = self._queue(request)
        outcome: Outcome = await future
        response.success, response.message = outcome.success, outcome.message
        if outcome.result is not None:
            response.result = outcome.result
        return response

    async def _on_segment_goal(self, goal_handle: Any) -> Any:
        """gdino/segment as an action: the same request and answer, and a client may cancel."""
        key = bytes(goal_handle.goal_id.uuid)
        self._goal_requests[key], future = self._queue(goal_handle.request)
        outcome: Outcome = await future
        del self._goal_requests[key]
        result = SegmentAction.Result(success=outcome.success, message=outcome.message)
        if outcome.result is not None:
            result.result = outcome.result
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif outcome.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    def _on_cancel_goal(self, goal_handle: Any) -> CancelResponse:
        """Accept a cancel: the goal ends at once; a frame it already runs on finishes unused."""
        request = self._goal_requests.get(bytes(goal_handle.goal_id.uuid))
        if request is not None:
            self._requests.finish(request, Outcome(False, "canceled by the client"))
        return CancelResponse.ACCEPT

    def _queue(self, request: Any) -> tuple[SegmentRequest, Future]:
        """Queue a service request or an action goal (the same fields); fail it at once if it is unusable."""
        now = time.monotonic()
        future = Future()
        queued = SegmentRequest(
            prompt=request.prompt,
            mode=request.prompt_mode or self._prompt_mode,
            params=self._requested_thresholds,
            next_frame=request.frame == Segment.Request.FRAME_NEXT,
            arrived=now,
            deadline=now + (request.timeout_s if request.timeout_s > 0 else REQUEST_TIMEOUT_S),
            on_done=future.set_result,
        )
        self._requests.add(queued)
        problem, thresholds = request_problem(
            request, enabled=self._enabled, node_name=self.get_fully_qualified_name(),
            default_mode=self._prompt_mode, thresholds=self._requested_thresholds,
        )
        if problem:
            self._requests.finish(queued, Outcome(False, problem))
        else:
            queued.params = thresholds
            if self._request_timer.is_canceled():
                self._request_timer.reset()
            self._slot.poke()
        return queued, future

    def _expire_requests(self) -> None:
        """Fail the requests whose timeout ran out (steady-clock timer, while requests are pending)."""
        for request in self._requests.overdue(time.monotonic()):
            self._requests.finish(request, Outcome(False, self._timeout_message(request)))
        if not len(self._requests):
            self._request_timer.cancel()
            if len(self._requests):  # one arrived meanwhile (a multi-threaded executor) and saw us running
                self._request_timer.reset()

    def _timeout_message(self, request: SegmentRequest) -> str:
        waited = f"timed out after {request.deadline - request.arrived:g} s"
        if request.running:
            return f"{waited}: the frame was still being segmented (the model is slower than the timeout)"
        with self._newest_lock:
            newest = self._newest_frame
        if newest is None:
            return f"{waited}: no frame received on {self._image_topic} (is the camera publishing?)"
        if request.next_frame and newest[1] <= request.arrived:
            return f"{waited}: no frame arrived on {self._image_topic} after the request"
        return f"{waited}: still queued behind earlier requests (the model is slower than requests arrive)"

    # --- worker thread -------------------------------------------------------------------------------

    def _work(self) -> None:
        computing: _Started | None = None  # a streaming frame the GPU may still be computing
        try:
            while not self._stopping():
                # Block for a frame only when none is computing. While one computes (a GPU backend), a
                # frame already waiting is queued before that one is finished and published, so the GPU
                # runs it meanwhile; with none waiting, the computing frame is finished at once.
                item = self._slot.take(wait=computing is None)
                if self._stopping():
                    break
                self._apply_staged()
                self._serve_requests()
                started = None if item is None else self._start(*item)
                if computing is not None:
                    self._finish_frame(computing)
                    computing = None
                if started is not None and started.job.computing:
                    computing = started
                elif started is not None:
                    self._finish_frame(started)
        finally:
            if computing is not None:
                computing.job.close()
            if self._owns_segmenter:
                self._segmenter.close()

    def _stopping(self) -> bool:
        """Shutdown has begun (the node is being destroyed, or Ctrl-C shut the context down)."""
        return self._slot.closed or not self.context.ok()

    def _start(self, msg: Any, received: float) -> _Started | None:
        """Convert a streaming frame and queue its inference; None when it is not run (disabled, bad...)."""
        if not self._enabled:
            return None
        if self._segmenter.prompt is None:
            with self._stats.lock:
                self._stats.waiting_for_prompt += 1
            return None
        started = time.monotonic()
        try:
            pixels, bgr = self._to_pixels(msg)
            converted = time.monotonic()
            job = self._segmenter.submit(pixels, bgr=bgr)
        except Exception as error:  # noqa: BLE001 - one failing frame must not stop the node
            self._frame_failed(error)
            return None
        times = _FrameTimes(received, started, converted, time.monotonic())
        return _Started(msg, pixels, bgr, job, times, self._mask_encoding, self._overlay_enabled)

    def _finish_frame(self, frame: _Started) -> None:
        """Post-process a started frame and publish its outputs; a failure is counted, not fatal."""
        try:
            self._publish_frame(frame)
        except Exception as error:  # noqa: BLE001 - one failing frame must not stop the node
            self._frame_failed(error)

    def _frame_failed(self, error: Exception) -> None:
        """Count and report a streaming frame that could not be processed; the node goes on."""
        if isinstance(error, (ImageConversionError, CdrDecodeError)):
            self._count_problem(REJECTED, f"bad image: {error}")
            self.get_logger().warning(
                f"skipped a frame from {self._image_topic}: {error}", throttle_duration_sec=WARN_PERIOD_S
            )
            return
        if self._stopping():  # publishing raced the shutdown: nothing failed
            return
        self._count_problem(FAILED, f"{type(error).__name__}: {error}")
        self.get_logger().error(
            f"frame failed ({type(error).__name__}: {error}); continuing with the next one",
            throttle_duration_sec=WARN_PERIOD_S,
        )

    def _count_problem(self, outcome: str, text: str) -> None:
        with self._stats.lock:
            self._stats.record(time.monotonic(), outcome, text)

    def _serve_requests(self) -> None:
        """Run the queued requests whose frame exists, in arrival order, each with its own prompt."""
        self._encode_request_prompts()
        while not self._stopping():
            with self._newest_lock:
                newest = self._newest_frame
            request = self._requests.take_ready(None if newest is None else newest[1])
            if request is None or newest is None:
                return
            outcome = self._run_request(request, newest[0])
            self._finish_request(request, outcome)

    def _finish_request(self, request: SegmentRequest, outcome: Outcome) -> None:
        if self._requests.finish(request, outcome) and not self._stopping():
            self._wake.trigger()  # the executor resumes the waiting service callback

    def _encode_request_prompts(self) -> None:
        """Encode the prompts of waiting requests now, so an unusable one fails at once, not after a frame."""
        for request in self._requests.unfinished():
            if not request.running:
                segmenter = self._request_segmenter(request)
                if isinstance(segmenter, Outcome):
                    self._finish_request(request, segmenter)

    def _request_segmenter(self, request: SegmentRequest) -> Segmenter | Outcome:
        """Return the cached segmenter with the request's prompt, or the failure to give the request."""
        try:
            return self._prompt_cache.segmenter_for(request.prompt, request.mode)
        except ValueError as error:  # PromptError
            return Outcome(False, f"unusable prompt '{shown(request.prompt)}': {error}")
        except Exception as error:  # noqa: BLE001 - the caller is told; the node goes on
            return Outcome(False, f"the prompt could not be encoded ({type(error).__name__}: {error})")

    def _run_request(self, request: SegmentRequest, msg: Any) -> Outcome:
        """Segment ``msg`` with the request's prompt and thresholds; the streaming prompt is untouched."""
        segmenter = self._request_segmenter(request)
        if isinstance(segmenter, Outcome):
            return segmenter
        try:
            pixels, bgr = self._to_pixels(msg)
            segmenter.set_params(request.params)
            result = segmenter(pixels, bgr=bgr)
            messages = result_to_messages(result, msg.header, self._codec.types,
                                          mask_encoding=self._mask_encoding, standalone=True)
            # A service answer is an rclpy message: the result as built for the topics, read back by rclpy.
            answer = deserialize_message(self._codec.encode(messages.result, OUTPUT_TYPES["result"]),
                                         self._message_class("result"))
        except ImageConversionError as error:
            return Outcome(False, f"the frame cannot be used: {error}")
        except Exception as error:  # noqa: BLE001 - the caller is told; the node goes on
            return Outcome(False, f"the frame failed ({type(error).__name__}: {error})")
        stamp = msg.header.stamp
        return Outcome(
            True,
            f"{len(result.detections)} detection(s) in the frame stamped {stamp.sec}.{stamp.nanosec:09d}",
            answer,
        )

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
                    f"rejected prompt '{shown(prompt)}': {error} Still using '{shown(self._active_prompt)}'."
                )
            else:
                self._active_prompt = prompt
                self.get_logger().info(f"prompt is now '{shown(prompt)}' ({encoded.mode})")
                if encoded.dropped:
                    self.get_logger().warning(
                        "the prompt is longer than the model's 256 tokens; left out: "
                        + ", ".join(encoded.dropped)
                    )
            self._publish_active_prompt()

    def _publish_frame(self, frame: _Started) -> None:
        """Post-process ``frame``, publish its outputs (to topics with subscribers) and record its timings."""
        msg, times = frame.msg, frame.times
        finishing = time.monotonic()
        result = self._segmenter.finish(frame.job)
        segmented = time.monotonic()
        overlay = None
        if frame.overlay and self._output_publishers["overlay"].get_subscription_count() > 0:
            overlay = draw_overlay(frame.pixels[..., ::-1] if frame.bgr else frame.pixels, result)
        drawn = time.monotonic()
        messages = result_to_messages(
            result, msg.header, self._codec.types, mask_encoding=frame.mask_encoding, overlay_rgb=overlay,
            **self._planner.frame_outputs(result, msg.header, frame.job.params.box_threshold),
        )
        if self._stopping():  # shutdown began during the frame: its outputs are not wanted any more
            return
        for leaf, message in messages.items():
            publisher = self._output_publishers[leaf]
            if publisher.get_subscription_count() > 0:  # unheard messages still cost their serialisation
                publisher.publish(self._codec.encode(message, PUBLISHED_TYPES[leaf]))
        published = time.monotonic()
        if messages.dropped_instances:
            self.get_logger().warning(
                f"the mono8 mask holds {UINT8_MAX_INSTANCES} instances; {messages.dropped_instances} more "
                "were left out of this frame's outputs (set mask_encoding to auto or mono16 to keep them)",
                throttle_duration_sec=WARN_PERIOD_S,
            )
        stages = {
            "queue": (times.started - times.received) * 1e3,
            "convert": (times.converted - times.started) * 1e3,
            **{name: float(ms) for name, ms in result.timings_ms.items()},
            # Queueing and finishing, without the time the frame computed while the one before was finished.
            "segmenter": ((times.submitted - times.converted) + (segmented - finishing)) * 1e3,
            "overlay": (drawn - segmented) * 1e3,
            "messages_and_publish": (published - drawn) * 1e3,
            "total": (published - times.received) * 1e3,
        }
        with self._stats.lock:
            self._stats.record(published, PROCESSED)
            self._stats.published_at.append(published)
            self._stats.stage_ms.append(stages)

    def _publish_active_prompt(self) -> None:
        self._active_prompt_publisher.publish(String(data=self._active_prompt))

    def diagnostics(self) -> DiagnosticStatus:
        """Summarise the node's health as one DiagnosticStatus (what /diagnostics carries)."""
        state = NodeState(
            enabled=self._enabled,
            active_prompt=self._active_prompt,
            prompt_mode=self._prompt_mode,
            requests_served=self._requests.served,
            requests_failed=self._requests.failed,
            requests_pending=len(self._requests),
        )
        return segmentation_status(
            f"{self.get_fully_qualified_name()}: segmentation",
            self._stats,
            self._segmenter.backend,
            state,
            self._hardware_id,
            time.monotonic(),
        )

    def _publish_diagnostics(self) -> None:
        diagnostics = DiagnosticArray(status=[self.diagnostics()])
        diagnostics.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_publisher.publish(diagnostics)

    def destroy_node(self) -> None:
        """Stop without waiting for a slow frame; pending requests fail.

        The worker publishes nothing from now on and gets :data:`WORKER_STOP_TIMEOUT_S` to end; if it is
        still in the engine, it closes the model itself when the frame ends (or the process exits first).
        """
        self._slot.close()
        for request in self._requests.unfinished():
            self._requests.finish(request, Outcome(False, "segment_node is shutting down"))
        self._worker.join(WORKER_STOP_TIMEOUT_S)
        self._segment_action.destroy()
        super().destroy_node()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``segment_node [--ros-args ...]``; return 1 if it cannot start (2: bad --ros-args).

    After a clean shutdown the process ends at once with 0, without the interpreter's teardown: with
    ONNX Runtime, PyTorch and transformers loaded that takes seconds, and a frame still inside the
    engine cannot be interrupted at all. Everything the node owns has been released by then.
    """
    try:
        rclpy.init(args=None if argv is None else list(argv))
    except RuntimeError as error:  # rcl could not parse the --ros-args (it has logged which one)
        print(f"segment_node: {error}", file=sys.stderr)
        return 2
    try:
        node = SegmentNode()
    except StartupError as error:
        get_logger(NODE_NAME).fatal(str(error))
        rclpy.shutdown()
        return 1
    spin_until_shutdown(node)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spin_until_shutdown(node: Node) -> None:
    """Spin ``node`` until Ctrl-C, SIGTERM or an external shutdown, then destroy it and shut rclpy down."""
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # A signal that shuts the context down while the executor builds its wait set makes rclpy raise
        # RCLError ("context is not valid") instead of ExternalShutdownException: the same shutdown.
        if node.context.ok():
            raise
    finally:
        _ignore_further_signals()
        node.destroy_node()
        node.context.try_shutdown()  # (Humble's rclpy has no rclpy.try_shutdown)
        _ignore_further_signals()  # rclpy's shutdown may have put back the handler it replaced


def _ignore_further_signals() -> None:
    """Ignore SIGINT and SIGTERM: a second Ctrl-C must not break the short shutdown with a traceback."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
