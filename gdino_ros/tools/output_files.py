"""Files the tools write are the user's data: complete or absent, never over an input or a stranger's file.

:func:`atomic_write` writes beside the target and renames into place, so a reader (or a crash) sees the
old file or the new one, never half of one. :func:`write_failure` turns the ``OSError`` of a failed write
into one :class:`~gdino_ros.errors.OutputError` line that names the file, says why in words and what to
do. :func:`refuse_input_overlap` keeps every output away from the tool's inputs.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from gdino_ros.errors import OutputError

_REASONS = {
    errno.ENOSPC: "no space left on the device; free some space",
    errno.EDQUOT: "the disk quota is exhausted; free some space",
    errno.EFBIG: "the file size limit was reached (ulimit -f); raise the limit",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOTDIR: "a path component is a file, not a folder; choose another output path",
    errno.EISDIR: "it is a folder; choose a file path",
}


def reason(error: OSError) -> str:
    """Say what went wrong and what to do, in words (the errno's usual fix), for a failed write."""
    return _REASONS.get(error.errno or 0, error.strerror or str(error))


def write_failure(path: Path, error: OSError, kept: str = "") -> OutputError:
    """Return the one-line error for a failed write of ``path``; ``kept`` says what remains."""
    tail = f"; {kept}" if kept else ""
    return OutputError(f"cannot write {path}: {reason(error)}{tail}")


def temporary_sibling(path: Path, tag: str = "partial") -> Path:
    """Return a hidden name beside ``path`` for writing before the final rename (same file system)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename; raise OutputError on failure.

    On any failure (or an interrupt) the temporary file is removed and ``path`` is left as it was.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    scratch = temporary_sibling(path)
    try:
        with open(scratch, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(scratch, path)
    except OSError as error:
        raise write_failure(path, error, "it was left as it was") from None
    finally:
        scratch.unlink(missing_ok=True)


def refuse_input_overlap(output: Path, inputs: Iterable[Path], what: str) -> None:
    """Refuse an ``output`` that is an input, lies inside one, or holds one (``what`` names the flag)."""
    out = output.resolve()
    for item in inputs:
        source = item.resolve()
        if out == source or source in out.parents:
            raise OutputError(f"{what} {output} is (inside) the input {item}; choose another {what}")
        if out in source.parents:
            raise OutputError(
                f"{what} {output} holds the input {item}; choose an output that does not contain the input"
            )
