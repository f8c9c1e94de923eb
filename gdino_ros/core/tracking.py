"""Track ids across frames: ByteTrack-style two-stage association on box and mask overlap.

``vision_msgs`` defines ``Detection2D.id`` as an identity that stays the same for one object across
messages; consumers (trackers, fusion, planners) join on it. This module gives each detection such an id.

Per frame, with every track's box and mask moved by its last velocity (constant-velocity prediction,
which keeps two objects of the same class apart when they cross):

1. detections scoring at least ``track_high_score`` are matched to all tracks of their class by the
   similarity ``(box IoU + mask IoU) / 2``, best pairs first, above ``track_match_iou``;
2. the remaining lower-scoring detections are matched to the still unmatched tracks by box IoU alone
   (a partly occluded object scores lower and loses mask pixels first; ByteTrack's key idea is to keep
   its track alive with it) -- unmatched low-scoring detections start no track;
3. unmatched high-scoring detections start tentative tracks. A track is born -- gets an id -- after
   ``track_min_hits`` consecutive matched frames; a born track survives ``track_max_misses`` frames
   without a match, a tentative one none.

Ids are decimal strings from "1" up and never reused while the tracker lives; a new prompt ends every
track (:meth:`Tracker.update` compares the prompt), so the same object gets a fresh id under it.
Masks are compared on a lattice of every :attr:`Tracker.stride`-th pixel, enough for overlap ratios and
bounded in cost.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gdino_ros.core.class_id import class_id_of
from gdino_ros.core.instance_crop import InstanceCrop
from gdino_ros.core.postprocess import box_iou
from gdino_ros.core.result import Result
from gdino_ros.settings import check_settings, setting

#: Masks are compared on a lattice this many pixels apart per 1000 pixels of image width (at least 1).
STRIDE_PER_1000_PX = 2


@dataclass(frozen=True)
class TrackingParams:
    """Association and life-cycle thresholds (node parameters and tool flags are generated from these)."""

    track_high_score: float = setting(
        0.5, "Detections scoring at least this are matched first and may start tracks.",
        low=0.0, high=1.0,
    )
    track_match_iou: float = setting(
        0.3, "Minimum overlap (mean of box and mask IoU) for a detection to continue a track.",
        low=0.0, high=1.0, open_range=True,
    )
    track_min_hits: int = setting(
        2, "Consecutive frames a new track must be seen before it gets an id.",
        low=1, high=100,
    )
    track_max_misses: int = setting(
        15, "Frames a track with an id survives unseen before it ends.", low=0, high=1000
    )

    def __post_init__(self) -> None:
        check_settings(self)


Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) pixels


@dataclass(frozen=True)
class TrackInput:
    """What the tracker reads of one detection: class, score, pixel box (x0, y0, x1, y1), own mask."""

    label: str
    score: float
    box: Box
    crop: InstanceCrop


def track_inputs(result: Result, crops: Sequence[InstanceCrop]) -> list[TrackInput]:
    """Turn a frame's detections and crops into tracker input, labelled with the class consumers see.

    In expression mode that is the expression: the matched words vary from frame to frame.
    """
    return [TrackInput(class_id_of(d, result), d.score, d.box_xyxy, crop)
            for d, crop in zip(result.detections, crops, strict=True)]


@dataclass
class _LatticeMask:
    """A mask sampled at every ``stride``-th image pixel: ``cells`` bool, top-left lattice cell (r0, c0)."""

    r0: int
    c0: int
    cells: np.ndarray
    area: int


def _lattice(crop: InstanceCrop, stride: int) -> _LatticeMask:
    height, width = crop.mask.shape
    # First lattice row/column at or after the crop's corner, so every mask shares one lattice.
    r0 = -(-crop.y0 // stride)
    c0 = -(-crop.x0 // stride)
    cells = crop.mask[r0 * stride - crop.y0 :: stride, c0 * stride - crop.x0 :: stride]
    return _LatticeMask(r0, c0, cells, int(np.count_nonzero(cells)))


def _mask_iou(a: _LatticeMask, b: _LatticeMask, shift: tuple[int, int]) -> float:
    """IoU of lattice masks ``a`` (moved by ``shift`` lattice cells, rows then columns) and ``b``."""
    if a.area == 0 or b.area == 0:
        return 0.0
    ar0, ac0 = a.r0 + shift[0], a.c0 + shift[1]
    top, left = max(ar0, b.r0), max(ac0, b.c0)
    bottom = min(ar0 + a.cells.shape[0], b.r0 + b.cells.shape[0])
    right = min(ac0 + a.cells.shape[1], b.c0 + b.cells.shape[1])
    if bottom <= top or right <= left:
        return 0.0
    inter = int(np.count_nonzero(a.cells[top - ar0 : bottom - ar0, left - ac0 : right - ac0]
                                 & b.cells[top - b.r0 : bottom - b.r0, left - b.c0 : right - b.c0]))
    return inter / (a.area + b.area - inter)


@dataclass(eq=False)
class _Track:
    """One object's track.

    Its box arithmetic is on Python floats: a frame updates tens of tracks, and numpy's per-call overhead
    on four numbers was most of the tracker's time.
    """

    label: str
    box: Box  # (x0, y0, x1, y1)
    mask: _LatticeMask
    velocity: tuple[float, float] = (0.0, 0.0)  # (dx, dy) pixels per frame
    hits: int = 1
    misses: int = 0
    track_id: str = ""

    def predicted_box(self) -> Box:
        """Move the box by its velocity over the frames since it was last seen."""
        frames = self.misses + 1
        dx, dy = self.velocity[0] * frames, self.velocity[1] * frames
        x0, y0, x1, y1 = self.box
        return x0 + dx, y0 + dy, x1 + dx, y1 + dy

    def update(self, box: Box, mask: _LatticeMask) -> None:
        frames = self.misses + 1
        self.velocity = ((box[0] + box[2] - self.box[0] - self.box[2]) / 2.0 / frames,
                         (box[1] + box[3] - self.box[1] - self.box[3]) / 2.0 / frames)
        self.box, self.mask = box, mask
        self.hits += 1
        self.misses = 0


class Tracker:
    """Track ids for one camera's stream of detections (one thread; see the module docstring)."""

    def __init__(self, params: TrackingParams | None = None) -> None:
        self.params = params or TrackingParams()
        self._tracks: list[_Track] = []
        self._prompt: tuple[str, ...] | None = None
        self._next_id = 1
        self.stride = 1

    def reset(self) -> None:
        """End every track (ids are not reused)."""
        self._tracks = []

    def update(
        self, detections: Sequence[TrackInput], image_hw: tuple[int, int], prompt: tuple[str, ...]
    ) -> list[str]:
        """Associate one frame's detections; return their track ids ("" while a track is not yet born).

        ``prompt`` identifies the prompt in force (e.g. its text and mode): when it changes, every track
        ends first.
        """
        if prompt != self._prompt:
            self.reset()
            self._prompt = prompt
        self.stride = max(1, round(image_hw[1] * STRIDE_PER_1000_PX / 1000))
        boxes = np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
        masks = [_lattice(d.crop, self.stride) for d in detections]
        high = [i for i, d in enumerate(detections) if d.score >= self.params.track_high_score]
        low = [i for i, d in enumerate(detections) if d.score < self.params.track_high_score]

        assigned: dict[int, _Track] = {}
        unmatched = self._match(high, list(self._tracks), detections, boxes, masks, assigned, use_masks=True)
        self._match(low, unmatched, detections, boxes, masks, assigned, use_masks=False)

        for i, track in assigned.items():
            track.update(detections[i].box, masks[i])
        matched = {id(track) for track in assigned.values()}
        survivors = []
        for track in self._tracks:
            if id(track) in matched:
                survivors.append(track)
                continue
            track.misses += 1
            if track.track_id and track.misses <= self.params.track_max_misses:
                survivors.append(track)
        for i in high:
            if i not in assigned:
                track = _Track(detections[i].label, detections[i].box, masks[i])
                assigned[i] = track
                survivors.append(track)
        for track in survivors:
            if not track.track_id and track.hits >= self.params.track_min_hits:
                track.track_id = str(self._next_id)
                self._next_id += 1
        self._tracks = survivors
        return [assigned[i].track_id if i in assigned else "" for i in range(len(detections))]

    def _match(
        self,
        candidates: list[int],
        tracks: list[_Track],
        detections: Sequence[TrackInput],
        boxes: np.ndarray,
        masks: list[_LatticeMask],
        assigned: dict[int, _Track],
        *,
        use_masks: bool,
    ) -> list[_Track]:
        """Greedy best-first matching of ``candidates`` to ``tracks``; return the tracks left unmatched.

        Box overlaps of every (track, candidate) pair are one array operation; masks are compared only
        for the pairs of one class whose boxes overlap.
        """
        if not tracks or not candidates:
            return tracks
        predicted = np.array([track.predicted_box() for track in tracks], dtype=np.float64)
        box_ious = box_iou(predicted[:, None, :], boxes[candidates])  # [tracks, candidates]
        pairs = []
        for t, j in zip(*np.nonzero(box_ious), strict=True):  # track-major, candidates in their order
            track, i = tracks[t], candidates[j]
            if detections[i].label != track.label:
                continue
            similarity = float(box_ious[t, j])
            if use_masks:
                shift = (round(track.velocity[1] * (track.misses + 1) / self.stride),
                         round(track.velocity[0] * (track.misses + 1) / self.stride))
                similarity = (similarity + _mask_iou(track.mask, masks[i], shift)) / 2.0
            if similarity > self.params.track_match_iou:
                pairs.append((similarity, int(t), i))
        pairs.sort(key=lambda pair: -pair[0])
        used: set[int] = set()
        for _, t, i in pairs:
            if t not in used and i not in assigned:
                assigned[i] = tracks[t]
                used.add(t)
        return [track for t, track in enumerate(tracks) if t not in used]
