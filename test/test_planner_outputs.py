"""The outputs a planner reads: own masks per instance, label values, track ids, classes, LabelInfo, 3-D.

Results come from the real post-processing on hand-built engine outputs (as in test_postprocess.py) or
from the analytic scene of scene3d.py; messages are built with rclpy classes and rosbags dataclasses
alike and must agree.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from message_values import plain
from scene3d import CAMERA, OBJECTS, render

from gdino_ros.contract import PRED_BOXES, PRED_LOGITS, PRED_MASKS
from gdino_ros.conversions.messages import (
    DEPTH_OUTPUT_TYPES,
    LABEL_INFO_TYPE,
    OUTPUT_TYPES,
    POINT_DTYPE,
    label_info_msg,
    result_to_messages,
    ros_message_types,
    rosbags_message_types,
)
from gdino_ros.conversions.typestore import project_typestore
from gdino_ros.core.depth_lifting import DEPTH_MM, CameraModel, DepthLifter, Lifted
from gdino_ros.core.postprocess import postprocess
from gdino_ros.core.prompt import encode_prompt
from gdino_ros.core.result import Detection, Result
from gdino_ros.core.tokenizer import load_tokenizer

FRAME = "camera_color_optical_frame"

# The RIHS01 hashes of the official vision_msgs 4.1.1 definitions (ros-perception/vision_msgs e77fa2d,
# the release in Humble and Jazzy), computed from its .msg files: our copies must be the same types.
OFFICIAL_VISION_MSGS = {
    "BoundingBox2D": "RIHS01_008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f",
    "BoundingBox3D": "RIHS01_bbb73a65c163d7f9bb29009c7bde9f7faa576bd2d23299c4511d19230dab4698",
    "Detection2D": "RIHS01_0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea",
    "Detection2DArray": "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
    "Detection3D": "RIHS01_ddd703be132ab0b69d33121f1bb034132bfbb3b0ac5f9fb1516005ba1c8a265b",
    "Detection3DArray": "RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018",
    "LabelInfo": "RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
    "ObjectHypothesis": "RIHS01_51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90",
    "ObjectHypothesisWithPose": "RIHS01_41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc",
    "Point2D": "RIHS01_eab0e83f44ab4de92ceaf76dd7d0e7638f2bdd1d16ffbe16c7a136c48e407247",
    "Pose2D": "RIHS01_b0b5d1d7b4c20dd4fcde3ed1d4b289a919290572007d67a97043814db25d3648",
    "VisionClass": "RIHS01_1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a",
}


@pytest.fixture(scope="module")
def store() -> Any:
    return project_typestore()


@pytest.fixture(scope="module")
def tokenizer(vocab_path: Path) -> Any:
    return load_tokenizer(vocab_path)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _blank(prompt: Any, queries: int = 6, mask_hw: tuple[int, int] = (8, 12)) -> dict[str, np.ndarray]:
    """Engine outputs in which nothing is detected."""
    logits = np.full((1, queries, 256), -np.inf, np.float32)
    logits[0, :, : prompt.num_tokens] = -10.0
    boxes = np.tile(np.array([0.5, 0.5, 0.1, 0.1], np.float32), (1, queries, 1))
    return {PRED_LOGITS: logits, PRED_BOXES: boxes,
            PRED_MASKS: np.full((1, queries, 1, *mask_hw), -10.0, np.float32)}


def _both(result: Result, store: Any, **kwargs: Any) -> list[Any]:
    from std_msgs.msg import Header

    bag_header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=7, nanosec=5), frame_id=FRAME)
    ros_header = Header(frame_id=FRAME)
    ros_header.stamp.sec, ros_header.stamp.nanosec = 7, 5
    return [result_to_messages(result, ros_header, ros_message_types(), **kwargs),
            result_to_messages(result, bag_header, rosbags_message_types(store), **kwargs)]


def _own_mask(segmentation: Any, k: int, image_hw: tuple[int, int]) -> np.ndarray:
    """Rebuild detection k's full-size mask from its crop and ROI, as a consumer would."""
    roi, image = segmentation.mask_rois[k], segmentation.instance_masks[k]
    assert (image.encoding, image.height, image.width) == ("mono8", roi.height, roi.width)
    full = np.zeros(image_hw, bool)
    crop = np.frombuffer(bytes(image.data), np.uint8).reshape(image.height, image.width)
    assert set(np.unique(crop)) <= {0, 255}
    full[roi.y_offset : roi.y_offset + roi.height, roi.x_offset : roi.x_offset + roi.width] = crop == 255
    return full


def test_vision_msgs_copies_are_the_official_4_1_1_types() -> None:
    for distro in ("humble", "jazzy"):
        ours = project_typestore(distro)
        for name, official in OFFICIAL_VISION_MSGS.items():
            assert ours.hash_rihs01(f"vision_msgs/msg/{name}") == official, (distro, name)


@pytest.mark.usefixtures("ros_context")
def test_overlapping_instances_keep_their_complete_masks(store: Any, tokenizer: Any) -> None:
    """'mug . handle': the handle lies inside the mug; the label image gives the overlap to one only."""
    prompt = encode_prompt("mug . handle", "phrases", tokenizer)
    out = _blank(prompt)
    logits, boxes, masks = out[PRED_LOGITS][0], out[PRED_BOXES][0], out[PRED_MASKS][0, :, 0]
    logits[2, 1] = _logit(0.9)  # mug
    logits[4, 3] = _logit(0.6)  # handle
    boxes[2], boxes[4] = [0.4, 0.5, 0.6, 0.6], [0.62, 0.5, 0.2, 0.2]  # box IoU 0.11: NMS keeps both
    masks[2, 2:7, 2:9] = 4.0
    masks[4, 3:6, 5:10] = 4.0
    result = postprocess(out, prompt, (64, 96))
    mug, handle = result.detections
    assert (mug.label, handle.label) == ("mug", "handle")
    overlap = mug.mask & handle.mask
    assert overlap.any() and not (result.label_image[overlap] == handle.instance_id).any()
    for messages in _both(result, store):
        segmentation = messages.result
        assert list(segmentation.label_values) == [mug.instance_id, handle.instance_id]
        for k, detection in enumerate(result.detections):
            np.testing.assert_array_equal(_own_mask(segmentation, k, (64, 96)), detection.mask)
        assert list(segmentation.phrases) == ["mug", "handle"]
        assert list(segmentation.matched_words) == ["mug", "handle"]
        assert [d.results[0].hypothesis.class_id for d in segmentation.detections] == ["mug", "handle"]
    ros, bags = _both(result, store)
    assert plain(ros.result) == plain(bags.result)
    from rclpy.serialization import deserialize_message

    raw = bytes(store.serialize_cdr(bags.result, OUTPUT_TYPES["result"]))
    assert plain(deserialize_message(raw, type(ros.result))) == plain(ros.result)


@pytest.mark.usefixtures("ros_context")
def test_expression_class_is_the_whole_expression(store: Any, tokenizer: Any) -> None:
    expression = "the red mug  near a fire hydrant"
    prompt = encode_prompt(expression, "expression", tokenizer)
    out = _blank(prompt)
    out[PRED_LOGITS][0, 3, [2, 3, 7]] = [_logit(0.6), _logit(0.9), _logit(0.35)]  # red mug hydra(nt)
    out[PRED_LOGITS][0, 1, [3]] = [_logit(0.5)]
    out[PRED_BOXES][0, 1] = [0.2, 0.2, 0.1, 0.1]
    result = postprocess(out, prompt, (40, 40))
    assert [d.label for d in result.detections] == ["red mug hydrant", "mug"]  # matched words differ
    for messages in _both(result, store):
        classes = [d.results[0].hypothesis.class_id for d in messages.detections.detections]
        assert classes == ["the red mug near a fire hydrant"] * 2
        assert list(messages.result.matched_words) == ["red mug hydrant", "mug"]
        assert list(messages.result.phrases) == ["the red mug near a fire hydrant"]


@pytest.mark.usefixtures("ros_context")
def test_label_info_lists_the_vocabulary(store: Any) -> None:
    from vision_msgs.msg import LabelInfo

    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id=FRAME)
    info = label_info_msg(("cup", "red bottle"), 0.35, header, rosbags_message_types(store))
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, "cup"), (1, "red bottle")]
    assert info.threshold == pytest.approx(0.35)
    from rclpy.serialization import deserialize_message

    decoded = deserialize_message(bytes(store.serialize_cdr(info, LABEL_INFO_TYPE)), LabelInfo)
    assert [c.class_name for c in decoded.class_map] == ["cup", "red bottle"]


def _scene_result() -> tuple[Result, list[Any]]:
    """The analytic scene as a Result with true masks, and its instances lifted from 16UC1 depth."""
    scene = render(CAMERA)
    detections = [Detection(k + 1, name, k, 0.9 - 0.1 * k, (0.0, 0.0, 1.0, 1.0), scene.masks[name])
                  for k, name in enumerate(OBJECTS)]
    label_image = np.zeros(scene.z.shape, np.uint16)
    for d in detections:
        label_image[d.mask] = d.instance_id
    result = Result("box . crate . can", "phrases", detections, label_image, False, 0.25,
                    phrases=tuple(OBJECTS))
    model = CameraModel.from_camera_info(CAMERA.camera_info())
    lifted = DepthLifter().lift([d.crop for d in detections], scene.z.shape,
                                scene.depth_16uc1(), DEPTH_MM, model)
    return result, lifted


@pytest.mark.usefixtures("ros_context")
def test_detections_3d_and_points(store: Any) -> None:
    result, lifted = _scene_result()
    nan3 = (math.nan,) * 3
    lifted[1] = Lifted(0, nan3, nan3, nan3, np.empty((0, 3), np.float32))
    both = _both(result, store, track_ids=["4", "", "9"], lifted=lifted, with_points=True)
    for messages in both:
        names = [name for name in (*OUTPUT_TYPES, *DEPTH_OUTPUT_TYPES) if name != "overlay"]  # none given
        assert [name for name, _ in messages.items()] == names
        array = messages.detections_3d
        assert array.header.frame_id == FRAME
        assert (array.header.stamp.sec, array.header.stamp.nanosec) == (7, 5)
        assert [d.id for d in array.detections] == ["4", "", "9"]
        assert [d.id for d in messages.detections.detections] == ["4", "", "9"]
        assert [d.results[0].hypothesis.class_id for d in array.detections] == list(OBJECTS)
        for k in (0, 2):
            position = array.detections[k].results[0].pose.pose.position
            assert (position.x, position.y, position.z) == pytest.approx(lifted[k].centroid)
            centre, size = array.detections[k].bbox.center.position, array.detections[k].bbox.size
            lo, hi = np.array(lifted[k].box_min), np.array(lifted[k].box_max)
            assert (centre.x, centre.y, centre.z) == pytest.approx((lo + hi) / 2)
            assert (size.x, size.y, size.z) == pytest.approx(hi - lo)
        empty = array.detections[1]
        assert math.isnan(empty.results[0].pose.pose.position.z)
        assert (empty.bbox.size.x, empty.bbox.size.y, empty.bbox.size.z) == (0.0, 0.0, 0.0)
        assert list(messages.result.valid_points) == [lifted[0].points, 0, lifted[2].points]
        assert plain(messages.result.detections_3d) == plain(array.detections)

        cloud = messages.points
        assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [
            ("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("instance", 12, 6)]
        points = np.frombuffer(bytes(cloud.data), POINT_DTYPE)
        assert cloud.width == len(points) == lifted[0].points + lifted[2].points and cloud.height == 1
        for k in (0, 2):
            own = points[points["instance"] == result.detections[k].instance_id]
            np.testing.assert_array_equal(np.stack([own["x"], own["y"], own["z"]], axis=1), lifted[k].xyz)
    ros, bags = both
    assert plain(ros.detections_3d) == plain(bags.detections_3d)
    assert plain(ros.points) == plain(bags.points)
    from rclpy.serialization import deserialize_message

    for name in ("detections_3d", "points", "result"):
        raw = bytes(store.serialize_cdr(getattr(bags, name), (OUTPUT_TYPES | DEPTH_OUTPUT_TYPES)[name]))
        assert plain(deserialize_message(raw, type(getattr(ros, name)))) == plain(getattr(ros, name)), name
