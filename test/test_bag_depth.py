"""gdino-bag with depth and camera_info topics: /gdino/detections_3d per colour frame, with its header.

The input bag is written as a recorder would: per frame a colour image (a real photo), a 16UC1 depth
image of a wall 1.5 m away with the same stamp (logged just before or just after the colour frame), and
camera_info; one frame's depth is missing. The tiny random-weight model finds some instances; their 3-D
must lie on the wall.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skimage import data as skdata

from gdino_ros.tools.bag.cli import main

COLOUR, INFO = "/camera/color/image_raw", "/camera/color/camera_info"
DEPTH = "/camera/aligned_depth/image_raw"
FRAME_ID = "camera_color_optical_frame"
WALL_MM = 1500
FRAMES = 5
NO_DEPTH = 3  # this frame's depth image is not recorded

pytestmark = pytest.mark.slow  # the tiny network on five frames, twice


def _write_bag(path: Path) -> list[tuple[int, int]]:
    """Write the input bag; return each frame's header stamp."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    t = store.types
    rgb = np.ascontiguousarray(skdata.astronaut()[:240, 100:420])
    stamps = []
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        colour = writer.add_connection(COLOUR, "sensor_msgs/msg/Image", typestore=store)
        depth = writer.add_connection(DEPTH, "sensor_msgs/msg/Image", typestore=store)
        info = writer.add_connection(INFO, "sensor_msgs/msg/CameraInfo", typestore=store)
        for i in range(FRAMES):
            stamp = (1_700_000_000 + i, 40_000_000)
            stamps.append(stamp)
            log_time = stamp[0] * 10**9 + stamp[1] + 9_000_000  # logged 9 ms after capture
            header = t["std_msgs/msg/Header"](
                stamp=t["builtin_interfaces/msg/Time"](sec=stamp[0], nanosec=stamp[1]), frame_id=FRAME_ID)
            image = t["sensor_msgs/msg/Image"](header=header, height=240, width=320, encoding="rgb8",
                                               is_bigendian=0, step=960, data=rgb.reshape(-1))
            # Half-resolution registered depth, as some cameras send it.
            wall = np.full((120, 160), WALL_MM, dtype="<u2")
            depth_msg = t["sensor_msgs/msg/Image"](
                header=header, height=120, width=160, encoding="16UC1", is_bigendian=0, step=320,
                data=wall.view(np.uint8).reshape(-1))
            camera = t["sensor_msgs/msg/CameraInfo"](
                header=header, height=240, width=320, distortion_model="plumb_bob",
                d=np.zeros(5), k=np.array([300.0, 0, 159.5, 0, 300.0, 119.5, 0, 0, 1]),
                r=np.eye(3).reshape(-1), p=np.zeros(12), binning_x=0, binning_y=0,
                roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                          do_rectify=False))
            raw_info = store.serialize_cdr(camera, "sensor_msgs/msg/CameraInfo")
            writer.write(info, log_time - 2_000_000, raw_info)
            depth_at = log_time + (3_000_000 if i % 2 else -1_000_000)  # after the colour frame, or before
            if i != NO_DEPTH:
                writer.write(depth, depth_at, store.serialize_cdr(depth_msg, "sensor_msgs/msg/Image"))
            writer.write(colour, log_time, store.serialize_cdr(image, "sensor_msgs/msg/Image"))
    return stamps


def _read(path: Path) -> dict[str, list[Any]]:
    from rosbags.highlevel import AnyReader

    out: dict[str, list[Any]] = defaultdict(list)
    with AnyReader([path]) as reader:
        for connection, _, raw in reader.messages():
            out[connection.topic].append(reader.deserialize(raw, connection.msgtype))
    return out


def test_detections_3d_per_colour_frame(tmp_path: Path, tiny_model_files: Any, vocab_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    stamps = _write_bag(tmp_path / "in")
    output = tmp_path / "out"
    code = main([str(a) for a in (
        "--input", tmp_path / "in", "--output", output, "--image-topic", COLOUR, "--model",
        tiny_model_files.onnx, "--tokenizer", vocab_path, "--device", "cpu", "--prompt", "person . flag",
        "--box-threshold", "0.2", "--depth-topic", DEPTH, "--camera-info-topic", INFO)])
    assert code == 0
    summary = capsys.readouterr().out
    assert "1 frames without 3-D: no depth image within 0.02 s" in summary

    got = _read(output)
    results, arrays = got["/gdino/result"], got["/gdino/detections_3d"]
    assert len(results) == FRAMES and len(arrays) == FRAMES - 1
    assert len(got[DEPTH]) == FRAMES - 1 and len(got[INFO]) == FRAMES  # the inputs are copied
    with_3d = [r for r in results if (r.header.stamp.sec, r.header.stamp.nanosec) != stamps[NO_DEPTH]]
    assert sum(len(r.detections) for r in with_3d) > 0, "the untrained model found nothing here"
    for result, array in zip(with_3d, arrays, strict=True):
        assert array.header == result.header  # the colour frame's stamp and frame_id
        assert [d.id for d in array.detections] == [d.id for d in result.detections]
        classes = [d.results[0].hypothesis.class_id for d in result.detections]
        assert [d.results[0].hypothesis.class_id for d in array.detections] == classes
        assert list(result.valid_points) and len(result.detections_3d) == len(result.detections)
        for detection, points in zip(array.detections, result.valid_points, strict=True):
            position = detection.results[0].pose.pose.position
            if points:  # on the wall, 1.5 m away
                assert position.z == pytest.approx(WALL_MM / 1000, abs=1e-3)
                assert detection.bbox.size.z == pytest.approx(0.0, abs=1e-3)
    no_3d = next(r for r in results if (r.header.stamp.sec, r.header.stamp.nanosec) == stamps[NO_DEPTH])
    assert list(no_3d.detections_3d) == [] and list(no_3d.valid_points) == []
    # Track ids: born on the second frame for objects seen twice (the same photo every frame).
    assert all(d.id == "" for d in results[0].detections)
    assert any(d.id for d in results[1].detections)


def test_depth_topic_needs_camera_info(
    tmp_path: Path, tiny_model_files: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_bag(tmp_path / "in")
    code = main([str(a) for a in ("--input", tmp_path / "in", "--output", tmp_path / "out", "--image-topic",
                                  COLOUR, "--model", tiny_model_files.onnx, "--prompt", "cup",
                                  "--depth-topic", DEPTH)])
    assert code == 2  # a usage error
    assert "--camera-info-topic" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
