"""Track ids over synthetic sequences of moving objects: crossings, occlusion, birth, death, prompt change."""
from __future__ import annotations

import numpy as np
import pytest

from gdino_ros.core.instance_crop import InstanceCrop
from gdino_ros.core.result import Detection, Result
from gdino_ros.core.tracking import Tracker, TrackingParams, TrackInput, track_inputs

HW = (240, 320)


def _disc(label: str, cx: float, cy: float, r: float, score: float = 0.9) -> TrackInput:
    """A filled disc as a detection: its box and its own mask crop."""
    x0, y0 = int(np.floor(cx - r)), int(np.floor(cy - r))
    size = int(np.ceil(2 * r)) + 1
    yy, xx = np.mgrid[y0 : y0 + size, x0 : x0 + size]
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return TrackInput(label, score, (cx - r, cy - r, cx + r, cy + r), InstanceCrop(x0, y0, mask))


def _crossing(frame: int) -> list[TrackInput]:
    """Two balls crossing head-on (the one behind scores lower while covered) and a static cup.

    Detections come best score first, as the segmenter gives them, so their order changes as scores do.
    """
    left = 40.0 + 14.0 * frame
    right = 280.0 - 14.0 * frame
    covered = abs(left - right) < 30  # frames 8 and 9, where the balls pass each other
    balls = [_disc("ball", left, 120.0, 18.0, 0.9),
             _disc("ball", right, 122.0, 18.0, 0.3 if covered else 0.8)]
    detections = [*balls, _disc("cup", 160.0, 200.0, 15.0, 0.7)]
    return sorted(detections, key=lambda d: -d.score)


def _ids_by_object(tracker: Tracker, frames: range) -> list[dict[str, str]]:
    """Run the crossing scene; map each frame's ids to the objects ('left', 'right', 'cup')."""
    history = []
    for frame in frames:
        detections = _crossing(frame)
        ids = tracker.update(detections, HW, ("ball . cup .", "phrases"))
        named = {}
        for d, track_id in zip(detections, ids, strict=True):
            if d.label == "cup":
                named["cup"] = track_id
            else:
                named["left" if d.box[1] < 121 - 18 else "right"] = track_id
        history.append(named)
    return history


def test_ids_stay_with_their_objects_through_a_crossing() -> None:
    history = _ids_by_object(Tracker(), range(20))
    assert history[0] == {"left": "", "right": "", "cup": ""}  # born after track_min_hits = 2 frames
    born = history[1]
    assert sorted(born.values()) == ["1", "2", "3"]
    for frame, named in enumerate(history[1:], start=1):
        assert named == born, frame


def test_without_prediction_the_crossing_swaps_or_loses_ids() -> None:
    """The scene is hard enough to fail: matching the last boxes without motion does not keep the ids."""
    tracker = Tracker()
    history = []
    for frame in range(20):
        detections = _crossing(frame)
        ids = tracker.update(detections, HW, ("p",))
        for track in tracker._tracks:  # freeze every track in place: no velocity
            track.velocity = (0.0, 0.0)
        balls = [(d, i) for d, i in zip(detections, ids, strict=True) if d.label == "ball"]
        history.append({d.box[1] < 121 - 18: i for d, i in balls})
    assert any(named != history[1] for named in history[2:])


def test_a_short_gap_keeps_the_id_a_long_one_ends_the_track() -> None:
    params = TrackingParams(track_max_misses=3)
    tracker = Tracker(params)
    cup = _disc("cup", 100.0, 100.0, 20.0)
    prompt = ("cup",)
    assert tracker.update([cup], HW, prompt) == [""]
    assert tracker.update([cup], HW, prompt) == ["1"]
    for _ in range(3):
        assert tracker.update([], HW, prompt) == []
    assert tracker.update([cup], HW, prompt) == ["1"]
    for _ in range(4):
        tracker.update([], HW, prompt)
    assert tracker.update([cup], HW, prompt) == [""]  # a new track, born again ...
    assert tracker.update([cup], HW, prompt) == ["2"]  # ... with a new id: ids are never reused


def test_a_one_frame_detection_gets_no_id_and_low_scores_start_no_track() -> None:
    tracker = Tracker(TrackingParams(track_min_hits=2, track_high_score=0.5))
    prompt = ("cup",)
    assert tracker.update([_disc("cup", 50.0, 50.0, 10.0)], HW, prompt) == [""]
    assert tracker.update([], HW, prompt) == []
    # A tentative track dies at its first miss.
    assert tracker.update([_disc("cup", 50.0, 50.0, 10.0)], HW, prompt) == [""]
    faint = _disc("cup", 200.0, 50.0, 10.0, score=0.2)
    for _ in range(3):
        ids = tracker.update([faint], HW, prompt)
    assert ids == [""]


def test_classes_never_share_a_track() -> None:
    tracker = Tracker()
    tracker.update([_disc("cup", 80.0, 80.0, 20.0)], HW, ("p",))
    tracker.update([_disc("cup", 80.0, 80.0, 20.0)], HW, ("p",))
    assert tracker.update([_disc("mug", 80.0, 80.0, 20.0)], HW, ("p",)) == [""]


def test_a_prompt_change_ends_every_track() -> None:
    tracker = Tracker()
    cup = _disc("cup", 100.0, 100.0, 20.0)
    for _ in range(3):
        ids = tracker.update([cup], HW, ("cup .", "phrases"))
    assert ids == ["1"]
    assert tracker.update([cup], HW, ("cup . plate .", "phrases")) == [""]
    assert tracker.update([cup], HW, ("cup . plate .", "phrases")) == ["2"]


def test_mask_overlap_separates_objects_whose_boxes_coincide() -> None:
    """A ring and a disc with the same box: the mask IoU keeps each detection on its own track."""
    tracker = Tracker(TrackingParams(track_min_hits=1))
    disc = _disc("thing", 100.0, 100.0, 30.0, 0.9)
    yy, xx = np.mgrid[: disc.crop.mask.shape[0], : disc.crop.mask.shape[1]]
    centre = 100.0 - disc.crop.y0
    ring_mask = disc.crop.mask & ((yy - centre) ** 2 + (xx - centre) ** 2 > 22**2)
    ring = TrackInput("thing", 0.8, disc.box, InstanceCrop(disc.crop.x0, disc.crop.y0, ring_mask))
    first = tracker.update([disc, ring], HW, ("p",))
    second = tracker.update([ring, disc], HW, ("p",))
    assert second == [first[1], first[0]]


def test_settings_are_declared_with_ranges() -> None:
    with pytest.raises(ValueError, match="track_min_hits"):
        TrackingParams(track_min_hits=0)
    with pytest.raises(ValueError, match="track_match_iou"):
        TrackingParams(track_match_iou=1.0)


def test_expression_mode_tracks_the_expression_not_the_matched_words() -> None:
    """Within one expression the matched words vary ('red mug', 'mug', ''): the track must not care."""
    tracker = Tracker(TrackingParams(track_min_hits=1))
    mask = np.zeros(HW, bool)
    mask[40:80, 50:90] = True
    ids = []
    for words in ("red mug", "the red mug", "mug", ""):
        detection = Detection(1, words, -1, 0.8, (50.0, 40.0, 90.0, 80.0), mask)
        result = Result("the red mug", "expression", [detection], mask.astype(np.uint16), False, 0.1,
                        phrases=("the red mug",))
        inputs = track_inputs(result, [detection.crop])
        assert inputs[0].label == "the red mug"
        ids += tracker.update(inputs, HW, (result.prompt, result.mode))
    assert ids == ["1"] * 4
