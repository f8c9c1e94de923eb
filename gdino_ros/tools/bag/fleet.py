"""gdino-bag --ray: many bags, and long bags in time ranges, segmented by Segmenters on a Ray cluster.

Each input's window is cut into ranges of ``--range-s`` seconds; a worker segments every frame of a range
(the network: the expensive part) and returns the frames' Results. When all ranges of a bag are in, one
worker writes the output bag with the single-machine code (:func:`gdino_ros.tools.bag.job.run`), the
Results replayed in log-time order instead of running the model again: copying, prompts, track ids,
depth pairing and the output file are that code's, so the output is the single-machine one message for
message, track ids included (association runs over the whole bag in order, never per range).

Resumable: an output whose metadata says the whole window was processed, and whose storage holds the
message count the metadata lists, is skipped; any other output gdino-bag wrote is redone and replaced
once the new one is complete. A bag that fails (damaged, a worker lost more often than Ray retries) is
reported with its message and writes nothing; the others go on.
"""
from __future__ import annotations

import argparse
import glob
import math
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdino_ros.errors import EXIT_INPUT, GdinoError, ModelError, UsageError
from gdino_ros.tools import ray_cluster
from gdino_ros.tools.bag.errors import BadRecordError, BagToolError
from gdino_ros.tools.bag.reader import BagSource
from gdino_ros.tools.bag.schedule import ScheduleEntry, load_schedule
from gdino_ros.tools.bag.writer import COMPLETE, END_KEY, MARKER_KEY

if TYPE_CHECKING:
    from gdino_ros.core.segmenter import Submitted

BAG_SUFFIXES = (".mcap", ".db3")


@dataclass
class Bag:
    """One input of the run and what became of it."""

    input: Path
    output: Path
    ranges: list[tuple[float | None, float | None]] = field(default_factory=list)
    frames_estimate: int = 0
    results: dict[int, Any] = field(default_factory=dict)  # range index -> ObjectRef of its Results
    ranges_done: int = 0
    state: str = "todo"  # todo, skipped (complete already), done, failed
    message: str = ""
    frames: int = 0
    detections: int = 0
    seconds: float = 0.0
    started: float = 0.0


def expand_inputs(items: list[Path]) -> list[Path]:
    """Paths, folders of bags and quoted glob patterns -> the bags, in order, each once.

    A rosbag2 folder (it holds metadata.yaml) is one bag; another folder stands for the bags inside it.
    """
    bags: list[Path] = []
    for item in items:
        if not item.exists() and glob.has_magic(str(item)):
            matches = [Path(p) for p in sorted(glob.glob(str(item)))]
            if not matches:
                raise BagToolError(f"no input matches {item}")
        else:
            matches = [item]
        for path in matches:
            if not path.exists():
                raise BagToolError(f"input bag {path} does not exist")
            if path.is_dir() and not (path / "metadata.yaml").exists():
                inside = sorted(
                    p for p in path.iterdir()
                    if (p.is_dir() and (p / "metadata.yaml").exists()) or p.suffix in BAG_SUFFIXES
                )
                if not inside:
                    raise BagToolError(f"folder {path} holds no rosbag2 folder, .mcap or .db3 file")
                bags += inside
            else:
                bags.append(path)
    return list(dict.fromkeys(p.resolve() for p in bags))


def output_path(output_folder: Path, bag: Path) -> Path:
    """Where a bag's output goes: the bag's name without .mcap/.db3, inside --output."""
    return output_folder / (bag.stem if bag.suffix in BAG_SUFFIXES else bag.name)


def output_complete(path: Path) -> bool:
    """Say whether ``path`` is a gdino-bag output of a whole window holding every message it lists."""
    import yaml
    from mcap.exceptions import McapError

    try:
        info = yaml.safe_load((path / "metadata.yaml").read_text(encoding="utf-8"))
        info = info["rosbag2_bagfile_information"]
        custom = info.get("custom_data") or {}
        if custom.get(MARKER_KEY) is None or custom.get(END_KEY) != COMPLETE:
            return False
        files = [path / str(f) for f in info["relative_file_paths"]]
        return _stored_messages(files) == int(info["message_count"])
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, ValueError, sqlite3.Error,
            McapError):
        return False


def _stored_messages(files: list[Path]) -> int:
    """Messages in the storage files themselves (MCAP summary statistics, sqlite3 rows)."""
    total = 0
    for file in files:
        if file.suffix == ".mcap":
            from mcap.reader import make_reader

            with file.open("rb") as stream:
                summary = make_reader(stream).get_summary()
                if summary is None or summary.statistics is None:
                    raise ValueError(f"{file} has no summary (not finalised)")
                total += summary.statistics.message_count
        else:
            with sqlite3.connect(f"file:{file}?mode=ro", uri=True) as db:
                total += int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    return total


def _ranges(source: BagSource, args: argparse.Namespace) -> list[tuple[float | None, float | None]]:
    """Cut the bag's window [--start, --end) into ranges of --range-s seconds (one range if unindexed)."""
    if source.streamed or source.start_ns is None or source.end_ns is None:
        return [(args.start, args.end)]
    duration = (source.end_ns - source.start_ns) / 1e9
    lo = max(args.start or 0.0, 0.0)
    hi = min(args.end, duration + 1e-9) if args.end is not None else duration + 1e-9
    pieces = max(1, math.ceil((hi - lo) / args.range_s))
    cuts = [lo + i * args.range_s for i in range(1, pieces)]
    return list(zip([args.start, *cuts], [*cuts, args.end], strict=True))


def segment_range(
    segmenter: Any, args: argparse.Namespace, schedule: list[ScheduleEntry], path: Path,
    window: tuple[float | None, float | None],
) -> tuple[int, list[Any]]:
    """On a worker: the number and Results of the frames the model takes in one range, in log-time order.

    Each frame's inference is queued before the previous frame is post-processed, so a GPU worker
    computes the next frame meanwhile (each frame keeps the prompt it was queued with).
    """
    from gdino_ros.conversions.image import ImageConversionError, compressed_to_pixels, image_to_pixels
    from gdino_ros.conversions.messages import IMAGE_TYPE
    from gdino_ros.conversions.typestore import project_typestore
    from gdino_ros.core.preprocess import check_image
    from gdino_ros.tools.bag.job import _first_prompt, _prompt_plan

    store = project_typestore()
    source = BagSource(path)

    def queued() -> Iterator[tuple[None, Submitted]]:
        plan = None if source.start_ns is None else _prompt_plan(args, schedule, source.start_ns)
        applied = _first_prompt(args, schedule)
        segmenter.set_prompt(*applied)
        for connection, log_time, raw in source.messages(*window):
            if connection.topic != args.image_topic:
                continue
            try:
                msg = store.deserialize_cdr(raw, connection.msgtype)
            except Exception as error:  # bad CDR, whichever layer says so
                raise BadRecordError(
                    f"input {path} is damaged: the frame at log time {log_time} ns cannot be decoded: {error}"
                ) from None
            try:
                convert = image_to_pixels if connection.msgtype == IMAGE_TYPE else compressed_to_pixels
                pixels, bgr = convert(msg)
                check_image(pixels, segmenter.backend.max_camera_hw)
            except (ImageConversionError, ValueError):
                continue  # skipped here as in the output's writing, which counts it
            if plan is None:
                plan = _prompt_plan(args, schedule, log_time)
            if (wanted := plan.at(log_time)) != applied:
                segmenter.set_prompt(*wanted)  # frames already queued keep their prompt
                applied = wanted
            yield None, segmenter.submit(pixels, bgr=bgr)

    try:
        results = [result for _, result in segmenter.finish_queued(queued())]
    finally:
        source.close()
    return len(results), results


@dataclass(frozen=True)
class _Replayed:
    """A worker's Result standing in for a queued frame."""

    result: Any

    def close(self) -> None:
        """Nothing to give back."""


class _Replay:
    """Stands in for the Segmenter while the output is written: hands out the workers' Results in order."""

    def __init__(self, parts: tuple[list[Any], ...], backend: Any) -> None:
        self._results: Iterator[Any] = (r for part in parts for r in part)
        self.left_over = 0
        self.backend = backend  # the worker's model, whose image limits decide which frames are skipped

    def submit(self, pixels: Any, *, bgr: bool = False) -> _Replayed:
        """Hand out the next Result, as the job queues a frame."""
        try:
            return _Replayed(next(self._results))
        except StopIteration:
            raise RuntimeError("the output has more frames than the workers segmented") from None

    def finish(self, job: _Replayed) -> Any:
        """Return the Result that :meth:`submit` handed out."""
        return job.result

    def set_prompt(self, prompt: str, mode: str = "auto") -> None:
        """Do nothing: the Results carry the prompt they were computed with."""

    def close(self) -> None:
        """Nothing to release; check every Result was used."""
        self.left_over = sum(1 for _ in self._results)
        if self.left_over:
            raise RuntimeError(f"the workers segmented {self.left_over} frames the output does not have")


def write_output(segmenter: Any, args: argparse.Namespace, *parts: list[Any]) -> tuple[int, int]:
    """On a worker: write one bag's output from its ranges' Results; return (frames, detections)."""
    from gdino_ros.tools.bag.job import run

    replay = _Replay(parts, segmenter.backend)
    stats = run(args, open_segmenter=lambda _args, _schedule: replay)
    return stats.frames, stats.detections


def run_on_ray(args: argparse.Namespace) -> int:
    """gdino-bag --ray: every input, summary at the end; return the exit code."""
    if args.range_s <= 0:
        raise UsageError(f"--range-s must be positive, got {args.range_s}")
    if args.prompt is None and args.prompt_schedule is None:
        raise UsageError("give --prompt, --prompt-schedule, or both")
    if not args.model.is_file():
        raise ModelError(f"model file {args.model} does not exist (or is not a file)")
    schedule = load_schedule(args.prompt_schedule, args.mode) if args.prompt_schedule else []
    inputs = expand_inputs(args.input)
    if not args.output.is_dir():
        raise UsageError(f"with --ray, --output is a folder for the outputs; create {args.output} first")
    bags = [Bag(path, output_path(args.output.resolve(), path)) for path in inputs]
    names = [b.output.name for b in bags]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise UsageError(
            f"two inputs would both write {args.output / twice}; give inputs with distinct names"
        )
    ray = ray_cluster.connect(ray_cluster.ray_address(args), "gdino-bag")
    ray_cluster.check_nodes(ray, args.model, inputs, [args.output])
    for bag in bags:
        _plan(bag, args)
    todo = [b for b in bags if b.state == "todo"]
    if todo:
        _execute(ray, args, schedule, todo)
    return _report(bags)


def _plan(bag: Bag, args: argparse.Namespace) -> None:
    """Skip a complete output, refuse a stranger's, cut the rest into ranges."""
    from gdino_ros.tools.bag.writer import check_output

    if bag.output.exists() and not args.overwrite and output_complete(bag.output):
        bag.state, bag.message = "skipped", "complete already"
        return
    try:
        check_output(bag.output, bag.input, overwrite=True)  # ours is redone, anything else refused
        source = BagSource(bag.input)
        try:
            if not source.streamed:
                source.check_image_topic(args.image_topic)
            bag.ranges = _ranges(source, args)
            bag.frames_estimate = sum(
                c.msgcount for c in source.connections.values() if c.topic == args.image_topic
            )
        finally:
            source.close()
    except GdinoError as error:
        bag.state, bag.message = "failed", str(error)


def _execute(ray: Any, args: argparse.Namespace, schedule: list[ScheduleEntry], bags: list[Bag]) -> None:
    """Send ranges to idle workers, then each bag's output writing once its ranges are in."""
    from gdino_ros.tools.arguments import postprocess_params
    from gdino_ros.tools.bag.job import _first_prompt

    prompt, mode = _first_prompt(args, schedule)
    open_kwargs = {
        "model_path": str(args.model.resolve()), "tokenizer_path": args.tokenizer, "device": args.device,
        "prompt": prompt, "mode": mode, "params": postprocess_params(args),
    }
    workers = ray_cluster.start_workers(ray, args.workers, open_kwargs, "gdino-bag")
    queue: list[tuple[str, Bag, int]] = [("range", b, i) for b in bags for i in range(len(b.ranges))]
    idle = list(workers)
    pending: dict[Any, tuple[Any, str, Bag, int]] = {}
    progress = _Progress(sum(b.frames_estimate for b in bags))
    while queue or pending:
        if not idle and not pending:  # every worker is gone for good
            lost = "no Ray worker is left (each died more often than Ray restarts it)"
            for _, bag, _ in queue:
                if bag.state != "failed":
                    bag.state, bag.message = "failed", lost
            break
        while queue and idle:
            kind, bag, index = queue.pop(0)
            if bag.state == "failed":
                continue
            worker = idle.pop(0)
            bag.started = bag.started or time.monotonic()
            if kind == "range":  # the frame count comes to this process, the Results stay in the cluster
                ref, bag.results[index] = worker.call.options(num_returns=2).remote(
                    segment_range, args, schedule, bag.input, bag.ranges[index]
                )
            else:
                bag_args = replace_args(args, bag)
                parts = [bag.results[i] for i in range(len(bag.ranges))]
                ref = worker.call.remote(write_output, bag_args, *parts)
            pending[ref] = (worker, kind, bag, index)
        if not pending:
            continue
        done, _ = ray.wait(list(pending), num_returns=1)
        worker, kind, bag, index = pending.pop(done[0])
        try:
            value = ray.get(done[0])
        except ray.exceptions.RayActorError as error:  # the worker died more often than Ray restarts it
            bag.state, bag.message = "failed", ray_cluster.failure_message(error)
            bag.results.clear()
            continue
        except Exception as error:  # the call raised on the worker: the worker itself is fine
            idle.append(worker)
            if bag.state != "failed":
                bag.state, bag.message = "failed", ray_cluster.failure_message(error)
                bag.results.clear()
            continue
        idle.append(worker)
        if bag.state == "failed":
            continue
        if kind == "range":
            bag.ranges_done += 1
            progress.add(value)
            if bag.ranges_done == len(bag.ranges):
                queue.insert(0, ("write", bag, 0))
        else:
            bag.frames, bag.detections = value
            bag.seconds = time.monotonic() - bag.started
            bag.state = "done"
            bag.results.clear()  # frees the object store
    for worker in workers:
        ray.kill(worker)


def replace_args(args: argparse.Namespace, bag: Bag) -> argparse.Namespace:
    """Return the single-machine command line for one bag (replacing an earlier gdino-bag output)."""
    one = argparse.Namespace(**vars(args))
    one.input, one.output, one.overwrite = bag.input, bag.output, True
    return one


class _Progress:
    """Frames segmented across all workers, frames/s and ETA, printed to stderr as ranges complete."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()

    def add(self, frames: int) -> None:
        self.done += frames
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {max(self.total - self.done, 0) / rate:.0f} s" if rate > 0 else ""
        line = f"gdino-bag: {self.done}/{self.total} frames, {rate:.2f} frames/s{eta}"
        print(line, file=sys.stderr, flush=True)


def _report(bags: list[Bag]) -> int:
    """Print one line per bag and the totals; exit code 0 unless a bag failed."""
    frames = sum(b.frames for b in bags)
    for bag in bags:
        if bag.state == "done":
            print(f"  {bag.input}: {bag.frames} frames, {bag.detections} detections, {bag.seconds:.1f} s "
                  f"-> {bag.output}")
        elif bag.state == "skipped":
            print(f"  {bag.input}: skipped, {bag.output} is complete already")
        else:
            print(f"  {bag.input}: FAILED: {bag.message}")
    failed = [b for b in bags if b.state == "failed"]
    done = sum(b.state == "done" for b in bags)
    skipped = sum(b.state == "skipped" for b in bags)
    print(f"gdino-bag: {done} bags written ({frames} frames), {skipped} complete already, "
          f"{len(failed)} failed", flush=True)
    if failed:
        print(f"gdino-bag: error: {len(failed)} of {len(bags)} bags failed (listed above); run the same "
              "command again to redo only those", file=sys.stderr, flush=True)
        return EXIT_INPUT
    return 0

