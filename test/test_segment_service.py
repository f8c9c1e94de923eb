"""gdino/segment, the enabled parameter and windowed diagnostics, over real rclpy and loopback DDS.

The node runs in-process around the tiny random-weight network (as in test_node.py); clients call the
service and set parameters through DDS as a planner would. Results are compared with a Segmenter run
directly on the same photo with the request's prompt.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import test_node
from skimage import data as skdata
from test_node import EXPRESSION, PHRASES, Bench, _assert_matches, _image_msg

from gdino_ros.core.segmenter import Segmenter

STREAM_PROMPT = "rocket"  # the streaming prompt; requests use others
BASE_SEC = 1_700_000_000

pytestmark = pytest.mark.slow  # real DDS and the tiny network

# test_node.py's node bench, shared as fixtures
tiny_model, reference, bench_factory = test_node.tiny_model, test_node.reference, test_node.bench_factory


def _client(bench: Bench) -> Any:
    from gdino_ros.srv import Segment

    client = bench.driver.create_client(Segment, "/gdino/segment")
    assert bench.spin_until(client.service_is_ready, 10.0)
    return client


def _request(prompt: str, frame: int = 1, timeout_s: float = 60.0, **fields: Any) -> Any:
    from gdino_ros.srv import Segment

    request = Segment.Request(prompt=prompt, frame=frame, timeout_s=timeout_s)
    for name, value in fields.items():
        setattr(request, name, value)
    return request


def _call(bench: Bench, client: Any, request: Any, timeout_s: float = 120.0) -> Any:
    future = client.call_async(request)
    assert bench.spin_until(future.done, timeout_s)
    return future.result()


class Camera:
    """Publishes one photo on /image at a fixed period, each frame stamped BASE_SEC + its index."""

    def __init__(self, bench: Bench, photo: np.ndarray, period_s: float = 0.1) -> None:
        self.msg = _image_msg(photo, 0)
        self.published: list[float] = []  # monotonic time of frame i
        self._bench = bench
        self.timer = bench.driver.create_timer(period_s, self._publish)

    def _publish(self) -> None:
        self.msg.header.stamp.sec = BASE_SEC + len(self.published)
        self.published.append(time.monotonic())
        self._bench.images.publish(self.msg)

    def stop(self) -> None:
        self.timer.cancel()


def _set_enabled(bench: Bench, enabled: bool) -> None:
    """Set the parameter through the node's set_parameters service, as `ros2 param set` does."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = bench.driver.create_client(SetParameters, "/segment_node/set_parameters")
    assert bench.spin_until(client.service_is_ready, 10.0)
    future = client.call_async(
        SetParameters.Request(parameters=[Parameter("enabled", value=enabled).to_parameter_msg()])
    )
    assert bench.spin_until(future.done, 10.0)
    assert future.result().results[0].successful


def test_concurrent_requests_get_their_own_prompt_on_a_later_frame_while_the_stream_keeps_its_own(
    bench_factory: Callable[..., Bench], reference: Segmenter
) -> None:
    bench = bench_factory(initial_prompt=STREAM_PROMPT, input_qos="reliable", overlay=False)
    first, second = _client(bench), _client(bench)
    photo = skdata.astronaut()
    camera = Camera(bench, photo)
    assert bench.spin_until(lambda: len(bench.outputs["result"]) >= 2, 120.0)

    sent_after = len(camera.published) - 1  # the newest frame published before the requests
    futures = [first.call_async(_request(PHRASES)), second.call_async(_request(EXPRESSION))]
    assert bench.spin_until(lambda: all(f.done() for f in futures), 120.0)
    streamed_during = len(bench.outputs["result"])
    assert bench.spin_until(lambda: len(bench.outputs["result"]) >= streamed_during + 2, 120.0)
    camera.stop()

    for future, prompt in zip(futures, (PHRASES, EXPRESSION), strict=True):
        response = future.result()
        assert response.success, response.message
        result = response.result
        assert result.prompt == prompt
        assert result.header.stamp.sec - BASE_SEC >= sent_after, "a frame older than the request"
        assert result.header.frame_id == camera.msg.header.frame_id
        reference.set_prompt(prompt, "auto")
        _assert_matches(result, reference(photo), standalone=True)
    assert {r.prompt for r in bench.outputs["result"]} == {STREAM_PROMPT}, "requests leaked into the stream"
    assert bench.outputs["active_prompt"][-1].data == STREAM_PROMPT

    # The newest frame, this request's own threshold, and a prompt asked before: no new tokenising.
    encoded = bench.node._prompt_cache.encoded
    strict = _call(bench, first, _request(PHRASES, frame=0, box_threshold=0.9))
    assert strict.success, strict.message
    assert strict.result.prompt == PHRASES
    assert all(d.results[0].hypothesis.score > 0.9 for d in strict.result.detections)
    assert bench.node._prompt_cache.encoded == encoded
    too_long = _call(bench, first, _request("cup . " * 1000, frame=0))  # over 4096 characters
    assert not too_long.success and too_long.message.startswith("unusable prompt 'cup . cup")
    assert "(6000 characters)" in too_long.message and len(too_long.message) < 400
    counters = bench.counters()
    assert counters["requests_served"] == "3" and counters["requests_failed"] == "1"


def test_requests_fail_with_a_clear_message_without_frames_when_disabled_or_malformed(
    bench_factory: Callable[..., Bench]
) -> None:
    bench = bench_factory(initial_prompt=STREAM_PROMPT)
    client = _client(bench)

    started = time.monotonic()
    response = _call(bench, client, _request(PHRASES, frame=0, timeout_s=1.0))
    waited = time.monotonic() - started
    assert not response.success and "timed out after 1 s: no frame received on /image" in response.message
    assert waited >= 1.0 and not response.result.detections

    for request, expected in [
        (_request("cup . " * 1000, timeout_s=30.0), "unusable prompt 'cup . cup"),  # at once, not at 30 s
        (_request("  "), "empty prompt"),
        (_request(PHRASES, prompt_mode="list"), "prompt_mode must be one of auto, phrases, expression"),
        (_request(PHRASES, box_threshold=1.5), "box_threshold must be within [0, 1]"),
        (_request(PHRASES, frame=7), "frame must be FRAME_LATEST (0) or FRAME_NEXT (1)"),
    ]:
        response = _call(bench, client, request, 10.0)
        assert not response.success and expected in response.message, response.message

    _set_enabled(bench, False)
    response = _call(bench, client, _request(PHRASES, timeout_s=30.0), 10.0)
    assert not response.success and "disabled" in response.message and "enabled true" in response.message
    assert bench.counters()["requests_failed"] == "7"


def test_disabled_node_unsubscribes_and_processes_nothing_until_enabled(
    bench_factory: Callable[..., Bench]
) -> None:
    bench = bench_factory(initial_prompt=STREAM_PROMPT, input_qos="reliable", overlay=False)
    camera = Camera(bench, skdata.coffee(), period_s=0.2)
    assert bench.spin_until(lambda: len(bench.outputs["result"]) >= 1, 120.0)

    _set_enabled(bench, False)
    assert bench.spin_until(lambda: bench.images.get_subscription_count() == 0, 10.0), "still subscribed"
    assert not bench.node.get_subscriptions_info_by_topic("/image")
    bench.spin_until(lambda: False, 1.0)  # results of a frame that was already in flight arrive
    processed, received = bench.counters()["frames_processed"], bench.counters()["frames_received"]
    published = len(camera.published)
    assert bench.spin_until(lambda: len(camera.published) >= published + 10, 10.0)
    counters = bench.counters()
    assert counters["frames_processed"] == processed and counters["frames_received"] == received
    assert bench.spin_until(lambda: _latest_status(bench, lambda s: s["enabled"] == "false"), 5.0)
    status = bench.outputs["diagnostics"][-1].status[0]
    assert status.level == status.OK and "disabled" in status.message

    _set_enabled(bench, True)
    assert bench.spin_until(lambda: bench.images.get_subscription_count() == 1, 10.0)
    results = len(bench.outputs["result"])
    assert bench.spin_until(lambda: len(bench.outputs["result"]) >= results + 2, 120.0)
    camera.stop()
    assert {r.prompt for r in bench.outputs["result"]} == {STREAM_PROMPT}
    assert bench.node.get_parameter("enabled").value is True


def _latest_status(bench: Bench, condition: Callable[[dict[str, str]], bool]) -> bool:
    if not bench.outputs["diagnostics"]:
        return False
    return condition({kv.key: kv.value for kv in bench.outputs["diagnostics"][-1].status[0].values})


def test_diagnostics_return_to_ok_once_the_bad_frame_is_out_of_the_window(
    bench_factory: Callable[..., Bench]
) -> None:
    from diagnostic_msgs.msg import DiagnosticStatus

    bench = bench_factory(initial_prompt=STREAM_PROMPT, input_qos="reliable", overlay=False)
    photo = skdata.coffee()
    bench.process(_image_msg(photo, 1))
    bad = _image_msg(photo[..., 0], 2, "32FC1")
    bench.images.publish(bad)
    assert bench.spin_until(lambda: bench.counters()["frames_rejected"] == "1", 20.0)
    camera = Camera(bench, photo, period_s=0.25)

    def level_after_rejection(level: int) -> bool:
        last = bench.outputs["diagnostics"][-1].status[0] if bench.outputs["diagnostics"] else None
        values = {kv.key: kv.value for kv in last.values} if last else {}
        return last is not None and values.get("frames_rejected") == "1" and last.level == level

    assert bench.spin_until(lambda: level_after_rejection(DiagnosticStatus.WARN), 10.0)
    assert "32FC1" in bench.outputs["diagnostics"][-1].status[0].message
    assert bench.spin_until(lambda: level_after_rejection(DiagnosticStatus.OK), 20.0), [
        m.status[0].message for m in bench.outputs["diagnostics"][-3:]
    ]
    camera.stop()
    values = {kv.key: kv.value for kv in bench.outputs["diagnostics"][-1].status[0].values}
    assert values["problems_in_health_window"] == "0" and values["frames_rejected"] == "1"


def test_diagnostics_arrive_with_sim_time_and_no_clock(bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory(initial_prompt=STREAM_PROMPT, use_sim_time=True)
    assert bench.node.get_clock().now().nanoseconds == 0  # no /clock: ROS time stands still
    assert bench.spin_until(lambda: len(bench.outputs["diagnostics"]) >= 2, 10.0)
    status = bench.outputs["diagnostics"][-1].status[0]
    assert status.hardware_id and status.hardware_id != "onnxruntime cpu"


def test_a_node_started_disabled_subscribes_once_enabled(bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory(initial_prompt=STREAM_PROMPT, enabled=False)
    assert not bench.node.get_subscriptions_info_by_topic("/image")
    assert bench.spin_until(lambda: _latest_status(bench, lambda s: s["enabled"] == "false"), 5.0)
    _set_enabled(bench, True)
    assert bench.node.get_subscriptions_info_by_topic("/image")
    assert bench.process(_image_msg(skdata.coffee(), 5)).prompt == STREAM_PROMPT


def test_the_segment_action_answers_like_the_service_and_a_waiting_goal_can_be_canceled(
    bench_factory: Callable[..., Bench], reference: Segmenter
) -> None:
    from action_msgs.msg import GoalStatus
    from gdino_ros.action import Segment as SegmentAction
    from rclpy.action import ActionClient

    bench = bench_factory(initial_prompt=STREAM_PROMPT, input_qos="reliable", overlay=False)
    client = ActionClient(bench.driver, SegmentAction, "/gdino/segment")
    assert bench.spin_until(client.server_is_ready, 10.0)

    def send(goal: Any) -> Any:
        sent = client.send_goal_async(goal)
        assert bench.spin_until(sent.done, 10.0) and sent.result().accepted
        return sent.result()

    waiting = send(SegmentAction.Goal(prompt=PHRASES, frame=SegmentAction.Goal.FRAME_NEXT, timeout_s=60.0))
    canceled = waiting.cancel_goal_async()
    assert bench.spin_until(canceled.done, 10.0) and canceled.result().goals_canceling
    outcome = waiting.get_result_async()
    assert bench.spin_until(outcome.done, 10.0)
    assert outcome.result().status == GoalStatus.STATUS_CANCELED
    assert outcome.result().result.message == "canceled by the client"

    photo = skdata.astronaut()
    bench.process(_image_msg(photo, 3))  # the newest frame
    goal = send(SegmentAction.Goal(prompt=EXPRESSION, frame=SegmentAction.Goal.FRAME_LATEST, timeout_s=60.0))
    outcome = goal.get_result_async()
    assert bench.spin_until(outcome.done, 120.0)
    assert outcome.result().status == GoalStatus.STATUS_SUCCEEDED, outcome.result().result.message
    result = outcome.result().result.result
    assert result.prompt == EXPRESSION and result.header.stamp.sec == BASE_SEC + 3
    reference.set_prompt(EXPRESSION, "auto")
    _assert_matches(result, reference(photo), standalone=True)
    assert [r.prompt for r in bench.outputs["result"]] == [STREAM_PROMPT]
