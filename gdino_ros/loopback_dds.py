"""DDS confined to the loopback interface: the environment of the tests, the benchmarks and the demo.

Fast DDS reads the project's loopback-only profile (``config/fastdds_loopback.xml``: one UDPv4 transport
on 127.0.0.1, no built-in transports, 127.0.0.1 the only discovery peer), discovery is limited to
localhost, and a run works in a ROS domain of its own so that parallel runs on one machine do not see
each other. DDS reads these variables when rclpy creates its first participant, so apply them before
``rclpy.init``; child processes inherit them.
"""
from __future__ import annotations

import os
from pathlib import Path

PROFILE = Path(__file__).resolve().parents[1] / "config" / "fastdds_loopback.xml"


def own_domain_id(first: int = 1) -> int:
    """Return a ROS domain for this process, ``first`` + pid mod 100 (Fast DDS takes 0 to 232)."""
    return first + os.getpid() % 100


def loopback_environment(domain_id: int) -> dict[str, str]:
    """Return the DDS variables that keep every packet on 127.0.0.1, in ROS domain ``domain_id``."""
    if not PROFILE.is_file():
        raise FileNotFoundError(f"the loopback Fast DDS profile {PROFILE} is missing (it is in the checkout)")
    return {
        "FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE),
        "FASTRTPS_DEFAULT_PROFILES_FILE": str(PROFILE),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(domain_id),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    }


def apply_loopback_environment(domain_id: int) -> None:
    """Set :func:`loopback_environment` in this process (before ``rclpy.init``) and for its children."""
    os.environ.pop("ROS_LOCALHOST_ONLY", None)  # deprecated in Jazzy; the discovery range replaces it
    os.environ.update(loopback_environment(domain_id))
