"""segment_node's parts that need no DDS: the one-frame slot, the frame statistics, the diagnostics status."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from gdino_ros.node.frame_slot import FrameSlot
from gdino_ros.node.frame_stats import FrameStats, rate_hz


def test_slot_keeps_only_the_newest_frame_and_reports_the_replaced_one() -> None:
    slot = FrameSlot()
    assert slot.put("first", 1.0) is False
    assert slot.put("second", 2.0) is True  # "first" was still waiting: dropped
    assert slot.take() == ("second", 2.0)
    assert slot.put("third", 3.0) is False


def test_slot_wakes_the_worker_for_a_poke_and_for_close() -> None:
    slot = FrameSlot()
    slot.poke()
    assert slot.take() is None
    taken: list[object] = []
    worker = threading.Thread(target=lambda: taken.append(slot.take()))
    worker.start()
    time.sleep(0.05)
    assert worker.is_alive()  # nothing to take: it waits
    slot.close()
    worker.join(5.0)
    assert not worker.is_alive() and taken == [None] and slot.closed


def test_rate_is_events_per_second_over_the_window() -> None:
    stats = FrameStats()
    assert rate_hz(stats.received_at) == 0.0
    stats.received_at.extend([10.0, 10.5, 11.0, 11.5, 12.0])
    assert rate_hz(stats.received_at) == 2.0


def _backend() -> SimpleNamespace:
    return SimpleNamespace(name="onnxruntime", device="cpu", precision="fp32", has_no_target_head=True)


def test_diagnostics_warn_without_prompt_and_report_counters_and_latencies() -> None:
    from diagnostic_msgs.msg import DiagnosticStatus

    from gdino_ros.node.diagnostics import segmentation_status

    stats = FrameStats()
    waiting = segmentation_status("/segment_node: segmentation", stats, _backend(), "", "auto")
    assert waiting.level == DiagnosticStatus.WARN and "no prompt" in waiting.message

    now = time.monotonic()
    stats.received, stats.processed, stats.dropped = 3, 2, 1
    stats.published_at.extend([now - 0.5, now])
    stats.stage_ms.extend([{"inference": 10.0, "total": 20.0}, {"inference": 30.0, "total": 40.0}])
    status = segmentation_status("/segment_node: segmentation", stats, _backend(), "cup", "phrases")
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.OK and status.message == "2.0 Hz"
    assert values["frames_processed"] == "2" and values["frames_dropped"] == "1"
    assert values["latency_ms.inference"] == "20.00" and values["latency_ms.total"] == "30.00"
    assert values["latency_ms.total_p95"] == "39.00"
    assert values["active_prompt"] == "cup" and values["no_target_head"] == "true"

    stats.failed, stats.last_problem = 1, "RuntimeError: boom"
    failed = segmentation_status("/segment_node: segmentation", stats, _backend(), "cup", "phrases")
    assert failed.level == DiagnosticStatus.WARN and "boom" in failed.message
