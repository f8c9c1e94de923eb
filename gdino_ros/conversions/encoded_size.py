"""Width and height of a JPEG or PNG from its header, so oversized images are refused before decoding.

A 255 kB PNG can decode to 16384 x 16384 pixels (768 MB); the header says so in its first bytes.
"""
from __future__ import annotations

import struct

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_START = b"\xff\xd8"
# Start-of-frame markers (baseline, progressive, lossless, ...): all 0xC0-0xCF except these.
_NOT_FRAME_MARKERS = frozenset({0xC4, 0xC8, 0xCC})
# Markers without a length field.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})


def encoded_image_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """Return (width, height) of PNG or JPEG bytes; ``None`` for another format or a damaged header."""
    head = bytes(data[:8])
    if head == _PNG_SIGNATURE and len(data) >= 24 and bytes(data[12:16]) == b"IHDR":
        width, height = struct.unpack(">II", bytes(data[16:24]))
        return int(width), int(height)
    if head[:2] == _JPEG_START:
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """Walk the marker segments up to the first start-of-frame; each step skips one whole segment."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        (length,) = struct.unpack(">H", bytes(data[position + 2 : position + 4]))
        if 0xC0 <= marker <= 0xCF and marker not in _NOT_FRAME_MARKERS:
            if position + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", bytes(data[position + 5 : position + 9]))
            return int(width), int(height)
        if length < 2:
            return None
        position += 2 + length
    return None
