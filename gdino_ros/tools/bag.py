r"""gdino-bag: segment a recorded rosbag2 or MCAP file offline, as fast as the engine runs, without ROS.

Examples::

    gdino-bag --input run_03 --output run_03_gdino --image-topic /camera/image_raw \
        --model mask_gdino.onnx --prompt "cup . bottle ."
    gdino-bag --input run_03.mcap --output out --image-topic /camera/image_raw/compressed \
        --model m.engine --prompt "the red mug" --mode expression --overlay --start 10 --end 25
    gdino-bag ... --prompt-schedule prompts.yaml

The input is a rosbag2 directory (MCAP or sqlite3 storage), a bare ``.mcap`` or ``.db3`` file, read
with rosbags. The image topic may be ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``. The
output is a new rosbag2 directory (MCAP unless ``--storage sqlite3``) holding every input topic
unchanged (same connections, types and definitions) plus, for each frame, ``/gdino/detections``
(vision_msgs/Detection2DArray), ``/gdino/mask`` (sensor_msgs/Image), ``/gdino/no_target``
(std_msgs/Bool), ``/gdino/result`` (gdino_ros/SegmentationResult) and, with ``--overlay``,
``/gdino/overlay`` (sensor_msgs/Image rgb8). Each output carries its input image's header and log
time; the messages are built by the same code as the live node's (``gdino_ros.conversions.messages``)
and their types are registered from the project's own .msg files, so definitions and RIHS01 hashes
are those of a ROS 2 build. Input topics named like an output are not copied (re-processing an
output bag replaces the old results).

``--start``/``--end`` are seconds from the bag's first message; outside that window nothing is read
or written. ``--prompt-schedule`` is a YAML list that switches the prompt at bag times::

    - at: 0            # seconds from the bag's first message ...
      prompt: "cup . bottle ."
    - at: 12.5
      prompt: "the person holding the red cup"
      mode: expression # optional; default --mode
    - at_ns: 1700000042000000000   # ... or an absolute log time in nanoseconds
      prompt: "door handle"

A frame uses the last entry at or before its log time; frames before the first entry use
``--prompt`` (which may then be left out only if the schedule starts at 0).

A corrupt or truncated input stops processing at the first record that cannot be read or decoded:
the error names it, the output written so far is finalised and kept, and the exit status is 1. An
MCAP file that lost its index (recording killed) is read record by record up to the break.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from gdino_ros.conversions.encodings import MASK_ENCODINGS, MONO16
from gdino_ros.conversions.image import compressed_to_pixels, image_to_pixels
from gdino_ros.conversions.messages import (
    OUTPUT_NAMESPACE,
    OUTPUT_TYPES,
    result_to_messages,
    rosbags_message_types,
)
from gdino_ros.conversions.typestore import project_typestore
from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.prompt import PROMPT_MODES
from gdino_ros.core.result import Result

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
STORAGES = ("mcap", "sqlite3")
_BAG_FILE_SUFFIXES = (".mcap", ".db3")
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


# PostprocessParams field -> command-line flag (named like the node's parameters).
THRESHOLD_FLAGS = {
    "conf_threshold": "--box-threshold",
    "text_threshold": "--text-threshold",
    "nms_threshold": "--nms-threshold",
    "mask_threshold": "--mask-threshold",
    "max_detections": "--max-detections",
}


class BagToolError(Exception):
    """A user-facing failure: the message is printed as one line and the tool exits with status 1."""


class BadRecordError(BagToolError):
    """A record of the input could not be read or decoded; processing stops there."""


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``gdino-bag``."""
    parser = argparse.ArgumentParser(
        prog="gdino-bag",
        description="Run Mask Grounding DINO on every frame of a rosbag2/MCAP recording and write a new bag "
        "with the original topics plus the /gdino/* outputs.",
    )
    parser.add_argument("--input", type=Path, required=True, help="rosbag2 directory, .mcap or .db3 file")
    parser.add_argument("--output", type=Path, required=True, help="rosbag2 directory to create")
    parser.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    parser.add_argument("--model", type=Path, required=True, help=".onnx, .pth or .engine/.plan model file")
    parser.add_argument("--prompt", help="phrases ('cup . bottle .') or one referring expression")
    parser.add_argument(
        "--mode",
        choices=PROMPT_MODES,
        default="auto",
        help="how to read the prompt: phrases, expression, or auto (phrases when every item between "
        "'.'/',' has at most three words; default)",
    )
    parser.add_argument("--prompt-schedule", type=Path, help="YAML list of {at|at_ns, prompt[, mode]}")
    parser.add_argument("--tokenizer", type=Path, help="bert-base-uncased vocab.txt or tokenizer directory")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--overlay", action="store_true", help="also write /gdino/overlay (rgb8)")
    defaults = PostprocessParams()
    thresholds = parser.add_argument_group("post-processing (the node's parameters of the same names)")
    for flag, default, what in (
        ("--box-threshold", defaults.conf_threshold, "minimum detection score"),
        ("--text-threshold", defaults.text_threshold, "minimum token probability for a word to label a box"),
        ("--nms-threshold", defaults.nms_threshold, "IoU above which the weaker box is dropped; 0: no NMS"),
        ("--mask-threshold", defaults.mask_threshold, "mask probability a pixel must exceed"),
    ):
        thresholds.add_argument(flag, type=float, default=default, help=f"{what} (default %(default)s)")
    thresholds.add_argument(
        "--max-detections",
        type=int,
        default=defaults.max_detections,
        help="instances per frame (default %(default)s)",
    )
    parser.add_argument(
        "--mask-encoding", choices=MASK_ENCODINGS, default=MONO16, help="label image encoding"
    )
    parser.add_argument("--start", type=float, help="seconds from the bag's first message (inclusive)")
    parser.add_argument("--end", type=float, help="seconds from the bag's first message (exclusive)")
    parser.add_argument("--storage", choices=STORAGES, default="mcap", help="output storage (default: mcap)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    return parser


# --- prompt schedule -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleEntry:
    """A prompt that takes effect at ``at_s`` seconds from the bag start or at log time ``at_ns``."""

    prompt: str
    mode: str
    at_s: float | None = None
    at_ns: int | None = None

    def log_time(self, bag_start_ns: int) -> int:
        """Absolute log time (ns) at which this entry takes effect."""
        return self.at_ns if self.at_ns is not None else bag_start_ns + round((self.at_s or 0.0) * 1e9)


def load_schedule(path: Path, default_mode: str) -> list[ScheduleEntry]:
    """Read and validate a prompt schedule YAML file (format in the module docstring)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise BagToolError(f"cannot read prompt schedule {path}: {error}") from None
    if not isinstance(data, list) or not data:
        raise BagToolError(f"prompt schedule {path} must be a non-empty YAML list of {{at, prompt}} entries")
    entries = []
    for index, item in enumerate(data):
        where = f"prompt schedule {path}, entry {index + 1}"
        if not isinstance(item, dict) or set(item) - {"at", "at_ns", "prompt", "mode"}:
            raise BagToolError(
                f"{where}: expected keys at (or at_ns), prompt and optionally mode, got {item!r}"
            )
        if ("at" in item) == ("at_ns" in item):
            raise BagToolError(
                f"{where}: give exactly one of at (seconds from bag start) or at_ns (log time)"
            )
        prompt, mode = item.get("prompt"), item.get("mode", default_mode)
        if not isinstance(prompt, str) or not prompt.strip():
            raise BagToolError(f"{where}: prompt must be a non-empty string")
        if mode not in PROMPT_MODES:
            raise BagToolError(f"{where}: mode must be one of {', '.join(PROMPT_MODES)}, got {mode!r}")
        at = item.get("at", item.get("at_ns"))
        if (
            isinstance(at, bool)
            or not isinstance(at, (int, float))
            or ("at_ns" in item and not isinstance(at, int))
        ):
            raise BagToolError(f"{where}: at must be seconds (a number), at_ns an integer nanosecond time")
        if at < 0:
            raise BagToolError(f"{where}: time {at} is negative")
        entries.append(
            ScheduleEntry(prompt, mode, at_s=float(at), at_ns=None)
            if "at" in item
            else ScheduleEntry(prompt, mode, at_ns=int(at))
        )
    return entries


class PromptPlan:
    """Which prompt applies at each log time: ``--prompt`` first, then the schedule's entries."""

    def __init__(self, initial: tuple[str, str] | None, entries: list[ScheduleEntry], start_ns: int):
        timed = sorted(((e.log_time(start_ns), e.prompt, e.mode) for e in entries), key=lambda t: t[0])
        if initial is None and (not timed or timed[0][0] > start_ns):
            raise BagToolError(
                "give --prompt, or a prompt schedule whose first entry is at 0 (the bag start)"
            )
        self._changes = timed
        self._current = initial if initial is not None else (timed[0][1], timed[0][2])
        self._next = 0

    def at(self, log_time: int) -> tuple[str, str]:
        """Return the (prompt, mode) in force at ``log_time``; log times must not decrease between calls."""
        while self._next < len(self._changes) and self._changes[self._next][0] <= log_time:
            _, prompt, mode = self._changes[self._next]
            self._current = (prompt, mode)
            self._next += 1
        return self._current


# --- reading ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputConnection:
    """One input connection as the output bag must reproduce it."""

    key: int
    topic: str
    msgtype: str
    msgdef: str  # "" when the bag carries no definition
    msgdef_is_idl: bool
    digest: str  # RIHS01 or "" when unknown
    serialization_format: str
    qos: tuple[Any, ...]
    msgcount: int


class BagSource:
    """Messages of one input bag in log-time order; read errors become :class:`BadRecordError`."""

    def __init__(self, path: Path) -> None:
        from rosbags.rosbag2 import Reader

        self.path = path
        self.streamed = False
        self.connections: dict[int, InputConnection] = {}
        self.start_ns: int | None = None
        self._reader: Any = None
        self._mcap_files: list[Path] = []
        try:
            self._reader = Reader(path)
            self._reader.open()
        except Exception as error:  # any reader failure: try the index-free MCAP path
            self._reader = None
            self._mcap_files = [path] if path.suffix == ".mcap" else sorted(path.glob("*.mcap"))
            if not self._mcap_files:
                raise BagToolError(f"cannot open input bag {path}: {error}") from None
            self.streamed = True
            print(
                f"gdino-bag: note: {path} cannot be opened through its index ({error}); reading its MCAP "
                "records in file order up to the first damaged one",
                file=sys.stderr,
            )
            return
        for connection in self._reader.connections:
            self.connections[connection.id] = _input_connection(connection)
        if self._reader.message_count:
            self.start_ns = self._reader.start_time
        self.end_ns = self._reader.end_time

    def close(self) -> None:
        """Release the input file(s)."""
        if self._reader is not None:
            self._reader.close()

    def messages(
        self, start_s: float | None, end_s: float | None
    ) -> Iterator[tuple[InputConnection, int, bytes]]:
        """Yield (connection, log time ns, raw CDR) within the window, in order."""
        if self.streamed:
            yield from self._streamed(start_s, end_s)
            return
        base = self.start_ns or 0
        start = None if start_s is None else base + round(start_s * 1e9)
        stop = None if end_s is None else base + round(end_s * 1e9)
        records = self._reader.messages(start=start, stop=stop)
        count, last_time = 0, None
        while True:
            try:
                connection, log_time, raw = next(records)
            except StopIteration:
                return
            except Exception as error:  # whatever the storage layer raises, the record is bad
                raise BadRecordError(_bad_record(self.path, count, last_time, error)) from None
            count, last_time = count + 1, log_time
            yield self.connections[connection.id], log_time, raw

    def _streamed(
        self, start_s: float | None, end_s: float | None
    ) -> Iterator[tuple[InputConnection, int, bytes]]:
        from mcap.records import Channel, Message, Schema
        from mcap.stream_reader import StreamReader
        from rosbags.rosbag2.metadata import parse_qos

        count, last_time = 0, None
        for file in self._mcap_files:
            schemas: dict[int, Any] = {}
            keys: dict[int, int] = {}
            with file.open("rb") as stream:
                records = StreamReader(cast("IO[bytes]", _ExactReader(stream)), validate_crcs=True).records
                while True:
                    try:
                        record = next(records)
                    except StopIteration:
                        break
                    except Exception as error:  # truncation or damage: the record is bad
                        raise BadRecordError(_bad_record(file, count, last_time, error)) from None
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel):
                        schema = schemas.get(record.schema_id)
                        key = len(self.connections) + 1
                        keys[record.id] = key
                        qos = record.metadata.get("offered_qos_profiles", "")
                        self.connections[key] = InputConnection(
                            key=key,
                            topic=record.topic,
                            msgtype=schema.name if schema else "",
                            msgdef=schema.data.decode() if schema else "",
                            msgdef_is_idl=schema is not None and schema.encoding != "ros2msg",
                            digest="",
                            serialization_format=record.message_encoding,
                            qos=tuple(parse_qos(qos)) if qos else (),
                            msgcount=0,
                        )
                    elif isinstance(record, Message) and record.channel_id in keys:
                        if self.start_ns is None:
                            self.start_ns = record.log_time
                        offset_s = (record.log_time - self.start_ns) / 1e9
                        count, last_time = count + 1, record.log_time
                        if (start_s is None or offset_s >= start_s) and (end_s is None or offset_s < end_s):
                            yield self.connections[keys[record.channel_id]], record.log_time, record.data


class _ExactReader:
    """A file whose ``read(n)`` fails on a short read: a truncated record is an error, never short data."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def read(self, size: int) -> bytes:
        """Read exactly ``size`` bytes."""
        data = self._file.read(size)
        if len(data) != size:
            raise EOFError(f"the file ends {size - len(data)} bytes into a record (truncated)")
        return data


def _input_connection(connection: Any) -> InputConnection:
    from rosbags.interfaces import MessageDefinitionFormat

    return InputConnection(
        key=connection.id,
        topic=connection.topic,
        msgtype=connection.msgtype,
        msgdef=connection.msgdef.data if connection.msgdef.format != MessageDefinitionFormat.NONE else "",
        msgdef_is_idl=connection.msgdef.format == MessageDefinitionFormat.IDL,
        digest=connection.digest or "",
        serialization_format=getattr(connection.ext, "serialization_format", "cdr"),
        qos=tuple(getattr(connection.ext, "offered_qos_profiles", ())),
        msgcount=connection.msgcount,
    )


def _bad_record(path: Path, good: int, last_time: int | None, error: Exception) -> str:
    after = "at the first record" if last_time is None else f"after log time {last_time} ns"
    reason = str(error) or type(error).__name__
    return f"input {path} is damaged: record #{good + 1} ({after}) cannot be read: {reason}"


def _topic_list(connections: dict[int, InputConnection]) -> str:
    topics: dict[str, tuple[str, int]] = {}
    for c in connections.values():
        topics[c.topic] = (c.msgtype, topics.get(c.topic, ("", 0))[1] + c.msgcount)
    if not topics:
        return "the bag has no topics"
    return "topics in the bag: " + ", ".join(f"{t} ({m}, {n} msgs)" for t, (m, n) in sorted(topics.items()))


# --- writing ---------------------------------------------------------------------------------------------


def _check_output(output: Path, source: Path, overwrite: bool) -> None:
    """Refuse to clobber: an existing output may be replaced only with --overwrite and only if it is a bag."""
    if output.resolve() == source.resolve() or source.resolve() in output.resolve().parents:
        raise BagToolError(f"output {output} is (inside) the input bag; choose another --output")
    if not output.exists() and not output.is_symlink():
        if not output.parent.is_dir():
            raise BagToolError(f"output directory {output.parent} does not exist")
        return
    if not overwrite:
        raise BagToolError(f"output {output} already exists; pass --overwrite to replace it")
    if output.is_dir() and not output.is_symlink():
        unexpected = [
            p.name
            for p in output.iterdir()
            if p.name != "metadata.yaml" and p.suffix not in _BAG_FILE_SUFFIXES
        ]
        if unexpected:
            raise BagToolError(
                f"--overwrite refused: {output} does not look like a rosbag2 directory "
                f"(it holds {unexpected[:3]})"
            )


def _remove_old_output(output: Path) -> None:
    """Delete what :func:`_check_output` allowed to be replaced (called once everything else is ready)."""
    if output.is_dir() and not output.is_symlink():
        shutil.rmtree(output)
    elif output.exists() or output.is_symlink():
        output.unlink()


class BagSink:
    """The output rosbag2: copies input connections through and adds the /gdino/* outputs."""

    def __init__(
        self, path: Path, storage: str, store: Any, output_topics: dict[str, tuple[str, str]]
    ) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self._writer.open()
        self._store = store
        self._copies: dict[int, Any] = {}
        self.skipped: dict[str, str] = {}
        self.outputs = {
            name: self._writer.add_connection(topic, msgtype, typestore=store)
            for name, (topic, msgtype) in output_topics.items()
        }
        self._output_topic_names = {topic for topic, _ in output_topics.values()}

    def copy_connection(self, connection: InputConnection) -> Any | None:
        """Return the output connection for an input one (made on first use); None if it cannot be copied."""
        if connection.key in self._copies:
            return self._copies[connection.key]
        out = None
        if connection.topic in self._output_topic_names:
            self.skipped[connection.topic] = "replaced by this run's output"
        elif connection.msgdef and (connection.digest or not connection.msgdef_is_idl):
            digest = connection.digest or _rihs01(connection.msgtype, connection.msgdef)
            out = self._add(connection, msgdef=connection.msgdef, rihs01=digest)
        elif connection.msgtype in self._store.types:
            out = self._add(connection, typestore=self._store)
        else:
            self.skipped[connection.topic] = f"no definition of {connection.msgtype} in the bag or in rosbags"
        self._copies[connection.key] = out
        return out

    def _add(self, connection: InputConnection, **definition: Any) -> Any:
        return self._writer.add_connection(
            connection.topic,
            connection.msgtype,
            serialization_format=connection.serialization_format,
            offered_qos_profiles=list(connection.qos),
            **definition,
        )

    def write(self, connection: Any, log_time: int, raw: bytes | memoryview) -> None:
        """Append one serialised message."""
        self._writer.write(connection, log_time, raw)

    def close(self) -> None:
        """Finalise the bag (index, summary, metadata.yaml); the bag is readable only after this."""
        self._writer.close()


def _rihs01(msgtype: str, msgdef: str) -> str:
    """RIHS01 hash of a type from its concatenated .msg definition (for bags that store no hash)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    scratch = get_typestore(Stores.EMPTY)
    scratch.register(get_types_from_msg(msgdef, msgtype))
    return scratch.hash_rihs01(msgtype)


# --- processing ------------------------------------------------------------------------------------------


@dataclass
class Stats:
    """What the run did, for the summary."""

    frames: int = 0
    detections: int = 0
    no_target_frames: int = 0
    dropped_instances: int = 0
    copied: int = 0
    wall_s: float = 0.0  # from the first message read to the output finalised (model loading excluded)
    interrupted: bool = False
    stage_ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add_stage(self, name: str, started: float) -> float:
        """Add the time since ``started`` (perf_counter) to ``name``; return now."""
        now = time.perf_counter()
        self.stage_ms[name] += (now - started) * 1e3
        return now


def _decode_image(raw: bytes, msgtype: str, store: Any) -> tuple[Any, np.ndarray, bool]:
    """Raw CDR of an Image or CompressedImage -> (message, uint8 [H, W, 3] pixels, True if BGR order)."""
    msg = store.deserialize_cdr(raw, msgtype)
    pixels, bgr = image_to_pixels(msg) if msgtype == IMAGE else compressed_to_pixels(msg)
    return msg, pixels, bgr


def _check_image_topic(source: BagSource, topic: str) -> list[int]:
    """Keys of the connections on ``topic``; a missing topic or a non-image type is a BagToolError."""
    keys = [k for k, c in source.connections.items() if c.topic == topic]
    if not keys:
        raise BagToolError(f"image topic {topic} is not in {source.path}; {_topic_list(source.connections)}")
    for key in keys:
        if source.connections[key].msgtype not in (IMAGE, COMPRESSED_IMAGE):
            raise BagToolError(
                f"topic {topic} carries {source.connections[key].msgtype}; "
                f"expected {IMAGE} or {COMPRESSED_IMAGE}"
            )
    return keys


def _estimated_frames(
    source: BagSource, topic: str, start_s: float | None, end_s: float | None
) -> int | None:
    """Frames in the window, assuming a steady frame rate (exact without a window); None if unknown."""
    total = sum(c.msgcount for c in source.connections.values() if c.topic == topic)
    if source.streamed or not total or source.start_ns is None:
        return None
    if start_s is None and end_s is None:
        return total
    duration = max((source.end_ns - source.start_ns) / 1e9, 1e-9)
    lo, hi = max(start_s or 0.0, 0.0), min(end_s if end_s is not None else duration, duration)
    return max(0, math.ceil(total * max(hi - lo, 0.0) / duration))


def _open_segmenter(args: argparse.Namespace, schedule: list[ScheduleEntry]) -> Any:
    """Open the model with the first prompt; every scheduled prompt is encoded once up front to fail early."""
    from gdino_ros.core.prompt import PromptError, encode_prompt
    from gdino_ros.core.tokenizer import TokenizerNotFoundError
    from gdino_ros.core.segmenter import Segmenter

    values = {
        field: getattr(args, flag.lstrip("-").replace("-", "_")) for field, flag in THRESHOLD_FLAGS.items()
    }
    try:
        params = PostprocessParams(**values)
    except ValueError as error:
        message = str(error)
        for field, flag in THRESHOLD_FLAGS.items():
            message = message.replace(field, flag)
        raise BagToolError(message) from None
    prompt, mode = _first_prompt(args, schedule)
    try:
        segmenter = Segmenter.from_model(
            args.model,
            tokenizer_path=args.tokenizer,
            device=args.device,
            prompt=prompt,
            mode=mode,
            params=params,
        )
    except TokenizerNotFoundError as error:
        raise BagToolError(str(error)) from None
    except PromptError as error:
        raise BagToolError(f"prompt {prompt!r}: {error}") from None
    except (ValueError, OSError, RuntimeError) as error:
        raise BagToolError(f"cannot load model {args.model}: {error}") from None
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


class _Run:
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
        self.stats = Stats()
        self.overlay_fn = None
        if args.overlay:
            from gdino_ros.core.overlay import draw_overlay

            self.overlay_fn = draw_overlay

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
            for connection, log_time, raw in self.source.messages(args.start, args.end):
                tick = stats.add_stage("read", tick)
                frame = None
                if connection.topic == args.image_topic:
                    frame = self._decode(connection, log_time, raw)  # before the copy: a bad frame stays out
                    tick = stats.add_stage("decode", tick)
                out = self.sink.copy_connection(connection)
                if out is not None:
                    self.sink.write(out, log_time, raw)
                    stats.copied += 1
                tick = stats.add_stage("write", tick)
                if frame is None:
                    continue
                if plan is None:  # an index-free MCAP: the bag start is known only now
                    plan = _prompt_plan(args, self.schedule, log_time)
                if (wanted := plan.at(log_time)) != applied:
                    self.segmenter.set_prompt(*wanted)
                    applied = wanted
                    tick = stats.add_stage("prompt", tick)
                self._segment(*frame, log_time)
                tick = time.perf_counter()
                bar.update(1)
        finally:
            if bar.total is not None and bar.n != bar.total:
                bar.total = bar.n
                bar.refresh()
            bar.close()

    def _decode(self, connection: InputConnection, log_time: int, raw: bytes) -> tuple[Any, np.ndarray, bool]:
        """Decode one frame of the image topic; an undecodable one is the bad record that stops the run."""
        if connection.msgtype not in (IMAGE, COMPRESSED_IMAGE):
            raise BagToolError(
                f"topic {connection.topic} carries {connection.msgtype}; "
                f"expected {IMAGE} or {COMPRESSED_IMAGE}"
            )
        try:
            return _decode_image(raw, connection.msgtype, self.store)
        except Exception as error:  # bad CDR or pixels, whichever layer says so
            raise BadRecordError(
                f"input {self.source.path} is damaged: frame {self.stats.frames + 1} on {connection.topic} "
                f"at log time {log_time} ns cannot be decoded: {error}"
            ) from None

    def _segment(self, msg: Any, pixels: np.ndarray, bgr: bool, log_time: int) -> None:
        """Run the core on one frame and write its outputs at the frame's log time."""
        stats = self.stats
        result: Result = self.segmenter(pixels, bgr=bgr)
        for stage, ms in result.timings_ms.items():
            stats.stage_ms[stage] += ms
        tick = time.perf_counter()
        overlay = None
        if self.overlay_fn is not None:
            overlay = self.overlay_fn(pixels[..., ::-1] if bgr else pixels, result)
            tick = stats.add_stage("overlay", tick)
        messages = result_to_messages(
            result, msg.header, self.types, mask_encoding=self.args.mask_encoding, overlay_rgb=overlay
        )
        serialised = [
            (self.sink.outputs[name], self.store.serialize_cdr(m, OUTPUT_TYPES[name]))
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
        """Frames, detections, no-target frames and milliseconds per frame for each stage."""
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
        if stats.dropped_instances:
            lines.append(f"  mono8 mask: {stats.dropped_instances} instances beyond id 255 were left out")
        lines += [f"  not copied: {topic} ({why})" for topic, why in sorted(self.sink.skipped.items())]
        if stats.interrupted:
            lines.append("  interrupted")
        lines.append(f"  wrote {self.args.output} ({self.args.storage})")
        return "\n".join(lines)


def run(args: argparse.Namespace) -> Stats:
    """Process the bag and print the summary; return what was done (benchmarks read it).

    User errors raise BagToolError, after finalising whatever output was written.
    """
    if args.prompt is None and args.prompt_schedule is None:
        raise BagToolError("give --prompt, --prompt-schedule, or both")
    if args.start is not None and args.end is not None and args.end <= args.start:
        raise BagToolError(f"--end {args.end} must be after --start {args.start}")
    if not args.input.exists():
        raise BagToolError(f"input bag {args.input} does not exist")
    if not args.model.is_file():
        raise BagToolError(f"model {args.model} does not exist")
    schedule = load_schedule(args.prompt_schedule, args.mode) if args.prompt_schedule else []
    _check_output(args.output, args.input, args.overwrite)

    store = project_typestore()
    source = BagSource(args.input)
    failure: BagToolError | None = None
    try:
        if not source.streamed:
            _check_image_topic(source, args.image_topic)
        # Checked before anything is written; an index-free MCAP learns its start with the first message.
        plan = None if source.start_ns is None else _prompt_plan(args, schedule, source.start_ns)
        segmenter = _open_segmenter(args, schedule)
        try:
            topics = {
                name: (f"/{OUTPUT_NAMESPACE}/{name}", msgtype)
                for name, msgtype in OUTPUT_TYPES.items()
                if args.overlay or name != "overlay"
            }
            _remove_old_output(args.output)
            sink = BagSink(args.output, args.storage, store, topics)
            job = _Run(args, source, sink, store, segmenter, schedule, plan)
            started = time.perf_counter()
            try:
                job.process()
            except KeyboardInterrupt:
                job.stats.interrupted = True
            except BagToolError as error:
                failure = error
            finally:
                sink.close()
                job.stats.wall_s = time.perf_counter() - started
        finally:
            segmenter.close()
    finally:
        source.close()
    if failure is None and source.streamed and not job.stats.frames:
        _check_image_topic(source, args.image_topic)
    print(job.summary(), flush=True)
    if failure is not None:
        raise BagToolError(f"{failure}; the {job.stats.frames} frames before it are in {args.output}")
    return job.stats


def main(argv: Sequence[str] | None = None) -> int:
    """Run gdino-bag; user errors print one line to stderr and return 1."""
    args = build_parser().parse_args(argv)
    try:
        return 130 if run(args).interrupted else 0
    except BagToolError as error:
        print(f"gdino-bag: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
