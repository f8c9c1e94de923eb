"""What happened to the node's frames: counters, a window of per-stage timings, and recent outcomes.

The counters run since start (what happened overall); health is judged on :attr:`FrameStats.outcomes`,
the recent frames' results, so one bad frame does not leave the node in WARN for the rest of its life.

Both threads write here (the executor counts arrivals, the worker everything else), so every access
holds :attr:`FrameStats.lock`; /diagnostics reads a consistent copy.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

STATS_WINDOW = 100  # frames the diagnostics' rates and latencies are computed over
OUTCOME_WINDOW = 1000  # outcomes kept; more than a health window (seconds) holds at any camera rate
PROCESSED, REJECTED, FAILED = "processed", "rejected", "failed"


@dataclass
class FrameStats:
    """Counters and a window of per-frame stage timings, shared by both threads under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the one-slot buffer before the worker took them
    rejected: int = 0  # could not be converted (encoding, truncated, empty)
    failed: int = 0  # segmentation or publishing raised
    waiting_for_prompt: int = 0  # arrived before any prompt was set
    last_problem: str = ""
    received_at: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    published_at: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    stage_ms: deque[dict[str, float]] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    # (monotonic time, PROCESSED | REJECTED | FAILED, problem text) of each frame the worker finished.
    outcomes: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=OUTCOME_WINDOW))

    def record(self, now: float, outcome: str, problem: str = "") -> None:
        """Count one finished frame (hold :attr:`lock`): its counter, its outcome, the problem if any."""
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.outcomes.append((now, outcome, problem))
        if problem:
            self.last_problem = problem


def rate_hz(times: deque[float]) -> float:
    """Events per second over a window of monotonic times (0 with fewer than two)."""
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else 0.0
