"""The node's health as one ``diagnostic_msgs/DiagnosticStatus`` (what /diagnostics carries once a second).

Values: output and input rate, the frame counters of :class:`~gdino_ros.node.frame_stats.FrameStats`,
the mean latency of every stage over the last frames and the total's 95th percentile, the backend and
the prompt in force. The level is WARN without a prompt, without a recent frame or after failed frames.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from gdino_ros.node.frame_stats import FrameStats, rate_hz

if TYPE_CHECKING:
    from gdino_ros.backends.base import Backend

STALE_AFTER_S = 5.0  # diagnostics warn when no frame was published for this long


def segmentation_status(
    name: str, stats: FrameStats, backend: Backend, active_prompt: str, prompt_mode: str
) -> DiagnosticStatus:
    """Summarise ``stats`` (read under its lock) as the status named ``name``."""
    with stats.lock:
        counts = {
            "frames_received": stats.received,
            "frames_processed": stats.processed,
            "frames_dropped": stats.dropped,
            "frames_rejected": stats.rejected,
            "frames_failed": stats.failed,
            "frames_waiting_for_prompt": stats.waiting_for_prompt,
        }
        input_rate, output_rate = rate_hz(stats.received_at), rate_hz(stats.published_at)
        stages = list(stats.stage_ms)
        problem = stats.last_problem
        idle_s = time.monotonic() - stats.published_at[-1] if stats.published_at else None
    values = {
        "rate_hz": f"{output_rate:.2f}",
        "input_rate_hz": f"{input_rate:.2f}",
        **{key: str(count) for key, count in counts.items()},
        **_latencies(stages),
        "backend": backend.name,
        "device": backend.device,
        "precision": backend.precision,
        "no_target_head": str(backend.has_no_target_head).lower(),
        "active_prompt": active_prompt,
        "prompt_mode": prompt_mode,
        "last_problem": problem,
    }
    if not active_prompt:
        level, message = DiagnosticStatus.WARN, "no prompt: publish one on gdino/prompt"
    elif idle_s is None or idle_s > STALE_AFTER_S:
        level, message = DiagnosticStatus.WARN, f"no frame processed recently (input {input_rate:.1f} Hz)"
    elif counts["frames_failed"] or counts["frames_rejected"]:
        level, message = DiagnosticStatus.WARN, f"{output_rate:.1f} Hz; some frames failed: {problem}"
    else:
        level, message = DiagnosticStatus.OK, f"{output_rate:.1f} Hz"
    return DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id=f"{backend.name} {backend.device}",
        values=[KeyValue(key=key, value=value) for key, value in values.items()],
    )


def _latencies(stages: list[dict[str, float]]) -> dict[str, str]:
    """Mean milliseconds per stage (in first-seen order) and the total's 95th percentile."""
    values = {
        f"latency_ms.{stage}": f"{np.mean([f[stage] for f in stages if stage in f]):.2f}"
        for stage in dict.fromkeys(key for frame in stages for key in frame)
    }
    if stages:
        values["latency_ms.total_p95"] = f"{np.percentile([f['total'] for f in stages], 95):.2f}"
    return values
