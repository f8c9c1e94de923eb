"""gdino-export under faults: the output ONNX is complete or absent (written through a temporary file),
the checkpoint and a stranger's file at --output are never overwritten, each failure is one line."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
from tool_faults import interrupt_when, run, start, tree_digest

from gdino_ros.errors import EXIT_INTERRUPTED, EXIT_OUTPUT
from gdino_ros.tools.export import main

MODULE = "gdino_ros.tools.export"
TINY = ["--random-init", "--config", "tiny", "--msda", "grid-sample"]


def test_the_checkpoint_and_a_strangers_file_are_never_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"weights")
    assert main(["--checkpoint", str(checkpoint), "--output", str(checkpoint)]) == EXIT_OUTPUT
    assert "is the checkpoint" in capsys.readouterr().err and checkpoint.read_bytes() == b"weights"
    notes = tmp_path / "notes.onnx"
    notes.write_text("keep me")
    assert main([*TINY, "--output", str(notes)]) == EXIT_OUTPUT
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "is not an ONNX file gdino-export wrote" in line and notes.read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_export_writes_nothing(tmp_path: Path, signum: signal.Signals) -> None:
    output = tmp_path / "tiny.onnx"
    process, logs = start(MODULE, [*TINY, "--output", str(output)], tmp_path)
    building = lambda: "building an UNTRAINED" in (logs / "out").read_text()  # noqa: E731
    outcome = interrupt_when(process, logs, building, signum)
    assert outcome.returncode == EXIT_INTERRUPTED, outcome.stderr
    assert "nothing was written" in outcome.stderr
    assert not output.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_disk_full_leaves_an_earlier_export_unchanged(tmp_path: Path) -> None:
    output = tmp_path / "tiny.onnx"
    assert run(MODULE, [*TINY, "--output", str(output)], tmp_path).returncode == 0
    earlier = tree_digest(output)
    outcome = run(MODULE, [*TINY, "--output", str(output)], tmp_path, file_limit=200_000)
    assert outcome.returncode == EXIT_OUTPUT, outcome.stderr
    last = outcome.stderr.strip().splitlines()[-1]
    assert last.startswith(f"gdino-export: error: cannot write {output}") and "file size limit" in last
    assert tree_digest(output) == earlier
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
