"""Real rclpy over real DDS, confined to the loopback interface, for the test suite.

Every process of the suite that touches DDS gets :func:`loopback_environment`: Fast DDS reads the
project's loopback-only profile, discovery is limited to localhost, and each test process works in
its own ROS domain so parallel runs on one machine do not see each other.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK_PROFILE = REPO_ROOT / "config" / "fastdds_loopback.xml"

# Fast DDS derives its ports from the domain id; 1..100 stays inside the valid range.
DOMAIN_ID = str(1 + os.getpid() % 100)


def loopback_environment() -> dict[str, str]:
    """The DDS variables every rclpy process of the suite must have before ``rclpy.init``."""
    return {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(LOOPBACK_PROFILE),
        "FASTRTPS_DEFAULT_PROFILES_FILE": str(LOOPBACK_PROFILE),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": DOMAIN_ID,
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    }


def apply_loopback_environment() -> None:
    """Configure this process; called by conftest.py before any test can initialise rclpy."""
    os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated in Jazzy; the range variable replaces it
    os.environ.update(loopback_environment())


def subprocess_environment(**extra: str) -> dict[str, str]:
    """Environment for a child process (a node, a tool): loopback DDS and this source tree first."""
    env = dict(os.environ)
    env.update(loopback_environment())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def python_executable() -> str:
    """The interpreter running the tests (the venv's, where rclpy and the built messages live)."""
    return sys.executable


def spin_until(executor: object, done: Callable[[], bool], timeout_s: float) -> bool:
    """Spin ``executor`` until ``done()`` is true or ``timeout_s`` passes; return ``done()``."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)  # type: ignore[attr-defined]
    return done()
