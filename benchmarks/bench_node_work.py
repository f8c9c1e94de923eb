"""CPU time of the node's own per-frame work outside the engine, without DDS: a stand-in for bench_node.py.

What segment_node does with each frame besides running the engine, called directly in one process:
preprocessing of a 1080p rgb8 frame, post-processing of ``bench_postprocess.py``'s synthetic outputs
("objects": its realistic scene, 20 detections; "no target": the same outputs with the ReLA head saying
"nothing here"), tracking (the instances' crops and ``Tracker.update``, as the node's default
``tracking: true`` does; the same outputs every frame, so every track continues), building the frame's
messages (``result_to_messages`` with the node's rosbags message classes, its default label image encoding,
per-instance cropped masks, track ids) and their CDR bytes (``CdrCodec.encode``, what the node hands to
``publish``).
``--camera-input``: the preprocessing a camera-input model leaves to the node (the RGB pixels as a
contiguous [1, H, W, 3] array, :func:`camera_pixels`) instead of the resize and normalisation. Process
CPU time per stage (median of ``--frames`` frames after 5 warm-up frames): what the frame costs a CPU
core, whatever else runs on the machine. Not measured here, unlike bench_node.py: receiving the frame
(the raw take's copies and the decode), the executor and DDS itself.

``--idle-ms``: sleep this long before each frame, as the node waits between camera frames (200 at
bench_node.py's 5 Hz). Back to back, each frame finds the previous one's code and data in the caches; after
an idle gap it does not, and on the development VM that costs the 20-instance frame about 1.3 ms more CPU
time. With ``--idle-ms 200`` the stages come within about 0.2 ms of the node's own stage times in
bench_node.py, in about 15 seconds instead of its 6 minutes (BENCHMARKS.md, "Issue #16 target 1, seventh
session").

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_node_work.py [--camera-input]
[--idle-ms 200]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_postprocess import ENGINE_HW, PROMPT, make_outputs  # noqa: E402

from gdino_ros import contract  # noqa: E402
from gdino_ros.conversions.cdr import CdrCodec  # noqa: E402
from gdino_ros.conversions.messages import OUTPUT_TYPES, result_to_messages  # noqa: E402
from gdino_ros.core.postprocess import PostprocessParams, postprocess  # noqa: E402
from gdino_ros.core.preprocess import camera_pixels, preprocess  # noqa: E402
from gdino_ros.core.prompt import encode_prompt  # noqa: E402
from gdino_ros.core.tokenizer import load_tokenizer  # noqa: E402
from gdino_ros.core.tracking import Tracker, track_inputs  # noqa: E402
from gdino_ros.node.heap import keep_large_buffers  # noqa: E402

IMAGE_HW = (1080, 1920)
STAGES = ("preprocess", "postprocess", "tracking", "messages", "serialise")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=40, help="timed frames per scenario (default 40)")
    parser.add_argument("--camera-input", action="store_true",
                        help="preprocess for a camera-input model (pixels handed over, no CPU resize)")
    parser.add_argument("--idle-ms", type=float, default=0.0,
                        help="idle ms before each frame, as between camera frames (default 0: back to back)")
    args = parser.parse_args()
    if args.idle_ms < 0:
        parser.error(f"--idle-ms must be 0 or more, got {args.idle_ms:g}")
    keep_large_buffers()  # as segment_node does: without it, whether a 4 MB block faults in fresh pages
    # depends on the largest block glibc has seen freed so far
    prompt = encode_prompt(PROMPT, "phrases", load_tokenizer())  # the local search
    codec, params = CdrCodec(), PostprocessParams()
    stamp = codec.typestore.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0)
    header = codec.typestore.types["std_msgs/msg/Header"](stamp=stamp, frame_id="camera")
    image = np.random.default_rng(0).integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)
    print(f"# load average {os.getloadavg()[0]:.2f} at start; "
          f"{'camera-input model' if args.camera_input else 'float-input model'}; "
          f"{args.idle_ms:g} ms idle before each frame")
    print("\n| scenario | detections | preprocess | postprocess | tracking | messages | serialise "
          "| **total CPU ms** |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario in ("objects", "no target"):
        outputs = make_outputs("realistic", prompt)
        if scenario == "no target":
            outputs[contract.NO_TARGETS] = np.array([[-2.0, 2.0]], np.float32)
        stages: dict[str, list[float]] = {name: [] for name in STAGES}
        tracker = Tracker()
        for frame in range(5 + args.frames):
            if args.idle_ms:
                time.sleep(args.idle_ms / 1e3)
            t0 = time.process_time()
            if args.camera_input:
                camera_pixels(image)
            else:
                preprocess(image, ENGINE_HW)
            t1 = time.process_time()
            result = postprocess(outputs, prompt, IMAGE_HW, params)
            t2 = time.process_time()
            crops = [detection.crop for detection in result.detections]
            track_ids = tracker.update(track_inputs(result, crops), IMAGE_HW, (result.prompt, result.mode))
            t3 = time.process_time()
            messages = result_to_messages(result, header, codec.types, track_ids=track_ids)
            t4 = time.process_time()
            for leaf, message in messages.items():
                codec.encode(message, OUTPUT_TYPES[leaf])
            t5 = time.process_time()
            if frame >= 5:
                for stage, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                    stages[stage].append(seconds * 1e3)
        medians = [statistics.median(values) for values in stages.values()]
        print(f"| {scenario} | {len(result.detections)} | " + " | ".join(f"{m:.2f}" for m in medians)
              + f" | **{sum(medians):.2f}** |")
    print(f"\n# load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
