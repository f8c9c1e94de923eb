"""TensorRT 10/11 backend: a serialized engine (``.engine`` / ``.plan``) with asynchronous CUDA streams.

Importable without TensorRT: ``tensorrt`` and ``cuda.bindings`` are imported only after
:func:`require_tensorrt` has checked them, so a missing package is one clear :class:`BackendError`.

Buffers, allocated once: device buffers for the inputs (the image and the five text tensors, sized for
256 tokens; an engine with a dynamic token axis gets each prompt's own length with ``set_input_shape``)
and page-locked host buffers for the text; and two *output sets* of device buffers for every output, each
with page-locked host buffers for the small outputs (logits, boxes, no-target head, union map), for the
image waiting for upload, and for the mask planes read back. One execution context and one compute stream
run the frames in order; a second stream copies mask planes.

Per frame (:meth:`TensorRTBackend.submit`): the image is uploaded, the context's output addresses point
at a free output set, ``execute_async_v3`` and the downloads of the small outputs are queued, an event
marks their end, and the call returns. Post-processing waits for that event only, selects its queries,
then copies just their planes of ``pred_masks`` on the copy stream. Meanwhile the next frame runs on the
compute stream into the other output set. A prompt change synchronises the compute stream before the
text is rewritten, so a frame never mixes two prompts. Every error path synchronises before it frees or
raises, so no queued GPU work refers to freed memory.

A camera-input engine (from ``gdino-export --camera-input``) takes the camera's uint8 pixels at any size
its optimisation profile allows: the image buffers are sized for the profile's largest image, each frame
uploads only its own bytes, and ``set_input_shape`` follows the camera size when it changes (after the
frames in flight have finished).
"""
from __future__ import annotations

import hashlib
import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gdino_ros import contract
from gdino_ros.backends.base import (
    Backend,
    BackendError,
    ModelIO,
    TensorSpec,
    check_io,
    expected_input_shape,
    parse_device,
)
from gdino_ros.backends.cuda import (
    DeviceBuffer,
    Event,
    GpuInfo,
    PinnedBuffer,
    Stream,
    require_cuda_python,
    select_gpu,
    use_gpu,
)
from gdino_ros.backends.engine_meta import BuildRecord, read_record, stale_reasons, summarize_precision
from gdino_ros.backends.frame import Frame, MaskPlanes
from gdino_ros.backends.install_hints import TENSORRT_INSTALL_HINT

if TYPE_CHECKING:
    from collections.abc import Callable

    import tensorrt as trt

_log = logging.getLogger(__name__)

TENSORRT_MISSING = (
    f"TensorRT's Python package is not installed. {TENSORRT_INSTALL_HINT}. Or run the .onnx model with "
    "ONNX Runtime"
)
# Outputs copied to the host whole every frame; pred_masks is read per query instead.
_SMALL_OUTPUTS = (contract.PRED_LOGITS, contract.PRED_BOXES, contract.NO_TARGETS, contract.UNION_MASK_LOGITS)


def require_tensorrt() -> str:
    """Check that real TensorRT 10+ and cuda-python are importable; return TensorRT's version.

    A directory left by a stub package alone imports as an empty namespace package, so the check looks
    for the runtime class, not just for the import to succeed.
    """
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError(TENSORRT_MISSING) from None
    if not hasattr(trt, "Runtime"):
        raise BackendError(TENSORRT_MISSING)
    version = str(trt.__version__)
    if int(version.split(".")[0]) < 10:
        raise BackendError(
            f"TensorRT {version} is too old: this backend needs TensorRT 10 or newer (JetPack 6.1+ on "
            "Jetson; `pip install tensorrt-cu12` on a desktop GPU)"
        )
    require_cuda_python()
    return version


def numpy_dtype(dtype: trt.DataType) -> np.dtype:
    """TensorRT's tensor type as a numpy dtype (only the types this network's I/O can have)."""
    import tensorrt as trt

    known = {
        trt.DataType.FLOAT: np.float32,
        trt.DataType.HALF: np.float16,
        trt.DataType.INT32: np.int32,
        trt.DataType.INT64: np.int64,
        trt.DataType.BOOL: np.bool_,
        trt.DataType.UINT8: np.uint8,
        trt.DataType.INT8: np.int8,
    }
    if dtype not in known:
        raise BackendError(f"engine tensor type {dtype} has no numpy equivalent here")
    return np.dtype(known[dtype])


def rebuild_command(path: Path, record: BuildRecord | None) -> str:
    """Return the gdino-build-engine line that rebuilds ``path`` (from its build record when there is one)."""
    if record is None:
        return f"gdino-build-engine --onnx <the model's .onnx> --output {path}"
    fp16 = " --fp16" if record.key.precision == "fp16" else ""
    return f"gdino-build-engine --onnx {record.onnx_path} --output {path}{fp16}"


def _checked_record(path: Path, data: bytes, version: str, gpu: GpuInfo) -> BuildRecord | None:
    """Return the engine's build record; refuse an engine that the record says is stale here."""
    record = read_record(path)
    if record is not None and record.engine_sha256 != hashlib.sha256(data).hexdigest():
        _log.warning("%s: its build record belongs to another engine file; ignoring the record", path)
        record = None
    if record is None:
        _log.warning(
            "%s has no build record from gdino-build-engine: cannot check that it was built for this "
            "GPU, TensorRT version and ONNX file", path
        )
        return None
    reasons = stale_reasons(record, version, gpu.identity())
    if reasons:
        raise BackendError(
            f"engine {path} is stale: {'; '.join(reasons)}. Rebuild it: {rebuild_command(path, record)}"
        )
    return record


def _load_engine(
    path: Path, data: bytes, version: str, record: BuildRecord | None
) -> tuple[trt.Runtime, trt.ICudaEngine]:
    """Initialise the plugin library (TAO engines embed its deformable-attention plugin), deserialise."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    try:
        plugins_ready = trt.init_libnvinfer_plugins(logger, "")
    except (OSError, RuntimeError):
        plugins_ready = False
    if not plugins_ready:
        raise BackendError(
            f"TensorRT {version}'s plugin library (libnvinfer_plugin) is missing or failed to initialise; "
            "TAO engines need its MultiscaleDeformableAttnPlugin_TRT. Install it (pip: the tensorrt-cuXX "
            "package with its libs; JetPack: sudo apt-get install libnvinfer-plugin10)"
        )
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise BackendError(
            f"TensorRT {version} could not deserialise {path} (see TensorRT's message above): an engine "
            "only loads on the TensorRT version and GPU model it was built with. Rebuild it here: "
            + rebuild_command(path, record)
        )
    return runtime, engine


def _engine_io(engine: trt.ICudaEngine) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """Return the engine's inputs and outputs as declared (-1 dimensions as ``None``)."""
    import tensorrt as trt

    inputs: dict[str, TensorSpec] = {}
    outputs: dict[str, TensorSpec] = {}
    for position in range(engine.num_io_tensors):
        name = engine.get_tensor_name(position)
        dtype = numpy_dtype(engine.get_tensor_dtype(name))
        spec = TensorSpec.from_dims(name, dtype, engine.get_tensor_shape(name))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs)[name] = spec
    return inputs, outputs


def _create_context(
    engine: trt.ICudaEngine,
    path: Path,
    inputs: dict[str, TensorSpec],
    io: ModelIO,
    camera_shape: tuple[int, ...] | None,
) -> trt.IExecutionContext:
    """Create an execution context; set every dynamic input shape to the contract's batch-1 shape.

    For a dynamic token axis that is the longest text, 256 tokens, and for a camera-input image
    ``camera_shape``, the profile's largest, so the buffers sized from these shapes hold every prompt and
    every camera image; :meth:`TensorRTBackend._set_text` sets each prompt's own length, each frame its
    image's size.
    """
    context = engine.create_execution_context()
    if context is None:
        raise BackendError(
            f"TensorRT could not create an execution context for {path}: the GPU is out of memory for "
            "the engine's activations (8 GB Jetsons are tight). Stop other GPU programs, or rebuild the "
            "engine at a smaller input size"
        )
    for name in contract.INPUT_NAMES:
        shape = expected_input_shape(name, io.input_hw)
        if name == contract.INPUT_IMAGE and camera_shape is not None:
            shape = camera_shape
        if None in inputs[name].shape and not context.set_input_shape(name, shape):
            min_shape, _, max_shape = engine.get_tensor_profile_shape(name, 0)
            raise BackendError(
                f"engine {path}: input '{name}' cannot take shape {shape} (its profile allows "
                f"{min_shape} to {max_shape}); build it with gdino-build-engine"
            )
    return context


def _camera_max_shape(engine: trt.ICudaEngine) -> tuple[int, ...]:
    """Return the largest camera image the engine's optimisation profile takes, [1, H, W, 3]."""
    dims = engine.get_tensor_profile_shape(contract.INPUT_IMAGE, 0)[2]
    return tuple(int(dims[i]) for i in range(len(dims)))


def _runtime_shape(context: trt.IExecutionContext, name: str, path: Path) -> tuple[int, ...]:
    dims = context.get_tensor_shape(name)
    shape = tuple(dims[i] for i in range(len(dims)))
    if min(shape) < 0:
        raise BackendError(f"engine {path}: '{name}' has a data-dependent shape {shape}")
    return shape


def _runs(queries: list[int]) -> list[tuple[int, int]]:
    """Split ``queries`` into runs of consecutive indices (first, count): one copy per run, not per plane."""
    runs: list[tuple[int, int]] = []
    for query in queries:
        if runs and runs[-1][0] + runs[-1][1] == query:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((query, 1))
    return runs


@dataclass
class _OutputSet:
    """The buffers of one frame in flight: its outputs on the device, what of them comes to the host."""

    image: PinnedBuffer  # the frame's image until its upload has run
    device: dict[str, DeviceBuffer]  # every output
    host: dict[str, PinnedBuffer]  # the small outputs
    ready: Event  # recorded after the small outputs' downloads
    mask_shape: tuple[int, ...]
    mask_dtype: np.dtype
    planes: PinnedBuffer | None = field(default=None)  # mask planes read back; grows on demand


class TensorRTBackend(Backend):
    """Runs a TensorRT engine built from the contract's ONNX (by ``gdino-build-engine`` or trtexec)."""

    name = "tensorrt"

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        version = require_tensorrt()
        path = Path(path)
        kind, index = parse_device(device)
        if kind == "cpu":
            raise BackendError("a TensorRT engine runs on a GPU only; use the .onnx model for device='cpu'")
        gpu = select_gpu(index)
        self._gpu_index = index
        self._path = path
        data = path.read_bytes()
        record = _checked_record(path, data, version, gpu)
        self._runtime, self._engine = _load_engine(path, data, version, record)
        inputs, outputs = _engine_io(self._engine)
        io = check_io(inputs, outputs, f"engine {path}")
        camera_shape = _camera_max_shape(self._engine) if io.camera_input else None
        self._context = _create_context(self._engine, path, inputs, io, camera_shape)
        largest = camera_shape[1:3] if camera_shape else None
        super().__init__(
            device=f"cuda:{index}",
            precision=self._precision(record),
            input_hw=io.input_hw,
            input_dtypes=io.input_dtypes,
            output_names=io.output_names,
            dynamic_text=io.dynamic_text,
            camera_input=io.camera_input,
            max_camera_hw=(largest[0], largest[1]) if largest else None,
        )
        self._image_shape = _runtime_shape(self._context, contract.INPUT_IMAGE, path)
        with ExitStack() as resources:
            self._allocate(resources, inputs, outputs)
            self._resources = resources.pop_all()

    def _precision(self, record: BuildRecord | None) -> str:
        import tensorrt as trt

        inspector = self._engine.create_engine_inspector()
        precision = summarize_precision(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        if precision == "unknown" and record is not None:
            return record.engine_precision
        return precision

    def _allocate(
        self, resources: ExitStack, inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec]
    ) -> None:
        """Create the streams and every buffer; each is registered on ``resources`` as it is made."""
        self._stream = Stream()
        resources.callback(self._stream.destroy)
        self._copy_stream = Stream()
        resources.callback(self._copy_stream.destroy)
        self._inputs: dict[str, DeviceBuffer] = {}
        self._text: dict[str, PinnedBuffer] = {}
        for name in contract.INPUT_NAMES:
            shape, spec = _runtime_shape(self._context, name, self._path), inputs[name]
            self._inputs[name] = self._device(resources, int(np.prod(shape)) * spec.dtype.itemsize, name)
            if not self._context.set_tensor_address(name, self._inputs[name].ptr):
                raise BackendError(f"engine {self._path}: TensorRT refused the device buffer of '{name}'")
            if name != contract.INPUT_IMAGE:
                self._text[name] = self._pinned(resources, shape, spec.dtype, name)
        self._sets = [self._output_set(resources, inputs, outputs) for _ in range(self.FRAMES_IN_FLIGHT)]

    def _output_set(
        self, resources: ExitStack, inputs: dict[str, TensorSpec], outputs: dict[str, TensorSpec]
    ) -> _OutputSet:
        image_shape = _runtime_shape(self._context, contract.INPUT_IMAGE, self._path)
        image = self._pinned(resources, image_shape, inputs[contract.INPUT_IMAGE].dtype, "the image")
        device: dict[str, DeviceBuffer] = {}
        host: dict[str, PinnedBuffer] = {}
        for name in self.output_names:
            shape, dtype = _runtime_shape(self._context, name, self._path), outputs[name].dtype
            device[name] = self._device(resources, int(np.prod(shape)) * dtype.itemsize, name)
            if name in _SMALL_OUTPUTS:
                host[name] = self._pinned(resources, shape, dtype, name)
        ready = Event()
        resources.callback(ready.destroy)
        masks = contract.PRED_MASKS
        return _OutputSet(image, device, host, ready, _runtime_shape(self._context, masks, self._path),
                          outputs[masks].dtype)

    @staticmethod
    def _device(resources: ExitStack, nbytes: int, name: str) -> DeviceBuffer:
        buffer = DeviceBuffer.allocate(nbytes, f"'{name}'")
        resources.callback(buffer.free)
        return buffer

    @staticmethod
    def _pinned(resources: ExitStack, shape: tuple[int, ...], dtype: np.dtype, name: str) -> PinnedBuffer:
        buffer = PinnedBuffer.allocate(shape, dtype, f"'{name}'")
        resources.callback(buffer.free)
        return buffer

    def _drain(self, stream: Stream) -> None:
        """Wait for ``stream`` after a failure: nothing queued may still use buffers about to be freed."""
        try:
            stream.synchronize("draining the stream after an error")
        except BackendError as error:
            _log.error("%s", error)

    def _set_text(self, text_inputs: dict[str, np.ndarray]) -> None:
        use_gpu(self._gpu_index)
        # Frames in flight may not have uploaded the previous prompt yet (or still run at its length):
        # let them finish first.
        self._stream.synchronize("frames in flight before a prompt change")
        try:
            for name, value in text_inputs.items():
                if self.dynamic_text and not self._context.set_input_shape(name, value.shape):
                    min_shape, _, max_shape = self._engine.get_tensor_profile_shape(name, 0)
                    raise BackendError(
                        f"engine {self._path}: input '{name}' cannot take shape {value.shape} (its profile "
                        f"allows {min_shape} to {max_shape}); build it with gdino-build-engine"
                    )
                # The buffers have the 256-token size; a shorter prompt fills their start.
                host = self._text[name]
                np.copyto(host.array.reshape(-1)[: value.size], value.reshape(-1))
                self._stream.upload(self._inputs[name].ptr, host.ptr, value.nbytes, name)
        except BaseException:
            self._drain(self._stream)
            raise

    def _submit(self, image: np.ndarray, slot: int, release: Callable[[], None]) -> Frame:
        use_gpu(self._gpu_index)
        out = self._sets[slot]
        out.ready.synchronize("the previous frame of this output set")  # its image may await upload
        # A camera image fills the start of the buffers sized for the largest one.
        np.copyto(out.image.array.reshape(-1)[: image.size], image.reshape(-1))
        try:
            if self.camera_input and image.shape != self._image_shape:
                # Rare (a camera changes size seldom), so the frames in flight are let finish first, as for
                # a prompt change: no reliance on how TensorRT treats a shape changed under queued work.
                self._stream.synchronize("frames in flight before a camera size change")
                if not self._context.set_input_shape(contract.INPUT_IMAGE, image.shape):
                    raise BackendError(f"engine {self._path}: TensorRT refused the camera image shape "
                                       f"{image.shape}")
                self._image_shape = image.shape
            self._enqueue(out, image.nbytes)
        except BaseException:
            self._drain(self._stream)
            raise
        return _TensorRTFrame(self, out, release)

    def _enqueue(self, out: _OutputSet, image_bytes: int) -> None:
        """Queue one frame: image upload, the engine into ``out``, downloads of the small outputs."""
        image = self._inputs[contract.INPUT_IMAGE]
        self._stream.upload(image.ptr, out.image.ptr, image_bytes, "the image")
        for name, buffer in out.device.items():
            if not self._context.set_tensor_address(name, buffer.ptr):
                raise BackendError(f"engine {self._path}: TensorRT refused the device buffer of '{name}'")
        if not self._context.execute_async_v3(int(self._stream.handle)):
            raise BackendError("TensorRT could not enqueue the engine (see TensorRT's messages above)")
        for name, host in out.host.items():
            self._stream.download(host.ptr, out.device[name].ptr, host.nbytes, name)
        out.ready.record(self._stream)

    def _read_outputs(self, out: _OutputSet) -> dict[str, np.ndarray]:
        """Wait for the frame in ``out``; copies of its small outputs (NaN means FP16 overflow)."""
        with self._lock:
            self._check_open()
            use_gpu(self._gpu_index)
            out.ready.synchronize("engine execution")
            arrays = {name: host.array.copy() for name, host in out.host.items()}
        for name in (contract.PRED_LOGITS, contract.PRED_BOXES):
            if np.isnan(arrays[name]).any():
                raise BackendError(
                    f"engine {self._path} ({self.precision}) output NaN in '{name}': FP16 overflowed. "
                    "Rebuild it from the mixed-precision export (gdino-export --precision fp16, then "
                    "gdino-build-engine), or in FP32 (gdino-build-engine without --fp16)"
                )
        return arrays

    def _read_planes(self, out: _OutputSet, queries: np.ndarray) -> np.ndarray:
        """Copy ``pred_masks`` planes of ``queries`` of the frame in ``out`` to the host; a copy of them."""
        count, (height, width) = len(queries), out.mask_shape[3:]
        if count and (queries.min() < 0 or queries.max() >= out.mask_shape[1]):
            raise IndexError(f"query indices must be within [0, {out.mask_shape[1]}), got {queries}")
        with self._lock:
            self._check_open()
            use_gpu(self._gpu_index)
            out.ready.synchronize("engine execution")  # the copy stream does not wait for the compute one
            planes = self._plane_buffer(out, count)
            plane_bytes = height * width * out.mask_dtype.itemsize
            source = out.device[contract.PRED_MASKS].ptr
            try:
                done = 0
                for first, count_in_run in _runs(queries.tolist()):
                    self._copy_stream.download(planes.ptr + done * plane_bytes, source + first * plane_bytes,
                                               count_in_run * plane_bytes, f"mask planes from {first}")
                    done += count_in_run
                self._copy_stream.synchronize("mask plane copies")
            except BaseException:
                self._drain(self._copy_stream)
                raise
            return planes.array[:count].copy()

    def _plane_buffer(self, out: _OutputSet, count: int) -> PinnedBuffer:
        """Return a page-locked buffer for ``count`` planes of ``out`` (idle: its copies were awaited)."""
        if out.planes is None or out.planes.array.shape[0] < count:
            if out.planes is not None:
                out.planes.free()
                out.planes = None
            shape = (max(count, 1), *out.mask_shape[3:])
            out.planes = PinnedBuffer.allocate(shape, out.mask_dtype, "mask planes")
        return out.planes

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("the tensorrt backend has been closed; open the model again")

    def _release(self) -> None:
        """Wait for queued work, then free the buffers, streams and events, the context and the engine."""
        use_gpu(self._gpu_index)
        self._drain(self._stream)
        self._drain(self._copy_stream)
        for out in self._sets:
            if out.planes is not None:
                out.planes.free()
        self._resources.close()
        del self._context, self._engine, self._runtime


class _DeviceMasks(MaskPlanes):
    """``pred_masks`` of one frame, left on the GPU; :meth:`planes` copies only the planes asked for."""

    def __init__(self, backend: TensorRTBackend, out: _OutputSet) -> None:
        super().__init__(out.mask_shape)
        self._backend = backend
        self._out = out

    def planes(self, queries: np.ndarray) -> np.ndarray:
        """Copy the planes of ``queries`` from the device."""
        return self._backend._read_planes(self._out, np.asarray(queries, dtype=np.int64).reshape(-1))


class _TensorRTFrame(Frame):
    """A frame queued on the compute stream; its outputs live in one output set until it is closed."""

    def __init__(self, backend: TensorRTBackend, out: _OutputSet, release: Callable[[], None]) -> None:
        super().__init__(_DeviceMasks(backend, out), release)
        self._backend = backend
        self._out = out

    def outputs(self) -> dict[str, np.ndarray]:
        """Wait for the engine; copies of the small outputs."""
        return self._backend._read_outputs(self._out)
