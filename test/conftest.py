"""Suite-wide fixtures. The loopback DDS environment is applied at import, before any test runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from rosharness import apply_loopback_environment

apply_loopback_environment()

pytest_plugins = ["model_fixtures"]  # session-built model files (backends, segmenter, tools)


@pytest.fixture
def ros_context() -> Iterator[object]:
    """A fresh, initialised rclpy context of its own, shut down after the test."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture
def ros_executor(ros_context: object) -> Iterator[object]:
    """A single-threaded executor bound to :func:`ros_context`; add nodes to it and spin."""
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=ros_context)
    try:
        yield executor
    finally:
        executor.shutdown()
