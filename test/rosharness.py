"""Real rclpy over real DDS, confined to the loopback interface, for the test suite.

Every process of the suite that touches DDS gets :mod:`gdino_ros.loopback_dds`'s environment: Fast DDS
reads the project's loopback-only profile, discovery is limited to localhost, and each test process
works in its own ROS domain so parallel runs on one machine do not see each other.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gdino_ros import loopback_dds

REPO_ROOT = Path(__file__).resolve().parents[1]
DOMAIN_ID = loopback_dds.own_domain_id()


def apply_loopback_environment() -> None:
    """Configure this process; called by conftest.py before any test can initialise rclpy."""
    loopback_dds.apply_loopback_environment(DOMAIN_ID)


def subprocess_environment(**extra: str) -> dict[str, str]:
    """Environment for a child process (a node, a tool): loopback DDS and this source tree first."""
    env = dict(os.environ)
    env.update(loopback_dds.loopback_environment(DOMAIN_ID))
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
