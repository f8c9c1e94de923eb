"""CUDA runtime helpers for the TensorRT backend: GPU identity, page-locked and device buffers, streams.

Everything here goes through ``cuda.bindings.runtime`` (cuda-python 12.6.2.post1 or newer), imported inside
the functions so that this module imports without it; :func:`require_cuda_python` turns a missing
package into one clear :class:`BackendError`. Each allocation is a small object with a ``free`` method, so
a caller can register it on an :class:`contextlib.ExitStack` and release everything it got so far when a
later step fails.
"""
from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gdino_ros.backends.base import BackendError
from gdino_ros.backends.install_hints import CUDA_PYTHON_INSTALL_HINT

if TYPE_CHECKING:
    from cuda.bindings import runtime as cudart

CUDA_PYTHON_MISSING = (
    "cuda-python is not installed (the TensorRT backend needs it for buffers and streams): "
    f"{CUDA_PYTHON_INSTALL_HINT}"
)
L4T_RELEASE_FILE = Path("/etc/nv_tegra_release")
_L4T_PATTERN = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)")


def require_cuda_python() -> None:
    """Raise :class:`BackendError` with the install line unless ``cuda.bindings.runtime`` imports."""
    try:
        from cuda.bindings import runtime  # noqa: F401 - only checking that it imports
    except ImportError:
        raise BackendError(CUDA_PYTHON_MISSING) from None


def cuda_check(error: cudart.cudaError_t, call: str) -> None:
    """Raise :class:`BackendError` naming the CUDA call and the error's name unless ``error`` is success."""
    from cuda.bindings import runtime as cudart

    if error != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(error)
        raise BackendError(f"CUDA {call} failed with {name.decode()}")


def read_l4t_release(path: Path = L4T_RELEASE_FILE) -> str | None:
    """Jetson's L4T release from ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.0`` -> ``36.4.0``).

    ``None`` where the file is absent or unreadable (every desktop machine).
    """
    try:
        match = _L4T_PATTERN.search(path.read_text(errors="replace"))
    except OSError:
        return None
    return None if match is None else f"{match.group(1)}.{match.group(2)}"


@dataclass(frozen=True)
class GpuInfo:
    """What identifies a GPU for an engine: TensorRT tunes kernels to the SM count and memory, not the name.

    Jetson Orin Nano, NX and AGX all report the name "Orin"; SM count, memory and L4T release tell them
    (and their JetPack) apart.
    """

    index: int
    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    total_memory: int
    integrated: bool
    l4t_release: str | None

    def identity(self) -> str:
        """Return a stable one-line text for engine cache keys: ``"Orin sm_87 8SM 7620MiB L4T 36.4.0"``."""
        major, minor = self.compute_capability
        text = f"{self.name} sm_{major}{minor} {self.sm_count}SM {self.total_memory >> 20}MiB"
        if self.integrated and self.l4t_release is not None:
            text += f" L4T {self.l4t_release}"
        return text


def select_gpu(index: int) -> GpuInfo:
    """Make GPU ``index`` current for this thread and describe it."""
    from cuda.bindings import runtime as cudart

    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess:
        _, error_name = cudart.cudaGetErrorName(error)
        raise BackendError(
            f"CUDA cudaGetDeviceCount failed with {error_name.decode()}: TensorRT needs an NVIDIA GPU with a "
            "working driver (check nvidia-smi, or tegrastats on Jetson)"
        )
    if count == 0:
        raise BackendError("TensorRT needs an NVIDIA GPU, and CUDA reports none (check nvidia-smi)")
    if index >= count:
        raise BackendError(f"GPU {index} does not exist; this machine has {count} GPU(s), from cuda:0")
    use_gpu(index)
    error, properties = cudart.cudaGetDeviceProperties(index)
    cuda_check(error, "cudaGetDeviceProperties")
    raw_name = properties.name
    name = (raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)).rstrip("\x00")
    integrated = bool(properties.integrated)
    return GpuInfo(
        index=index,
        name=name,
        compute_capability=(int(properties.major), int(properties.minor)),
        sm_count=int(properties.multiProcessorCount),
        total_memory=int(properties.totalGlobalMem),
        integrated=integrated,
        l4t_release=read_l4t_release(L4T_RELEASE_FILE) if integrated else None,
    )


def use_gpu(index: int) -> None:
    """Make GPU ``index`` current: CUDA's current device is per thread, and callers' threads differ."""
    from cuda.bindings import runtime as cudart

    (error,) = cudart.cudaSetDevice(index)
    cuda_check(error, "cudaSetDevice")


@dataclass
class DeviceBuffer:
    """``nbytes`` of device memory at ``ptr``."""

    ptr: int
    nbytes: int

    @classmethod
    def allocate(cls, nbytes: int, what: str) -> DeviceBuffer:
        """``cudaMalloc`` ``nbytes``; ``what`` names the buffer in the error."""
        from cuda.bindings import runtime as cudart

        error, ptr = cudart.cudaMalloc(nbytes)
        cuda_check(error, f"cudaMalloc({nbytes}) for {what}")
        return cls(int(ptr), nbytes)

    def free(self) -> None:
        """Return the memory (the caller has synchronised every stream that used it)."""
        from cuda.bindings import runtime as cudart

        cudart.cudaFree(self.ptr)


@dataclass
class PinnedBuffer:
    """Page-locked host memory seen as a numpy array (async copies need page-locked memory to be async)."""

    array: np.ndarray
    ptr: int
    nbytes: int

    @classmethod
    def allocate(cls, shape: tuple[int, ...], dtype: np.dtype, what: str) -> PinnedBuffer:
        """``cudaMallocHost`` an array of ``shape`` and ``dtype``; ``what`` names the buffer in the error."""
        from cuda.bindings import runtime as cudart

        nbytes = int(np.prod(shape)) * dtype.itemsize
        error, ptr = cudart.cudaMallocHost(nbytes)
        cuda_check(error, f"cudaMallocHost({nbytes}) for {what}")
        memory = (ctypes.c_uint8 * nbytes).from_address(int(ptr))
        array = np.frombuffer(memoryview(memory), dtype=dtype).reshape(shape)
        return cls(array, int(ptr), nbytes)

    def free(self) -> None:
        """Return the memory; :attr:`array` must not be read afterwards."""
        from cuda.bindings import runtime as cudart

        cudart.cudaFreeHost(self.ptr)


class Stream:
    """A non-blocking CUDA stream with the copies the backend queues on it."""

    def __init__(self) -> None:
        from cuda.bindings import runtime as cudart

        error, handle = cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)
        cuda_check(error, "cudaStreamCreateWithFlags")
        self.handle: cudart.cudaStream_t = handle

    def upload(self, device_ptr: int, host_ptr: int, nbytes: int, what: str) -> None:
        """Queue a host-to-device copy."""
        from cuda.bindings import runtime as cudart

        (error,) = cudart.cudaMemcpyAsync(
            device_ptr, host_ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.handle
        )
        cuda_check(error, f"cudaMemcpyAsync (upload of {what})")

    def download(self, host_ptr: int, device_ptr: int, nbytes: int, what: str) -> None:
        """Queue a device-to-host copy."""
        from cuda.bindings import runtime as cudart

        (error,) = cudart.cudaMemcpyAsync(
            host_ptr, device_ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.handle
        )
        cuda_check(error, f"cudaMemcpyAsync (download of {what})")

    def synchronize(self, what: str) -> None:
        """Wait until everything queued so far has run; ``what`` says what was waited for in the error."""
        from cuda.bindings import runtime as cudart

        (error,) = cudart.cudaStreamSynchronize(self.handle)
        cuda_check(error, f"cudaStreamSynchronize ({what})")

    def destroy(self) -> None:
        """Destroy the stream (after a synchronize: queued work would still reference freed buffers)."""
        from cuda.bindings import runtime as cudart

        cudart.cudaStreamDestroy(self.handle)


class Event:
    """A CUDA event without timing: marks a point in a stream that the host can wait for."""

    def __init__(self) -> None:
        from cuda.bindings import runtime as cudart

        error, handle = cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming)
        cuda_check(error, "cudaEventCreateWithFlags")
        self.handle: cudart.cudaEvent_t = handle

    def record(self, stream: Stream) -> None:
        """Mark the current end of ``stream``'s queue."""
        from cuda.bindings import runtime as cudart

        (error,) = cudart.cudaEventRecord(self.handle, stream.handle)
        cuda_check(error, "cudaEventRecord")

    def synchronize(self, what: str) -> None:
        """Wait until the work queued before the last :meth:`record` has run."""
        from cuda.bindings import runtime as cudart

        (error,) = cudart.cudaEventSynchronize(self.handle)
        cuda_check(error, f"cudaEventSynchronize ({what})")

    def destroy(self) -> None:
        """Destroy the event."""
        from cuda.bindings import runtime as cudart

        cudart.cudaEventDestroy(self.handle)
