"""gdino-build-engine: build a batch-1 TensorRT engine from the contract's ONNX and record its inputs.

The build is skipped when the output engine already exists and its build record (``<engine>.json``)
has the same key: ONNX file hash, TensorRT version, GPU model, requested precision and FP32 layer
patterns. Any difference rebuilds, so a stale engine is never reused silently.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gdino_ros.backends.base import BackendError, TensorSpec, check_io, expected_input_shape
from gdino_ros.backends.engine_meta import (
    BuildKey,
    BuildRecord,
    file_sha256,
    is_reusable,
    sidecar_path,
    summarize_precision,
    write_record,
)
from gdino_ros.backends.tensorrt import numpy_dtype, require_tensorrt, select_gpu

PROG = "gdino-build-engine"


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def build_engine(
    onnx_path: Path,
    *,
    fp16: bool,
    fp32_layers: list[str],
    workspace_gb: float,
    say: Callable[[str], None] = _say,
) -> tuple[bytes, str]:
    """Parse ``onnx_path``, build a serialized engine with a min = opt = max batch-1 profile.

    Returns the engine bytes and the precision the built engine really has (from its inspector).
    Raises :class:`BackendError` when the ONNX does not parse, is not the contract's, an FP32 pattern
    matches no layer, or the build fails.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # TAO's ONNX uses MultiscaleDeformableAttnPlugin_TRT
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_path}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path}: {errors}")

    def spec(tensor: trt.ITensor) -> TensorSpec:
        dims = tensor.shape
        shape = tuple(dims[i] if dims[i] >= 0 else None for i in range(len(dims)))
        return TensorSpec(tensor.name, numpy_dtype(tensor.dtype), shape)

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    io = check_io({t.name: spec(t) for t in inputs}, {t.name: spec(t) for t in outputs}, str(onnx_path))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # lets the inspector report precisions
    profile = builder.create_optimization_profile()
    for tensor in inputs:
        shape = trt.Dims(list(expected_input_shape(tensor.name, io.input_hw)))
        profile.set_shape(tensor.name, shape, shape, shape)  # TAO's network only runs at batch 1
    config.add_optimization_profile(profile)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if fp32_layers:
        float_types = (trt.DataType.FLOAT, trt.DataType.HALF)
        pinned = 0
        for pattern in fp32_layers:
            matches = [
                layer for layer in (network.get_layer(i) for i in range(network.num_layers))
                if fnmatch.fnmatchcase(layer.name, pattern)
            ]
            if not matches:
                examples = ", ".join(network.get_layer(i).name for i in range(min(5, network.num_layers)))
                raise BackendError(
                    f"--fp32-layers pattern {pattern!r} matches no layer (layer names look like: {examples})"
                )
            for layer in matches:
                float_outputs = [
                    j for j in range(layer.num_outputs) if layer.get_output(j).dtype in float_types
                ]
                if float_outputs:
                    layer.precision = trt.DataType.FLOAT
                    for j in float_outputs:
                        layer.set_output_type(j, trt.DataType.FLOAT)
                    pinned += 1
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        say(f"pinned {pinned} layer(s) to FP32")

    started = time.monotonic()

    class Progress(trt.IProgressMonitor):
        """Prints TensorRT's top-level build phases with the elapsed time."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
            self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            if self.depth[phase_name] <= 1:
                indent = "  " * self.depth[phase_name]
                say(f"[{time.monotonic() - started:6.0f} s] {indent}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            self.depth.pop(phase_name, None)

    monitor = Progress()  # kept referenced until the build returns
    config.progress_monitor = monitor
    say(
        f"building a {'FP16' if fp16 else 'FP32'} engine for {io.input_hw[0]}x{io.input_hw[1]} images; "
        "this takes several minutes on a desktop GPU and can take 20 minutes or more on Jetson"
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError("TensorRT failed to build the engine (see its messages above)")
    data = bytes(memoryview(serialized))
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        raise BackendError("TensorRT built an engine it cannot load back (see its messages above)")
    precision = summarize_precision(
        engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    )
    return data, precision


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--onnx", required=True, type=Path, help="the exported model (gdino-export or TAO)")
    parser.add_argument("--output", required=True, type=Path, help="engine file to write (.engine or .plan)")
    parser.add_argument("--fp16", action="store_true", help="allow FP16 kernels (faster; validate accuracy)")
    parser.add_argument(
        "--fp32-layers", nargs="+", default=[], metavar="PATTERN",
        help="with --fp16: keep layers whose name matches any of these shell patterns in FP32, "
        "e.g. '*LayerNorm*'",
    )
    parser.add_argument("--workspace-gb", type=float, default=8.0, help="builder workspace limit (default 8)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the engine is up to date")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gdino-build-engine``; returns the process exit code."""
    args = _parser().parse_args(argv)
    onnx_path: Path = args.onnx
    output: Path = args.output
    try:
        if not onnx_path.is_file():
            raise BackendError(f"ONNX file {onnx_path} does not exist")
        if output.suffix not in (".engine", ".plan"):
            raise BackendError(f"--output {output} must end in .engine or .plan (backends go by extension)")
        if args.fp32_layers and not args.fp16:
            raise BackendError("--fp32-layers needs --fp16 (without it the engine is FP32 throughout)")
        version = require_tensorrt()
        gpu = select_gpu(0)
        _say(f"hashing {onnx_path}")
        onnx_stat = onnx_path.stat()
        key = BuildKey.create(
            file_sha256(onnx_path), version, gpu, "fp16" if args.fp16 else "fp32", args.fp32_layers
        )
        if not args.force and is_reusable(output, key):
            _say(f"{output} is up to date (same ONNX, TensorRT {version}, {gpu}, precision); not rebuilt")
            return 0
        started = time.monotonic()
        data, precision = build_engine(
            onnx_path, fp16=args.fp16, fp32_layers=args.fp32_layers, workspace_gb=args.workspace_gb
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        sidecar_path(output).unlink(missing_ok=True)
        partial = output.with_name(output.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, output)
        record = BuildRecord(
            key=key,
            onnx_path=str(onnx_path.resolve()),
            onnx_size=onnx_stat.st_size,
            onnx_mtime_ns=onnx_stat.st_mtime_ns,
            engine_sha256=file_sha256(output),
            engine_precision=precision,
            build_seconds=round(time.monotonic() - started, 1),
        )
        write_record(output, record)
    except (BackendError, OSError) as error:
        _say(f"error: {error}")
        return 1
    _say(f"wrote {output} ({len(data) / 1e6:.0f} MB) in {record.build_seconds:.0f} s; precision: {precision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
