"""segment_node's parts that need no DDS: frame slot, statistics, diagnostics, request queue, prompt cache."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.node.frame_slot import FrameSlot
from gdino_ros.node.frame_stats import FAILED, PROCESSED, FrameStats, rate_hz
from gdino_ros.node.requests import Outcome, RequestQueue, SegmentRequest


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


def _state(prompt: str = "cup", enabled: bool = True) -> Any:
    from gdino_ros.node.diagnostics import NodeState

    return NodeState(enabled, prompt, "phrases", requests_served=0, requests_failed=0, requests_pending=0)


def _status(stats: FrameStats, now: float, **state: Any) -> Any:
    from gdino_ros.node.diagnostics import segmentation_status

    name = "/segment_node: segmentation"
    return segmentation_status(name, stats, _backend(), _state(**state), "CPU X", now)


def test_diagnostics_warn_without_prompt_and_report_counters_and_latencies() -> None:
    from diagnostic_msgs.msg import DiagnosticStatus

    stats = FrameStats()
    now = 100.0
    waiting = _status(stats, now, prompt="")
    assert waiting.level == DiagnosticStatus.WARN and "no streaming prompt" in waiting.message

    stats.received, stats.dropped = 3, 1
    for at in (now - 0.5, now):
        stats.record(at, PROCESSED)
        stats.published_at.append(at)
    stats.stage_ms.extend([{"inference": 10.0, "total": 20.0}, {"inference": 30.0, "total": 40.0}])
    status = _status(stats, now)
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.OK and status.message == "2.0 Hz"
    assert status.hardware_id == "CPU X"
    assert values["frames_processed"] == "2" and values["frames_dropped"] == "1"
    assert values["latency_ms.inference"] == "20.00" and values["latency_ms.total"] == "30.00"
    assert values["latency_ms.total_p95"] == "39.00"
    assert values["active_prompt"] == "cup" and values["no_target_head"] == "true"
    assert values["enabled"] == "true"


def test_diagnostics_level_is_judged_on_the_recent_window_only() -> None:
    from diagnostic_msgs.msg import DiagnosticStatus

    from gdino_ros.node.diagnostics import HEALTH_WINDOW_S

    stats = FrameStats()
    stats.record(10.0, FAILED, "RuntimeError: boom")
    for at in (10.5, 11.0):
        stats.record(at, PROCESSED)
        stats.published_at.append(at)
    failed = _status(stats, 11.0)
    assert failed.level == DiagnosticStatus.WARN
    assert "boom" in failed.message and "1 of the last" in failed.message
    later = 10.0 + HEALTH_WINDOW_S + 0.5  # the failure left the window, good frames are still in it
    for at in (later - 1.0, later):
        stats.record(at, PROCESSED)
        stats.published_at.append(at)
    recovered = _status(stats, later)
    values = {kv.key: kv.value for kv in recovered.values}
    assert recovered.level == DiagnosticStatus.OK, recovered.message
    assert values["frames_failed"] == "1" and values["problems_in_health_window"] == "0"
    assert values["last_problem"] == "RuntimeError: boom"
    stale = _status(stats, later + HEALTH_WINDOW_S + 1.0)
    assert stale.level == DiagnosticStatus.WARN and "no frame processed" in stale.message
    disabled = _status(stats, later + HEALTH_WINDOW_S + 1.0, enabled=False)
    assert disabled.level == DiagnosticStatus.OK and "disabled" in disabled.message


def test_long_prompts_are_cut_with_their_length_in_logs_and_diagnostics() -> None:
    from gdino_ros.node.shown import SHOWN_CHARS, shown

    assert shown("cup . bottle") == "cup . bottle"
    long = "red cup . " * 3000
    assert shown(long) == long[:SHOWN_CHARS] + f"... ({len(long)} characters)"
    stats = FrameStats()
    values = {kv.key: kv.value for kv in _status(stats, 1.0, prompt=long).values}
    assert len(values["active_prompt"]) < 300 and values["active_prompt_length"] == str(len(long))


def test_hardware_id_names_the_cpu_model(tmp_path: Path) -> None:
    from gdino_ros.node.hardware import cpu_name, device_name

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R)  Xeon(R) CPU\n")
    assert cpu_name(cpuinfo) == "Intel(R) Xeon(R) CPU"
    assert cpu_name(tmp_path / "missing") is None
    assert device_name("cpu") not in ("", "cpu")  # this machine's CPU by name


def _request(arrived: float, next_frame: bool, done: list[Outcome]) -> SegmentRequest:
    return SegmentRequest(
        "cup", "auto", PostprocessParams(), next_frame, arrived, arrived + 5.0, on_done=done.append
    )


def test_requests_are_taken_in_arrival_order_each_when_its_frame_exists() -> None:
    queue, done = RequestQueue(), []
    latest, following = _request(1.0, False, done), _request(2.0, True, done)
    behind = _request(3.0, False, done)
    for request in (latest, following, behind):
        queue.add(request)
    assert queue.take_ready(None) is None  # no frame yet
    assert queue.take_ready(0.5) is latest  # the newest frame, though older than the request
    assert queue.take_ready(1.5) is None  # the next request wants a frame newer than 2.0; the third waits
    assert queue.take_ready(2.5) is following and queue.take_ready(2.5) is behind
    assert len(queue) == 3
    assert queue.finish(following, Outcome(True, "ok", "result"))
    assert queue.overdue(7.0) == [latest] and queue.overdue(8.5) == [latest, behind]


def test_a_request_is_finished_once_and_late_results_are_dropped() -> None:
    queue, done = RequestQueue(), []
    request = _request(1.0, True, done)
    queue.add(request)
    assert queue.finish(request, Outcome(False, "timed out"))
    assert not queue.finish(request, Outcome(True, "late", "result"))
    assert done == [Outcome(False, "timed out")] and len(queue) == 0
    assert (queue.served, queue.failed) == (0, 1)


def test_prompt_cache_encodes_each_prompt_once_and_keeps_the_recent_ones(vocab_path: Path) -> None:
    from gdino_ros.core.segmenter import Segmenter
    from gdino_ros.core.tokenizer import load_tokenizer
    from gdino_ros.node.prompt_cache import PromptCache

    streaming = Segmenter(SimpleNamespace(), load_tokenizer(vocab_path, None))  # type: ignore[arg-type]
    cache = PromptCache(streaming, size=2)
    cup = cache.segmenter_for("cup", "auto")
    assert cache.segmenter_for("cup", "auto") is cup and cache.encoded == 1
    assert cup.prompt_text == "cup" and streaming.prompt is None  # the streaming prompt is untouched
    cache.segmenter_for("bottle", "auto")
    cache.segmenter_for("cup", "auto")  # most recent again
    cache.segmenter_for("plate", "auto")  # evicts bottle
    assert cache.segmenter_for("cup", "auto") is cup
    cache.segmenter_for("bottle", "auto")
    assert cache.encoded == 4


def test_hardware_id_names_the_gpu_through_nvidia_smi(tmp_path: Path, monkeypatch: Any) -> None:
    from gdino_ros.node import hardware

    smi = tmp_path / "nvidia-smi"  # answers as the real one does for --query-gpu=name
    smi.write_text('#!/bin/sh\ncase "$*" in *--id=1*) echo "NVIDIA H200";; *) exit 6;; esac\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(hardware, "DEVICE_TREE_MODEL", tmp_path / "no-board")
    assert hardware.device_name("cuda:1") == "NVIDIA H200"
    assert hardware.device_name("cuda:0") == "cuda:0"  # nvidia-smi failed, no board name: the device itself
