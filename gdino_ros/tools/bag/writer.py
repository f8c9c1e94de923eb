"""gdino-bag's output: a new rosbag2 holding every input topic unchanged plus the /gdino/* outputs.

Input connections are reproduced with their type, definition, RIHS01 hash, serialisation format and
QoS. The metadata is what ``ros2 bag record`` writes, in version 8, the newest that Humble's rosbag2 can
read (version 9 stores ``offered_qos_profiles`` as a YAML sequence where Humble expects a string; Jazzy
reads both): ``ros_distro``, the node's own QoS for the /gdino/* topics, and in MCAP files the channel
``topic_type_hash``. ``custom_data`` marks the bag as gdino-bag's output: only such a bag is replaced by
``--overwrite``.

The bag is written into a hidden folder beside the output and renamed into place once finalised, so the
output path holds a complete bag (the earlier one, or the new one) or nothing, whatever happens.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from gdino_ros.errors import OutputError
from gdino_ros.tools.bag.reader import InputConnection
from gdino_ros.tools.cli import deferred_signals
from gdino_ros.tools.output_files import reason, refuse_input_overlap, temporary_sibling

STORAGES = ("mcap", "sqlite3")
METADATA_VERSION = 8
MARKER_KEY = "gdino_bag"  # custom_data key naming the tool that wrote the bag (value: format version)
MARKER_VALUE = "1"
END_KEY = "gdino_bag_end"  # custom_data: "complete" when every frame of the window was processed
COMPLETE = "complete"
_INFINITE = (9223372036, 854775807)  # RMW_DURATION_INFINITE as recorders store it (sec, nsec)


def output_qos() -> Any:
    """Return the QoS the live node offers on its /gdino/* topics (reliable, keep last 5, volatile)."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    infinite = QosTime(*_INFINITE)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=5,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.VOLATILE,
        deadline=infinite,
        lifespan=infinite,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=infinite,
        avoid_ros_namespace_conventions=False,
    )


def check_output(output: Path, source: Path, overwrite: bool) -> None:
    """Refuse to clobber: only an earlier gdino-bag output may be replaced, and only with --overwrite."""
    refuse_input_overlap(output, [source], "--output")
    if not output.exists() and not output.is_symlink():
        if not output.parent.is_dir():
            raise OutputError(
                f"output folder {output.parent} does not exist; create it or choose another --output"
            )
        if not os.access(output.parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write in {output.parent}: permission denied; choose another --output")
        return
    if not overwrite:
        raise OutputError(f"output {output} already exists; choose another --output, or pass --overwrite to "
                          "replace an earlier gdino-bag output")
    problem = _not_own_output(output)
    if problem:
        raise OutputError(f"--overwrite refused: {output} {problem}; only a bag written by gdino-bag is "
                          "replaced. Choose another --output")


def _not_own_output(output: Path) -> str:
    """Why ``output`` is not a bag gdino-bag wrote ("" if it is one)."""
    import yaml

    if output.is_symlink() or not output.is_dir():
        return "is not a folder"
    try:
        info = yaml.safe_load((output / "metadata.yaml").read_text(encoding="utf-8"))
        info = info["rosbag2_bagfile_information"]
        marked = (info.get("custom_data") or {}).get(MARKER_KEY) is not None
        files = {str(f) for f in info.get("relative_file_paths") or []}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return "has no readable rosbag2 metadata.yaml"
    if not marked:
        return "is not marked as gdino-bag's output in its metadata.yaml"
    others = sorted(p.name for p in output.iterdir() if p.name != "metadata.yaml" and p.name not in files)
    return f"holds files the bag does not list ({', '.join(others[:3])})" if others else ""


def _ros_distro() -> str:
    """Return the distribution ``ros2 bag record`` would store (ROS_DISTRO; empty when unset)."""
    return os.environ.get("ROS_DISTRO", "")


def _writer_class(storage: str) -> Any:
    """Return rosbags' Writer whose MCAP channels also carry ``topic_type_hash`` (as rosbag2 writes)."""
    from io import BytesIO

    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.storage_mcap import Channel, McapWriter, write_channel, write_string

    class HashedMcapWriter(McapWriter):
        def add_connection(self, connection: Any, offered_qos_profiles: str) -> None:
            metadata = BytesIO()
            entries = (("offered_qos_profiles", offered_qos_profiles), ("topic_type_hash", connection.digest))
            for key, value in entries:
                write_string(metadata, key)
                write_string(metadata, value)
            channel = Channel(
                connection.id, connection.msgtype, connection.topic, connection.ext.serialization_format,
                metadata.getvalue(),
            )
            self.channels.append(channel)
            self.channel_stats[connection.id] = 0
            write_channel(self.chunk.bio, channel, self.schemas)

    class BagWriter(Writer):
        STORAGE_PLUGINS = {**Writer.STORAGE_PLUGINS, StoragePlugin.MCAP: HashedMcapWriter}

    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    return BagWriter, plugin


class BagSink:
    """The output rosbag2: copies input connections through and adds the /gdino/* outputs.

    Written in a hidden sibling folder; :meth:`commit` finalises it and renames it to ``path``
    (replacing an earlier output only then), :meth:`discard` removes it.
    """

    def __init__(
        self, path: Path, storage: str, store: Any, output_topics: dict[str, tuple[str, str]]
    ) -> None:
        writer_class, plugin = _writer_class(storage)
        self.path = path
        self.scratch = temporary_sibling(path)
        shutil.rmtree(self.scratch, ignore_errors=True)  # a leftover of this pid's earlier crash
        self._writer = writer_class(self.scratch, version=METADATA_VERSION, storage_plugin=plugin)
        self._store = store
        self._copies: dict[int, Any] = {}
        self.skipped: dict[str, str] = {}
        try:
            self._writer.open()
            self._writer.set_custom_data(MARKER_KEY, MARKER_VALUE)
            qos = [output_qos()]
            self.outputs = {
                name: self._writer.add_connection(topic, msgtype, typestore=store, offered_qos_profiles=qos)
                for name, (topic, msgtype) in output_topics.items()
            }
        except (OSError, sqlite3.Error) as error:
            self.discard()
            raise self.failure(error) from None
        self._output_topic_names = {topic for topic, _ in output_topics.values()}

    def failure(self, error: OSError | sqlite3.Error) -> OutputError:
        """Return the one-line error for a failed write: the output is left as it was before the run."""
        why = reason(error) if isinstance(error, OSError) else f"{error}; free space or choose another path"
        before = "the earlier output is unchanged" if self.path.exists() else "no output was written"
        return OutputError(f"cannot write the output bag {self.path}: {why}; {before}")

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

    def mark_end(self, complete: bool) -> None:
        """Record whether the run processed its whole window (a rerun on Ray trusts only that)."""
        self._writer.set_custom_data(END_KEY, COMPLETE if complete else "stopped early")

    def commit(self) -> None:
        """Finalise the bag (index, summary, metadata.yaml) and move it to the output path.

        Signals are held meanwhile, so an interrupt cannot leave a half-finalised bag; a failure removes
        the new bag and leaves the output path as it was.
        """
        with deferred_signals():
            try:
                self._writer.close()
                _set_ros_distro(self.scratch / "metadata.yaml")
                old = temporary_sibling(self.path, "old") if self.path.exists() else None
                if old is not None:
                    self.path.rename(old)
                self.scratch.rename(self.path)
            except (OSError, sqlite3.Error) as error:
                self.discard()
                raise self.failure(error) from None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        """Drop the unfinished bag; the output path stays as it was."""
        with deferred_signals():
            try:
                self._writer.abort()
            except Exception:  # noqa: BLE001 - the storage may already be broken (disk full); it is removed anyway
                pass
            shutil.rmtree(self.scratch, ignore_errors=True)


def _set_ros_distro(metadata: Path) -> None:
    """Store ROS_DISTRO as ``ros_distro`` (rosbags writes its own name), keeping the rest as written."""
    text = metadata.read_text(encoding="utf-8")
    line = "  ros_distro: rosbags\n"
    if line in text:
        scratch = metadata.with_name(metadata.name + ".tmp")
        scratch.write_text(text.replace(line, f"  ros_distro: '{_ros_distro()}'\n"), encoding="utf-8")
        scratch.replace(metadata)


def _rihs01(msgtype: str, msgdef: str) -> str:
    """RIHS01 hash of a type from its concatenated .msg definition (for bags that store no hash)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    scratch = get_typestore(Stores.EMPTY)
    scratch.register(get_types_from_msg(msgdef, msgtype))
    return scratch.hash_rihs01(msgtype)
