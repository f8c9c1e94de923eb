"""gdino_ros and vision_msgs messages travel between two real rclpy nodes over loopback DDS."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import textwrap

import numpy as np
import pytest
from rosharness import REPO_ROOT, python_executable, spin_until, subprocess_environment


def _make_detection(header: object, class_id: str, score: float, instance_id: int) -> object:
    from vision_msgs.msg import Detection2D, ObjectHypothesisWithPose

    detection = Detection2D(header=header, id=str(instance_id))
    hypothesis = ObjectHypothesisWithPose()
    hypothesis.hypothesis.class_id = class_id
    hypothesis.hypothesis.score = score
    detection.results.append(hypothesis)
    detection.bbox.center.position.x = 120.5
    detection.bbox.center.position.y = 64.25
    detection.bbox.size_x = 30.0
    detection.bbox.size_y = 12.0
    return detection


def _exchange(executor: object, context: object, msg_type: type, message: object) -> object:
    """Publish ``message`` from one node until another node receives it; return the received copy."""
    import rclpy

    sender = rclpy.create_node("roundtrip_sender", context=context)
    receiver = rclpy.create_node("roundtrip_receiver", context=context)
    received: list[object] = []
    receiver.create_subscription(msg_type, "/roundtrip", received.append, 10)
    publisher = sender.create_publisher(msg_type, "/roundtrip", 10)
    executor.add_node(sender)  # type: ignore[attr-defined]
    executor.add_node(receiver)  # type: ignore[attr-defined]
    sender.create_timer(0.05, lambda: publisher.publish(message))
    assert spin_until(executor, lambda: bool(received), timeout_s=10.0), "nothing arrived within 10 s"
    return received[0]


def test_segmentation_result_round_trip(ros_context: object, ros_executor: object) -> None:
    from gdino_ros.msg import SegmentationResult
    from std_msgs.msg import Header

    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 1_700_000_000, 123_456_789
    label_image = np.zeros((4, 6), dtype=np.uint16)
    label_image[1:3, 2:5] = 1
    label_image[3, 0] = 2

    sent = SegmentationResult(
        header=header, prompt="red cup . cup", prompt_mode=SegmentationResult.MODE_PHRASES
    )
    sent.detections = [_make_detection(header, "red cup", 0.875, 1), _make_detection(header, "cup", 0.5, 2)]
    sent.mask.header = header
    sent.mask.height, sent.mask.width = label_image.shape
    sent.mask.encoding = "mono16"
    sent.mask.step = label_image.shape[1] * 2
    sent.mask.data = label_image.tobytes()
    sent.no_target = False
    sent.no_target_probability = 0.25

    got = _exchange(ros_executor, ros_context, SegmentationResult, sent)

    assert got is not sent
    assert got.header == header
    assert (got.prompt, got.prompt_mode) == ("red cup . cup", "phrases")
    assert [d.results[0].hypothesis.class_id for d in got.detections] == ["red cup", "cup"]
    assert [d.id for d in got.detections] == ["1", "2"]
    assert got.detections[0].bbox.center.position.y == 64.25
    received_labels = np.frombuffer(bytes(got.mask.data), dtype=np.uint16).reshape(got.mask.height, -1)
    np.testing.assert_array_equal(received_labels, label_image)
    assert got.no_target is False
    assert math.isclose(got.no_target_probability, 0.25)


def test_detection2darray_round_trip(ros_context: object, ros_executor: object) -> None:
    from std_msgs.msg import Header
    from vision_msgs.msg import Detection2DArray

    header = Header(frame_id="cam")
    header.stamp.sec = 42
    sent = Detection2DArray(header=header, detections=[_make_detection(header, "bottle", 0.75, 7)])

    got = _exchange(ros_executor, ros_context, Detection2DArray, sent)

    assert got == sent
    assert got.detections[0].results[0].hypothesis.score == 0.75


_STRACE_CHILD = textwrap.dedent(
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String
    from rosharness import spin_until

    rclpy.init()
    sender, receiver = rclpy.create_node("traced_sender"), rclpy.create_node("traced_receiver")
    got = []
    receiver.create_subscription(String, "/traced", got.append, 10)
    publisher = sender.create_publisher(String, "/traced", 10)
    sender.create_timer(0.05, lambda: publisher.publish(String(data="hello")))
    executor = SingleThreadedExecutor()
    executor.add_node(sender)
    executor.add_node(receiver)
    assert spin_until(executor, lambda: len(got) >= 5, 15.0)
    print("received", len(got))
    rclpy.shutdown()
    """
)


@pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is not installed (Debian: apt-get install strace)"
)
def test_dds_traffic_stays_on_loopback(tmp_path: object) -> None:
    """Every datagram the harness's DDS participants send goes to 127.0.0.1 (traced with strace)."""
    env = subprocess_environment(PYTHONPATH=f"{REPO_ROOT}:{REPO_ROOT / 'test'}")
    trace = f"{tmp_path}/strace.log"
    run = subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=sendto,sendmsg,sendmmsg",
            "-o",
            trace,
            python_executable(),
            "-c",
            _STRACE_CHILD,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "received" in run.stdout
    lines = open(trace).read().splitlines()
    destinations = set(re.findall(r'sin_addr=inet_addr\("([0-9.]+)"\)', "\n".join(lines)))
    ipv6 = [line for line in lines if "AF_INET6" in line]
    assert destinations, "strace saw no UDP datagrams: the trace is not measuring DDS traffic"
    assert destinations == {"127.0.0.1"}, f"DDS sent to {sorted(destinations)}"
    assert not ipv6, ipv6[:3]
