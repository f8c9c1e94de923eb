"""gdino-bag end to end: real photos in MCAP and sqlite3 bags, the tiny random-weight model, the output read
back with rosbags and with the mcap reader and checked message by message against the inference core."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from message_values import plain

from gdino_ros.conversions.messages import OUTPUT_TYPES
from gdino_ros.errors import EXIT_INPUT, EXIT_OUTPUT
from gdino_ros.tools.bag import main

IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_TOPIC = "/camera/image_raw/compressed"
CHATTER_TOPIC = "/chatter"
OUTPUTS = ("/gdino/detections", "/gdino/mask", "/gdino/no_target", "/gdino/result")
PROMPT = "person . cup . cat ."
SHARE = Path(sys.prefix) / "share"

pytestmark = pytest.mark.slow  # every test runs the exported tiny model end to end


@dataclass(frozen=True)
class Frame:
    """One recorded camera frame: what went into the bag and the pixels a decoder must get back."""

    log_time: int
    stamp: tuple[int, int]
    frame_id: str
    rgb: np.ndarray  # as stored (Image) or as JPEG-decoded (CompressedImage)


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]


def _write_input_bag(path: Path, storage: str) -> dict[str, list[Frame]]:
    """A recorder's bag: each photo as Image (rgb8/bgr8) and CompressedImage (JPEG), plus a String topic.

    Header stamps are 7 ms before the log times, so outputs that copy the wrong one are caught.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    t = store.types
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    frames: dict[str, list[Frame]] = {IMAGE_TOPIC: [], COMPRESSED_TOPIC: []}
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        raw = writer.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=store)
        compressed = writer.add_connection(
            COMPRESSED_TOPIC, "sensor_msgs/msg/CompressedImage", typestore=store
        )
        chatter = writer.add_connection(CHATTER_TOPIC, "std_msgs/msg/String", typestore=store)
        for i, rgb in enumerate(_photos()):
            stamp = (1_700_000_000 + i, 100_000_000 * i + 5)
            log_time = stamp[0] * 10**9 + stamp[1] + 7_000_000
            header = t["std_msgs/msg/Header"](
                stamp=t["builtin_interfaces/msg/Time"](sec=stamp[0], nanosec=stamp[1]), frame_id=f"cam{i}"
            )
            encoding, stored = ("rgb8", rgb) if i % 2 == 0 else ("bgr8", rgb[..., ::-1])
            image = t["sensor_msgs/msg/Image"](
                header=header,
                height=rgb.shape[0],
                width=rgb.shape[1],
                encoding=encoding,
                is_bigendian=0,
                step=rgb.shape[1] * 3,
                data=np.ascontiguousarray(stored).reshape(-1),
            )
            ok, jpeg = cv2.imencode(
                ".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90]
            )
            assert ok
            compressed_msg = t["sensor_msgs/msg/CompressedImage"](
                header=header, format="jpeg", data=jpeg.reshape(-1)
            )
            text = t["std_msgs/msg/String"](data=f"frame {i}")
            writer.write(chatter, log_time - 1_000_000, store.serialize_cdr(text, "std_msgs/msg/String"))
            writer.write(raw, log_time, store.serialize_cdr(image, "sensor_msgs/msg/Image"))
            writer.write(
                compressed,
                log_time + 1_000_000,
                store.serialize_cdr(compressed_msg, "sensor_msgs/msg/CompressedImage"),
            )
            decoded = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            frames[IMAGE_TOPIC].append(Frame(log_time, stamp, f"cam{i}", rgb))
            frames[COMPRESSED_TOPIC].append(Frame(log_time + 1_000_000, stamp, f"cam{i}", decoded))
    return frames


@pytest.fixture(scope="module")
def tiny_model(tiny_model_files: Any) -> Path:
    """The session's tiny random-weight ONNX (what ``gdino-export --random-init --config tiny`` writes)."""
    return tiny_model_files.onnx


@pytest.fixture(scope="module")
def input_bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, list[Frame]]]]:
    root = tmp_path_factory.mktemp("bags")
    return {
        storage: (root / storage, _write_input_bag(root / storage, storage))
        for storage in ("mcap", "sqlite3")
    }


def _segmenter(model: Path, vocab: Path, prompt: str, mode: str = "auto") -> Any:
    from gdino_ros.core.segmenter import Segmenter

    return Segmenter.from_model(model, tokenizer_path=vocab, device="cpu", prompt=prompt, mode=mode)


def _gdino_bag(
    bag: Path, output: Path, topic: str, model: Path, vocab: Path | None = None, *extra: str | Path,
    prompt: str | None = PROMPT,
) -> int:
    """gdino-bag's main() as the command line would call it."""
    args = ["--input", bag, "--output", output, "--image-topic", topic, "--model", model, "--device", "cpu"]
    args += ["--prompt", prompt] if prompt is not None else []
    args += ["--tokenizer", vocab] if vocab is not None else []
    return main([str(a) for a in [*args, *extra]])


def _read_rosbags(path: Path) -> tuple[dict[str, list[tuple[int, Any, bytes]]], dict[str, Any]]:
    """topic -> [(log time, decoded, raw)], and topic -> connection, via rosbags' AnyReader.

    AnyReader builds its types from the definitions embedded in the bag and checks them against the
    stored RIHS01 hashes, so decoding proves the embedded definitions are complete and consistent.
    """
    from rosbags.highlevel import AnyReader

    out: dict[str, list[tuple[int, Any, bytes]]] = defaultdict(list)
    with AnyReader([path]) as reader:
        connections = {c.topic: c for c in reader.connections}
        for connection, log_time, raw in reader.messages():
            out[connection.topic].append((log_time, reader.deserialize(raw, connection.msgtype), bytes(raw)))
    return out, connections


def _read_mcap(path: Path) -> dict[str, list[tuple[int, Any]]]:
    """topic -> [(log time, decoded)] via the mcap library and its ROS 2 decoder (independent of rosbags)."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    (file,) = path.glob("*.mcap")
    out: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    with file.open("rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for _schema, channel, message, decoded in reader.iter_decoded_messages(log_time_order=True):
            out[channel.topic].append((message.log_time, decoded))
    return out


def _built_hash(type_name: str) -> str:
    package, _, name = type_name.split("/")
    return json.loads((SHARE / package / "msg" / f"{name}.json").read_text())["type_hashes"][0]["hash_string"]


def _check_against_core(outputs: dict[str, Any], frame: Frame, expected: Any) -> None:
    """Every output of one frame against the core's Result for the same pixels."""
    for topic in OUTPUTS + ("/gdino/overlay",):
        if topic in outputs and topic != "/gdino/no_target":
            header = outputs[topic].header
            assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (*frame.stamp, frame.frame_id)
    detections = outputs["/gdino/detections"].detections
    assert len(detections) == len(expected.detections)
    for got, want in zip(detections, expected.detections, strict=True):
        x0, y0, x1, y1 = want.box_xyxy
        assert got.results[0].hypothesis.class_id == want.label
        assert got.results[0].hypothesis.score == pytest.approx(want.score, rel=1e-5)
        assert got.bbox.center.position.x == pytest.approx((x0 + x1) / 2, abs=1e-3)
        assert got.bbox.center.position.y == pytest.approx((y0 + y1) / 2, abs=1e-3)
        assert (got.bbox.size_x, got.bbox.size_y) == pytest.approx((x1 - x0, y1 - y0), abs=1e-3)
    mask = outputs["/gdino/mask"]
    assert (mask.encoding, mask.height, mask.width) == ("mono8", *frame.rgb.shape[:2])  # auto: few instances
    labels = np.frombuffer(bytes(mask.data), dtype=np.uint8).reshape(mask.height, mask.width)
    np.testing.assert_array_equal(labels, expected.label_image)
    values = [int(v) for v in outputs["/gdino/result"].label_values]  # detection -> its label-image value
    assert values == [d.instance_id for d in expected.detections]
    assert set(np.unique(labels)) - {0} <= set(values)
    assert bool(outputs["/gdino/no_target"].data) == expected.no_target
    result = outputs["/gdino/result"]
    assert (result.prompt, result.prompt_mode) == (expected.prompt, expected.mode)
    assert bool(result.no_target) == expected.no_target
    if math.isnan(expected.no_target_probability):
        assert math.isnan(result.no_target_probability)
    else:
        assert result.no_target_probability == pytest.approx(expected.no_target_probability, rel=1e-5)
    assert plain(result.detections) == plain(detections)
    assert (result.mask.height, result.mask.width) == (0, 0)  # the label image is in /gdino/mask only


@pytest.mark.parametrize(
    ("storage", "topic", "overlay"), [("mcap", IMAGE_TOPIC, True), ("sqlite3", COMPRESSED_TOPIC, False)]
)
def test_outputs_equal_the_core_and_read_back_with_rosbags_and_mcap(
    input_bags: dict, tiny_model: Path, vocab_path: Path, tmp_path: Path, storage: str, topic: str,
    overlay: bool,
) -> None:
    bag, frames = input_bags[storage]
    output = tmp_path / "out"
    assert _gdino_bag(bag, output, topic, tiny_model, vocab_path, *(["--overlay"] if overlay else [])) == 0

    got, connections = _read_rosbags(output)
    from_mcap = _read_mcap(output)
    outputs = OUTPUTS + (("/gdino/overlay",) if overlay else ())
    assert set(got) == {IMAGE_TOPIC, COMPRESSED_TOPIC, CHATTER_TOPIC, *outputs}

    # Input topics are copied through unchanged: same type, definition, hash, log times and bytes.
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        for connection, log_time, raw in reader.messages():
            assert (log_time, bytes(raw)) in [(t, r) for t, _, r in got[connection.topic]]
            copied = connections[connection.topic]
            assert (copied.msgtype, copied.msgdef, copied.digest) == (
                connection.msgtype, connection.msgdef, connection.digest)
    for name, type_name in OUTPUT_TYPES.items():
        if name != "overlay":
            assert connections[f"/gdino/{name}"].msgtype == type_name
            assert connections[f"/gdino/{name}"].digest == _built_hash(type_name)

    segmenter = _segmenter(tiny_model, vocab_path, PROMPT)
    assert all(len(got[t]) == len(frames[topic]) for t in outputs)
    assert sum(len(m.detections) for _, m, _ in got["/gdino/detections"]) > 0, "nothing to compare"
    for index, frame in enumerate(frames[topic]):
        expected = segmenter(frame.rgb)
        per_topic = {}
        for t in outputs:
            log_time, message, _ = got[t][index]
            assert log_time == frame.log_time, t
            per_topic[t] = message
            mcap_time, mcap_message = from_mcap[t][index]
            assert mcap_time == log_time
            assert plain(mcap_message) == plain(message), t
        _check_against_core(per_topic, frame, expected)
        if overlay:
            from gdino_ros.core.overlay import draw_overlay

            image = per_topic["/gdino/overlay"]
            assert image.encoding == "rgb8"
            pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(image.height, image.width, 3)
            np.testing.assert_array_equal(pixels, draw_overlay(frame.rgb, expected))


@pytest.mark.usefixtures("ros_context")
def test_detection_bytes_equal_what_rclpy_serialises(
    input_bags: dict, tiny_model: Path, vocab_path: Path, tmp_path: Path
) -> None:
    """The bag's Detection2DArray bytes, against rclpy serialising the same Result (padding normalised)."""
    from rclpy.serialization import serialize_message
    from std_msgs.msg import Header

    from gdino_ros.conversions.messages import result_to_messages, ros_message_types
    from gdino_ros.conversions.planner_frames import PlannerFrames
    from gdino_ros.conversions.typestore import project_typestore
    from gdino_ros.core.tracking import TrackingParams

    bag, frames = input_bags["mcap"]
    (bare_mcap,) = bag.glob("*.mcap")  # the storage file alone, without metadata.yaml
    output = tmp_path / "out"
    assert _gdino_bag(bare_mcap, output, IMAGE_TOPIC, tiny_model, vocab_path, "--end", "1.5") == 0
    got, _ = _read_rosbags(output)
    assert len(got["/gdino/detections"]) == 2  # frames at 0.001 s and 1.101 s from the bag start
    store, types = project_typestore(), ros_message_types()
    segmenter = _segmenter(tiny_model, vocab_path, PROMPT)
    name = "vision_msgs/msg/Detection2DArray"
    tracks = PlannerFrames(TrackingParams(), None, 0.0)  # the bag's detections carry track ids
    for (_, _, raw), frame in zip(got["/gdino/detections"], frames[IMAGE_TOPIC], strict=False):
        header = Header(frame_id=frame.frame_id)
        header.stamp.sec, header.stamp.nanosec = frame.stamp
        result = segmenter(frame.rgb)
        ids, _ = tracks.frame(result, header)
        theirs = serialize_message(result_to_messages(result, header, types, **ids).detections)
        assert len(theirs) - len(raw) in range(4)
        assert bytes(store.serialize_cdr(store.deserialize_cdr(theirs, name), name)) == raw


def test_prompt_schedule_switches_prompt_and_mode(
    input_bags: dict, tiny_model: Path, vocab_path: Path, tmp_path: Path
) -> None:
    bag, frames = input_bags["sqlite3"]
    compressed = frames[COMPRESSED_TOPIC]
    schedule = tmp_path / "prompts.yaml"
    schedule.write_text(
        f"- at: 0\n  prompt: 'cat'\n"
        f"- at_ns: {compressed[2].log_time}\n  prompt: 'the cat on the left'\n  mode: expression\n"
    )
    output = tmp_path / "out"
    rc = _gdino_bag(bag, output, COMPRESSED_TOPIC, tiny_model, vocab_path, "--prompt-schedule", schedule,
                    "--storage", "sqlite3", prompt=None)
    assert rc == 0
    assert len(list(output.glob("*.db3"))) == 1
    got, _ = _read_rosbags(output)
    prompts = [(m.prompt, m.prompt_mode) for _, m, _ in got["/gdino/result"]]
    assert prompts == [("cat", "phrases")] * 2 + [("the cat on the left", "expression")] * 2


def test_missing_topic_lists_the_topics_that_exist(
    input_bags: dict, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bag, _ = input_bags["mcap"]
    assert _gdino_bag(bag, tmp_path / "out", "/camera/left", tiny_model) == EXIT_INPUT
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gdino-bag: error:")
    assert "/camera/left" in err
    for topic in (IMAGE_TOPIC, COMPRESSED_TOPIC, CHATTER_TOPIC):
        assert topic in err
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(
    input_bags: dict, tiny_model: Path, vocab_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bag, frames = input_bags["mcap"]
    output = tmp_path / "out"
    assert _gdino_bag(bag, output, IMAGE_TOPIC, tiny_model, vocab_path, "--end", "0.5") == 0
    earlier = (output / "metadata.yaml").read_text()
    assert _gdino_bag(bag, output, IMAGE_TOPIC, tiny_model, vocab_path, "--start", "2.5") == EXIT_OUTPUT
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and len(err.splitlines()) == 1
    assert (output / "metadata.yaml").read_text() == earlier

    assert _gdino_bag(bag, output, IMAGE_TOPIC, tiny_model, vocab_path, "--start", "2.5", "--overwrite") == 0
    got, _ = _read_rosbags(output)
    assert [t for t, _, _ in got["/gdino/result"]] == [frames[IMAGE_TOPIC][3].log_time]
    assert [t for t, _, _ in got[CHATTER_TOPIC]] == [frames[IMAGE_TOPIC][3].log_time - 1_000_000]

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "metadata.yaml").write_text("old")
    (precious / "notes.txt").write_text("keep me")
    assert _gdino_bag(bag, precious, IMAGE_TOPIC, tiny_model, vocab_path, "--overwrite") == EXIT_OUTPUT
    assert "only a bag written by gdino-bag is replaced" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"


def test_truncated_mcap_keeps_the_frames_before_the_break(
    input_bags: dict, tiny_model: Path, vocab_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recording killed mid-write: no index, last chunk cut. The complete chunks are processed."""
    bag, frames = input_bags["mcap"]
    damaged = tmp_path / "killed"
    shutil.copytree(bag, damaged)
    (file,) = damaged.glob("*.mcap")
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * 0.7)])
    output = tmp_path / "out"
    assert _gdino_bag(damaged, output, IMAGE_TOPIC, tiny_model, vocab_path) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert "damaged" in err[-1] and "record #" in err[-1] and str(output) in err[-1]
    got, _ = _read_rosbags(output)
    done = [t for t, _, _ in got["/gdino/result"]]
    assert 0 < len(done) < len(frames[IMAGE_TOPIC])
    assert done == [f.log_time for f in frames[IMAGE_TOPIC][: len(done)]]
    segmenter = _segmenter(tiny_model, vocab_path, PROMPT)
    for index, frame in enumerate(frames[IMAGE_TOPIC][: len(done)]):
        _check_against_core({t: got[t][index][1] for t in OUTPUTS}, frame, segmenter(frame.rgb))


def test_corrupt_sqlite3_record_is_reported_and_earlier_frames_kept(
    input_bags: dict, tiny_model: Path, vocab_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bag, frames = input_bags["sqlite3"]
    damaged = tmp_path / "damaged"
    shutil.copytree(bag, damaged)
    (db,) = damaged.glob("*.db3")
    bad = frames[COMPRESSED_TOPIC][2]
    with sqlite3.connect(db) as connection:
        update = "UPDATE messages SET data = x'0001000005' WHERE timestamp = ?"
        changed = connection.execute(update, (bad.log_time,))
        assert changed.rowcount == 1
    output = tmp_path / "out"
    assert _gdino_bag(damaged, output, COMPRESSED_TOPIC, tiny_model, vocab_path) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "frame 3" in err[0] and str(bad.log_time) in err[0] and "2 frames" in err[0]
    got, _ = _read_rosbags(output)
    assert [t for t, _, _ in got["/gdino/result"]] == [f.log_time for f in frames[COMPRESSED_TOPIC][:2]]


def test_each_frame_is_queued_before_the_previous_one_is_written(
    input_bags: dict, tiny_model: Path, vocab_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One frame in flight: a GPU computes frame k + 1 while frame k is post-processed and written."""
    from gdino_ros.core.segmenter import Segmenter

    events: list[str] = []
    submit, finish = Segmenter.submit, Segmenter.finish

    def recorded_submit(self: Segmenter, *args: Any, **kwargs: Any) -> Any:
        events.append("submit")
        return submit(self, *args, **kwargs)

    def recorded_finish(self: Segmenter, job: Any) -> Any:
        events.append("finish")
        return finish(self, job)

    monkeypatch.setattr(Segmenter, "submit", recorded_submit)
    monkeypatch.setattr(Segmenter, "finish", recorded_finish)
    bag, _ = input_bags["mcap"]
    output = tmp_path / "out"
    assert _gdino_bag(bag, output, IMAGE_TOPIC, tiny_model, vocab_path) == 0
    frames = len(_read_rosbags(output)[0]["/gdino/result"])
    assert frames >= 3
    assert events == ["submit"] + ["submit", "finish"] * (frames - 1) + ["finish"]
