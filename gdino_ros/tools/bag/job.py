"""One gdino-bag run: read the input bag, segment every frame of the image topic, write the output bag.

Each output message carries its input image's header and log time; the messages are built by the same
code as the live node's (``gdino_ros.conversions.messages``). The run keeps per-stage times for its
summary (and for benchmarks/bench_bag.py).

Frames the model cannot take (an encoding that cannot be converted, a side under 32 pixels, more pixels
than the image limit) are skipped and counted, as the live node does; a record that cannot be read or
deserialised stops the run. Either way, and on Ctrl-C or SIGTERM, the frames before are finalised into a
complete, readable output bag; a failed write leaves no new output (and an earlier one unchanged).
"""
from __future__ import annotations

import argparse
import math
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gdino_ros.conversions.image import ImageConversionError, compressed_to_pixels, image_to_pixels
from gdino_ros.conversions.messages import (
    COMPRESSED_IMAGE_TYPE,
    DEPTH_OUTPUT_TYPES,
    IMAGE_TYPE,
    OUTPUT_NAMESPACE,
    OUTPUT_TYPES,
    result_to_messages,
    rosbags_message_types,
)
from gdino_ros.conversions.typestore import project_typestore
from gdino_ros.core.preprocess import ImageSizeError, check_image
from gdino_ros.core.result import UINT8_MAX_INSTANCES, Result
from gdino_ros.errors import ModelError, UsageError
from gdino_ros.tools.arguments import postprocess_params
from gdino_ros.tools.bag.errors import BadRecordError, BagToolError
from gdino_ros.tools.bag.planner import BagPlanner, check_depth_arguments
from gdino_ros.tools.bag.reader import BagSource, InputConnection
from gdino_ros.tools.bag.schedule import PromptPlan, ScheduleEntry, load_schedule
from gdino_ros.tools.bag.writer import BagSink, check_output
from gdino_ros.tools.cli import deferred_signals

ENGINE_STAGE = "inference"  # the Result.timings_ms stage that is the network itself
# Summary order of the stages: ours around the Segmenter's (preprocess, inference, postprocess).
STAGE_ORDER = (
    "read",
    "decode",
    "prompt",
    "preprocess",
    ENGINE_STAGE,
    "postprocess",
    "overlay",
    "convert",
    "write",
)


@dataclass
class Stats:
    """What the run did, for the summary."""

    frames: int = 0
    detections: int = 0
    no_target_frames: int = 0
    dropped_instances: int = 0
    copied: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # reason -> frames
    first_skip: str = ""  # the first skipped frame and why, for the summary
    wall_s: float = 0.0  # from the first message read to the output finalised (model loading excluded)
    interrupted: bool = False
    stage_ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add_stage(self, name: str, started: float) -> float:
        """Add the time since ``started`` (perf_counter) to ``name``; return now."""
        now = time.perf_counter()
        self.stage_ms[name] += (now - started) * 1e3
        return now


def _estimated_frames(
    source: BagSource, topic: str, start_s: float | None, end_s: float | None
) -> int | None:
    """Frames in the window, assuming a steady frame rate (exact without a window); None if unknown."""
    total = sum(c.msgcount for c in source.connections.values() if c.topic == topic)
    if source.streamed or not total or source.start_ns is None or source.end_ns is None:
        return None
    if start_s is None and end_s is None:
        return total
    duration = max((source.end_ns - source.start_ns) / 1e9, 1e-9)
    lo, hi = max(start_s or 0.0, 0.0), min(end_s if end_s is not None else duration, duration)
    return max(0, math.ceil(total * max(hi - lo, 0.0) / duration))


def _open_segmenter(args: argparse.Namespace, schedule: list[ScheduleEntry]) -> Any:
    """Open the model with the first prompt; every scheduled prompt is encoded once up front to fail early.

    Model, tokenizer and prompt problems are GdinoErrors already; anything else is a bug and keeps its
    traceback.
    """
    from gdino_ros.core.prompt import PromptError, encode_prompt
    from gdino_ros.core.segmenter import Segmenter

    prompt, mode = _first_prompt(args, schedule)
    try:
        segmenter = Segmenter.from_model(
            args.model,
            tokenizer_path=args.tokenizer,
            device=args.device,
            prompt=prompt,
            mode=mode,
            params=postprocess_params(args),
        )
    except PromptError as error:
        raise BagToolError(f"prompt {prompt!r}: {error}") from None
    for index, entry in enumerate(schedule):
        try:
            encode_prompt(entry.prompt, entry.mode, segmenter.tokenizer)
        except PromptError as error:
            segmenter.close()
            raise BagToolError(f"prompt schedule entry {index + 1} ({entry.prompt!r}): {error}") from None
    return segmenter


def _prompt_plan(args: argparse.Namespace, schedule: list[ScheduleEntry], start_ns: int) -> PromptPlan:
    """--prompt (if given) followed by the schedule, for a bag whose first message is at ``start_ns``."""
    initial = (args.prompt, args.mode) if args.prompt is not None else None
    return PromptPlan(initial, schedule, start_ns)


def _first_prompt(args: argparse.Namespace, schedule: list[ScheduleEntry]) -> tuple[str, str]:
    """Return the prompt the segmenter is opened with: --prompt, else the schedule's first entry."""
    if args.prompt is not None:
        return args.prompt, args.mode
    return schedule[0].prompt, schedule[0].mode


@dataclass(frozen=True)
class _Queued:
    """An image frame whose inference is queued (``job``), with what writing its outputs needs."""

    msg: Any
    pixels: np.ndarray
    bgr: bool
    log_time: int
    job: Any  # Segmenter.submit's Submitted, or what a replaying segmenter hands out


class BagJob:
    """One gdino-bag run: reads frames from ``source``, segments them, writes ``sink``."""

    def __init__(
        self,
        args: argparse.Namespace,
        source: BagSource,
        sink: BagSink,
        store: Any,
        segmenter: Any,
        schedule: list[ScheduleEntry],
        plan: PromptPlan | None,
    ) -> None:
        self.args, self.source, self.sink, self.store = args, source, sink, store
        self.segmenter, self.schedule, self.plan = segmenter, schedule, plan
        self.types = rosbags_message_types(store)
        self.planner = BagPlanner(args, store)  # track ids; 3-D with --depth-topic
        self._queued: _Queued | None = None  # the frame whose inference runs while the next one is read
        self.stats = Stats()
        self.overlay_fn = None
        if args.overlay:
            from gdino_ros.core.overlay import draw_overlay

            self.overlay_fn = draw_overlay

    def run_to_end(self) -> BagToolError | None:
        """Process the bag and finalise the output; return the input error that stopped it early, if any.

        An interrupt or a bad input record ends the run with the frames before it finalised in the
        output; a failed write (disk full) or a bug removes the unfinished output instead.
        """
        started = time.perf_counter()
        failure = None
        try:
            self.process()
        except KeyboardInterrupt:
            self.stats.interrupted = True
        except BagToolError as error:
            failure = error
        except (OSError, sqlite3.Error) as error:  # reads are wrapped in BadRecordError: this is a write
            self.sink.discard()
            raise self.sink.failure(error) from None
        except BaseException:
            self.sink.discard()
            raise
        self.sink.mark_end(failure is None and not self.stats.interrupted)
        self.sink.commit()
        self.stats.wall_s = time.perf_counter() - started
        return failure

    def process(self) -> None:
        """Copy every message in the window and segment every frame of the image topic."""
        from tqdm import tqdm

        args, stats = self.args, self.stats
        plan = self.plan
        applied = _first_prompt(args, self.schedule)
        estimate = _estimated_frames(self.source, args.image_topic, args.start, args.end)
        # On a terminal only (disable=None): in logs the summary says it all without \r-redrawn lines.
        bar = tqdm(
            total=estimate, unit="frame", desc="gdino-bag", dynamic_ncols=True, mininterval=0.5, disable=None
        )
        try:
            tick = time.perf_counter()
            with deferred_signals() as signals:  # stop between two messages, never inside a write
                for connection, log_time, raw in self.source.messages(args.start, args.end):
                    if signals:
                        self._write_queued()  # the frame read before the stop keeps its outputs
                        raise KeyboardInterrupt
                    tick = stats.add_stage("read", tick)
                    msg = None
                    if connection.topic in self.planner.topics:
                        self.planner.take(connection.topic, connection.msgtype, raw, log_time)
                        tick = stats.add_stage("decode", tick)
                    if connection.topic == args.image_topic:
                        msg = self._deserialise(connection, log_time, raw)  # before the copy: no damage out
                        tick = stats.add_stage("decode", tick)
                    out = self.sink.copy_connection(connection)
                    if out is not None:
                        self.sink.write(out, log_time, raw)
                        stats.copied += 1
                    tick = stats.add_stage("write", tick)
                    if msg is None:
                        continue
                    frame = self._pixels(msg, connection, log_time)
                    tick = stats.add_stage("decode", tick)
                    if frame is None:
                        continue
                    if plan is None:  # an index-free MCAP: the bag start is known only now
                        plan = _prompt_plan(args, self.schedule, log_time)
                    if (wanted := plan.at(log_time)) != applied:
                        self.segmenter.set_prompt(*wanted)  # frames already queued keep their prompt
                        applied = wanted
                        tick = stats.add_stage("prompt", tick)
                    # Queue this frame, then finish and write the one before (its depth is in by now): a
                    # GPU computes this frame while the previous one is post-processed and written.
                    job = self.segmenter.submit(frame[0], bgr=frame[1])
                    previous, self._queued = self._queued, _Queued(msg, *frame, log_time, job)
                    self._write(previous)
                    tick = time.perf_counter()
                    bar.update(1)
                self._write_queued()
        except BagToolError:
            self._write_queued()  # a bad record stops the run after the frames read before it
            raise
        finally:
            if self._queued is not None:  # a failed write or a bug: the output is discarded anyway
                self._queued.job.close()
                self._queued = None
            if bar.total is not None and bar.n != bar.total:
                bar.total = bar.n
                bar.refresh()
            bar.close()

    def _deserialise(self, connection: InputConnection, log_time: int, raw: bytes) -> Any:
        """Deserialise a frame of the image topic; one that cannot be is the bad record that stops the run."""
        if connection.msgtype not in (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE):
            raise BagToolError(
                f"topic {connection.topic} carries {connection.msgtype}; "
                f"expected {IMAGE_TYPE} or {COMPRESSED_IMAGE_TYPE}"
            )
        try:
            return self.store.deserialize_cdr(raw, connection.msgtype)
        except Exception as error:  # bad CDR, whichever layer says so
            raise BadRecordError(
                f"input {self.source.path} is damaged: frame {self._frame_number()} on {connection.topic} "
                f"at log time {log_time} ns cannot be decoded: {error}"
            ) from None

    def _pixels(self, msg: Any, connection: InputConnection, log_time: int) -> tuple[np.ndarray, bool] | None:
        """Return the frame's pixels for the model, or None (counted) for a frame the model cannot take."""
        try:
            convert = image_to_pixels if connection.msgtype == IMAGE_TYPE else compressed_to_pixels
            pixels, bgr = convert(msg)
            check_image(pixels, self.segmenter.backend.max_camera_hw)
        except (ImageConversionError, ValueError) as error:
            reason = str(error).split(";")[0].rstrip(".")
            if not self.stats.skipped:
                self.stats.first_skip = f"frame {self._frame_number()} at log time {log_time} ns: {reason}"
            self.stats.skipped[_skip_kind(error)] += 1
            return None
        return pixels, bgr

    def _frame_number(self) -> int:
        """Return the number of the frame being read, counting the queued one not yet written."""
        return self.stats.frames + (self._queued is not None) + sum(self.stats.skipped.values()) + 1

    def _write_queued(self) -> None:
        """Finish the queued frame, if any, and write its outputs."""
        queued, self._queued = self._queued, None
        self._write(queued)

    def _write(self, queued: _Queued | None) -> None:
        """Finish ``queued`` (if a frame) and write its outputs at the frame's log time."""
        if queued is None:
            return
        msg, pixels, bgr, log_time = queued.msg, queued.pixels, queued.bgr, queued.log_time
        stats = self.stats
        result: Result = self.segmenter.finish(queued.job)
        for stage, ms in result.timings_ms.items():
            stats.stage_ms[stage] += ms
        tick = time.perf_counter()
        overlay = None
        if self.overlay_fn is not None:
            overlay = self.overlay_fn(pixels[..., ::-1] if bgr else pixels, result)
            tick = stats.add_stage("overlay", tick)
        messages = result_to_messages(
            result, msg.header, self.types, mask_encoding=self.args.mask_encoding, overlay_rgb=overlay,
            **self.planner.frame(result, msg.header),
        )
        serialised = [
            (self.sink.outputs[name], self.store.serialize_cdr(m, (OUTPUT_TYPES | DEPTH_OUTPUT_TYPES)[name]))
            for name, m in messages.items()
        ]
        tick = stats.add_stage("convert", tick)
        for connection, data in serialised:
            self.sink.write(connection, log_time, data)
        stats.add_stage("write", tick)
        stats.frames += 1
        stats.detections += len(messages.detections.detections)
        stats.no_target_frames += bool(result.no_target)
        stats.dropped_instances += messages.dropped_instances

    def summary(self) -> str:
        """Frames, detections, no-target frames, skipped frames and milliseconds per frame for each stage."""
        stats = self.stats
        wall = stats.wall_s
        rate = stats.frames / wall if wall > 0 else 0.0
        lines = [
            f"gdino-bag: {stats.frames} frames in {wall:.1f} s ({rate:.2f} frames/s), {stats.detections} "
            f"detections, {stats.no_target_frames} no-target frames, {stats.copied} input messages copied",
        ]
        if stats.frames:
            order = {name: i for i, name in enumerate(STAGE_ORDER)}
            stages = sorted(stats.stage_ms.items(), key=lambda item: order.get(item[0], len(order)))
            per_frame = " | ".join(f"{name} {ms / stats.frames:.1f}" for name, ms in stages)
            engine_ms = stats.stage_ms.get(ENGINE_STAGE, 0.0)
            lines.append(
                f"  ms per frame: {per_frame}; time outside the engine: {1.0 - engine_ms / (wall * 1e3):.0%}"
            )
        if stats.skipped:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(stats.skipped.items()))
            lines.append(
                f"  skipped {sum(stats.skipped.values())} frames the model cannot take ({kinds}); they have "
                f"no /gdino outputs, the input frames are copied. First: {stats.first_skip}"
            )
        if stats.dropped_instances:
            lines.append(
                f"  mono8 mask: {stats.dropped_instances} instances beyond id {UINT8_MAX_INSTANCES} "
                "were left out"
            )
        lines += self.planner.summary()
        lines += [f"  not copied: {topic} ({why})" for topic, why in sorted(self.sink.skipped.items())]
        if stats.interrupted:
            lines.append(f"  interrupted: the {stats.frames} frames before are in {self.args.output}")
        lines.append(f"  wrote {self.args.output} ({self.args.storage})")
        return "\n".join(lines)


def _skip_kind(error: Exception) -> str:
    """Name why a frame was skipped, in a word or two (the summary counts each kind)."""
    if isinstance(error, ImageConversionError):
        return "not convertible"
    if isinstance(error, ImageSizeError):
        return "too large" if error.too_large else "too small"
    return "not usable"


def run(
    args: argparse.Namespace,
    open_segmenter: Callable[[argparse.Namespace, list[ScheduleEntry]], Any] | None = None,
) -> Stats:
    """Process the bag and print the summary; return what was done (benchmarks read it).

    User errors raise GdinoErrors; an input error after the start keeps the output of the frames before it.
    ``open_segmenter`` replaces opening the model (the Ray runner replays the results its workers computed).
    """
    _check_arguments(args)
    schedule = load_schedule(args.prompt_schedule, args.mode) if args.prompt_schedule else []
    check_output(args.output, args.input, args.overwrite)
    source = BagSource(args.input)
    try:
        job, failure = _segment_bag(args, source, schedule, open_segmenter or _open_segmenter)
    finally:
        source.close()
    if failure is None and source.streamed and not job.stats.frames:
        source.check_image_topic(args.image_topic)
    print(job.summary(), flush=True)
    if failure is not None:
        raise BagToolError(
            f"{failure}; the {job.stats.frames} frames before it are in {args.output} (complete and readable)"
        )
    return job.stats


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse argument combinations and missing files before anything is opened."""
    if args.prompt is None and args.prompt_schedule is None:
        raise UsageError("give --prompt, --prompt-schedule, or both")
    check_depth_arguments(args)
    if args.start is not None and args.end is not None and args.end <= args.start:
        raise UsageError(f"--end {args.end} must be after --start {args.start}")
    if not args.input.exists():
        raise BagToolError(f"input bag {args.input} does not exist")
    if not args.model.is_file():
        raise ModelError(f"model file {args.model} does not exist (or is not a file)")


def _segment_bag(
    args: argparse.Namespace, source: BagSource, schedule: list[ScheduleEntry],
    open_segmenter: Callable[[argparse.Namespace, list[ScheduleEntry]], Any],
) -> tuple[BagJob, BagToolError | None]:
    """Open the model and the output, run the job; return it and the error that stopped it, if any."""
    if not source.streamed:
        source.check_image_topic(args.image_topic)
    # Checked before anything is written; an index-free MCAP learns its start with the first message.
    plan = None if source.start_ns is None else _prompt_plan(args, schedule, source.start_ns)
    segmenter = open_segmenter(args, schedule)
    try:
        topics = {
            name: (f"/{OUTPUT_NAMESPACE}/{name}", msgtype)
            for name, msgtype in OUTPUT_TYPES.items()
            if args.overlay or name != "overlay"
        }
        if args.depth_topic is not None:  # 3-D: Detection3DArray (the point cloud is for live viewers)
            name = "detections_3d"
            topics[name] = (f"/{OUTPUT_NAMESPACE}/{name}", DEPTH_OUTPUT_TYPES[name])
        store = project_typestore()
        sink = BagSink(args.output, args.storage, store, topics)
        job = BagJob(args, source, sink, store, segmenter, schedule, plan)
        return job, job.run_to_end()
    finally:
        segmenter.close()
