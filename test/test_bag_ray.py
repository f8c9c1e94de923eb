"""gdino-bag --ray on a local two-CPU Ray instance (loopback only) with the tiny model: several bags and
bags cut into time ranges give the single-machine outputs message for message; a killed worker is
restarted and its range redone; a damaged bag fails alone; a rerun redoes only what is not complete."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_harness import local_ray
from test_bag import IMAGE_TOPIC, _write_input_bag
from test_bag_depth import COLOUR, DEPTH, INFO, _write_bag
from tool_faults import run

from gdino_ros.errors import EXIT_INPUT, EXIT_USAGE, InputError, ModelError
from gdino_ros.tools.bag import main

PROMPT = "person . cup . cat ."

pytestmark = pytest.mark.slow  # a Ray instance and the tiny model end to end


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    with local_ray() as ray:
        yield ray


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A rosbag2 MCAP folder, a sqlite3 one and a bare .mcap file: 4 frames 1 s apart each."""
    root = tmp_path_factory.mktemp("inputs")
    for storage in ("mcap", "sqlite3"):
        _write_input_bag(root / storage, storage)
    bare = root / "bare.mcap"
    shutil.copy(next((root / "mcap").glob("*.mcap")), bare)
    return [root / "mcap", root / "sqlite3", bare]


def _args(model: Path, vocab: Path, topic: str = IMAGE_TOPIC) -> list[str]:
    return ["--image-topic", topic, "--model", str(model), "--tokenizer", str(vocab), "--device", "cpu",
            "--prompt", PROMPT]


def _messages(bag: Path) -> list[tuple[str, int, bytes]]:
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]


@pytest.fixture(scope="module")
def sequential(bags: list[Path], tiny_model_files: Any, vocab_path: Path,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, int, bytes]]]:
    """Every bag through the single-machine command, one after the other."""
    root = tmp_path_factory.mktemp("sequential")
    out = {}
    for bag in bags:
        name = bag.stem
        args = _args(tiny_model_files.onnx, vocab_path)
        assert main(["--input", str(bag), "--output", str(root / name), *args]) == 0
        out[name] = _messages(root / name)
    return out


def _assert_equal(folder: Path, sequential: dict[str, Any], names: list[str]) -> None:
    for name in names:
        got = _messages(folder / name)
        assert any(topic == "/gdino/detections" for topic, _, _ in got)
        assert got == sequential[name], name


def test_bags_and_ranges_equal_the_single_machine_outputs(
    ray_local: Any, bags: list[Path], tiny_model_files: Any, vocab_path: Path, sequential: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # The folder of bags, a bag folder and a quoted glob; 1.5 s ranges cut each 3.x s bag in three.
    inputs = [str(bags[0].parent / "*.mcap"), str(bags[0]), str(bags[1])]
    code = main(["--input", *inputs, "--output", str(out), "--ray", "--range-s", "1.5",
                 *_args(tiny_model_files.onnx, vocab_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    _assert_equal(out, sequential, ["mcap", "sqlite3", "bare"])
    assert "3 bags written (12 frames), 0 complete already, 0 failed" in captured.out
    assert "12/12 frames" in captured.err  # progress aggregated over the workers
    assert captured.err.count(" frames/s") == 9  # one progress line per range: three per bag

    # A rerun finds all complete and writes nothing; an output cut short, one that says it stopped early
    # and one missing are redone, and only they.
    assert main(["--input", *map(str, bags), "--output", str(out), "--ray",
                 *_args(tiny_model_files.onnx, vocab_path)]) == 0
    assert "0 bags written (0 frames), 3 complete already" in capsys.readouterr().out
    mcap_file = next((out / "mcap").glob("*.mcap"))
    mcap_file.write_bytes(mcap_file.read_bytes()[:-200])  # the summary section lost
    metadata = out / "sqlite3" / "metadata.yaml"
    text = metadata.read_text()
    metadata.write_text(text.replace("gdino_bag_end: complete", "gdino_bag_end: stopped early"))
    shutil.rmtree(out / "bare")
    assert main(["--input", *map(str, bags), "--output", str(out), "--ray",
                 *_args(tiny_model_files.onnx, vocab_path)]) == 0
    assert "3 bags written (12 frames), 0 complete already" in capsys.readouterr().out
    _assert_equal(out, sequential, ["mcap", "sqlite3", "bare"])
    untouched = (out / "bare").stat().st_mtime_ns
    assert main(["--input", str(bags[2]), "--output", str(out), "--ray",
                 *_args(tiny_model_files.onnx, vocab_path)]) == 0
    assert (out / "bare").stat().st_mtime_ns == untouched


def test_depth_and_a_prompt_schedule_across_ranges_equal_the_single_machine_output(
    ray_local: Any, tiny_model_files: Any, vocab_path: Path, tmp_path: Path,
) -> None:
    # Depth logged just before or after its colour frame, one depth image missing, the prompt switched
    # at 2 s: all of it must come out as on one machine when the bag is cut every second.
    _write_bag(tmp_path / "in")
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text('- at: 2.0\n  prompt: "flag"\n')
    args = ["--image-topic", COLOUR, "--model", str(tiny_model_files.onnx), "--tokenizer", str(vocab_path),
            "--device", "cpu", "--prompt", "person . flag", "--prompt-schedule", str(schedule),
            "--box-threshold", "0.2", "--depth-topic", DEPTH, "--camera-info-topic", INFO]
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "single"), *args]) == 0
    (tmp_path / "spread").mkdir()
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "spread"), "--ray",
                 "--range-s", "1", *args]) == 0
    got, expected = _messages(tmp_path / "spread" / "in"), _messages(tmp_path / "single")
    assert any(topic == "/gdino/detections_3d" for topic, _, _ in got)
    assert got == expected


def test_a_damaged_bag_fails_alone(
    ray_local: Any, bags: list[Path], tiny_model_files: Any, vocab_path: Path, sequential: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    damaged = tmp_path / "damaged.mcap"
    data = bags[2].read_bytes()
    damaged.write_bytes(data[: int(len(data) * 0.7)])
    out = tmp_path / "out"
    out.mkdir()
    code = main(["--input", str(damaged), str(bags[1]), "--output", str(out), "--ray",
                 *_args(tiny_model_files.onnx, vocab_path)])
    captured = capsys.readouterr()
    assert code == EXIT_INPUT
    assert f"{damaged}: FAILED: input {damaged} is damaged" in captured.out
    assert "1 of 2 bags failed" in captured.err
    assert not (out / "damaged").exists()
    _assert_equal(out, sequential, ["sqlite3"])


def _our_descendants() -> set[int]:
    """Processes started (through Ray) by this test process."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    ours, grew = {os.getpid()}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in ours} - ours
        ours |= more
        grew = bool(more)
    return ours - {os.getpid()}


def _segmenting_worker() -> int | None:
    for pid in _our_descendants():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::SegmenterHost.call"):
            return pid
    return None


def test_a_killed_worker_is_restarted_and_its_range_redone(
    ray_local: Any, bags: list[Path], tiny_model_files: Any, vocab_path: Path, sequential: dict,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    codes: list[int] = []
    run = threading.Thread(target=lambda: codes.append(main(
        ["--input", str(bags[0]), str(bags[1]), "--output", str(out), "--ray", "--range-s", "100",
         *_args(tiny_model_files.onnx, vocab_path)])))
    run.start()
    killed, deadline = None, time.monotonic() + 120
    while killed is None and run.is_alive() and time.monotonic() < deadline:
        killed = _segmenting_worker()
        time.sleep(0.01)
    assert killed is not None, "no worker was seen segmenting"
    os.kill(killed, signal.SIGKILL)
    run.join(timeout=240)
    assert codes == [0]
    _assert_equal(out, sequential, ["mcap", "sqlite3"])


def test_bad_input_is_refused_before_any_work(
    ray_local: Any, bags: list[Path], tiny_model_files: Any, vocab_path: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gdino_ros.tools.ray_cluster import check_nodes, connect

    with pytest.raises(ModelError, match=r"Ray node 127\.0\.0\.1 has no model file .*none\.onnx"):
        check_nodes(connect(None, "test"), tmp_path / "none.onnx", [bags[0]], [tmp_path])
    unseen = r"Ray node 127\.0\.0\.1 cannot see .*nowhere\.mcap.*every node mounts"
    with pytest.raises(InputError, match=unseen):
        check_nodes(connect(None, "test"), tiny_model_files.onnx, [tmp_path / "nowhere.mcap"], [tmp_path])
    # An address nothing listens at: one line before anything starts (in a child: this one joined Ray).
    outcome = run("gdino_ros.tools.bag", ["--input", bags[2], "--output", tmp_path, "--ray", "127.0.0.1:9",
                                         *_args(tiny_model_files.onnx, vocab_path)], tmp_path)
    assert outcome.returncode == EXIT_USAGE
    assert outcome.stderr.strip() == ("gdino-bag: error: no Ray cluster answers at 127.0.0.1:9 (Connection "
                                      "refused); start one with `ray start --head` and give its address, or "
                                      "drop the address to run locally")
    with pytest.raises(SystemExit) as exited:  # several inputs without --ray: argparse's usage error
        main(["--input", str(bags[0]), str(bags[1]), "--output", str(tmp_path / "out"),
              *_args(tiny_model_files.onnx, vocab_path)])
    assert exited.value.code == EXIT_USAGE
    assert "several inputs need --ray" in capsys.readouterr().err
