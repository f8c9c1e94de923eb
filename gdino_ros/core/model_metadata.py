"""Read an ONNX file's ``metadata_props`` without loading its graph or weights.

A full-size export is hundreds of MB; tools that only need the metadata (for example the vocabulary that
``gdino-export`` stores with the model) walk the protobuf's top-level fields and seek past the graph.
Needs neither ``onnx`` nor ONNX Runtime.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from gdino_ros.errors import ModelError

# ModelProto's field number of ``repeated StringStringEntryProto metadata_props``, whose entries hold
# ``key`` as field 1 and ``value`` as field 2 (onnx.proto).
_METADATA_FIELD = 14
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class ModelMetadataError(ModelError, ValueError):
    """The file is not a readable ONNX model."""


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """Return the model's metadata_props as a dict; raise :class:`ModelMetadataError` on a broken file."""
    path = Path(path)
    metadata: dict[str, str] = {}
    size = path.stat().st_size
    with path.open("rb") as handle:
        while handle.tell() < size:
            field, wire = _read_tag(handle, path)
            if wire == _LENGTH:
                length = _read_varint(handle, path)
                if handle.tell() + length > size:
                    raise ModelMetadataError(f"{path} is truncated (a field runs past the end of the file)")
                if field == _METADATA_FIELD:
                    key, value = _entry(handle.read(length), path)
                    metadata[key] = value
                else:
                    handle.seek(length, 1)
            elif wire == _VARINT:
                _read_varint(handle, path)
            elif wire in (_FIXED64, _FIXED32):
                handle.seek(8 if wire == _FIXED64 else 4, 1)
            else:
                raise ModelMetadataError(f"{path} is not an ONNX model (protobuf wire type {wire})")
    return metadata


def _read_tag(handle: BinaryIO, path: Path) -> tuple[int, int]:
    tag = _read_varint(handle, path)
    return tag >> 3, tag & 7


def _read_varint(handle: BinaryIO, path: Path) -> int:
    value, shift = 0, 0
    while True:
        byte = handle.read(1)
        if not byte:
            raise ModelMetadataError(f"{path} is truncated or not an ONNX model")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ModelMetadataError(f"{path} is not an ONNX model (malformed varint)")


def _entry(data: bytes, path: Path) -> tuple[str, str]:
    """Decode one StringStringEntryProto (``key`` = 1, ``value`` = 2)."""
    fields = {1: "", 2: ""}
    entry = io.BytesIO(data)
    while entry.tell() < len(data):
        field, wire = _read_tag(entry, path)
        length = _read_varint(entry, path)
        if wire != _LENGTH or entry.tell() + length > len(data):
            raise ModelMetadataError(f"{path} has a malformed metadata entry")
        fields[field] = entry.read(length).decode("utf-8", errors="replace")
    return fields[1], fields[2]
