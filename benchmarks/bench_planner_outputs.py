"""Cost per 1080p frame of what #15 adds after post-processing: crops, 3-D lifting, tracking, messages.

A 1920x1080 frame with 20 instances (ellipses in a 5x4 grid, boxes 4-19 % of the width and 5-24 % of
the height, as bench_postprocess.py's "realistic" outputs), moving a few pixels per frame; registered
16UC1 depth of the same size (a plane at 2.5 m, each object a slanted surface in front of it); a
plumb_bob camera model. Each stage is timed over FRAMES frames after a warm-up frame (which also builds
the ray table once per camera; its cost is printed separately). Medians, wall and process CPU time.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_planner_outputs.py
"""
from __future__ import annotations

import statistics
import time
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from gdino_ros.conversions.messages import detection_3d_msg, point_cloud_msg, rosbags_message_types
from gdino_ros.conversions.typestore import project_typestore
from gdino_ros.core.depth_lifting import DEPTH_MM, CameraModel, DepthLifter, Lifted
from gdino_ros.core.instance_crop import InstanceCrop
from gdino_ros.core.result import Detection
from gdino_ros.core.tracking import Tracker, TrackInput

HEIGHT, WIDTH = 1080, 1920
INSTANCES = 20
FRAMES = 40


def camera_info() -> SimpleNamespace:
    return SimpleNamespace(
        header=SimpleNamespace(frame_id="cam"), width=WIDTH, height=HEIGHT, distortion_model="plumb_bob",
        d=[-0.05, 0.02, 0.0005, -0.0003, 0.0], binning_x=0, binning_y=0,
        roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0, do_rectify=False),
        k=[1380.0, 0.0, 960.0, 0.0, 1380.0, 540.0, 0.0, 0.0, 1.0],
    )


def make_frame(frame: int, rng: np.random.Generator, sizes: np.ndarray) -> tuple[list[Detection], np.ndarray]:
    """20 ellipse instances on a 5x4 grid shifted by ``frame`` pixels, and their 16UC1 depth."""
    depth = np.full((HEIGHT, WIDTH), 2500, np.uint16)
    detections = []
    for k in range(INSTANCES):
        row, col = divmod(k, 5)
        cx = (col + 0.5) * WIDTH / 5 + 3 * frame
        cy = (row + 0.5) * HEIGHT / 4 + 2 * frame  # objects may leave the image in part: clipped
        w, h = sizes[k]
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        drawn = np.zeros((HEIGHT, WIDTH), np.uint8)
        cv2.ellipse(drawn, (int(cx), int(cy)), (int(w / 2), int(h / 2)), 0, 0, 360, 1, -1)
        mask = drawn.view(bool)
        window = (max(int(y0), 0), min(int(np.ceil(y1)) + 1, HEIGHT), max(int(x0), 0),
                  min(int(np.ceil(x1)) + 1, WIDTH))
        ys, xs = np.nonzero(mask[window[0] : window[1], window[2] : window[3]])
        depth[ys + window[0], xs + window[2]] = (1000 + 50 * k + (xs * 0.3)).astype(np.uint16)
        detections.append(Detection(k + 1, f"thing{k % 5}", k % 5, 0.9 - 0.02 * k, (x0, y0, x1, y1), mask,
                                    window))
    return detections, depth


def crops_of(detections: list[Detection]) -> list[InstanceCrop]:
    return [d.crop for d in detections]


def messages_3d(lifted: list[Lifted], detections: list[Detection], ids: list[str], types: Any) -> None:
    """The Detection3D of every instance and the point cloud (header left out: not what is timed)."""
    for item, d, track_id in zip(lifted, detections, ids, strict=True):
        detection_3d_msg(item, d.label, d.score, None, types, track_id)
    point_cloud_msg(lifted, [d.instance_id for d in detections], None, types)


def main() -> None:
    rng = np.random.default_rng(0)
    sizes = np.stack([rng.uniform(0.04, 0.19, INSTANCES) * WIDTH,
                      rng.uniform(0.05, 0.24, INSTANCES) * HEIGHT], axis=1)
    frames = [make_frame(f, rng, sizes) for f in range(FRAMES + 1)]
    model = CameraModel.from_camera_info(camera_info())
    lifter, tracker = DepthLifter(), Tracker()
    types = rosbags_message_types(project_typestore())

    start = time.perf_counter()
    lifter.ray_table(model, (HEIGHT, WIDTH))
    elapsed = 1000 * (time.perf_counter() - start)
    print(f"ray table (once per camera model, plumb_bob, 1080p): {elapsed:.0f} ms")

    stages: dict[str, list[tuple[float, float]]] = {k: [] for k in ("crops", "lift", "track", "msgs")}

    def timed(name: str, fn, *args):  # type: ignore[no-untyped-def]
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args)
        stages[name].append((1000 * (time.perf_counter() - wall), 1000 * (time.process_time() - cpu)))
        return out

    points = []
    for index, (detections, depth) in enumerate(frames):
        crops = timed("crops", crops_of, detections)
        lifted = timed("lift", lifter.lift, crops, (HEIGHT, WIDTH), depth, DEPTH_MM, model)
        inputs = [TrackInput(d.label, d.score, d.box_xyxy, c) for d, c in zip(detections, crops, strict=True)]
        ids = timed("track", tracker.update, inputs, (HEIGHT, WIDTH), ("p",))
        timed("msgs", messages_3d, lifted, detections, ids, types)
        points.append(sum(item.points for item in lifted))
        if index == 0:
            for values in stages.values():
                values.clear()
    print(f"{INSTANCES} instances, {FRAMES} frames, points lifted per frame: {statistics.median(points):.0f}")
    print(f"ids after the last frame: {ids}")
    total_wall = total_cpu = 0.0
    for name, values in stages.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        total_wall += wall if name in ("lift", "track") else 0.0
        total_cpu += cpu if name in ("lift", "track") else 0.0
        print(f"{name:6s} median {wall:6.2f} ms wall  ({cpu:6.2f} ms CPU)")
    print(f"lift + track: {total_wall:.2f} ms wall ({total_cpu:.2f} ms CPU)")


if __name__ == "__main__":
    main()
