"""Frames per second of gdino-bag --ray with 1 and 2 workers on a local Ray instance, beside one machine.

The inputs are ``--bags`` 720p rosbag2 MCAP recordings of ``--frames`` frames each at 30 Hz
(:func:`bench_bag.write_720p_bag`). Each configuration runs the real command line; the time is the whole
command, from start to the last output written, so it includes starting the workers and loading one
model per worker (a single-machine run loads one model per bag). ``--range-s`` cuts each bag in ranges.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bag_ray.py --bags 2 --frames 30 --range-s 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_bag import IMAGE_TOPIC, PROMPT, vocab_path, write_720p_bag  # noqa: E402


def _timed(argv: list[str]) -> float:
    from gdino_ros.tools.bag import main

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(argv)
    assert code == 0, argv
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bags", type=int, default=2)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--range-s", type=float, default=0.5)
    parser.add_argument("--model", type=Path, help="default: the tiny random-weight export")
    options = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = options.model
        if model is None:
            from gdino_ros.tools.export import main as export

            model = root / "tiny.onnx"
            with contextlib.redirect_stdout(io.StringIO()):
                assert export(["--random-init", "--config", "tiny", "--output", str(model)]) == 0
        bags = [root / f"run{i}" for i in range(options.bags)]
        for bag in bags:
            write_720p_bag(bag, options.frames)
        common = ["--image-topic", IMAGE_TOPIC, "--model", str(model), "--tokenizer", str(vocab_path()),
                  "--device", "cpu", "--prompt", PROMPT]
        total = options.bags * options.frames
        single = sum(_timed(["--input", str(b), "--output", str(root / f"single_{b.name}"), *common])
                     for b in bags)
        print(f"one machine, bags one after another: {total} frames in {single:.1f} s = {total / single:.2f} "
              "frames/s")
        import ray

        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024**2,
                 _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
        for workers in (1, 2):
            out = root / f"ray{workers}"
            out.mkdir()
            seconds = _timed(["--input", *map(str, bags), "--output", str(out), "--ray", "--workers",
                              str(workers), "--range-s", str(options.range_s), *common])
            rate = total / seconds
            print(f"--ray --workers {workers}: {total} frames in {seconds:.1f} s = {rate:.2f} frames/s")
        ray.shutdown()
    with open("/proc/loadavg") as load:
        print(f"/proc/loadavg after: {load.read().strip()}")


if __name__ == "__main__":
    main()
