"""A behavioural stand-in for ``cuda.bindings.runtime``: a GPU whose work runs late, to expose missing waits.

Device memory is numpy bytes at made-up addresses; page-locked host memory is real host memory (numpy
bytes whose address ``ctypes.from_address`` can map), so the backend's own pointer code runs unchanged.
Stream work (copies, engine executions, event records) is queued. By default it runs only when the host
waits for it (``cudaStreamSynchronize``, ``cudaEventSynchronize``), so a forgotten wait reads stale data;
with :meth:`FakeGpu.start_worker` a thread runs it as it comes, taking a set time per engine execution,
so that overlap of host and GPU work can be timed (one thread per stream, like a GPU's engines).

Frees are checked: freeing memory that queued work still uses, or touching freed memory, is recorded in
:attr:`FakeGpu.violations` (and a freed host buffer is filled with 0xFF bytes, NaN as float32). Every
allocation, stream and event is counted live until freed. :meth:`FakeGpu.fail` makes the n-th call of a
function return an error.
"""
from __future__ import annotations

import bisect
import collections
import enum
import itertools
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801 - the real names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalAddress = 700
    cudaErrorLaunchFailure = 719


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class Handle:
    """A stream or event handle; ``int()`` gives the number TensorRT's ``execute_async_v3`` takes."""

    def __init__(self, number: int) -> None:
        self.number = number

    def __int__(self) -> int:
        return self.number


class Fault(Exception):
    """Queued work touched memory it must not: the synchronize that ran it reports an error."""


@dataclass
class Op:
    """One piece of queued stream work."""

    stream: int
    run: Callable[[], None]
    kind: str
    addresses: tuple[int, ...] = ()
    done: threading.Event = field(default_factory=threading.Event)
    error: cudaError_t = cudaError_t.cudaSuccess


@dataclass
class _Stream:
    pending: collections.deque[Op] = field(default_factory=collections.deque)
    running: threading.Lock = field(default_factory=threading.Lock)  # one op of a stream at a time
    thread: threading.Thread | None = None  # runs the queue as it comes (FakeGpu.start_worker)
    stop: bool = False


@dataclass
class Properties:
    """The fields of ``cudaDeviceProp`` the backend reads."""

    name: bytes = b"NVIDIA Fake GPU"
    major: int = 8
    minor: int = 7
    multiProcessorCount: int = 16  # noqa: N815
    totalGlobalMem: int = 8 << 30  # noqa: N815
    integrated: int = 0


class FakeGpu:
    """The state behind one fake ``cuda.bindings.runtime`` module (see :meth:`module`)."""

    def __init__(self) -> None:
        self.properties = Properties()
        self.device_count = 1
        self.violations: list[str] = []
        self.d2h_bytes = 0
        self.h2d_bytes = 0
        self.d2h_copies = 0
        self.execute_seconds = 0.0
        self.busy_seconds = 0.0  # time the worker threads spent running queued work
        self.hold_after_event_sync: threading.Event | None = None  # the host stalls after one event wait
        self.holding = threading.Event()  # set while a host thread stalls there
        self.launch_failures: list[str] = []  # queued work that raised (reported as cudaErrorLaunchFailure)
        self._lock = threading.RLock()
        self._device: dict[int, np.ndarray] = {}
        self._host: dict[int, np.ndarray] = {}
        self._freed: dict[int, np.ndarray] = {}  # kept alive: a late read must not crash the process
        self._streams: dict[int, _Stream] = {}
        self._events: dict[int, Op | None] = {}
        self._numbers = itertools.count(1)
        self._next_device = 0x7F00_0000_0000
        self._calls: collections.Counter[str] = collections.Counter()
        self._failures: dict[str, tuple[int, cudaError_t]] = {}
        self.asynchronous = False
        self._work_ready = threading.Condition(self._lock)

    # --- test controls ---------------------------------------------------------------------------
    def fail(
        self, function: str, call: int = 1, error: cudaError_t = cudaError_t.cudaErrorInvalidValue
    ) -> None:
        """Make the ``call``-th call of ``function`` from now return ``error``."""
        self._failures[function] = (self._calls[function] + call, error)

    def live(self) -> dict[str, int]:
        """What is allocated and not freed."""
        return {"device": len(self._device), "pinned": len(self._host), "streams": len(self._streams),
                "events": len(self._events)}

    def pending(self) -> int:
        """Queued stream work not yet run."""
        return sum(len(stream.pending) for stream in self._streams.values())

    def start_worker(self, execute_seconds: float) -> None:
        """Run queued work as it comes, an engine execution taking ``execute_seconds`` (call it first)."""
        assert not self._streams, "start the worker before the backend creates its streams"
        self.execute_seconds = execute_seconds
        self.asynchronous = True

    # --- memory --------------------------------------------------------------------------------------
    def device_view(self, address: int, nbytes: int) -> np.ndarray:
        """The device bytes at ``address`` (raises :class:`Fault` outside a live allocation)."""
        return self._view(self._device, address, nbytes, "device")

    def host_view(self, address: int, nbytes: int) -> np.ndarray:
        return self._view(self._host, address, nbytes, "page-locked host")

    def _view(self, memory: dict[int, np.ndarray], address: int, nbytes: int, kind: str) -> np.ndarray:
        with self._lock:
            bases = sorted(memory)
            index = bisect.bisect_right(bases, address) - 1
            if index >= 0:
                base = bases[index]
                buffer = memory[base]
                if address + nbytes <= base + buffer.size:
                    return buffer[address - base : address - base + nbytes]
            freed = any(base <= address < base + b.size for base, b in self._freed.items())
            state = "freed" if freed else "unallocated"
            problem = f"{kind} access to {state} memory at {address:#x}+{nbytes}"
            self.violations.append(problem)
            raise Fault(problem)

    def _check_unused(self, address: int, what: str) -> None:
        for stream in self._streams.values():
            if any(address in op.addresses for op in stream.pending):
                self.violations.append(f"{what} at {address:#x} freed while queued work uses it")

    # --- the API --------------------------------------------------------------------------------------
    def _failure(self, function: str) -> cudaError_t:
        self._calls[function] += 1
        planned = self._failures.get(function)
        if planned is not None and planned[0] == self._calls[function]:
            return planned[1]
        return cudaError_t.cudaSuccess

    def cudaGetErrorName(self, error: cudaError_t) -> tuple[cudaError_t, bytes]:  # noqa: N802
        return cudaError_t.cudaSuccess, cudaError_t(error).name.encode()

    def cudaGetDeviceCount(self) -> tuple[cudaError_t, int]:  # noqa: N802
        error = self._failure("cudaGetDeviceCount")
        return error, (0 if error else self.device_count)

    def cudaSetDevice(self, index: int) -> tuple[cudaError_t]:  # noqa: N802
        if index >= self.device_count:
            return (cudaError_t.cudaErrorInvalidDevice,)
        return (self._failure("cudaSetDevice"),)

    def cudaGetDeviceProperties(self, index: int) -> tuple[cudaError_t, Properties]:  # noqa: N802
        return self._failure("cudaGetDeviceProperties"), self.properties

    def cudaMalloc(self, nbytes: int) -> tuple[cudaError_t, int]:  # noqa: N802
        with self._lock:
            error = self._failure("cudaMalloc")
            if error:
                return error, 0
            address = self._next_device
            self._next_device += (nbytes + 511) // 256 * 256
            self._device[address] = np.full(nbytes, 0xCD, np.uint8)  # uninitialised memory is not zero
            return cudaError_t.cudaSuccess, address

    def cudaFree(self, address: int) -> tuple[cudaError_t]:  # noqa: N802
        with self._lock:
            if address not in self._device:
                self.violations.append(f"cudaFree of {address:#x}, which is not allocated")
                return (cudaError_t.cudaErrorInvalidValue,)
            self._check_unused(address, "device memory")
            self._freed[address] = self._device.pop(address)
            return (cudaError_t.cudaSuccess,)

    def cudaMallocHost(self, nbytes: int) -> tuple[cudaError_t, int]:  # noqa: N802
        with self._lock:
            error = self._failure("cudaMallocHost")
            if error:
                return error, 0
            buffer = np.full(max(nbytes, 1), 0xCD, np.uint8)
            self._host[buffer.ctypes.data] = buffer
            return cudaError_t.cudaSuccess, buffer.ctypes.data

    def cudaFreeHost(self, address: int) -> tuple[cudaError_t]:  # noqa: N802
        with self._lock:
            if address not in self._host:
                self.violations.append(f"cudaFreeHost of {address:#x}, which is not allocated")
                return (cudaError_t.cudaErrorInvalidValue,)
            self._check_unused(address, "page-locked memory")
            buffer = self._host.pop(address)
            buffer.fill(0xFF)  # a read after free sees NaN
            self._freed[address] = buffer
            return (cudaError_t.cudaSuccess,)

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[cudaError_t, Handle]:  # noqa: N802
        with self._lock:
            error = self._failure("cudaStreamCreateWithFlags")
            if error:
                return error, Handle(0)
            number = next(self._numbers)
            stream = self._streams[number] = _Stream()
            if self.asynchronous:
                stream.thread = threading.Thread(target=self._work_loop, args=(stream,), daemon=True)
                stream.thread.start()
            return cudaError_t.cudaSuccess, Handle(number)

    def cudaStreamDestroy(self, stream: Handle) -> tuple[cudaError_t]:  # noqa: N802
        with self._lock:
            state = self._streams.pop(int(stream))
            if state.pending:
                self.violations.append(f"stream {int(stream)} destroyed with work still queued")
            state.stop = True
            self._work_ready.notify_all()
        if state.thread is not None:
            state.thread.join()
        return (cudaError_t.cudaSuccess,)

    def cudaEventCreateWithFlags(self, flags: int) -> tuple[cudaError_t, Handle]:  # noqa: N802
        with self._lock:
            error = self._failure("cudaEventCreateWithFlags")
            if error:
                return error, Handle(0)
            number = next(self._numbers)
            self._events[number] = None
            return cudaError_t.cudaSuccess, Handle(number)

    def cudaEventDestroy(self, event: Handle) -> tuple[cudaError_t]:  # noqa: N802
        with self._lock:
            del self._events[int(event)]
            return (cudaError_t.cudaSuccess,)

    def cudaEventRecord(self, event: Handle, stream: Handle) -> tuple[cudaError_t]:  # noqa: N802
        with self._lock:
            op = Op(int(stream), lambda: None, "event")
            self._events[int(event)] = op
            self.enqueue(op)
            return (cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(  # noqa: N802
        self, dst: int, src: int, nbytes: int, kind: cudaMemcpyKind, stream: Handle
    ) -> tuple[cudaError_t]:
        with self._lock:
            error = self._failure("cudaMemcpyAsync")
            if error:
                return (error,)
            if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
                self.h2d_bytes += nbytes

                def run() -> None:
                    self.device_view(dst, nbytes)[:] = self.host_view(src, nbytes)
            else:
                self.d2h_bytes += nbytes
                self.d2h_copies += 1

                def run() -> None:
                    self.host_view(dst, nbytes)[:] = self.device_view(src, nbytes)
            self.enqueue(Op(int(stream), run, "copy", (self._base(dst), self._base(src))))
            return (cudaError_t.cudaSuccess,)

    def _base(self, address: int) -> int:
        """The start of the allocation holding ``address`` (so frees of it can be matched)."""
        for memory in (self._device, self._host):
            for base, buffer in memory.items():
                if base <= address < base + buffer.size:
                    return base
        return address

    def enqueue(self, op: Op) -> None:
        """Queue ``op`` on its stream (and for the worker thread, when there is one)."""
        with self._lock:
            op.addresses = tuple(self._base(address) for address in op.addresses)
            self._streams[op.stream].pending.append(op)
            self._work_ready.notify_all()

    def cudaStreamSynchronize(self, stream: Handle) -> tuple[cudaError_t]:  # noqa: N802
        with self._lock:
            queue = self._streams[int(stream)].pending
            last = queue[-1] if queue else None
        return (self._wait(last),)

    def cudaEventSynchronize(self, event: Handle) -> tuple[cudaError_t]:  # noqa: N802
        error = self._wait(self._events[int(event)])  # never recorded: nothing to wait for
        hold, self.hold_after_event_sync = self.hold_after_event_sync, None
        if hold is not None:
            self.holding.set()
            hold.wait()
        return (error,)

    def _wait(self, target: Op | None) -> cudaError_t:
        if target is None:
            return cudaError_t.cudaSuccess
        if self.asynchronous:
            target.done.wait()
            return target.error
        stream = self._streams[target.stream]
        with stream.running:
            while not target.done.is_set():
                with self._lock:
                    op = stream.pending[0]
                self._run(op)
                if op.error:
                    return op.error
        return cudaError_t.cudaSuccess

    def _run(self, op: Op) -> None:
        """Run ``op`` and take it off its stream; a failure is the op's error code, as a GPU reports it."""
        try:
            op.run()
        except Fault:
            op.error = cudaError_t.cudaErrorIllegalAddress
        except Exception as error:  # noqa: BLE001 - e.g. ONNX Runtime rejecting garbage inputs
            self.launch_failures.append(f"{op.kind}: {error}")
            op.error = cudaError_t.cudaErrorLaunchFailure
        with self._lock:
            self._streams[op.stream].pending.remove(op)
            op.done.set()

    def _work_loop(self, stream: _Stream) -> None:
        while True:
            with self._lock:
                self._work_ready.wait_for(lambda: bool(stream.pending) or stream.stop)
                if stream.stop:
                    return
                op = stream.pending[0]
            started = time.perf_counter()
            if op.kind == "execute":
                time.sleep(self.execute_seconds)
            self._run(op)
            with self._lock:
                self.busy_seconds += time.perf_counter() - started

    def module(self) -> types.ModuleType:
        """A ``cuda.bindings.runtime`` module whose functions are this GPU's."""
        module = types.ModuleType("cuda.bindings.runtime")
        module.cudaError_t = cudaError_t  # type: ignore[attr-defined]
        module.cudaMemcpyKind = cudaMemcpyKind  # type: ignore[attr-defined]
        module.cudaStreamNonBlocking = 1  # type: ignore[attr-defined]
        module.cudaEventDisableTiming = 2  # type: ignore[attr-defined]
        for name in dir(self):
            if name.startswith("cuda"):
                setattr(module, name, getattr(self, name))
        return module
