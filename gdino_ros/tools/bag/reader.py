"""gdino-bag's input: the messages of a rosbag2 directory or a bare .mcap/.db3 file, in log-time order.

Read with rosbags through the bag's index; an MCAP file that lost its index (recording killed) is read
record by record with the mcap library up to the first damaged record. Whatever cannot be read or
decoded becomes a :class:`~gdino_ros.tools.bag.errors.BadRecordError` naming the record.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from gdino_ros.conversions.messages import COMPRESSED_IMAGE_TYPE, IMAGE_TYPE
from gdino_ros.tools.bag.errors import BadRecordError, BagToolError


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
        self.start_ns: int | None = None  # an index-free MCAP learns it with its first message
        self.end_ns: int | None = None
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

    def check_image_topic(self, topic: str) -> None:
        """Raise BagToolError if ``topic`` is missing (naming the topics there are) or not an image type."""
        types = {c.msgtype for c in self.connections.values() if c.topic == topic}
        if not types:
            raise BagToolError(f"image topic {topic} is not in {self.path}; {_topic_list(self.connections)}")
        wrong = sorted(types - {IMAGE_TYPE, COMPRESSED_IMAGE_TYPE})
        if wrong:
            raise BagToolError(
                f"topic {topic} carries {wrong[0]}; expected {IMAGE_TYPE} or {COMPRESSED_IMAGE_TYPE}"
            )

    def _streamed(
        self, start_s: float | None, end_s: float | None
    ) -> Iterator[tuple[InputConnection, int, bytes]]:
        """Read without the index: the bag start is the first message read, the window is applied here."""
        for connection, log_time, raw in _McapStream(self._mcap_files, self.connections).messages():
            if self.start_ns is None:
                self.start_ns = log_time
            offset_s = (log_time - self.start_ns) / 1e9
            if (start_s is None or offset_s >= start_s) and (end_s is None or offset_s < end_s):
                yield connection, log_time, raw


class _McapStream:
    """The messages of MCAP files read record by record in file order, without their index.

    Channels become :class:`InputConnection` entries of ``connections`` as they appear; the first
    record that cannot be read raises :class:`BadRecordError`, naming the last good message.
    """

    def __init__(self, files: list[Path], connections: dict[int, InputConnection]) -> None:
        self._files = files
        self._connections = connections
        self._count = 0
        self._last_time: int | None = None

    def messages(self) -> Iterator[tuple[InputConnection, int, bytes]]:
        """Yield (connection, log time ns, raw CDR) of every message on a known channel."""
        from mcap.records import Channel, Message, Schema

        for file in self._files:
            schemas: dict[int, Any] = {}
            keys: dict[int, int] = {}  # MCAP channel id -> connection key
            for record in self._records(file):
                if isinstance(record, Schema):
                    schemas[record.id] = record
                elif isinstance(record, Channel):
                    keys[record.id] = self._add_channel(record, schemas.get(record.schema_id))
                elif isinstance(record, Message) and record.channel_id in keys:
                    self._count, self._last_time = self._count + 1, record.log_time
                    yield self._connections[keys[record.channel_id]], record.log_time, record.data

    def _records(self, file: Path) -> Iterator[Any]:
        from mcap.stream_reader import StreamReader

        with file.open("rb") as stream:
            records = StreamReader(cast("IO[bytes]", _ExactReader(stream)), validate_crcs=True).records
            while True:
                try:
                    record = next(records)
                except StopIteration:
                    return
                except Exception as error:  # truncation or damage: the record is bad
                    raise BadRecordError(_bad_record(file, self._count, self._last_time, error)) from None
                yield record

    def _add_channel(self, channel: Any, schema: Any) -> int:
        from rosbags.rosbag2.metadata import parse_qos

        key = len(self._connections) + 1
        qos = channel.metadata.get("offered_qos_profiles", "")
        self._connections[key] = InputConnection(
            key=key,
            topic=channel.topic,
            msgtype=schema.name if schema else "",
            msgdef=schema.data.decode() if schema else "",
            msgdef_is_idl=schema is not None and schema.encoding != "ros2msg",
            digest="",
            serialization_format=channel.message_encoding,
            qos=tuple(parse_qos(qos)) if qos else (),
            msgcount=0,
        )
        return key


class _ExactReader:
    """A file whose ``read(n)`` fails on a short read: a truncated record is an error, never short data."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def read(self, size: int) -> bytes:
        """Read exactly ``size`` bytes."""
        data: bytes = self._file.read(size)
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
