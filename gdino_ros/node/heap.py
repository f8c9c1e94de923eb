"""Keep freed multi-megabyte buffers in the process heap, so that each frame does not fault in fresh pages.

Every frame the executor copies a camera frame (6.2 MB at 1080p rgb8) out of DDS twice (rcl's serialised
message, then Python ``bytes``) and the worker allocates a label image and its CDR bytes (4.1 MB each).
glibc's defaults serve such blocks with new memory: its mmap threshold only grows to the largest block
freed so far, and once free memory at the top of the heap exceeds twice that it is handed back to the
kernel. So the next frame's copies land on pages the kernel must map and zero again: 1 000-2 300 page
faults per 1080p frame in segment_node, 2-5 ms of the process's CPU time per frame on the 2-core
development VM (BENCHMARKS.md, "Issue #16 target 1, fourth session"), nearly all on the executor thread.

:func:`keep_large_buffers` sets the two thresholds once, for the whole process: blocks up to
:data:`MMAP_THRESHOLD` come from the heap, and the heap keeps up to :data:`TRIM_THRESHOLD` of free memory
at its top for the next frame. The process's resident memory then stays at its peak instead of shrinking
between frames. Other C libraries (musl) and other systems are left as they are.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

#: Largest block served from the heap: 32 MiB, the highest value glibc accepts on a 64-bit system (a 4K
#: rgb8 frame is 24.9 MB).
MMAP_THRESHOLD = 32 << 20
#: Free memory the heap keeps at its top: room for a frame's worth of freed 4K-frame-sized buffers.
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3


def keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
