"""Result -> ROS messages, for rclpy classes and rosbags dataclasses, and the rosbags typestore's types."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from message_values import plain

from gdino_ros.conversions import typestore as typestore_module
from gdino_ros.conversions.encodings import MONO8, MONO16, RGB8
from gdino_ros.conversions.messages import (
    OUTPUT_TYPES,
    ResultMessages,
    result_to_messages,
    ros_message_types,
    rosbags_message_types,
)
from gdino_ros.conversions.typestore import (
    PROJECT_MESSAGES,
    MessageDefinitionsNotFoundError,
    message_directory,
    project_typestore,
)
from gdino_ros.core.result import Detection, Result, label_dtype

STAMP = (1_700_000_123, 456_789_000)
FRAME = "camera_color_optical_frame"
SHARE = Path(sys.prefix) / "share"  # where the rosidl build of the same .msg files installed its JSON


@pytest.fixture(scope="module")
def store() -> Any:
    return project_typestore()


def _three_instance_result(probability: float = 0.125) -> Result:
    """Three overlapping boxes; the label image paints lower scores first so higher ones win overlaps."""
    height, width = 60, 80
    boxes = [(10.0, 20.0, 50.0, 40.0), (40.5, 5.25, 70.0, 55.0), (0.0, 0.0, 15.0, 12.0)]
    labels, scores = ["red cup", "bottle", "red cup"], [0.875, 0.5, 0.25]
    label_image = np.zeros((height, width), dtype=label_dtype(3))  # uint8, as post-processing gives it
    detections = []
    for k in (3, 2, 1):
        x0, y0, x1, y1 = boxes[k - 1]
        mask = np.zeros((height, width), dtype=bool)
        mask[int(y0) : int(math.ceil(y1)), int(x0) : int(math.ceil(x1))] = True
        label_image[mask] = k
        detections.append(Detection(k, labels[k - 1], 0 if labels[k - 1] == "red cup" else 1, scores[k - 1],
                                    boxes[k - 1], mask))
    detections.reverse()
    return Result("red cup . bottle .", "phrases", detections, label_image, False, probability)


def _empty_result() -> Result:
    return Result("giraffe", "expression", [], np.zeros((48, 64), dtype=label_dtype(0)), True, 0.97)


def _ros_header() -> Any:
    from std_msgs.msg import Header

    header = Header(frame_id=FRAME)
    header.stamp.sec, header.stamp.nanosec = STAMP
    return header


def _rosbags_header(store: Any) -> Any:
    time = store.types["builtin_interfaces/msg/Time"](sec=STAMP[0], nanosec=STAMP[1])
    return store.types["std_msgs/msg/Header"](stamp=time, frame_id=FRAME)


def _both(result: Result, store: Any, **kwargs: Any) -> tuple[ResultMessages, ResultMessages]:
    """The same conversion done once with rclpy classes and once with rosbags classes."""
    ros = result_to_messages(result, _ros_header(), ros_message_types(), **kwargs)
    bags = result_to_messages(result, _rosbags_header(store), rosbags_message_types(store), **kwargs)
    return ros, bags


def _pixels(image: Any, dtype: type) -> np.ndarray:
    return np.frombuffer(bytes(image.data), dtype=dtype).reshape(image.height, image.width, -1).squeeze(-1)


def _assert_header(header: Any) -> None:
    assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (*STAMP, FRAME)


@pytest.mark.usefixtures("ros_context")
def test_detections_mask_and_result_match_the_result_in_both_frameworks(store: Any) -> None:
    result = _three_instance_result()
    ros, bags = _both(result, store)
    for out in (ros, bags):
        for name, msg in out.items():
            if name != "no_target":  # std_msgs/Bool has no header
                _assert_header(msg.header)
        dets = out.detections.detections
        assert [d.id for d in dets] == ["", "", ""]  # no track ids given
        assert list(out.result.label_values) == [1, 2, 3]
        assert [d.results[0].hypothesis.class_id for d in dets] == ["red cup", "bottle", "red cup"]
        assert [d.results[0].hypothesis.score for d in dets] == [0.875, 0.5, 0.25]
        for d in dets:
            _assert_header(d.header)
            assert len(d.results) == 1
        # (10, 20, 50, 40): centre (30, 30), 40 x 20; (40.5, 5.25, 70, 55): (55.25, 30.125), 29.5 x 49.75
        assert (dets[0].bbox.center.position.x, dets[0].bbox.center.position.y) == (30.0, 30.0)
        assert (dets[0].bbox.size_x, dets[0].bbox.size_y) == (40.0, 20.0)
        assert (dets[1].bbox.center.position.x, dets[1].bbox.center.position.y) == (55.25, 30.125)
        assert (dets[1].bbox.size_x, dets[1].bbox.size_y) == (29.5, 49.75)
        assert dets[2].bbox.center.theta == 0.0

        mask = out.mask  # mask_encoding auto: three instances fit mono8
        assert (mask.height, mask.width, mask.step) == (60, 80, 80)
        assert (mask.encoding, mask.is_bigendian) == (MONO8, 0)
        labels = _pixels(mask, np.uint8)
        np.testing.assert_array_equal(labels, result.label_image)
        values = [int(v) for v in out.result.label_values]
        assert set(np.unique(labels)) - {0} == set(values)
        for d, value in zip(dets, values, strict=True):  # every value's pixels touch its box ([k, k + 1))
            ys, xs = np.nonzero(labels == value)
            cx, cy, w, h = d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x, d.bbox.size_y
            assert math.floor(cx - w / 2) <= xs.min() and xs.max() < cx + w / 2
            assert math.floor(cy - h / 2) <= ys.min() and ys.max() < cy + h / 2

        assert out.no_target.data is False
        seg = out.result
        assert (seg.prompt, seg.prompt_mode, seg.no_target) == ("red cup . bottle .", "phrases", False)
        assert seg.no_target_probability == 0.125
        assert plain(seg.detections) == plain(out.detections.detections)
        # Streamed, the label image goes out once (gdino/mask); the result's is empty, with the header.
        _assert_header(seg.mask.header)
        assert (seg.mask.height, seg.mask.width, len(seg.mask.data)) == (0, 0, 0)
        assert out.overlay is None and out.dropped_instances == 0
    for name, _ in ros.items():
        assert plain(getattr(ros, name)) == plain(getattr(bags, name)), name
    for out in _both(result, store, mask_encoding=MONO16):  # a fixed type for consumers that need one
        assert (out.mask.encoding, out.mask.step, out.result.mask.encoding) == (MONO16, 160, MONO16)
        np.testing.assert_array_equal(_pixels(out.mask, np.dtype("<u2")), result.label_image)
    for out in _both(result, store, standalone=True):  # a service answer carries the label image itself
        assert plain(out.result.mask) == plain(out.mask)
        np.testing.assert_array_equal(_pixels(out.result.mask, np.uint8), result.label_image)


@pytest.mark.usefixtures("ros_context")
def test_empty_result_gives_empty_arrays_and_a_blank_mask(store: Any) -> None:
    for out in _both(_empty_result(), store):
        assert list(out.detections.detections) == [] and list(out.result.detections) == []
        assert (out.mask.height, out.mask.width, out.mask.encoding) == (48, 64, MONO8)
        assert not _pixels(out.mask, np.uint8).any()
        assert out.no_target.data is True and out.result.no_target is True
        assert out.result.prompt_mode == "expression"
        _assert_header(out.detections.header)


@pytest.mark.usefixtures("ros_context")
def test_nan_probability_for_models_without_a_no_target_head(store: Any) -> None:
    from gdino_ros.msg import SegmentationResult
    from rclpy.serialization import deserialize_message

    ros, bags = _both(_three_instance_result(probability=float("nan")), store)
    assert math.isnan(ros.result.no_target_probability) and math.isnan(bags.result.no_target_probability)
    raw = bytes(store.serialize_cdr(bags.result, OUTPUT_TYPES["result"]))
    assert math.isnan(deserialize_message(raw, SegmentationResult).no_target_probability)


@pytest.mark.usefixtures("ros_context")
def test_beyond_255_instances_mono8_drops_consistently_and_auto_turns_mono16(store: Any) -> None:
    n = 300
    label_image = np.zeros((20, n), dtype=np.uint16)
    detections = []
    for k in range(1, n + 1):
        label_image[:, k - 1] = k
        mask = label_image == k
        detections.append(Detection(k, "dot", 0, 1.0 - k / 1000, (k - 1.0, 0.0, float(k), 20.0), mask))
    result = Result("dot", "phrases", detections, label_image, False, 0.0)
    for out in _both(result, store, mask_encoding=MONO8):
        labels = _pixels(out.mask, np.uint8)
        assert out.mask.encoding == MONO8 and out.mask.step == n
        assert out.dropped_instances == n - 255
        assert len(out.detections.detections) == 255
        assert [int(v) for v in out.result.label_values] == list(range(1, 256))
        np.testing.assert_array_equal(labels[:, :255], label_image[:, :255])
        assert not labels[:, 255:].any()
    for encoding in (MONO16, None):  # None: the default, auto, which is mono16 for this frame
        for out in _both(result, store, **({} if encoding is None else {"mask_encoding": encoding})):
            assert out.dropped_instances == 0 and len(out.detections.detections) == n
            assert out.mask.encoding == MONO16
            np.testing.assert_array_equal(_pixels(out.mask, np.dtype("<u2")), label_image)


def test_unknown_mask_encoding_is_refused(store: Any) -> None:
    with pytest.raises(ValueError, match="mono32"):
        result_to_messages(_empty_result(), _rosbags_header(store), rosbags_message_types(store),
                           mask_encoding="mono32")


@pytest.mark.usefixtures("ros_context")
def test_overlay_is_rgb8_with_the_input_header(store: Any) -> None:
    from skimage import data

    rgb = data.astronaut()[:60, :80]
    for out in _both(_three_instance_result(), store, overlay_rgb=rgb):
        overlay = out.overlay
        assert (overlay.encoding, overlay.height, overlay.width, overlay.step) == (RGB8, 60, 80, 240)
        np.testing.assert_array_equal(np.frombuffer(bytes(overlay.data), np.uint8).reshape(60, 80, 3), rgb)
        _assert_header(out.overlay.header)
        assert [name for name, _ in out.items()] == list(OUTPUT_TYPES)


@pytest.mark.usefixtures("ros_context")
def test_rosbags_cdr_equals_rclpy_serialisation(store: Any) -> None:
    """Same bytes up to padding: ROS leaves alignment padding uninitialised, so compare by re-encoding."""
    from rclpy.serialization import deserialize_message, serialize_message
    from skimage import data

    ros, bags = _both(_three_instance_result(), store, overlay_rgb=data.coffee()[:60, :80])
    for name, ros_msg in ros.items():
        type_name = OUTPUT_TYPES[name]
        ours = bytes(store.serialize_cdr(getattr(bags, name), type_name))
        theirs = serialize_message(ros_msg)
        assert len(theirs) - len(ours) in range(4), name  # rclpy may append up to 3 padding bytes
        reencoded = bytes(store.serialize_cdr(store.deserialize_cdr(theirs, type_name), type_name))
        assert reencoded == ours, name
        assert deserialize_message(ours, type(ros_msg)) == ros_msg, name


def _built_hash(type_name: str) -> str:
    package, _, name = type_name.split("/")
    description = json.loads((SHARE / package / "msg" / f"{name}.json").read_text())
    return description["type_hashes"][0]["hash_string"]


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_type_hashes_equal_the_rosidl_build(distro: str) -> None:
    store = project_typestore(distro)
    names = [f"{package}/msg/{name}" for package, names in PROJECT_MESSAGES.items() for name in names]
    names += ["sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "std_msgs/msg/Bool"]
    for type_name in names:
        assert store.hash_rihs01(type_name) == _built_hash(type_name), type_name


def test_installed_tree_is_found_and_absence_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = {package: tmp_path / "nowhere" / package for package in PROJECT_MESSAGES}
    monkeypatch.setattr(typestore_module, "_SOURCE_DIRS", missing)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(sys.prefix))
    assert message_directory("vision_msgs") == SHARE / "vision_msgs" / "msg"
    assert message_directory("gdino_ros") == SHARE / "gdino_ros" / "msg"
    installed = project_typestore()
    for type_name in ("gdino_ros/msg/SegmentationResult", "vision_msgs/msg/Detection2DArray"):
        assert installed.hash_rihs01(type_name) == _built_hash(type_name)

    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    with pytest.raises(MessageDefinitionsNotFoundError, match="AMENT_PREFIX_PATH") as error:
        project_typestore()
    assert str(tmp_path / "nowhere") in str(error.value)


@pytest.mark.usefixtures("ros_context")
def test_rclpy_image_messages_keep_their_pixel_array_without_a_copy() -> None:
    """A 1080p label image is 4 MB: rclpy must keep the array it is given, on Humble and on Jazzy."""
    import dataclasses

    from gdino_ros.conversions.messages import label_image_msg

    made: list[Any] = []
    types = ros_message_types()
    recording = dataclasses.replace(types, uint8_sequence=lambda data: made.append(types.uint8_sequence(data))
                                    or made[-1])
    message = label_image_msg(np.arange(12, dtype=np.uint16).reshape(3, 4), _ros_header(), recording, MONO16)
    assert message.data is made[-1]
    assert bytes(message.data) == np.arange(12, dtype="<u2").tobytes()
