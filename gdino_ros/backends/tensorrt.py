"""TensorRT 10 backend: a serialized engine (``.engine`` / ``.plan``) on one CUDA stream.

Kept thin and importable without TensorRT (imports happen inside the functions that need them); CI
type-checks it against ``tensorrt-stubs`` and stubs built from cuda-python (``tools/type_stubs.py``).

Per engine: the plugin library is initialised before deserialising (TAO engines embed
``MultiscaleDeformableAttnPlugin_TRT``); I/O is discovered by name and checked against the contract;
page-locked host buffers and device buffers are allocated once and their device addresses set once.
Per prompt: the text tensors are uploaded. Per frame: one image upload, ``execute_async_v3``, output
downloads on the same stream, one synchronize.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gdino_ros import contract
from gdino_ros.backends.base import (
    Backend,
    BackendError,
    TensorSpec,
    check_io,
    expected_input_shape,
    parse_device,
)
from gdino_ros.backends.engine_meta import read_record, stale_reasons, summarize_precision

if TYPE_CHECKING:
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

_log = logging.getLogger(__name__)

TENSORRT_MISSING = (
    "TensorRT's Python package is not installed: on a desktop GPU `pip install tensorrt>=10 cuda-python`; "
    "on Jetson use JetPack's python3-libnvinfer (sudo apt-get install python3-libnvinfer) and "
    "`pip install cuda-python` matching JetPack's CUDA version. Or run the .onnx model with ONNX Runtime"
)
CUDA_PYTHON_MISSING = (
    "cuda-python is not installed (TensorRT needs it here for buffers and streams): "
    "pip install cuda-python (version 12.6.1 or newer, same major version as your CUDA)"
)


def require_tensorrt() -> str:
    """Check that real TensorRT 10+ and cuda-python are importable; return TensorRT's version.

    A directory left by ``tensorrt-stubs`` alone imports as an empty namespace package, so the check
    looks for the runtime class, not just for the import to succeed.
    """
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError(TENSORRT_MISSING) from None
    if not hasattr(trt, "Runtime"):
        raise BackendError(TENSORRT_MISSING)
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendError(f"TensorRT {trt.__version__} is too old: this backend needs TensorRT 10 or newer")
    try:
        from cuda.bindings import runtime  # noqa: F401 - only checking that it imports
    except ImportError:
        raise BackendError(CUDA_PYTHON_MISSING) from None
    return trt.__version__


def cuda_check(error: cudart.cudaError_t, call: str) -> None:
    """Raise :class:`BackendError` naming the CUDA call and error unless ``error`` is success."""
    from cuda.bindings import runtime as cudart

    if error != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(error)
        raise BackendError(f"CUDA {call} failed with {name.decode()}")


def select_gpu(index: int) -> str:
    """Make GPU ``index`` current for this thread and return its name (e.g. ``"NVIDIA H100 PCIe"``)."""
    from cuda.bindings import runtime as cudart

    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess or count == 0:
        raise BackendError("TensorRT needs an NVIDIA GPU with a working driver, and CUDA reports none")
    if index >= count:
        raise BackendError(f"GPU {index} does not exist; this machine has {count} GPU(s), from cuda:0")
    (error,) = cudart.cudaSetDevice(index)
    cuda_check(error, "cudaSetDevice")
    error, properties = cudart.cudaGetDeviceProperties(index)
    cuda_check(error, "cudaGetDeviceProperties")
    name = properties.name
    return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")


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


@dataclass
class _Buffer:
    """One engine I/O tensor: a pinned host array and its device copy, allocated once."""

    name: str
    host: np.ndarray
    host_ptr: int
    device_ptr: int
    nbytes: int


class TensorRTBackend(Backend):
    """Runs a TensorRT engine built from the contract's ONNX (by ``gdino-build-engine`` or trtexec)."""

    name = "tensorrt"

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        import tensorrt as trt
        from cuda.bindings import runtime as cudart

        path = Path(path)
        version = require_tensorrt()
        kind, index = parse_device(device)
        if kind == "cpu":
            raise BackendError("a TensorRT engine runs on a GPU only; use the .onnx model for device='cpu'")
        gpu = select_gpu(index)
        self._gpu_index = index
        data = path.read_bytes()
        record = read_record(path)
        if record is not None and record.engine_sha256 != hashlib.sha256(data).hexdigest():
            _log.warning("%s: its build record belongs to another engine file; ignoring the record", path)
            record = None
        if record is None:
            _log.warning(
                "%s has no build record from gdino-build-engine: cannot check that it was built for this "
                "GPU, TensorRT version and ONNX file", path
            )
        else:
            reasons = stale_reasons(record, version, gpu)
            if reasons:
                raise BackendError(
                    f"engine {path} is stale: {'; '.join(reasons)}. Rebuild it: gdino-build-engine "
                    f"--onnx {record.onnx_path} --output {path}"
                    + (" --fp16" if record.key.precision == "fp16" else "")
                )

        self._logger = trt.Logger(trt.Logger.WARNING)
        if not trt.init_libnvinfer_plugins(self._logger, ""):
            raise BackendError("TensorRT's plugin library (libnvinfer_plugin) failed to initialise")
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendError(
                f"TensorRT {version} could not deserialise {path} (see TensorRT's messages above): engines "
                "only load on the TensorRT version and GPU model they were built with; rebuild it with "
                "gdino-build-engine"
            )
        self._engine = engine

        inputs: dict[str, TensorSpec] = {}
        outputs: dict[str, TensorSpec] = {}
        for position in range(engine.num_io_tensors):
            name = engine.get_tensor_name(position)
            dims = engine.get_tensor_shape(name)
            declared = tuple(dims[i] if dims[i] >= 0 else None for i in range(len(dims)))
            spec = TensorSpec(name, numpy_dtype(engine.get_tensor_dtype(name)), declared)
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs)[name] = spec
        io = check_io(inputs, outputs, f"engine {path}")

        context = engine.create_execution_context()
        for name in contract.INPUT_NAMES:
            shape = expected_input_shape(name, io.input_hw)
            if None in inputs[name].shape and not context.set_input_shape(name, shape):
                min_shape, _, max_shape = engine.get_tensor_profile_shape(name, 0)
                raise BackendError(
                    f"engine {path}: input '{name}' cannot take shape {shape} (its profile allows "
                    f"{min_shape} to {max_shape}); build it with gdino-build-engine"
                )
        self._context = context

        precision = summarize_precision(
            engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        )
        if precision == "unknown" and record is not None:
            precision = record.engine_precision
        super().__init__(
            device=f"cuda:{index}",
            precision=precision,
            input_hw=io.input_hw,
            input_dtypes=io.input_dtypes,
            output_names=io.output_names,
        )

        error, stream = cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)
        cuda_check(error, "cudaStreamCreateWithFlags")
        self._stream = stream
        self._buffers: dict[str, _Buffer] = {}
        for name in (*contract.INPUT_NAMES, *self.output_names):
            dims = context.get_tensor_shape(name)
            runtime_shape = tuple(dims[i] for i in range(len(dims)))
            if min(runtime_shape) < 0:
                raise BackendError(f"engine {path}: '{name}' has a data-dependent shape {runtime_shape}")
            spec = inputs.get(name) or outputs[name]
            self._buffers[name] = self._allocate(name, runtime_shape, spec.dtype)
            if not context.set_tensor_address(name, self._buffers[name].device_ptr):
                raise BackendError(f"engine {path}: TensorRT refused the device buffer of '{name}'")

    def _allocate(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> _Buffer:
        from cuda.bindings import runtime as cudart

        nbytes = int(np.prod(shape)) * dtype.itemsize
        error, host_ptr = cudart.cudaMallocHost(nbytes)
        cuda_check(error, f"cudaMallocHost({nbytes}) for '{name}'")
        error, device_ptr = cudart.cudaMalloc(nbytes)
        cuda_check(error, f"cudaMalloc({nbytes}) for '{name}'")
        pinned = (ctypes.c_uint8 * nbytes).from_address(int(host_ptr))
        host = np.frombuffer(memoryview(pinned), dtype=dtype).reshape(shape)
        return _Buffer(name, host, int(host_ptr), int(device_ptr), nbytes)

    def _upload(self, buffer: _Buffer) -> None:
        from cuda.bindings import runtime as cudart

        (error,) = cudart.cudaMemcpyAsync(
            buffer.device_ptr, buffer.host_ptr, buffer.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
            self._stream,
        )
        cuda_check(error, f"cudaMemcpyAsync (upload of '{buffer.name}')")

    def _use_gpu(self) -> None:
        """Make this backend's GPU current: CUDA's current device is per thread, and callers may differ."""
        from cuda.bindings import runtime as cudart

        (error,) = cudart.cudaSetDevice(self._gpu_index)
        cuda_check(error, "cudaSetDevice")

    def _set_text(self, text_inputs: dict[str, np.ndarray]) -> None:
        self._use_gpu()
        for name, value in text_inputs.items():
            np.copyto(self._buffers[name].host, value)
            self._upload(self._buffers[name])

    def _run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        from cuda.bindings import runtime as cudart

        self._use_gpu()
        image_buffer = self._buffers[contract.INPUT_IMAGE]
        np.copyto(image_buffer.host, image)
        self._upload(image_buffer)
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError("TensorRT could not enqueue the engine (see TensorRT's messages above)")
        for name in self.output_names:
            buffer = self._buffers[name]
            (error,) = cudart.cudaMemcpyAsync(
                buffer.host_ptr, buffer.device_ptr, buffer.nbytes,
                cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream,
            )
            cuda_check(error, f"cudaMemcpyAsync (download of '{name}')")
        (error,) = cudart.cudaStreamSynchronize(self._stream)
        cuda_check(error, "cudaStreamSynchronize (engine execution)")
        return {name: self._buffers[name].host for name in self.output_names}

    def _release(self) -> None:
        """Free the buffers and the stream, then the execution context and the engine."""
        from cuda.bindings import runtime as cudart

        self._use_gpu()
        for buffer in self._buffers.values():
            cudart.cudaFreeHost(buffer.host_ptr)
            cudart.cudaFree(buffer.device_ptr)
        self._buffers = {}
        cudart.cudaStreamDestroy(self._stream)
        del self._context, self._engine
