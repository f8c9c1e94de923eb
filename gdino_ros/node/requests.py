"""The queue of gdino/segment requests between the service (executor thread) and the worker.

A request names a prompt, thresholds and which frame it wants: the newest frame received, or the first
one received after the request. The worker takes requests in arrival order, each as soon as its frame
exists, and runs it between two streaming frames; the executor fails those whose deadline passed. A
request is finished exactly once, by whichever comes first, so a late result cannot overwrite a timeout.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gdino_ros.core.postprocess import PostprocessParams


@dataclass(frozen=True)
class Outcome:
    """What a request gets back: success, a message, and the SegmentationResult (None on failure)."""

    success: bool
    message: str
    result: Any = None


@dataclass(eq=False)
class SegmentRequest:
    """One request; ``on_done`` is called once, with its :class:`Outcome`, from the finishing thread."""

    prompt: str
    mode: str
    params: PostprocessParams
    next_frame: bool  # True: a frame received after ``arrived``; False: the newest frame
    arrived: float  # monotonic seconds
    deadline: float  # monotonic seconds
    on_done: Callable[[Outcome], None]
    running: bool = field(default=False, init=False)
    done: bool = field(default=False, init=False)


class RequestQueue:
    """Requests in arrival order; thread-safe. Counts what it served and what failed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queued: deque[SegmentRequest] = deque()
        self._running: list[SegmentRequest] = []
        self.served = 0
        self.failed = 0

    def add(self, request: SegmentRequest) -> None:
        """Queue ``request`` behind the ones that arrived before it."""
        with self._lock:
            self._queued.append(request)

    def __len__(self) -> int:
        """Count the requests not finished yet (queued or running)."""
        with self._lock:
            return len(self._queued) + len(self._running)

    def take_ready(self, newest_frame_received: float | None) -> SegmentRequest | None:
        """Take the first queued request if the frame it wants exists, else None.

        ``newest_frame_received``: monotonic time the newest frame arrived, None without one. Later
        requests wait behind the first, so requests are served in arrival order.
        """
        with self._lock:
            if not self._queued or newest_frame_received is None:
                return None
            head = self._queued[0]
            if head.next_frame and newest_frame_received <= head.arrived:
                return None
            self._queued.popleft()
            head.running = True
            self._running.append(head)
            return head

    def finish(self, request: SegmentRequest, outcome: Outcome) -> bool:
        """Give ``request`` its outcome unless it already has one; True if this call finished it."""
        with self._lock:
            if request.done:
                return False
            request.done = True
            if request in self._running:
                self._running.remove(request)
            else:
                self._queued.remove(request)
            self.served += int(outcome.success)
            self.failed += int(not outcome.success)
        request.on_done(outcome)
        return True

    def overdue(self, now: float) -> list[SegmentRequest]:
        """Unfinished requests whose deadline is before monotonic time ``now``."""
        with self._lock:
            return [r for r in (*self._running, *self._queued) if r.deadline < now]

    def unfinished(self) -> list[SegmentRequest]:
        """Every request not finished yet, in arrival order."""
        with self._lock:
            return [*self._running, *self._queued]
