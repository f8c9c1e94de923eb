"""Speed of the network itself: export wall time, PyTorch eager and ONNX Runtime forward, file size.

Steps, all with the full-size network (TAO defaults: Swin-T, BERT-base, 900 queries, ReLA) at 544×960
and untrained weights (``torch.manual_seed(0)``, the same weights ``gdino-export --random-init`` uses):

1. ``gdino-export --random-init --config full`` as a subprocess, for ``--msda grid-sample`` and
   ``--msda plugin``: wall time of the whole command (Python start-up and imports included) and file size.
2. PyTorch eager forward (``torch.no_grad``, eval) on the export's example inputs: median of ``--runs``
   calls after one warm-up call.
3. ONNX Runtime (CPU provider, default graph optimisations and threads) on the grid-sample export and,
   for comparison, on the same network exported the way TAO's exporter calls ``torch.onnx.export``
   (TorchScript exporter, ``do_constant_folding=False``, the dynamic ``batch_size`` axes TAO declares, no
   static-shape pass). TAO's post-export step (onnx-graphsurgeon constant folding) is not reproduced;
   ONNX Runtime folds constants itself when it creates the session. Session creation time, then the
   median and minimum wall time and the median process-CPU time of ``--runs`` calls after one warm-up
   call each; the two sessions' calls alternate so that both see the same background load (on a shared
   machine the minimum is the least disturbed call).

The load average is printed before and after: the machine is shared, so numbers vary with other work.

``--stages A.onnx [B.onnx ...]`` instead profiles ready exports in ONNX Runtime (CPU provider, default
optimisations, ``--threads`` intra-op threads, calls alternating between the files): milliseconds per call
by stage of the network, from the kernel times of ONNX Runtime's profiler grouped by the node names the
exporter gives (``/backbone.0/...``: Swin, ``/transformer/encoder/fusion_layers...``: feature fusion, ...).
Every file gets the same image and ``--prompt`` encoded as the backends pass it: 256 tokens to a graph
with a static text axis, the prompt's own tokens plus one padding token to one with a dynamic axis
(``gdino_ros.backends.base.model_text``). Afterwards each file's outputs are compared with the first
file's: the largest absolute difference per output (finite values; the -inf positions must agree).
When a file is a camera-input export (``gdino-export --camera-input``), every file is fed the same random
1080p uint8 frame instead: a camera-input file as it is, a float-input one after the CPU preprocessing
(``gdino_ros.core.preprocess``); the in-graph preprocessing is the stage "camera input".

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_model.py`` (``--config tiny`` for a quick check);
``PYTHONPATH=. .venv/bin/python benchmarks/bench_model.py --config tiny --stages before.onnx after.onnx``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from gdino_ros import contract
from gdino_ros.backends.base import model_text
from gdino_ros.core.model_metadata import read_onnx_metadata
from gdino_ros.core.preprocess import preprocess
from gdino_ros.core.prompt import encode_prompt
from gdino_ros.core.tokenizer import load_tokenizer
from gdino_ros.model.camera_input import SCOPE as CAMERA_INPUT_SCOPE
from gdino_ros.model.checkpoint import build_model
from gdino_ros.model.config import MaskGDINOConfig
from gdino_ros.model.export import example_inputs

REPO = Path(__file__).resolve().parents[1]
PROMPT = "cup . bottle . person ."  # a robot's typical prompt: a few short phrases


def _median_ms(call: Callable[[], object], runs: int) -> tuple[float, list[float]]:
    call()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), times


def _export_cli(config_name: str, msda: str, output: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "gdino_ros.tools.export", "--random-init", "--config", config_name]
    command += ["--msda", msda, "--output", str(output)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _tao_style_export(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], config: MaskGDINOConfig
) -> bytes:
    """``torch.onnx.export`` with the arguments TAO's ONNXExporter passes (batch_size -1, CPU)."""
    dynamic = {name: {0: "batch_size"} for name in (*contract.INPUT_NAMES, "pred_logits", "pred_boxes")}
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            tuple(inputs.values()),
            buffer,
            dynamo=False,
            input_names=list(contract.INPUT_NAMES),
            output_names=list(config.output_names),
            export_params=True,
            training=torch.onnx.TrainingMode.EVAL,
            opset_version=contract.ONNX_OPSET,
            do_constant_folding=False,
            dynamic_axes=dynamic,
        )
    return buffer.getvalue()


def _interleaved_ms(
    sessions: dict[str, ort.InferenceSession], feeds: dict[str, dict[str, np.ndarray]], runs: int
) -> dict:
    """Median wall and CPU ms per session (fed ``feeds[name]``); calls alternate so all see the same load."""
    for name, session in sessions.items():
        session.run(None, feeds[name])  # warm-up
    wall: dict[str, list[float]] = {name: [] for name in sessions}
    cpu: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, session in sessions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            session.run(None, feeds[name])
            wall[name].append((time.perf_counter() - start) * 1000)
            cpu[name].append((time.process_time() - start_cpu) * 1000)
    return {
        name: (statistics.median(wall[name]), statistics.median(cpu[name]), wall[name]) for name in sessions
    }


def _session(model: str | bytes) -> tuple[ort.InferenceSession, float]:
    start = time.perf_counter()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session, time.perf_counter() - start


CAMERA_HW = (1080, 1920)  # the camera frame a camera-input export gets in --stages
# Stage of the network -> node-name prefixes of its nodes in our export (the first match wins).
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("camera input (resize, normalise)", (f"{CAMERA_INPUT_SCOPE}/",)),
    ("Swin backbone", ("/backbone",)),
    ("BERT", ("/encoder/", "/embeddings/")),
    ("feature fusion", ("/transformer/encoder/fusion_layers",)),
    ("text enhancer", ("/transformer/encoder/text_layers",)),
    ("deformable encoder layers", ("/transformer/encoder/layers",)),
    ("decoder", ("/transformer/decoder",)),
    ("ReLA", ("/rela",)),
    ("mask branch", ("/mask_head", "/controller", "/feat_map")),
)


def _stage(node: str) -> str:
    return next((stage for stage, prefixes in STAGES if node.startswith(prefixes)), "other")


def _feed(
    session: ort.InferenceSession, image: np.ndarray, text: dict[str, np.ndarray], frame: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Return the image and the 256-token text as the backends give them to this graph (cut if dynamic).

    A camera-input graph gets ``frame``, the camera's pixels, instead of the preprocessed ``image``.
    """
    if session.get_inputs()[0].type == "tensor(uint8)":
        assert frame is not None
        image = frame[None]
    dynamic = all(
        not all(isinstance(size, int) for size in arg.shape[1:])
        for arg in session.get_inputs() if arg.name in contract.TEXT_INPUT_NAMES
    )
    return {contract.INPUT_IMAGE: image, **model_text(text, dynamic)}


def _compare_outputs(
    sessions: dict[Path, ort.InferenceSession], feeds: dict[str, dict[str, np.ndarray]]
) -> None:
    """Print each file's largest absolute output difference from the first file's (finite values)."""
    paths = list(sessions)
    reference = sessions[paths[0]].run(None, feeds[str(paths[0])])
    names = [arg.name for arg in sessions[paths[0]].get_outputs()]
    for path in paths[1:]:
        got = sessions[path].run(None, feeds[str(path)])
        cells = []
        for name, want, have in zip(names, reference, got, strict=True):
            same_inf = bool((np.isneginf(want) == np.isneginf(have)).all())
            finite = np.isfinite(want)
            scale = float(np.abs(want[finite]).max())
            cells.append(f"{name} {float(np.abs(have[finite] - want[finite]).max()):.2e} of {scale:.2e}"
                         + ("" if same_inf else " (-inf positions DIFFER)"))
        print(f"outputs of {path.name} vs {paths[0].name}, max |difference| of largest |value|: "
              + "; ".join(cells))


def _stage_profile(paths: list[Path], image: np.ndarray, frame: np.ndarray | None,
                   text: dict[str, np.ndarray], runs: int, threads: int) -> None:
    """Print ms per call by stage for each ONNX file (kernel times from ONNX Runtime's profiler).

    Per stage the least of the timed calls is shown (on a shared machine the least disturbed), and the
    median; "sum" adds the stages' least values.
    """
    sessions = {}
    with tempfile.TemporaryDirectory() as folder:
        for path in paths:
            options = ort.SessionOptions()
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(folder) / path.stem)
            options.intra_op_num_threads = threads
            sessions[path] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feeds = {str(p): _feed(s, image, text, frame) for p, s in sessions.items()}
        for path in paths:
            print(f"{path.name}: text of {feeds[str(path)][contract.INPUT_IDS].shape[1]} tokens")
        timings = _interleaved_ms({str(p): s for p, s in sessions.items()}, feeds, runs)
        columns: dict[Path, dict[str, list[float]]] = {}
        for path, session in sessions.items():
            events = json.loads(Path(session.end_profiling()).read_text())
            calls = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[1:]
            per_stage: dict[str, list[float]] = {}
            for event in events:
                if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
                    continue
                call = next((i for i, (start, end) in enumerate(calls) if start <= event["ts"] <= end), None)
                if call is not None:
                    stage = _stage(event["name"][: -len("_kernel_time")])
                    per_stage.setdefault(stage, [0.0] * len(calls))[call] += event["dur"] / 1000
            columns[path] = per_stage
        if len(paths) > 1:
            _compare_outputs(sessions, feeds)
    names = [path.name for path in paths]
    title = f"stage: ms per call, least (median) of {runs}, {threads} thread(s)"
    print(f"\n| {title} | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(paths))
    for stage in [s for s, _ in STAGES] + ["other"]:
        cells = [columns[p].get(stage, [0.0]) for p in paths]
        values = [f"{min(c):.1f} ({statistics.median(c):.1f})" for c in cells]
        print(f"| {stage} | " + " | ".join(values) + " |")
    print("| **sum of the least** | "
          + " | ".join(f"{sum(min(c) for c in columns[p].values()):.1f}" for p in paths) + " |")
    print("| wall per call, median (min) | " + " | ".join(
        f"{timings[str(p)][0]:.1f} ({min(timings[str(p)][2]):.1f})" for p in paths) + " |")
    print("| process CPU per call, median | " + " | ".join(f"{timings[str(p)][1]:.1f}" for p in paths) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("full", "tiny"), default="full")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per engine (after one warm-up)")
    parser.add_argument("--stages", type=Path, nargs="+", help="profile these exports by stage instead")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for --stages")
    parser.add_argument("--prompt", default=PROMPT, help=f"the prompt for --stages (default: {PROMPT!r})")
    args = parser.parse_args()
    config = MaskGDINOConfig.full() if args.config == "full" else MaskGDINOConfig.tiny()
    if args.stages:
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"onnxruntime {ort.__version__}; load average before: {os.getloadavg()[0]:.2f}")
        prompt = encode_prompt(args.prompt, "auto", load_tokenizer())  # the local vocabulary search
        print(f"prompt {args.prompt!r}: {prompt.num_tokens} tokens with [CLS] and [SEP]")
        image = example_inputs(config)[contract.INPUT_IMAGE].numpy()
        frame = None
        if any(read_onnx_metadata(path).get(contract.META_IMAGE_INPUT) == contract.IMAGE_INPUT_CAMERA
               for path in args.stages):
            frame = np.random.default_rng(0).integers(0, 256, (*CAMERA_HW, 3), dtype=np.uint8)
            metadata = read_onnx_metadata(args.stages[0])
            size = (int(metadata[contract.META_INPUT_HEIGHT]), int(metadata[contract.META_INPUT_WIDTH]))
            image = preprocess(frame, size)
            print(f"camera frame {CAMERA_HW[1]}x{CAMERA_HW[0]} (the float-input files get it preprocessed on "
                  "the CPU)")
        _stage_profile(args.stages, image, frame, prompt.text_inputs(), args.runs, args.threads)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, no GPU")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as folder:
        grid = Path(folder) / "grid.onnx"
        for msda, path in (("grid-sample", grid), ("plugin", Path(folder) / "plugin.onnx")):
            seconds = _export_cli(args.config, msda, path)
            size = path.stat().st_size / 2**20
            rows.append(
                (f"gdino-export --random-init --config {args.config} --msda {msda}", f"{seconds:.1f} s")
            )
            rows.append((f"file size ({msda})", f"{size:.1f} MiB"))
            print(rows[-2], rows[-1], flush=True)

        torch.manual_seed(0)
        model = build_model(config).eval()
        parameters = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}
        rows.append(("parameter bytes (unique tensors)", f"{sum(parameters.values()) / 2**20:.1f} MiB"))
        inputs = example_inputs(config)
        feed = {name: tensor.numpy() for name, tensor in inputs.items()}
        with torch.no_grad():
            median, times = _median_ms(lambda: model(*inputs.values()), args.runs)
        runs = ", ".join(f"{t:.0f}" for t in times)
        rows.append(
            ("PyTorch eager forward", f"median {median:.0f} ms, min {min(times):.0f} ms (runs: {runs})")
        )
        print(rows[-1], flush=True)

        start = time.perf_counter()
        tao_style = _tao_style_export(model, inputs, config)
        rows.append(("TAO-style torch.onnx.export (in process)", f"{time.perf_counter() - start:.1f} s"))
        ours, ours_created = _session(str(grid))
        theirs, theirs_created = _session(tao_style)
        rows.append(
            (
                "ONNX Runtime session creation: our export / TAO-style",
                f"{ours_created:.1f} s / {theirs_created:.1f} s",
            )
        )
        timings = _interleaved_ms({"our export": ours, "TAO-style export": theirs},
                                  {"our export": feed, "TAO-style export": feed}, args.runs)
        for name, (wall, cpu, times) in timings.items():
            runs = ", ".join(f"{t:.0f}" for t in times)
            value = f"median {wall:.0f} ms, min {min(times):.0f} ms, CPU {cpu:.0f} ms (runs: {runs})"
            rows.append((f"ONNX Runtime forward ({name})", value))
        print(*rows[-4:], sep="\n", flush=True)

    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    print(f"| {args.config} network, {config.input_height}×{config.input_width} | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
