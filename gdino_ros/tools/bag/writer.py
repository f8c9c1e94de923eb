"""gdino-bag's output: a new rosbag2 holding every input topic unchanged plus the /gdino/* outputs.

Input connections are reproduced with their type, definition, RIHS01 hash, serialisation format and
QoS; an existing output is replaced only with --overwrite and only when it looks like a bag.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from gdino_ros.tools.bag.errors import BagToolError
from gdino_ros.tools.bag.reader import InputConnection

STORAGES = ("mcap", "sqlite3")
_BAG_FILE_SUFFIXES = (".mcap", ".db3")


def check_output(output: Path, source: Path, overwrite: bool) -> None:
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


def remove_old_output(output: Path) -> None:
    """Delete what :func:`check_output` allowed to be replaced (called once everything else is ready)."""
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
