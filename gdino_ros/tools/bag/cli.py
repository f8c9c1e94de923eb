r"""gdino-bag: segment a recorded rosbag2 or MCAP file offline, as fast as the engine runs, without ROS.

Examples::

    gdino-bag --input run_03 --output run_03_gdino --image-topic /camera/image_raw \
        --model mask_gdino.onnx --prompt "cup . bottle ."
    gdino-bag --input run_03.mcap --output out --image-topic /camera/image_raw/compressed \
        --model m.engine --prompt "the red mug" --mode expression --overlay --start 10 --end 25
    gdino-bag ... --prompt-schedule prompts.yaml
    gdino-bag --input /shared/bags/ /shared/x.mcap --output /shared/out ... --ray HEAD:6379

``--ray`` (:mod:`.fleet`) takes several inputs, folders of bags or quoted globs and writes one output per
input into the ``--output`` folder, the same bag as this command alone, on a Ray cluster (a local one
without an address); without ``--ray`` exactly one input is taken.

The input is a rosbag2 directory (MCAP or sqlite3 storage), a bare ``.mcap`` or ``.db3`` file, read
with rosbags. The image topic may be ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``. The
output is a new rosbag2 directory (MCAP unless ``--storage sqlite3``) holding every input topic
unchanged (same connections, types and definitions) plus, for each frame, ``/gdino/detections``
(vision_msgs/Detection2DArray), ``/gdino/mask`` (sensor_msgs/Image), ``/gdino/no_target``
(std_msgs/Bool), ``/gdino/result`` (gdino_ros/SegmentationResult) and, with ``--overlay``,
``/gdino/overlay`` (sensor_msgs/Image rgb8). Each output carries its input image's header and log
time; the messages are built by the same code as the live node's (``gdino_ros.conversions.messages``)
and their types are registered from the project's own .msg files, so definitions and RIHS01 hashes
are those of a ROS 2 build. Input topics named like an output are not copied (re-processing an
output bag replaces the old results).

``--start``/``--end`` are seconds from the bag's first message; outside that window nothing is read
or written. ``--prompt-schedule`` is a YAML list that switches the prompt at bag times (its format:
:mod:`gdino_ros.tools.bag.schedule`); frames before the first entry use ``--prompt`` (which may then be
left out only if the schedule starts at 0).

Frames the model cannot take (an encoding that cannot be converted, a side under 32 pixels, more than
the image pixel limit) are skipped and counted in the summary, as the live node skips them. A corrupt or
truncated input stops processing at the first record that cannot be read or deserialised: the error names
it, the output of the frames before is finalised and kept, and the exit status is 3. An MCAP file that
lost its index (recording killed) is read record by record up to the break. Ctrl-C or SIGTERM also keeps
a complete output of the frames before (exit status 130).

The output never touches the input: it may not be, contain or lie inside the input. It is written in a
hidden folder beside ``--output`` and renamed into place when complete, so ``--output`` holds a readable
bag or nothing; a failed write (disk full) removes the unfinished bag. ``--overwrite`` replaces only a bag
that gdino-bag wrote (marked in its metadata.yaml), and only once the new one is complete. The metadata is
rosbag2 version 8, which Humble and Jazzy both read. Exit codes: :mod:`gdino_ros.errors`.
"""


from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gdino_ros.core.prompt import PROMPT_MODES
from gdino_ros.settings import MASK_ENCODING
from gdino_ros.tools import cli
from gdino_ros.tools.arguments import add_model_arguments, add_setting_argument
from gdino_ros.tools.bag.job import run
from gdino_ros.tools.bag.planner import add_depth_arguments
from gdino_ros.tools.bag.writer import STORAGES
from gdino_ros.tools.ray_cluster import add_ray_arguments

PROG = "gdino-bag"


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``gdino-bag``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run Mask Grounding DINO on every frame of a rosbag2/MCAP recording and write a new bag "
        "with the original topics plus the /gdino/* outputs.",
    )
    parser.add_argument(
        "--input", type=Path, nargs="+", required=True,
        help="rosbag2 directory, .mcap or .db3 file; with --ray several, folders of bags or quoted globs",
    )
    parser.add_argument(
        "--output", type=Path, required=True,
        help="rosbag2 directory to create; with --ray the folder that receives one output per input",
    )
    parser.add_argument("--image-topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    parser.add_argument("--model", type=Path, required=True, help=".onnx, .pth or .engine/.plan model file")
    parser.add_argument("--prompt", help="phrases ('cup . bottle .') or one referring expression")
    parser.add_argument(
        "--mode",
        choices=PROMPT_MODES,
        default="auto",
        help="how to read the prompt: phrases, expression, or auto (phrases when every item between "
        "'.'/',' has at most three words; default)",
    )
    parser.add_argument("--prompt-schedule", type=Path, help="YAML list of {at|at_ns, prompt[, mode]}")
    parser.add_argument("--tokenizer", type=Path, help="bert-base-uncased vocab.txt or tokenizer directory")
    parser.add_argument("--overlay", action="store_true", help="also write /gdino/overlay (rgb8)")
    add_depth_arguments(parser)
    add_model_arguments(parser)
    add_setting_argument(parser, MASK_ENCODING)
    parser.add_argument("--start", type=float, help="seconds from the bag's first message (inclusive)")
    parser.add_argument("--end", type=float, help="seconds from the bag's first message (exclusive)")
    parser.add_argument("--storage", choices=STORAGES, default="mcap", help="output storage (default: mcap)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier gdino-bag output")
    add_ray_arguments(parser)
    parser.add_argument(
        "--range-s", type=float, default=60.0,
        help="with --ray: bags are segmented in ranges of this many seconds, in parallel (default: 60)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run gdino-bag; user errors print one line and exit with their kind's code (:mod:`gdino_ros.errors`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ray is not None:
        from gdino_ros.tools.bag.fleet import run_on_ray

        return cli.run(PROG, lambda: run_on_ray(args))
    if len(args.input) != 1:
        parser.error("several inputs need --ray (without an address it runs on this machine)")
    args.input = args.input[0]

    def body() -> int:
        stats = run(args)
        if stats.interrupted:
            return cli.interrupted(PROG, f"{args.output} holds the {stats.frames} frames before, complete")
        return 0

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
