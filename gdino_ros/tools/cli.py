"""The one place a command-line tool turns a failure into a message and an exit code.

:func:`run` calls a tool's body: a :class:`~gdino_ros.errors.GdinoError` becomes
``<prog>: error: <message>`` on stderr and the error kind's exit code (table in :mod:`gdino_ros.errors`);
Ctrl-C and SIGTERM both arrive as :class:`KeyboardInterrupt` (so ``finally`` blocks finalise or remove
what is being written) and give 130, after the tool has said what it kept; anything else is a bug and
keeps its traceback. :func:`deferred_signals` holds SIGINT/SIGTERM back while a file is being written or
finalised, so an interrupt never leaves it half-written: the block may poll what arrived and stop at a
point of its choosing.
"""
from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from gdino_ros.errors import EXIT_INTERRUPTED, GdinoError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run(prog: str, body: Callable[[], int]) -> int:
    """Run ``body`` (a tool's work, returning its exit code) with the shared error handling."""
    previous = _install_sigterm()
    try:
        return body()
    except GdinoError as error:
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def interrupted(prog: str, kept: str) -> int:
    """Say what an interrupted run kept (``kept``: one sentence) and return the interrupted exit code."""
    print(f"{prog}: interrupted; {kept}", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _install_sigterm() -> Callable[[int, FrameType | None], object] | int | None:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C (main thread only); return the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    return previous if previous is not None else signal.SIG_DFL


@contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM until the block ends, then raise KeyboardInterrupt if one came in.

    Yields the list of signals received so far, for a loop that stops between two items.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in _SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt(f"signal {signal.Signals(received[0]).name}")
