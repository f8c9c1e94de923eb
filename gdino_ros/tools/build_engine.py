"""gdino-build-engine: build a batch-1 TensorRT engine from the contract's ONNX and record its inputs.

Precision is decided in the ONNX graph, never by builder flags: the network is strongly typed on every
TensorRT this package supports (10.3 on JetPack 6 up to 11.x, where weak typing no longer exists). An
FP16 (mixed-precision) ONNX from ``gdino-export --precision fp16`` builds an FP16 engine as it is;
``--fp16`` on an FP32 ONNX first converts it the same way into a new file next to the engine.

The build is skipped when the output engine exists and its build record (``<engine>.json``) has the same
key: ONNX file hash, TensorRT version, GPU identity (name, compute capability, SM count, memory, L4T
release on Jetson), precision and FP32 keep-list. An engine this tool wrote whose key differs is rebuilt,
saying why; any other file at ``--output`` is replaced only with ``--force``. TensorRT's kernel timings
persist in ``<engine>.timing.cache``, so a rebuild skips most of the tuning.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, SupportsInt

from gdino_ros import contract
from gdino_ros.backends.base import BackendError, ModelIO, TensorSpec, check_io, expected_input_shape
from gdino_ros.backends.cuda import GpuInfo, select_gpu
from gdino_ros.backends.engine_meta import (
    BuildKey,
    BuildRecord,
    file_sha256,
    is_reusable,
    read_record,
    sidecar_path,
    summarize_precision,
    timing_cache_path,
    write_record,
)
from gdino_ros.backends.tensorrt import numpy_dtype, require_tensorrt
from gdino_ros.core.model_metadata import read_onnx_metadata
from gdino_ros.errors import InputError, OutputError, UsageError
from gdino_ros.tools import cli
from gdino_ros.tools.output_files import write_failure

if TYPE_CHECKING:
    import onnx
    import tensorrt as trt

PROG = "gdino-build-engine"
GIB = 1 << 30
DEFAULT_MAX_WORKSPACE = 8 * GIB
_OUT_OF_MEMORY = re.compile(
    r"out of memory|could not be allocated|OutOfMemory|cudaErrorMemoryAllocation", re.IGNORECASE
)
Say = Callable[[str], None]
# The profile's "opt" length of a dynamic token axis: TensorRT picks its kernels for this length and runs
# every other one from 1 to 256 with them. A robot's prompt is a few short phrases: "cup . bottle . person ."
# is 9 tokens with [CLS], [SEP] and the padding token the model keeps; 16 leaves room for a few more.
OPT_TEXT_LEN = 16
# A camera-input model's image profile (min, opt, max), [1, H, W, 3]: any camera from 32x32 to 4096x4096,
# with the kernels chosen for 1080p.
CAMERA_PROFILE: tuple[tuple[int, ...], ...] = (
    (contract.BATCH_SIZE, contract.MIN_IMAGE_SIDE, contract.MIN_IMAGE_SIDE, 3),
    (contract.BATCH_SIZE, *contract.CAMERA_OPT_HW, 3),
    (contract.BATCH_SIZE, contract.MAX_CAMERA_SIDE, contract.MAX_CAMERA_SIDE, 3),
)
CONVERSION_META = "gdino_build_engine_fp16_of"  # metadata of a converted ONNX: its source and keep-list
_LOGGERS: list[object] = []  # every TensorRT logger made here, kept alive (see _Messages)


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def network_flags() -> int:
    """Return the creation flags of the network: strongly typed on every supported TensorRT.

    The flag exists from TensorRT 10.0 (verified against the 10.3, newest 10.x and newest 11.x binding
    modules): 10.x needs it so that the ONNX graph's types are the engine's; 11.x accepts it and is
    strongly typed regardless.
    """
    import tensorrt as trt

    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def default_workspace(total_memory: int) -> int:
    """Return the builder's workspace limit: half the GPU's memory, at most 8 GiB.

    Half, because on Jetson the GPU shares its memory with the CPU (an 8 GB Orin has about 7.4 GiB).
    """
    return min(DEFAULT_MAX_WORKSPACE, total_memory // 2)


class _Messages:
    """TensorRT's log: warnings and errors go to ``say``; errors are kept to explain a failed build.

    Builder, parser and runtime of one build share :attr:`logger`. It is never freed: TensorRT keeps the
    first logger it is given as the process-wide one, and later runtimes (the FP16 check) may use it.
    """

    def __init__(self, say: Say) -> None:
        self.say = say
        self.errors: list[str] = []
        self.logger = _logger(self)
        _LOGGERS.append(self.logger)

    def out_of_memory(self) -> bool:
        return any(_OUT_OF_MEMORY.search(message) for message in self.errors)


def _logger(messages: _Messages) -> trt.ILogger:
    """Return a TensorRT logger that reports to ``messages``."""
    import tensorrt as trt

    errors = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR)

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in errors:
                messages.errors.append(msg)
                messages.say(f"TensorRT error: {msg}")
            elif severity == trt.ILogger.Severity.WARNING:
                messages.say(f"TensorRT warning: {msg}")

    return Logger()


def _parse(
    builder: trt.Builder, logger: trt.ILogger, onnx_path: Path
) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """Parse ``onnx_path`` into a strongly typed network; the parser must outlive the network's use."""
    import tensorrt as trt

    network = builder.create_network(network_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        hint = "re-export it with gdino-export"
        if "plugin" in errors.lower():
            hint = (
                "its TensorRT plugin op is not available here: install TensorRT's plugin library "
                "(libnvinfer_plugin) of this TensorRT version, or export with gdino-export --msda grid-sample"
            )
        raise BackendError(f"TensorRT could not parse {onnx_path}: {errors}; {hint}")
    return network, parser


def _network_io(network: trt.INetworkDefinition, onnx_path: Path) -> ModelIO:
    """Check the parsed network's I/O against the contract."""

    def spec(tensor: trt.ITensor) -> TensorSpec:
        return TensorSpec.from_dims(tensor.name, numpy_dtype(tensor.dtype), tensor.shape)

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    return check_io({t.name: spec(t) for t in inputs}, {t.name: spec(t) for t in outputs}, str(onnx_path))


def _progress_monitor(say: Say) -> trt.IProgressMonitor:
    """Return a monitor that prints TensorRT's top-level build phases with the elapsed time."""
    import tensorrt as trt

    started = time.monotonic()

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: SupportsInt) -> None:
            self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            if self.depth[phase_name] <= 1:
                indent = "  " * self.depth[phase_name]
                say(f"[{time.monotonic() - started:6.0f} s] {indent}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: SupportsInt) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            self.depth.pop(phase_name, None)

    return Progress()


def _use_timing_cache(config: trt.IBuilderConfig, cache_path: Path, say: Say) -> None:
    """Give the build the timing cache saved by the last build here, or a new empty one."""
    saved = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(saved)
    if saved and cache is not None and config.set_timing_cache(cache, False):
        say(f"reusing kernel timings from {cache_path}")
        return
    if saved:
        say(f"{cache_path} is from another GPU or TensorRT version (or damaged); timing kernels afresh")
    config.set_timing_cache(config.create_timing_cache(b""), False)


def _configure(
    builder: trt.Builder, io: ModelIO, workspace: int, cache_path: Path, say: Say
) -> trt.IBuilderConfig:
    """Return a builder config: workspace, a batch-1 profile, detailed layer info, timing cache."""
    import tensorrt as trt

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # lets the inspector report precisions
    profile = builder.create_optimization_profile()
    for name in io.input_dtypes:
        if name == contract.INPUT_IMAGE and io.camera_input:
            profile.set_shape(name, *(trt.Dims(list(shape)) for shape in CAMERA_PROFILE))
            continue
        # TAO's network only runs at batch 1; a dynamic token axis takes 1 to 256 tokens.
        shortest, typical = (1, OPT_TEXT_LEN) if io.dynamic_text else (contract.MAX_TEXT_LEN,) * 2
        shapes = (expected_input_shape(name, io.input_hw, length) for length in (shortest, typical))
        longest = expected_input_shape(name, io.input_hw)
        profile.set_shape(name, *(trt.Dims(list(shape)) for shape in (*shapes, longest)))
    config.add_optimization_profile(profile)
    _use_timing_cache(config, cache_path, say)
    return config


def _build(onnx_path: Path, messages: _Messages, workspace: int, cache_path: Path) -> tuple[bytes, bytes]:
    """Parse and build; return the serialized engine and the updated timing cache.

    Builder, network, parser and config are local to this function, so they are released when it
    returns, before the engine is deserialised (both at once do not fit an 8 GB Jetson).
    """
    import tensorrt as trt

    say, logger = messages.say, messages.logger
    builder = trt.Builder(logger)
    say(f"parsing {onnx_path}")
    network, parser = _parse(builder, logger, onnx_path)
    io = _network_io(network, onnx_path)
    config = _configure(builder, io, workspace, cache_path, say)
    monitor = _progress_monitor(say)  # referenced here until the build returns
    config.progress_monitor = monitor
    size = f"{io.input_hw[0]}x{io.input_hw[1]} images"
    if io.camera_input:
        largest = contract.MAX_CAMERA_SIDE
        size = f"camera images up to {largest}x{largest} (resized in the engine to {size})"
    say(
        f"building a strongly typed engine for {size} with a "
        f"{workspace / GIB:.1f} GiB workspace; this takes several minutes on a desktop GPU and can take "
        "20 minutes or more on Jetson"
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        if messages.out_of_memory():
            raise BackendError(
                f"TensorRT ran out of GPU memory while building: pass a smaller --workspace-gb (this build "
                f"used {workspace / GIB:.1f}) or stop other programs that use the GPU"
            )
        raise BackendError("TensorRT failed to build the engine (see its messages above)")
    return bytes(memoryview(serialized)), bytes(memoryview(config.get_timing_cache().serialize()))


def _inspect(data: bytes, messages: _Messages) -> str:
    """Deserialise the engine once and return the precision its layers really run in."""
    import tensorrt as trt

    engine = trt.Runtime(messages.logger).deserialize_cuda_engine(data)
    if engine is None:
        if messages.out_of_memory():
            raise BackendError("the GPU has too little free memory to load the engine just built; stop other "
                               "programs that use the GPU and run gdino-build-engine again")
        raise BackendError("TensorRT built an engine it cannot load back (see its messages above)")
    return summarize_precision(
        engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    )


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file, so a crash never leaves half a file under its name."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def build_engine(
    onnx_path: Path, *, workspace: int, timing_cache: Path, say: Say = _say
) -> tuple[bytes, str]:
    """Build a serialized engine from ``onnx_path`` with a batch-1 profile.

    The profile is min = opt = max, except a dynamic token axis of the text inputs (our exports): min 1,
    opt :data:`OPT_TEXT_LEN`, max 256 tokens, and a camera-input image: :data:`CAMERA_PROFILE`.

    Returns the engine bytes and the precision the built engine really has (from its inspector), and
    saves TensorRT's timing cache to ``timing_cache``. Raises :class:`BackendError` when the plugin
    library does not load, the ONNX does not parse or is not the contract's, or the build fails.
    """
    import tensorrt as trt

    messages = _Messages(say)
    if not trt.init_libnvinfer_plugins(messages.logger, ""):  # TAO's ONNX may use its MSDA plugin
        raise BackendError(
            f"TensorRT's plugin library (libnvinfer_plugin) did not load: install the one of TensorRT "
            f"{trt.__version__} (pip: tensorrt-cu12/-cu13 of the same version; JetPack: libnvinfer-plugin10)"
        )
    data, cache = _build(onnx_path, messages, workspace, timing_cache)
    _write_atomically(timing_cache, cache)
    say(f"saved kernel timings to {timing_cache}")
    return data, _inspect(data, messages)


def _require_onnx() -> None:
    """Raise :class:`BackendError` saying how to install ``onnx`` when it is missing (graphs need it)."""
    try:
        import onnx  # noqa: F401 - only checking that it imports
    except ImportError:
        raise BackendError(f"{PROG} reads the ONNX graph with the onnx package: pip install onnx") from None


def is_mixed_fp16(model: onnx.ModelProto) -> bool:
    """Tell an FP16 (mixed-precision) graph from an FP32 one: FP16 weights or casts to FP16 inside it.

    Graph inputs and outputs do not count: an FP32 export may take an FP16 image.
    """
    from onnx import TensorProto

    casts = (n for n in model.graph.node if n.op_type == "Cast")
    return any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer) or any(
        a.name == "to" and a.i == TensorProto.FLOAT16 for n in casts for a in n.attribute
    )


def onnx_precision(path: Path) -> str:
    """Return the precision of the ONNX's network: as gdino-export recorded it, else read from the graph.

    Files from TAO or older exports record none; their graph is loaded to look for FP16 tensors.
    """
    import onnx

    from gdino_ros.model.precision import META_PRECISION, PRECISION_FP16, PRECISION_FP32, PRECISIONS

    recorded = read_onnx_metadata(path).get(META_PRECISION)
    if recorded in PRECISIONS:
        return recorded
    return PRECISION_FP16 if is_mixed_fp16(onnx.load(str(path), load_external_data=False)) else PRECISION_FP32


def _conversion_stamp(onnx_path: Path, fp32_layers: tuple[str, ...]) -> str:
    """Return what the converted ONNX records of its origin, so that a later build can reuse it."""
    return json.dumps({"source_sha256": file_sha256(onnx_path), "fp32_layers": list(fp32_layers)})


def _set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set metadata entries, replacing those of the same key (the conversion copies the FP32 file's)."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        model.metadata_props.add(key=key, value=value)


@dataclasses.dataclass(frozen=True)
class OnnxSource:
    """Which ONNX the engine is built from: the user's, or its FP16 conversion next to the engine."""

    given: Path
    precision: str  # of the network that is built: "fp16" or "fp32"
    converted: Path | None  # where --fp16 writes the mixed-precision conversion of an FP32 ONNX
    fp32_layers: tuple[str, ...]  # the user's patterns, kept in FP32 besides precision.DEFAULT_FP32_LAYERS
    reference: Path | None  # the FP32 ONNX an FP16 engine is checked against

    def prepare(self, say: Say) -> Path:
        """Return the ONNX to build from, converting the given one to FP16 first when asked to."""
        if self.converted is None:
            return self.given
        import onnx

        from gdino_ros.model import precision

        stamp = _conversion_stamp(self.given, self.fp32_layers)
        if self.converted.is_file() and read_onnx_metadata(self.converted).get(CONVERSION_META) == stamp:
            say(f"reusing {self.converted}, the FP16 conversion of {self.given} with these --fp32-layers")
            return self.converted
        say(f"converting {self.given} to mixed FP16/FP32 into {self.converted}")
        model = onnx.load(str(self.given))
        keep = (*precision.DEFAULT_FP32_LAYERS, *self.fp32_layers)
        try:
            precision.check_patterns(model, self.fp32_layers)
            converted = precision.convert_to_fp16(model, keep)
        except ValueError as error:
            raise BackendError(f"cannot convert {self.given} to FP16: {error}") from None
        _set_metadata(converted, {CONVERSION_META: stamp, precision.META_PRECISION: precision.PRECISION_FP16,
                                  precision.META_FP32_LAYERS: json.dumps(keep)})
        _write_atomically(self.converted, converted.SerializeToString())
        return self.converted


def plan_precision(args: argparse.Namespace) -> OnnxSource:
    """Decide from the ONNX and the options what is built; refuse combinations that cannot be honoured."""
    onnx_path: Path = args.onnx
    layers = tuple(sorted(set(args.fp32_layers)))
    if args.fp32_layers and not args.fp16:
        raise UsageError("--fp32-layers needs --fp16 (without it the engine is FP32 throughout)")
    _require_onnx()
    if onnx_precision(onnx_path) == "fp16":
        if layers:
            raise UsageError(
                f"{onnx_path} is already FP16, so its FP32 layers were chosen at export; to change them, "
                f"export again: gdino-export ... --precision fp16 --fp32-layers {' '.join(layers)}"
            )
        return OnnxSource(onnx_path, "fp16", None, (), args.reference_onnx)
    if not args.fp16:
        return OnnxSource(onnx_path, "fp32", None, (), None)
    output: Path = args.output
    converted = output.with_name(f"{output.stem}.fp16.onnx")
    if converted.exists() and converted.resolve() == onnx_path.resolve():
        raise UsageError(f"--output {output} would write the FP16 conversion over {onnx_path}; rename one")
    if converted.is_file() and not args.force and CONVERSION_META not in read_onnx_metadata(converted):
        raise OutputError(
            f"{converted} exists and is not an FP16 conversion written by {PROG}; move it away, choose "
            "another --output (the conversion is written next to the engine), or pass --force"
        )
    return OnnxSource(onnx_path, "fp16", converted, layers, onnx_path)


def _check_output(output: Path, onnx_path: Path, key: BuildKey, force: bool, say: Say) -> None:
    """Refuse to replace a file this tool did not write (unless ``force``); say why an engine is rebuilt."""
    if output.exists() and output.resolve() == onnx_path.resolve():
        raise UsageError(f"--output {output} is the ONNX file itself; name the engine file to write")
    if not output.exists():
        return
    record = read_record(output)
    if record is None or not output.is_file() or record.engine_sha256 != file_sha256(output):
        if not force:
            raise OutputError(
                f"{output} exists and was not written by {PROG} (no build record of its own); pass --force "
                "to replace it, or choose another --output"
            )
        say(f"replacing {output} (--force)")
        return
    changes = [
        f"{field.name} was {getattr(record.key, field.name)!r}, now {getattr(key, field.name)!r}"
        for field in dataclasses.fields(BuildKey)
        if getattr(record.key, field.name) != getattr(key, field.name)
    ]
    say(f"replacing {output}: {'; '.join(changes) or 'rebuild requested (--force)'}")


def _workspace(requested_gb: float | None, gpu: GpuInfo) -> int:
    """Return the workspace limit in bytes; a request beyond the GPU's memory is an error."""
    if requested_gb is None:
        return default_workspace(gpu.total_memory)
    requested = int(requested_gb * GIB)
    if requested <= 0 or requested > gpu.total_memory:
        raise UsageError(
            f"--workspace-gb {requested_gb:g} does not fit {gpu.name} ({gpu.total_memory / GIB:.1f} GiB); "
            f"leave it out to use {default_workspace(gpu.total_memory) / GIB:.1f} GiB"
        )
    return requested


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--onnx", required=True, type=Path, help="the exported model (gdino-export or TAO)")
    parser.add_argument("--output", required=True, type=Path, help="engine file to write (.engine or .plan)")
    parser.add_argument(
        "--fp16", action="store_true",
        help="build FP16: an FP32 ONNX is first converted to mixed precision (FP32 where Grounding DINO "
        "needs it) into <output stem>.fp16.onnx; an FP16 ONNX from gdino-export builds FP16 without it",
    )
    parser.add_argument(
        "--fp32-layers", nargs="+", default=[], metavar="PATTERN",
        help="with --fp16 on an FP32 ONNX: also keep ONNX nodes whose name matches any of these shell "
        "patterns in FP32, e.g. '*LayerNorm*'",
    )
    parser.add_argument(
        "--workspace-gb", type=float, default=None,
        help="builder workspace limit (default: half the GPU's memory, at most 8)",
    )
    parser.add_argument(
        "--force", action="store_true",
        help="rebuild even if the engine is up to date; replace a file at --output that has no build record",
    )
    parser.add_argument(
        "--reference-onnx", type=Path,
        help="for an ONNX exported in FP16: its FP32 export, which the FP16 engine is checked against",
    )
    parser.add_argument(
        "--tokenizer", type=Path,
        help="bert-base-uncased vocab.txt or tokenizer directory, for the FP16 accuracy check (default: the "
        "vocabulary gdino-export stored in the ONNX, else one next to it)",
    )
    return parser


def _check_fp16_engine(engine: Path, reference_onnx: Path, tokenizer: Path | None, say: Say) -> None:
    """Compare the new FP16 engine with the FP32 ONNX on the calibration image; warn with the numbers.

    NaN in any output makes the engine useless and raises; a distance beyond the tolerance only warns
    (what is acceptable depends on the application). Without a tokenizer the check cannot run: say how
    to provide one.
    """
    from gdino_ros.backends.onnxruntime import OnnxRuntimeBackend
    from gdino_ros.backends.tensorrt import TensorRTBackend
    from gdino_ros.core.precision_check import (
        CALIBRATION_PROMPTS,
        PrecisionTolerance,
        calibration_image,
        compare_backends,
    )
    from gdino_ros.core.tokenizer import TokenizerNotFoundError, load_tokenizer

    try:
        tokens = load_tokenizer(tokenizer, reference_onnx)
    except TokenizerNotFoundError as error:
        say(f"warning: FP16 accuracy check not run: {error}")
        return
    say(f"checking the FP16 engine against {reference_onnx} (ONNX Runtime, CPU) on the calibration image")
    with OnnxRuntimeBackend(reference_onnx, "cpu") as reference, TensorRTBackend(engine) as candidate:
        report = compare_backends(reference, candidate, [calibration_image()], CALIBRATION_PROMPTS, tokens)
    tolerance = PrecisionTolerance()
    problems = report.problems(tolerance)
    if any(count for count in report.nan_counts.values()):
        raise BackendError(
            f"the FP16 engine's outputs contain NaN ({'; '.join(problems)}); it was not installed. Keep more "
            "of the network in FP32: --fp16 --fp32-layers PATTERN (or gdino-export --precision fp16 "
            "--fp32-layers PATTERN), or build FP32 without --fp16"
        )
    for line in problems:
        say(f"warning: FP16 engine differs from FP32 beyond the tolerance: {line}")
    say("FP16 vs FP32 on the calibration image:\n" + report.table() if problems else
        f"FP16 engine within tolerance of FP32 (box L1 {report.box_l1_px:.2f} px, mask IoU "
        f"{report.mask_iou:.3f}, detection agreement {report.detection_agreement:.3f})")


def _install(data: bytes, output: Path, record: BuildRecord, check: Callable[[Path], None] | None) -> None:
    """Write the engine and its record next to ``output``, run ``check`` on them, then move them in place.

    A failed check leaves the previous engine at ``output`` untouched.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    try:
        partial.write_bytes(data)
        write_record(partial, record)
        if check is not None:
            check(partial)
        sidecar_path(output).unlink(missing_ok=True)  # no moment where the new engine has the old record
        os.replace(partial, output)
        os.replace(sidecar_path(partial), sidecar_path(output))
    finally:
        partial.unlink(missing_ok=True)
        sidecar_path(partial).unlink(missing_ok=True)


def _record(key: BuildKey, onnx_path: Path, data: bytes, precision: str, started: float) -> BuildRecord:
    stat = onnx_path.stat()
    return BuildRecord(
        vocab=read_onnx_metadata(onnx_path).get(contract.META_VOCAB),
        key=key,
        onnx_path=str(onnx_path.resolve()),
        onnx_size=stat.st_size,
        onnx_mtime_ns=stat.st_mtime_ns,
        engine_sha256=hashlib.sha256(data).hexdigest(),
        engine_precision=precision,
        build_seconds=round(time.monotonic() - started, 1),
    )


def _run(args: argparse.Namespace) -> str:
    """Build (or keep) the engine ``args`` ask for; return the closing message."""
    onnx_path: Path = args.onnx
    output: Path = args.output
    if not onnx_path.is_file():
        raise BackendError(f"ONNX file {onnx_path} does not exist")
    if output.suffix not in (".engine", ".plan"):
        raise UsageError(f"--output {output} must end in .engine or .plan (backends go by extension)")
    source = plan_precision(args)
    version = require_tensorrt()
    gpu = select_gpu(0)
    _say(f"hashing {onnx_path}")
    key = BuildKey.create(file_sha256(onnx_path), version, gpu.identity(), source.precision,
                          list(source.fp32_layers))
    if not args.force and is_reusable(output, key):
        return f"{output} is up to date (same ONNX, TensorRT {version}, {gpu.identity()}, {key.precision})"
    _check_output(output, onnx_path, key, args.force, _say)
    build_onnx = source.prepare(_say)
    started = time.monotonic()
    data, precision = build_engine(
        build_onnx, workspace=_workspace(args.workspace_gb, gpu), timing_cache=timing_cache_path(output)
    )
    record = _record(key, onnx_path, data, precision, started)
    reference = source.reference

    def check(engine: Path) -> None:
        if reference is None:
            _say("warning: FP16 accuracy check not run: pass --reference-onnx with the FP32 export of "
                 f"{onnx_path} to compare the engine with it")
        else:
            _check_fp16_engine(engine, reference, args.tokenizer, _say)

    _install(data, output, record, check if source.precision == "fp16" else None)
    size = f"{len(data) / 1e6:.0f} MB"
    return f"wrote {output} ({size}) in {record.build_seconds:.0f} s; precision: {precision}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gdino-build-engine``; returns the exit code of :mod:`gdino_ros.errors`."""
    args = _parser().parse_args(argv)

    def body() -> int:
        try:
            _say(_run(args))
        except KeyboardInterrupt:
            return cli.interrupted(PROG, f"{args.output} is unchanged (engines are moved in when complete)")
        except OSError as error:
            name = Path(error.filename or "").name
            if name.startswith(args.output.name):  # the engine, its record or their .partial files
                raise write_failure(args.output, error, "the engine there is unchanged") from None
            raise InputError(f"cannot read {error.filename}: {error.strerror or error}") from None
        return 0

    return cli.run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
