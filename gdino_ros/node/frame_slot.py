"""The one-frame buffer between the executor thread (producer) and the node's worker (consumer).

Keeping one frame bounds latency (one frame in flight plus one waiting, whatever the camera rate) and
memory (two frames): a frame that is still waiting when a newer one arrives is dropped.
"""
from __future__ import annotations

import threading
from typing import Any


class FrameSlot:
    """One-frame buffer: :meth:`put` never blocks and replaces, :meth:`take` blocks (unless told not to).

    :meth:`put` returns True when it replaced a frame the worker had not taken yet (that frame is
    dropped). :meth:`take` blocks until a frame arrives, :meth:`poke` asks the worker to look at staged
    changes without a frame, or :meth:`close` stops it.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: tuple[Any, float] | None = None
        self._poked = False
        self.closed = False

    def put(self, msg: Any, received: float) -> bool:
        """Store ``msg`` (received at monotonic time ``received``); True if a waiting frame was replaced."""
        with self._condition:
            replaced = self._item is not None
            self._item = (msg, received)
            self._condition.notify()
        return replaced

    def poke(self) -> None:
        """Wake the worker even if no frame comes (a prompt must be applied and acknowledged now)."""
        with self._condition:
            self._poked = True
            self._condition.notify()

    def take(self, *, wait: bool = True) -> tuple[Any, float] | None:
        """Wait for a frame, a poke or :meth:`close`; return the newest frame and its receive time, if any.

        ``wait=False`` returns at once: the waiting frame, or None.
        """
        with self._condition:
            while wait and self._item is None and not self._poked and not self.closed:
                self._condition.wait()
            item, self._item, self._poked = self._item, None, False
            return item

    def discard(self) -> None:
        """Drop the waiting frame, if any (the node was disabled: it must not be processed later)."""
        with self._condition:
            self._item = None

    def close(self) -> None:
        """Wake the worker so that it stops."""
        with self._condition:
            self.closed = True
            self._condition.notify_all()
