"""gdino-bag under faults and odd input (#13 items 1, 2, 3, 9, 15): the input stays byte-identical, the
output is a complete, readable bag or absent, the message says which; frames the model cannot take are
skipped and counted; the metadata is what Humble's rosbag2 can read.

The model is the small contract graph (fast); signal tests slow each frame down in the child so that a
signal lands mid-run.
"""
from __future__ import annotations

import shutil
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from model_fixtures import make_contract_onnx
from tool_faults import interrupt_when, run, start, tree_digest

from gdino_ros.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OUTPUT
from gdino_ros.tools.bag import main
from gdino_ros.tools.bag.writer import COMPLETE, END_KEY, MARKER_KEY

TOPIC = "/camera/image_raw"
GOOD_FRAMES = 20
MODULE = "gdino_ros.tools.bag"


def _write_bag(path: Path, *, odd_frames: bool = False) -> list[int]:
    """A bag (bare .mcap when ``path`` ends so) of small rgb8 frames and a String topic; log times returned.

    With ``odd_frames``, frame 3 is 16x16 pixels and frame 6 is 32FC1 (no conversion to RGB exists).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    t = store.types
    folder = path.with_suffix("") if path.suffix == ".mcap" else path
    rng = np.random.default_rng(0)
    times = []
    with Writer(folder, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        image = writer.add_connection(TOPIC, "sensor_msgs/msg/Image", typestore=store)
        chatter = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        for i in range(GOOD_FRAMES + (2 if odd_frames else 0)):
            log_time = 1_700_000_000_000_000_000 + i * 100_000_000
            h, w, encoding, step = 48, 64, "rgb8", 64 * 3
            if odd_frames and i == 3:
                h, w, step = 16, 16, 16 * 3
            if odd_frames and i == 6:
                encoding, step = "32FC1", 64 * 4
            data = rng.integers(0, 256, h * step, dtype=np.uint8)
            header = t["std_msgs/msg/Header"](
                stamp=t["builtin_interfaces/msg/Time"](sec=log_time // 10**9, nanosec=log_time % 10**9),
                frame_id="cam",
            )
            msg = t["sensor_msgs/msg/Image"](
                header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=step, data=data
            )
            writer.write(image, log_time, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            text = t["std_msgs/msg/String"](data=f"frame {i}")
            writer.write(chatter, log_time + 1, store.serialize_cdr(text, "std_msgs/msg/String"))
            times.append(log_time)
    if path.suffix == ".mcap":
        (mcap,) = folder.glob("*.mcap")
        mcap.rename(path)
        shutil.rmtree(folder)
    return times


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_contract_onnx(tmp_path_factory.mktemp("model") / "model.onnx", input_hw=(64, 96), rela=False)


def _args(bag: Path, output: Path, model: Path, vocab: Path, *extra: str) -> list[str]:
    return ["--input", str(bag), "--output", str(output), "--image-topic", TOPIC, "--model", str(model),
            "--tokenizer", str(vocab), "--prompt", "cup . cat", "--device", "cpu", *extra]


def _topics(bag: Path) -> Counter[str]:
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        return Counter(c.topic for c, _, _ in reader.messages())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_frames_the_model_cannot_take_are_skipped_and_counted(
    tmp_path: Path, model: Path, vocab_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """#13 item 9: a 16 px frame and a 32FC1 frame are skipped like the node skips them, not fatal."""
    bag = tmp_path / "in"
    _write_bag(bag, odd_frames=True)
    assert main(_args(bag, tmp_path / "out", model, vocab_path)) == 0
    out = capsys.readouterr().out
    assert "skipped 2 frames the model cannot take (1 not convertible, 1 too small)" in out
    assert "First: frame 4" in out and "16" in out
    topics = _topics(tmp_path / "out")
    assert topics[TOPIC] == GOOD_FRAMES + 2  # the input frames are all copied
    assert topics["/gdino/result"] == topics["/gdino/mask"] == GOOD_FRAMES


def test_metadata_is_version_8_as_ros2_bag_record_writes_it(
    tmp_path: Path, model: Path, vocab_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#13 item 15: version 8, QoS as a YAML string (what Humble parses), ros_distro, the node's QoS,
    MCAP channels with topic_type_hash, and the marker that lets --overwrite recognise the bag."""
    from mcap.reader import make_reader

    monkeypatch.setenv("ROS_DISTRO", "humble")
    bag = tmp_path / "in"
    _write_bag(bag)
    output = tmp_path / "out"
    assert main(_args(bag, output, model, vocab_path)) == 0
    info = yaml.safe_load((output / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 8 and info["ros_distro"] == "humble"
    assert info["custom_data"] == {MARKER_KEY: "1", END_KEY: COMPLETE}
    topics = {t["topic_metadata"]["name"]: t["topic_metadata"] for t in info["topics_with_message_count"]}
    for name, meta in topics.items():
        assert isinstance(meta["offered_qos_profiles"], str), name  # Humble reads a string (version >= 4)
        assert meta["type_description_hash"].startswith("RIHS01_"), name
    (profile,) = yaml.safe_load(topics["/gdino/result"]["offered_qos_profiles"])
    # rclpy's enum values: KEEP_LAST 1, RELIABLE 1, VOLATILE 2, AUTOMATIC 1; infinite durations as recorded.
    policies = (profile["history"], profile["depth"], profile["reliability"], profile["durability"])
    assert policies == (1, 5, 1, 2)
    assert profile["liveliness"] == 1 and profile["deadline"] == {"sec": 9223372036, "nsec": 854775807}
    (mcap_file,) = output.glob("*.mcap")
    with mcap_file.open("rb") as stream:
        channels = make_reader(stream).get_summary().channels.values()
    for channel in channels:
        assert channel.metadata["topic_type_hash"] == topics[channel.topic]["type_description_hash"]
        assert channel.metadata["offered_qos_profiles"] == topics[channel.topic]["offered_qos_profiles"]


def test_overwrite_replaces_only_its_own_output(
    tmp_path: Path, model: Path, vocab_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bag = tmp_path / "in"
    _write_bag(bag)
    output = tmp_path / "out"
    assert main(_args(bag, output, model, vocab_path, "--end", "0.5")) == 0
    assert main(_args(bag, output, model, vocab_path)) == EXIT_OUTPUT
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(_args(bag, output, model, vocab_path, "--overwrite")) == 0
    assert _topics(output)["/gdino/result"] == GOOD_FRAMES
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_keeps_a_complete_bag_of_the_frames_before(
    tmp_path: Path, model: Path, vocab_path: Path, signum: signal.Signals
) -> None:
    """#13 item 3: the bag is finalised (metadata.yaml, MCAP summary) and renamed into place."""
    bag = tmp_path / "rec" / "run1.mcap"
    bag.parent.mkdir()
    times = _write_bag(bag)
    before = tree_digest(bag.parent)
    output = tmp_path / "out"
    process, logs = start(MODULE, _args(bag, output, model, vocab_path), tmp_path, per_frame_s=0.25)
    seen: list[float] = []

    def under_way() -> bool:  # the hidden bag exists and a few frames are in
        import time

        if not seen and list(tmp_path.glob(".out.partial-*")):
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > 1.0

    outcome = interrupt_when(process, logs, under_way, signum)
    assert outcome.returncode == EXIT_INTERRUPTED, outcome.stderr
    assert "interrupted" in outcome.stderr and "frames before" in outcome.stderr
    assert tree_digest(bag.parent) == before
    topics = _topics(output)  # readable: index, summary and metadata.yaml are there
    done = topics["/gdino/result"]
    assert 0 < done < len(times)
    assert topics[TOPIC] >= done and topics["/gdino/mask"] == done
    assert f"the {done} frames before" in outcome.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
@pytest.mark.parametrize(("storage", "why"), [("mcap", "file size limit"), ("sqlite3", "disk I/O error")])
def test_disk_full_leaves_no_output(
    tmp_path: Path, model: Path, vocab_path: Path, storage: str, why: str
) -> None:
    """#13 item 3: a write failure (file size limit) is one line, and nothing half-written remains."""
    bag = tmp_path / "in"
    _write_bag(bag)
    before = tree_digest(bag)
    output = tmp_path / "out"
    args = _args(bag, output, model, vocab_path, "--storage", storage)
    outcome = run(MODULE, args, tmp_path, file_limit=60_000)
    assert outcome.returncode == EXIT_OUTPUT, outcome.stderr
    (line,) = outcome.stderr.strip().splitlines()[-1:]
    assert line.startswith("gdino-bag: error: cannot write the output bag") and why in line
    assert "no output was written" in line
    assert not output.exists() and _leftovers(tmp_path) == [] and tree_digest(bag) == before


@pytest.mark.slow
def test_disk_full_leaves_an_earlier_output_unchanged(tmp_path: Path, model: Path, vocab_path: Path) -> None:
    bag = tmp_path / "in"
    _write_bag(bag)
    before = tree_digest(bag)
    output = tmp_path / "out"

    assert run(MODULE, _args(bag, output, model, vocab_path, "--end", "0.5"), tmp_path).returncode == 0
    earlier = tree_digest(output)
    outcome = run(MODULE, _args(bag, output, model, vocab_path, "--overwrite"), tmp_path, file_limit=60_000)
    assert outcome.returncode == EXIT_OUTPUT and "the earlier output is unchanged" in outcome.stderr
    assert tree_digest(output) == earlier and tree_digest(bag) == before
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_output_that_holds_the_input_or_is_a_file_is_refused(
    tmp_path: Path, model: Path, vocab_path: Path
) -> None:
    """#13 items 1 and 2, as the issue ran them: --output rec (the input's folder) and --output notes.txt."""
    bag = tmp_path / "rec" / "run1.mcap"
    bag.parent.mkdir()
    _write_bag(bag)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    before = tree_digest(bag.parent)
    for output, words in ((bag.parent, "holds the input"), (notes, "not a folder"), (bag, "input")):
        outcome = run(MODULE, _args(bag, output, model, vocab_path, "--overwrite"), tmp_path)
        assert outcome.returncode == EXIT_OUTPUT, outcome.stderr
        (line,) = outcome.stderr.strip().splitlines()
        assert line.startswith("gdino-bag: error:") and words in line
        assert tree_digest(bag.parent) == before and notes.read_text() == "keep me"
        assert _leftovers(tmp_path) == []


def test_exit_codes_name_the_kind(tmp_path: Path, model: Path, vocab_path: Path) -> None:
    bag = tmp_path / "in"
    _write_bag(bag)
    assert main(_args(bag, tmp_path / "a", model, vocab_path, "--start", "2", "--end", "1")) == 2
    assert main(_args(tmp_path / "absent", tmp_path / "b", model, vocab_path)) == EXIT_INPUT
    assert main(_args(bag, tmp_path / "c", tmp_path / "absent.onnx", vocab_path)) == 4
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
