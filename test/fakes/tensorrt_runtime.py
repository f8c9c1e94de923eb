"""A behavioural stand-in for the ``tensorrt`` module: engines that run their ONNX graph with ONNX Runtime.

A fake engine file (:func:`write_engine`) is the ONNX bytes behind a small JSON header that declares the
engine's I/O as TensorRT would: dtypes (INT32 for the int64 text inputs when asked, as TensorRT builds
them), shapes (-1 for a dynamic batch and for the ONNX's dynamic token axis, which then need
``set_input_shape`` within the optimisation profile gdino-build-engine gives: batch 1 to 4, tokens 1 to
256, a camera-input image its CAMERA_PROFILE), and the TensorRT version and GPU it was "built" for
(:meth:`FakeTensorRT.deserialize` returns None on any other, as TensorRT does).
``execute_async_v3`` queues the graph on the fake GPU's stream with the tensor addresses of that moment;
when the stream runs it, the inputs are read from fake device memory at their set shapes (the start of
a longer buffer, as TensorRT reads a dense tensor), cast to the graph's dtypes, run
through ONNX Runtime, and the outputs written back to device memory.
"""
from __future__ import annotations

import enum
import hashlib
import json
import struct
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from fakes.cuda_runtime import FakeGpu, Op
from gdino_ros import contract
from gdino_ros.tools.build_engine import CAMERA_PROFILE, OPT_TEXT_LEN

MAGIC = b"FAKE-TRT"
VERSION = "10.3.0"
GPU_NAME = "NVIDIA Fake GPU"
MAX_BATCH = 4  # a dynamic engine's profile allows batch 1 to 4


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT8 = "int8"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"
    UINT8 = "uint8"


class TensorIOMode(enum.Enum):
    INPUT = "input"
    OUTPUT = "output"


class LayerInformationFormat(enum.Enum):
    ONELINE = 0
    JSON = 1


class Logger:
    WARNING = 2

    def __init__(self, severity: int = WARNING) -> None:
        self.severity = severity


_NUMPY_OF_ONNX = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                  onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
                  onnx.TensorProto.BOOL: "bool", onnx.TensorProto.UINT8: "uint8"}


def write_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    dynamic_batch: bool = False,
    int32_ids: bool = False,
    tensorrt_version: str = VERSION,
    gpu_name: str = GPU_NAME,
    precision: str = "fp32",
) -> Path:
    """Write a fake engine of ``onnx_path``: its I/O as a TensorRT engine built from it would declare."""
    model = onnx.load(str(onnx_path))
    tensors = []
    for mode, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            dtype = _NUMPY_OF_ONNX[value.type.tensor_type.elem_type]
            if int32_ids and dtype == "int64":
                dtype = "int32"
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
            if dynamic_batch:
                shape[0] = -1
            tensor = {"name": value.name, "mode": mode, "dtype": dtype, "shape": shape}
            if mode == "input":  # gdino-build-engine's profile: (min, opt, max) of every dimension
                ranges = [(1, 1, MAX_BATCH) if i == 0 else (1, OPT_TEXT_LEN, contract.MAX_TEXT_LEN)
                          for i in range(len(shape))]
                if dtype == "uint8":  # a camera-input image
                    ranges[1:] = list(zip(*(shape[1:] for shape in CAMERA_PROFILE), strict=True))
                tensor["profile"] = [[r[k] if d < 0 else d for d, r in zip(shape, ranges, strict=True)]
                                     for k in range(3)]
            tensors.append(tensor)
    header = json.dumps({"tensorrt_version": tensorrt_version, "gpu_name": gpu_name, "tensors": tensors,
                         "precision": precision}).encode()
    engine_path.write_bytes(MAGIC + struct.pack("<I", len(header)) + header + onnx_path.read_bytes())
    return engine_path


class FakeTensorRT:
    """The state behind one fake ``tensorrt`` module (see :meth:`module`)."""

    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu
        self.version = VERSION
        self.plugins_ok = True
        self.out_of_memory = False  # create_execution_context() returns None
        self.execute_fails = False  # execute_async_v3() returns False
        self.nan_outputs = False  # the engine's float outputs are NaN (FP16 overflow)
        self.enqueued = 0
        self.executions = 0

    def deserialize(self, data: bytes) -> FakeEngine | None:
        if not data.startswith(MAGIC):
            return None
        (length,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
        start = len(MAGIC) + 4
        header = json.loads(data[start : start + length])
        built_here = (header["tensorrt_version"], header["gpu_name"])
        if built_here != (self.version, self.gpu.properties.name.decode()):
            return None
        return FakeEngine(self, header, data[start + length :])

    def module(self) -> types.ModuleType:
        """A ``tensorrt`` module backed by this state."""
        owner = self
        module = types.ModuleType("tensorrt")

        class Runtime:
            def __init__(self, logger: Logger) -> None:
                self.logger = logger

            def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
                return owner.deserialize(data)

        values: dict[str, Any] = {
            "__version__": self.version, "DataType": DataType, "TensorIOMode": TensorIOMode,
            "LayerInformationFormat": LayerInformationFormat, "Logger": Logger, "Runtime": Runtime,
            "init_libnvinfer_plugins": lambda logger, namespace: owner.plugins_ok,
        }
        for name, value in values.items():
            setattr(module, name, value)
        return module


class FakeEngine:
    def __init__(self, owner: FakeTensorRT, header: dict[str, Any], onnx_bytes: bytes) -> None:
        self.owner = owner
        self.header = header
        self.tensors = {t["name"]: t for t in header["tensors"]}
        self.names = [t["name"] for t in header["tensors"]]
        self.session = _session(onnx_bytes)
        self.graph_dtypes = {arg.name: _ORT_DTYPES[arg.type] for arg in self.session.get_inputs()}

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self.tensors[name]["dtype"])

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode(self.tensors[name]["mode"])

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(shape) for shape in self.tensors[name]["profile"])

    def create_execution_context(self) -> FakeContext | None:
        return None if self.owner.out_of_memory else FakeContext(self)

    def create_engine_inspector(self) -> types.SimpleNamespace:
        kind = "Half" if self.header["precision"] == "fp16" else "Float"
        layer = {"Name": "fake", "LayerType": "Convolution", "Outputs": [{"Format/Datatype": kind}]}
        return types.SimpleNamespace(get_engine_information=lambda fmt: json.dumps({"Layers": [layer]}))


_SESSIONS: dict[str, ort.InferenceSession] = {}  # by ONNX hash: loading a graph costs a second or more


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    """An ONNX Runtime session of the graph, as OnnxRuntimeBackend makes it (shared: runs are thread-safe)."""
    key = hashlib.sha256(onnx_bytes).hexdigest()
    if key not in _SESSIONS:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        _SESSIONS[key] = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8}


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def _dynamic_unset(self) -> bool:
        return any(-1 in t["shape"] and t["name"] not in self.input_shapes
                   for t in self.engine.tensors.values() if t["mode"] == "input")

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        fits = len(shape) == len(low) and all(
            lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True))
        if fits:
            self.input_shapes[name] = tuple(int(s) for s in shape)
        return fits

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        declared = self.engine.get_tensor_shape(name)
        if name in self.input_shapes:
            return self.input_shapes[name]
        if -1 not in declared or self._dynamic_unset():
            return declared
        batch = self.input_shapes[contract.INPUT_IMAGE][0]
        return tuple(batch if d < 0 else d for d in declared)  # outputs: only the batch is dynamic

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        engine = self.engine
        if engine.owner.execute_fails or self._dynamic_unset() or set(self.addresses) != set(engine.names):
            return False
        tensors = {name: (self.addresses[name], self.get_tensor_shape(name),
                          np.dtype(engine.tensors[name]["dtype"])) for name in engine.names}
        gpu = engine.owner.gpu

        def run() -> None:
            feeds = {}
            for name, dtype in engine.graph_dtypes.items():
                address, shape, engine_dtype = tensors[name]
                raw = gpu.device_view(address, int(np.prod(shape)) * engine_dtype.itemsize)
                feeds[name] = raw.view(engine_dtype).reshape(shape).astype(dtype)
            names = [n for n in engine.names if engine.tensors[n]["mode"] == "output"]
            for name, value in zip(names, engine.session.run(names, feeds), strict=True):
                address, shape, engine_dtype = tensors[name]
                if engine.owner.nan_outputs and value.dtype.kind == "f":
                    value = np.full_like(value, np.nan)
                data = np.ascontiguousarray(value, dtype=engine_dtype).reshape(-1).view(np.uint8)
                gpu.device_view(address, data.size)[:] = data
            engine.owner.executions += 1

        engine.owner.enqueued += 1
        gpu.enqueue(Op(stream, run, "execute", tuple(a for a, _, _ in tensors.values())))
        return True
