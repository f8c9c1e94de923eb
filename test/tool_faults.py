"""Run a gdino tool in a child process and hurt it: a signal mid-run, a file size limit (disk full).

The child is the real tool (its ``main``) with one change when asked: every frame takes ``per_frame_s``
longer, as on a slow device, so that "mid-run" is a wide window rather than a race. The tests check the
input byte for byte (:func:`tree_digest`) and the output as the tool's documentation promises.
"""
from __future__ import annotations

import hashlib
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rosharness import python_executable, subprocess_environment

_CHILD = """
import importlib, sys, time
from gdino_ros.core.segmenter import Segmenter
delay = float(sys.argv[1])
if delay:  # submit: the one entry of every way the tools segment (a call, a stream, a queued frame)
    submit = Segmenter.submit
    def slowed(self, *args, **kwargs):
        time.sleep(delay)
        return submit(self, *args, **kwargs)
    Segmenter.submit = slowed
sys.exit(importlib.import_module(sys.argv[2]).main(sys.argv[3:]))
"""


@dataclass(frozen=True)
class Outcome:
    """How the child ended."""

    returncode: int
    stdout: str
    stderr: str


def start(
    module: str, args: Sequence[str | Path], workdir: Path, *, per_frame_s: float = 0.0,
    file_limit: int | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``module``'s main with ``args``; stdout/stderr go to files in ``workdir`` (returned)."""

    def limit() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    logs = workdir / f"child-{time.monotonic_ns()}"
    logs.mkdir()
    with (logs / "out").open("wb") as out, (logs / "err").open("wb") as err:
        process = subprocess.Popen(
            [python_executable(), "-c", _CHILD, str(per_frame_s), module, *map(str, args)],
            stdout=out, stderr=err, env=subprocess_environment(OMP_NUM_THREADS="1"), preexec_fn=limit,
        )
    return process, logs


def finish(process: subprocess.Popen[bytes], logs: Path, timeout_s: float = 240.0) -> Outcome:
    """Wait for the child; return its exit code and output."""
    process.wait(timeout=timeout_s)
    return Outcome(process.returncode, (logs / "out").read_text(), (logs / "err").read_text())


def run(module: str, args: Sequence[str | Path], workdir: Path, **options: float | int | None) -> Outcome:
    """Run the tool to its end."""
    process, logs = start(module, args, workdir, **options)  # type: ignore[arg-type]
    return finish(process, logs)


def interrupt_when(
    process: subprocess.Popen[bytes], logs: Path, ready: Callable[[], bool], signum: signal.Signals,
    timeout_s: float = 180.0,
) -> Outcome:
    """Send ``signum`` once ``ready()`` holds (the run is under way), then wait for the child."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert process.poll() is None, f"the tool ended before the signal: {(logs / 'err').read_text()}"
        assert time.monotonic() < deadline, "the run never got under way"
        time.sleep(0.05)
    process.send_signal(signum)
    return finish(process, logs)


def tree_digest(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` (or of ``path`` itself), by relative name."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        str(p.relative_to(path)) if p != path else p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
    }
