"""segment_node before and after a change: two source trees in bench_node.py's harness, alternated run by run.

Full runs of ``bench_node.py`` on the same tree differ by about a millisecond per 1080p frame (what else
the two cores did, the caches), so a change worth less than that only shows in an A/B: the trees run
one after the other, in turn, several times, each in a fresh node process streaming one resolution as a
robot's camera does (``bench_node.py`` measures 720p and then 1080p in one node).

Each run: the tree's own ``benchmarks/bench_node.py --role node`` (its node, its no-op engine and
outputs) with the tree first on ``PYTHONPATH``; this checkout's driver sends 10 warm-up frames, then
``--frames`` rgb8 frames at 5 Hz, and reports the node's stage means from its ``/diagnostics``, the node's
own cost outside the engine as ``bench_node.py`` computes it (with this checkout's timing of the receive),
and the node process's CPU time and minor page faults per frame from ``/proc``.

Make a tree of a commit with ``git archive <commit> | tar -x -C /tmp/before``.

Run: ``. ../shared/ros/env.sh && OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_node_ab.py /tmp/before .
[--pairs 3] [--camera-input] [--scenario "no target"] [--resolution 720p]`` (about 2 minutes per pair).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_node import (  # noqa: E402
    REPO,
    RESOLUTIONS,
    SCENARIOS,
    Driver,
    node_cost,
    receive_ms,
    serve,
    stop,
)

from gdino_ros.loopback_dds import apply_loopback_environment, own_domain_id  # noqa: E402
from gdino_ros.node.frame_stats import STATS_WINDOW  # noqa: E402

COLUMNS = ("postprocess", "messages_and_publish")


def run_tree(
    tree: Path, scenario: str, camera: list[str], hw: tuple[int, int], frames: int
) -> dict[str, Any]:
    """One fresh node process from ``tree``; what :func:`bench_node.serve` measures, plus the node cost."""
    path = os.pathsep.join(filter(None, (str(tree), str(REPO), os.environ.get("PYTHONPATH"))))
    child = subprocess.Popen(
        [sys.executable, str(tree / "benchmarks" / "bench_node.py"), "--role", "node", "--scenario", scenario,
         *camera],
        env={**os.environ, "PYTHONPATH": path},  # this checkout second: its .pth must not put itself first
    )
    driver = Driver()
    try:
        if not driver.spin_until(lambda: driver.images.get_subscription_count() > 0, 120.0):
            raise RuntimeError(f"the node from {tree} did not subscribe to /image within 120 s")
        msg = driver.frame(hw)
        driver.stream(msg, 1, 10, 5.0)
        row = {"receive": receive_ms(msg), **serve(driver, child.pid, msg, 11, frames)}
    finally:
        driver.close()
        stop(child)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="source tree before the change")
    parser.add_argument("after", type=Path, help="source tree after the change")
    parser.add_argument("--pairs", type=int, default=3, help="runs of each tree, alternating (default 3)")
    parser.add_argument("--frames", type=int, default=STATS_WINDOW,
                        help=f"measured frames per run, at least the node's diagnostics window "
                        f"({STATS_WINDOW}, the default): fewer would mix the warm-up into its stage means")
    parser.add_argument("--scenario", choices=SCENARIOS, default="objects")
    parser.add_argument("--resolution", choices=tuple(RESOLUTIONS), default="1080p")
    parser.add_argument("--camera-input", action="store_true",
                        help="the no-op engine is a camera-input model (uint8 pixels in, no CPU resize)")
    args = parser.parse_args()
    if args.frames < STATS_WINDOW:
        parser.error(f"--frames must be at least {STATS_WINDOW}, the node's diagnostics window")
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for name, tree in trees.items():
        if not (tree / "benchmarks" / "bench_node.py").is_file():
            sys.exit(f"bench_node_ab: {tree} ({name}) has no benchmarks/bench_node.py; give a source tree")
    apply_loopback_environment(own_domain_id(first=111))
    camera = ["--camera-input"] if args.camera_input else []
    engine = "camera-input" if camera else "float-input"
    print(f"# {args.scenario}, {args.resolution}, {engine} no-op engine, {args.frames} frames at 5 Hz per "
          f"run; before = {trees['before']}, after = {trees['after']}\n")
    print("| run | tree | UTC | load (1 min) | postprocess | messages + publish | **node cost excl. engine** "
          "| node process CPU per frame | page faults per frame |")
    print("|---|---|---|---|---|---|---|---|---|")
    for pair in range(1, args.pairs + 1):
        for name, tree in trees.items():
            started, load = time.strftime("%H:%M:%S", time.gmtime()), os.getloadavg()[0]
            row = run_tree(tree, args.scenario, camera, RESOLUTIONS[args.resolution], args.frames)
            stages = " | ".join(f"{row['stages'][column]:.2f}" for column in COLUMNS)
            print(f"| {pair} | {name} | {started} | {load:.2f} | {stages} | **{node_cost(row):.2f}** | "
                  f"{row['process_cpu']:.1f} | {row['faults']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
