"""segment_node stops promptly and quietly: the real node process, a frame in flight, SIGINT or SIGTERM.

The node runs as its own process (test/slow_segment_node.py: the node's own main() whose engine takes
SLOW_FRAME_S per frame, or the plain ``python -m gdino_ros.node``) on the contract-I/O test model; this
process publishes camera frames over loopback DDS until a frame is inside the engine, then signals it,
and a second time shortly after, as an impatient user's second Ctrl-C.
"""
from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_fixtures import make_contract_onnx
from rosharness import REPO_ROOT, python_executable, spin_until, subprocess_environment

SLOW_FRAME_S = 30.0  # far longer than any shutdown may take
SHUTDOWN_LIMIT_S = 2.0  # the promise; ros2 launch escalates to SIGKILL after 10 s

pytestmark = pytest.mark.slow  # a node process and DDS discovery per case


class NodeProcess:
    """A segment_node process whose stdout and stderr lines are collected as they come."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(
            command, env=subprocess_environment(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True)
            for stream, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _collect(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def finish(self) -> None:
        for reader in self._readers:
            reader.join(10.0)


def _frame(index: int) -> Any:
    from sensor_msgs.msg import Image

    msg = Image(height=64, width=96, encoding="rgb8", step=96 * 3)
    msg.data = np.full((64, 96, 3), 90 + index % 50, np.uint8).tobytes()
    msg.header.frame_id = "camera"
    msg.header.stamp.sec = 1_700_000_000 + index
    return msg


@pytest.mark.parametrize(
    ("engine", "signal_number"),
    [("slow", signal.SIGINT), ("slow", signal.SIGTERM), ("fast", signal.SIGINT)],
    ids=["slow-SIGINT", "slow-SIGTERM", "fast-SIGINT"],
)
def test_node_exits_promptly_with_code_0_and_no_error_while_a_frame_is_in_flight(
    tmp_path: Path, vocab_path: Path, ros_context: Any, ros_executor: Any, engine: str, signal_number: int
) -> None:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Bool

    model = make_contract_onnx(tmp_path / "contract.onnx")
    program = [str(REPO_ROOT / "test" / "slow_segment_node.py"), str(SLOW_FRAME_S)] if engine == "slow" else [
        "-m", "gdino_ros.node"
    ]
    parameters = [f"model:={model}", f"tokenizer:={vocab_path}", "initial_prompt:=cup . bottle",
                  "input_qos:=reliable"]
    ros_args = [a for p in parameters for a in ("-p", p)]
    node = NodeProcess([python_executable(), *program, "--ros-args", *ros_args])
    driver = rclpy.create_node("shutdown_driver", context=ros_context)
    ros_executor.add_node(driver)
    reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    images = driver.create_publisher(Image, "/image", reliable)
    outputs: list[Any] = []
    driver.create_subscription(Bool, "/gdino/no_target", outputs.append, 10)
    sent = [0]

    def publish() -> None:
        images.publish(_frame(sent[0]))
        sent[0] += 1

    timer = driver.create_timer(0.05, publish)
    try:
        if engine == "slow":
            in_flight = spin_until(ros_executor, lambda: "frame in the engine" in node.stdout, 120.0)
        else:  # frames stream through: results are being published when the signal comes
            in_flight = spin_until(ros_executor, lambda: len(outputs) >= 5, 120.0)
        assert in_flight, "\n".join(node.stderr[-20:])
        signalled = time.monotonic()
        node.process.send_signal(signal_number)
        spin_until(ros_executor, lambda: node.process.poll() is not None, 0.3)
        if node.process.poll() is None:
            node.process.send_signal(signal_number)  # the impatient second Ctrl-C
        code = node.process.wait(30.0)
        took = time.monotonic() - signalled
    finally:
        timer.cancel()
        if node.process.poll() is None:
            node.process.kill()
        node.finish()
    print(f"{engine} engine, {signal.Signals(signal_number).name}: exited {code} after {took:.2f} s")
    log = "\n".join(node.stderr)
    assert code == 0, log
    assert took <= SHUTDOWN_LIMIT_S, f"took {took:.2f} s\n{log}"
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    assert not [line for line in node.stderr if "ERROR" in line or "Failed to publish" in line], log
