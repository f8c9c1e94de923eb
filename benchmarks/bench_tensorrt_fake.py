"""Bytes copied device->host per frame, and serial vs overlapped frames, of the TensorRT backend's own code.

No GPU is needed: the backend runs against the test doubles in ``test/fakes`` (a CUDA runtime whose
copies are counted, a TensorRT whose engine runs its ONNX graph with ONNX Runtime). The engine is the
contract's I/O at 544x960 with 900 queries and the ReLA head (``make_contract_onnx``: simple arithmetic
with the real output shapes; ``pred_masks`` is 900x1x136x240 float32 = 117.5 MB).

* Bytes: the fake's device->host byte counter over one frame, (a) for ``Backend.infer`` (every output
  whole: what the backend copied every frame before), (b) for one Segmenter frame that keeps 10
  detections (IoI filter off: only the kept planes are read), (c) the same with the IoI filter on, which
  reads the planes of every candidate (here 300: this model scores every query alike).
* Time: the fake GPU runs queued work on a thread per stream as it comes, each engine execution taking
  ``--gpu-ms`` of sleep plus the ONNX Runtime run of the graph (both counted as GPU busy time). Frames of a
  1080p image, serial (``segmenter(image)`` per frame) and overlapped (``segmenter.stream(images)``);
  results are checked equal.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tensorrt_fake.py [--frames 20] [--gpu-ms 40]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))

from fakes import install  # noqa: E402
from fakes.tensorrt_runtime import write_engine  # noqa: E402
from model_fixtures import make_contract_onnx  # noqa: E402

from gdino_ros import contract  # noqa: E402
from gdino_ros.backends import open_backend  # noqa: E402
from gdino_ros.core.postprocess import PostprocessParams  # noqa: E402
from gdino_ros.core.segmenter import Segmenter  # noqa: E402
from gdino_ros.core.tokenizer import load_tokenizer  # noqa: E402

HW = (contract.DEFAULT_INPUT_HEIGHT, contract.DEFAULT_INPUT_WIDTH)
QUERIES = 900
PROMPT = "person . car . traffic light"


def params(ioi: float) -> PostprocessParams:
    """Keep exactly 10 detections of this model (every query scores alike, all boxes coincide)."""
    return PostprocessParams(nms_threshold=0.0, ioi_threshold=ioi, max_detections=10)


def copied_per_frame(engine: Path, image: np.ndarray) -> None:
    monkeypatch = pytest.MonkeyPatch()
    fakes = install(monkeypatch)
    try:
        tokenizer = load_tokenizer()
        with Segmenter(open_backend(engine, "cuda"), tokenizer, params=params(0.0)) as segmenter:
            segmenter.set_prompt(PROMPT)
            segmenter(image)  # the prompt upload and first-use allocations
            tensor = np.zeros((1, 3, *HW), np.float32)
            rows = []
            for label, run in (
                ("every output whole (Backend.infer, the old per-frame copy)",
                 lambda: segmenter.backend.infer(tensor, segmenter._active.text_inputs)),  # type: ignore[union-attr]
                ("small outputs + kept planes (10 detections, IoI off)", lambda: segmenter(image)),
                ("small outputs + candidate planes (IoI on)",
                 lambda: (segmenter.set_params(params(0.5)), segmenter(image))),
            ):
                before, copies = fakes.gpu.d2h_bytes, fakes.gpu.d2h_copies
                run()
                rows.append((label, fakes.gpu.d2h_bytes - before, fakes.gpu.d2h_copies - copies))
        print("| device->host per frame | bytes | MB | cudaMemcpyAsync calls |\n|---|---|---|---|")
        for label, nbytes, copies in rows:
            print(f"| {label} | {nbytes:,} | {nbytes / 1e6:.2f} | {copies} |")
    finally:
        monkeypatch.undo()


def timed(engine: Path, image: np.ndarray, frames: int, gpu_ms: float) -> None:
    tokenizer = load_tokenizer()
    results = {}
    for mode in ("serial", "overlapped"):
        monkeypatch = pytest.MonkeyPatch()
        fakes = install(monkeypatch)
        fakes.gpu.start_worker(gpu_ms / 1e3)
        try:
            with Segmenter(open_backend(engine, "cuda"), tokenizer, params=params(0.0)) as segmenter:
                segmenter.set_prompt(PROMPT)
                segmenter(image)  # warm-up
                busy = fakes.gpu.busy_seconds
                started = time.perf_counter()
                if mode == "serial":
                    out = [segmenter(image) for _ in range(frames)]
                else:
                    out = list(segmenter.stream(image for _ in range(frames)))
                wall = time.perf_counter() - started
                busy = fakes.gpu.busy_seconds - busy
                post = statistics.median(r.timings_ms["postprocess"] for r in out)
                pre = statistics.median(r.timings_ms["preprocess"] for r in out)
            results[mode] = [len(r.detections) for r in out]
            per_frame = (wall / frames * 1e3, busy / frames * 1e3, pre, post)
            print(f"| {mode} | " + " | ".join(f"{value:.1f}" for value in per_frame) + " |")
        finally:
            monkeypatch.undo()
    assert results["serial"] == results["overlapped"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--gpu-ms", type=float, default=40.0, help="simulated GPU time per engine execution")
    args = parser.parse_args()
    print(f"load average at start: {open('/proc/loadavg').read().split()[:3]}, {os.cpu_count()} CPUs")
    image = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = make_contract_onnx(Path(folder) / "contract.onnx", input_hw=HW, queries=QUERIES)
        engine = write_engine(onnx_path, Path(folder) / "contract.engine")
        copied_per_frame(engine, image)
        print(f"\n{args.frames} frames of a 1080p image, --gpu-ms {args.gpu_ms:g}\n")
        print("| path | ms per frame | fake GPU busy ms per frame | preprocess ms | postprocess ms |")
        print("|---|---|---|---|---|")
        timed(engine, image, args.frames, args.gpu_ms)
    print(f"load average at end: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
