"""The node's health as one ``diagnostic_msgs/DiagnosticStatus`` (what /diagnostics carries once a second).

Values: output and input rate, the frame counters of :class:`~gdino_ros.node.frame_stats.FrameStats`
(since start), the mean latency of every stage over the last frames and the total's 95th percentile,
the gdino/segment request counters, the backend, whether the node is enabled, and the prompt in force
(cut to a readable length, with its full length). The level is judged on the last
:data:`HEALTH_WINDOW_S` seconds only, so it returns to OK once the bad frames are out of that window:
OK while enabled frames flow without problems, and while disabled; WARN without a streaming prompt,
without a processed frame for that long, or when a frame in the window was rejected or failed.
``hardware_id`` names the device (the CPU model, the GPU), not the backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from gdino_ros.node.frame_stats import PROCESSED, FrameStats, rate_hz
from gdino_ros.node.shown import shown

if TYPE_CHECKING:
    from gdino_ros.backends.base import Backend

HEALTH_WINDOW_S = 5.0  # seconds of frames the level is judged on
DIAGNOSTICS_PROMPT_CHARS = 200  # characters of the prompt a diagnostics value shows


@dataclass(frozen=True)
class NodeState:
    """What the node, not its frames, contributes to a status."""

    enabled: bool
    active_prompt: str
    prompt_mode: str
    requests_served: int
    requests_failed: int
    requests_pending: int


def segmentation_status(
    name: str, stats: FrameStats, backend: Backend, state: NodeState, hardware_id: str, now: float
) -> DiagnosticStatus:
    """Summarise ``stats`` (read under its lock) at monotonic time ``now`` as the status named ``name``."""
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
        recent = [(kind, problem) for at, kind, problem in stats.outcomes if at >= now - HEALTH_WINDOW_S]
        problem = stats.last_problem
        idle_s = now - stats.published_at[-1] if stats.published_at else None
    problems = [text for kind, text in recent if kind != PROCESSED]
    values = {
        "enabled": str(state.enabled).lower(),
        "rate_hz": f"{output_rate:.2f}",
        "input_rate_hz": f"{input_rate:.2f}",
        **{key: str(count) for key, count in counts.items()},
        "frames_in_health_window": str(len(recent)),
        "problems_in_health_window": str(len(problems)),
        **_latencies(stages),
        "requests_served": str(state.requests_served),
        "requests_failed": str(state.requests_failed),
        "requests_pending": str(state.requests_pending),
        "backend": backend.name,
        "device": backend.device,
        "precision": backend.precision,
        "no_target_head": str(backend.has_no_target_head).lower(),
        "active_prompt": shown(state.active_prompt, DIAGNOSTICS_PROMPT_CHARS),
        "active_prompt_length": str(len(state.active_prompt)),
        "prompt_mode": state.prompt_mode,
        "last_problem": problem,
    }
    window = f"{HEALTH_WINDOW_S:g} s"
    if not state.enabled:
        level, message = DiagnosticStatus.OK, "disabled (parameter enabled: false): no frames are processed"
    elif not state.active_prompt:
        level, message = (
            DiagnosticStatus.WARN,
            "no streaming prompt: publish one on gdino/prompt (gdino/segment requests are still served)",
        )
    elif idle_s is None or idle_s > HEALTH_WINDOW_S:
        level, message = DiagnosticStatus.WARN, f"no frame processed in {window} (input {input_rate:.1f} Hz)"
    elif problems:
        level, message = (
            DiagnosticStatus.WARN,
            f"{output_rate:.1f} Hz; {len(problems)} of the last {window}'s {len(recent)} frames had a "
            f"problem: {problems[-1]}",
        )
    else:
        level, message = DiagnosticStatus.OK, f"{output_rate:.1f} Hz"
    return DiagnosticStatus(
        level=level,
        name=name,
        message=message,
        hardware_id=hardware_id,
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
