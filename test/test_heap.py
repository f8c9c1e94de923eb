"""keep_large_buffers: a frame's worth of multi-megabyte buffers is reused instead of faulted in afresh."""
from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

# One "frame": a received 1080p rgb8 frame copied twice, a 1080p mono16 label image written (one byte per
# page suffices to fault a page in), all freed again; page faults per frame after five warm-up frames.
FRAMES = textwrap.dedent("""
    import resource, sys
    if sys.argv[1] == "keep":
        from gdino_ros.node.heap import keep_large_buffers
        assert keep_large_buffers()
    def frame():
        received = bytes(1080 * 1920 * 3)
        copy = bytearray(received)
        labels = bytearray(1080 * 1920 * 2)
        labels[::4096] = bytes(len(labels[::4096]))
        return len(copy) + len(labels)
    for _ in range(5):
        frame()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        frame()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
""")


def faults_per_frame(mode: str) -> float:
    run = subprocess.run([sys.executable, "-c", FRAMES, mode], capture_output=True, text=True, check=True)
    return float(run.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_large_buffers_are_reused_without_page_faults() -> None:
    assert faults_per_frame("default") > 1000  # glibc's defaults: the frame's pages are mapped afresh
    assert faults_per_frame("keep") < 50
