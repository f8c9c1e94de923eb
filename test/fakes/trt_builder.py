"""A fake TensorRT *builder*: enough of ``tensorrt`` for ``gdino-build-engine`` to run without a GPU.

:func:`make_tensorrt` returns a module to put in ``sys.modules["tensorrt"]``. Its ONNX parser reads the
file with ``onnx`` (graph I/O names, types and shapes, one layer per node), its builder "builds" an engine
whose bytes describe the network, and its runtime deserialises those bytes into an engine whose inspector
writes TensorRT 10's or 11's JSON layout. A :class:`BuildState` records what the build did (flags, workspace,
timing cache, which builder objects were alive at deserialisation) and holds the knobs that make it fail.

``weak_typing`` selects the API: ``True`` is TensorRT 10.x (``BuilderFlag.FP16``, ``ILayer.precision``, ...),
``False`` is 11.x, where they do not exist. Against the real binding module (``api=``, see
``test/trt_bindings.py``) enums, ``Dims``, ``ILogger`` and ``IProgressMonitor`` are the real ones, and every
attribute read or written on a fake object must exist on the real class it stands for.
"""
from __future__ import annotations

import enum
import json
import types
import weakref
from dataclasses import dataclass, field
from typing import Any

import onnx

TIMING_MAGIC = b"fake-timing-cache:"
_ENUMS_AND_VALUE_TYPES = ("ILogger", "IProgressMonitor", "Dims", "DataType", "NetworkDefinitionCreationFlag",
                          "BuilderFlag", "MemoryPoolType", "ProfilingVerbosity", "LayerInformationFormat",
                          "TensorIOMode")


@dataclass
class BuildState:
    """What one fake TensorRT saw, and what it should do."""

    version: str
    weak_typing: bool
    device: str = "fake GPU sm_90"  # a timing cache from another device is rejected
    parse_errors: list[str] = field(default_factory=list)
    build_error: str | None = None  # logged as an error, then the build returns None
    plugins_load: bool = True
    network_flags: list[int] = field(default_factory=list)
    flags_set: list[Any] = field(default_factory=list)
    workspace: int | None = None
    input_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)  # the network's, -1 = dynamic
    profile_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # opt
    profile_ranges: dict[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)  # min, opt, max
    timing_cache_loaded: bytes | None = None  # what set_timing_cache accepted
    timing_cache_rejected: bool = False
    builds: int = 0
    touched: list[str] = field(default_factory=list)  # "IBuilderConfig.set_flag", ...
    alive_at_deserialize: list[str] = field(default_factory=list)
    deserialized: int = 0
    _builder_objects: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)


@dataclass
class _Api:
    """Where a fake takes TensorRT's enums from, and the real module (if any) its attributes must match."""

    enums: Any
    real: Any


class _Fake:
    """Base of the fake objects: records attribute use and checks it against the real class."""

    _API = ""

    def __init__(self, state: BuildState, api: _Api, **attributes: Any) -> None:
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "_api", api)
        for name, value in attributes.items():
            object.__setattr__(self, name, value)

    def _check(self, name: str) -> None:
        state: BuildState = object.__getattribute__(self, "_state")
        real = object.__getattribute__(self, "_api").real
        state.touched.append(f"{self._API}.{name}")
        if real is not None and not hasattr(getattr(real, self._API), name):
            raise AttributeError(f"'tensorrt.{self._API}' object has no attribute '{name}'")

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):
            object.__getattribute__(self, "_check")(name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            self._check(name)
        object.__setattr__(self, name, value)


class _HostMemory(bytes):
    """``IHostMemory``: only its buffer is used."""


class _Tensor(_Fake):
    _API = "ITensor"

    def __init__(self, state: BuildState, api: _Api, name: str, dtype: Any, shape: tuple[int, ...]) -> None:
        super().__init__(state, api, name=name, dtype=dtype, shape=shape)


class _Layer(_Fake):
    _API = "ILayer"

    def __init__(self, state: BuildState, api: _Api, name: str, outputs: list[_Tensor]) -> None:
        super().__init__(state, api, name=name, num_outputs=len(outputs), _outputs=outputs)

    def get_output(self, index: int) -> _Tensor:
        return self._outputs[index]


class _WeakTypedLayer(_Layer):
    """TensorRT 10.x layers: per-layer precision constraints (gone in 11.x)."""

    def set_output_type(self, index: int, dtype: Any) -> None:
        pass

    precision: Any = None


class _Network(_Fake):
    _API = "INetworkDefinition"

    def __init__(self, state: BuildState, api: _Api) -> None:
        super().__init__(state, api, _inputs=[], _outputs=[], _layers=[], _half=False)
        state._builder_objects.add(self)

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    def get_input(self, index: int) -> _Tensor:
        return self._inputs[index]

    def get_output(self, index: int) -> _Tensor:
        return self._outputs[index]

    def get_layer(self, index: int) -> _Layer:
        return self._layers[index]


class _ParserError:
    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


class _TimingCache(_Fake):
    _API = "ITimingCache"

    def __init__(self, state: BuildState, api: _Api, data: bytes) -> None:
        super().__init__(state, api, _data=data)

    def serialize(self) -> _HostMemory:
        return _HostMemory(self._data)


class _Profile(_Fake):
    _API = "IOptimizationProfile"

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> bool:
        # As TensorRT checks a profile: min <= opt <= max, and a static dimension of the input's at all three.
        declared = self._state.input_dims[name]
        shapes = [tuple(min), tuple(opt), tuple(max)]
        assert all(len(shape) == len(declared) for shape in shapes), (name, shapes, declared)
        for d, lo, mid, hi in zip(declared, *shapes, strict=True):
            assert (lo == mid == hi == d) if d >= 0 else (1 <= lo <= mid <= hi), (name, shapes, declared)
        self._state.profile_shapes[name] = tuple(opt)
        self._state.profile_ranges[name] = (shapes[0], shapes[1], shapes[2])
        return True


class _Config(_Fake):
    _API = "IBuilderConfig"

    def __init__(self, state: BuildState, api: _Api) -> None:
        super().__init__(state, api, profiling_verbosity=None, progress_monitor=None, _cache=None,
                         _profiles=[])
        state._builder_objects.add(self)

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self._state.workspace = size

    def set_flag(self, flag: Any) -> None:
        self._state.flags_set.append(flag)

    def add_optimization_profile(self, profile: _Profile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(self._state, self._api, bytes(data))

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        data = cache._data
        if data and not data.startswith(TIMING_MAGIC + self._state.device.encode()):
            self._state.timing_cache_rejected = True
            return False
        self._state.timing_cache_loaded = data
        object.__setattr__(self, "_cache", cache)
        return True

    def get_timing_cache(self) -> _TimingCache:
        assert self._cache is not None
        return self._cache


class _Parser(_Fake):
    _API = "OnnxParser"

    def __init__(self, state: BuildState, api: _Api, network: _Network, logger: Any) -> None:
        super().__init__(state, api, _network=network, _errors=[])
        state._builder_objects.add(self)

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> _ParserError:
        return self._errors[index]

    def parse_from_file(self, path: str) -> bool:
        if self._state.parse_errors:
            object.__setattr__(self, "_errors", [_ParserError(text) for text in self._state.parse_errors])
            return False
        _fill_network(self._network, onnx.load(path), _dtypes(self._api.enums))
        return True


def _dtypes(enums: Any) -> dict[int, Any]:
    data_type = enums.DataType
    return {
        onnx.TensorProto.FLOAT: data_type.FLOAT, onnx.TensorProto.FLOAT16: data_type.HALF,
        onnx.TensorProto.INT64: data_type.INT64, onnx.TensorProto.INT32: data_type.INT32,
        onnx.TensorProto.BOOL: data_type.BOOL, onnx.TensorProto.UINT8: data_type.UINT8,
    }


def _fill_network(network: _Network, model: onnx.ModelProto, dtypes: dict[int, Any]) -> None:
    """Give ``network`` the graph's I/O and one layer per node (output types from shape inference)."""
    state, api = network._state, network._api
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types_by_name = {v.name: v.type.tensor_type.elem_type
                     for v in [*inferred.value_info, *inferred.input, *inferred.output]}

    def tensor(value: onnx.ValueInfoProto) -> _Tensor:
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
        return _Tensor(state, api, value.name, dtypes[value.type.tensor_type.elem_type], dims)

    initializers = {i.name for i in model.graph.initializer}
    network._inputs = [tensor(v) for v in model.graph.input if v.name not in initializers]
    state.input_dims = {v.name: tuple(d.dim_value if d.HasField("dim_value") else -1
                                      for d in v.type.tensor_type.shape.dim)
                        for v in model.graph.input if v.name not in initializers}
    network._outputs = [tensor(v) for v in model.graph.output]
    layer_type = _WeakTypedLayer if state.weak_typing else _Layer
    for node in model.graph.node:
        float32 = api.enums.DataType.FLOAT
        outputs = [_Tensor(state, api, name, dtypes.get(types_by_name.get(name, 0), float32), ())
                   for name in node.output]
        network._layers.append(layer_type(state, api, node.name or node.op_type, outputs))
    object.__setattr__(network, "_half", any(t == onnx.TensorProto.FLOAT16 for t in types_by_name.values()))


class _Builder(_Fake):
    _API = "Builder"

    def __init__(self, state: BuildState, api: _Api, logger: Any) -> None:
        super().__init__(state, api, _logger=logger)
        state._builder_objects.add(self)

    def create_network(self, flags: int = 0) -> _Network:
        self._state.network_flags.append(flags)
        return _Network(self._state, self._api)

    def create_builder_config(self) -> _Config:
        return _Config(self._state, self._api)

    def create_optimization_profile(self) -> _Profile:
        return _Profile(self._state, self._api)

    def build_serialized_network(self, network: _Network, config: _Config) -> _HostMemory | None:
        state = self._state
        state.builds += 1
        if state.build_error is not None:
            self._logger.log(self._api.enums.ILogger.Severity.ERROR, state.build_error)
            return None
        missing = {t.name for t in network._inputs} - set(state.profile_shapes)
        assert not missing, f"no profile shape for {missing}"
        detailed = self._api.enums.ProfilingVerbosity.DETAILED
        assert object.__getattribute__(config, "profiling_verbosity") == detailed
        old = config._cache._data.split(b"|")[1:] if config._cache else []
        entries = [*old, str(state.builds).encode()]
        cache = _TimingCache(state, self._api, b"|".join([TIMING_MAGIC + state.device.encode(), *entries]))
        object.__setattr__(config, "_cache", cache)
        plan = {"half": network._half, "outputs": [t.name for t in network._outputs]}
        return _HostMemory(b"fake-engine:" + json.dumps(plan).encode())


def inspector_json(half: bool, eleven: bool) -> str:
    """The engine inspector's JSON for a small engine, in TensorRT 10's or 11's layout."""

    def tensor(precision: str) -> dict[str, Any]:
        fp = {"fp16": ("Half", "Row major linear FP16 format"), "fp32": ("Float", "Row major linear FP32")}
        name, text = fp[precision]
        if eleven:
            return {"Name": "t", "Location": "Device", "Dimensions": [1, 4], "Format": f"{text} (kLINEAR)",
                    "DataType": name}
        return {"Name": "t", "Location": "Device", "Dimensions": [1, 4], "Format/Datatype": text}

    compute = "fp16" if half else "fp32"
    layers = [
        {"Name": "matmul", "LayerType": "MatrixMultiply", "Outputs": [tensor(compute)]},
        {"Name": "norm", "LayerType": "Normalization", "Outputs": [tensor("fp32")]},
        {"Name": "conv", "LayerType": "CaskConvolution", "Outputs": [tensor(compute)]},
        {"Name": "reformat", "LayerType": "Reformat", "Outputs": [tensor("fp32")]},
    ]
    io_key = ({"I/O Tensors": [{"Name": "inputs", "IOMode": "Input", "DataType": "Float"}]} if eleven
              else {"Bindings": ["inputs"]})
    return json.dumps({"Layers": layers, **io_key})


class _Inspector(_Fake):
    _API = "EngineInspector"

    def __init__(self, state: BuildState, api: _Api, half: bool) -> None:
        super().__init__(state, api, _half=half)

    def get_engine_information(self, fmt: Any) -> str:
        assert fmt == self._api.enums.LayerInformationFormat.JSON
        return inspector_json(self._half, eleven=not self._state.weak_typing)


class _Engine(_Fake):
    _API = "ICudaEngine"

    def __init__(self, state: BuildState, api: _Api, plan: dict[str, Any]) -> None:
        super().__init__(state, api, _plan=plan)

    def create_engine_inspector(self) -> _Inspector:
        return _Inspector(self._state, self._api, self._plan["half"])


class _Runtime(_Fake):
    _API = "Runtime"

    def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
        state = self._state
        state.deserialized += 1
        state.alive_at_deserialize = sorted(type(o).__name__ for o in state._builder_objects)
        if not bytes(data).startswith(b"fake-engine:"):
            return None
        return _Engine(state, self._api, json.loads(bytes(data)[len(b"fake-engine:"):]))


def _enum(name: str, members: list[str]) -> type[enum.IntEnum]:
    return enum.IntEnum(name, {member: index for index, member in enumerate(members)})


def _own_api(weak_typing: bool) -> types.SimpleNamespace:
    """Enums and helper classes shaped like TensorRT's, for a fake without the real module."""
    weak = ["FP16", "PREFER_PRECISION_CONSTRAINTS", "OBEY_PRECISION_CONSTRAINTS"]
    precision_flags = weak if weak_typing else []

    class ILogger:
        Severity = _enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])

        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    creation = ["STRONGLY_TYPED"] + (["EXPLICIT_BATCH"] if weak_typing else [])
    return types.SimpleNamespace(
        ILogger=ILogger, IProgressMonitor=IProgressMonitor, Dims=tuple,
        DataType=_enum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "INT64"]),
        NetworkDefinitionCreationFlag=_enum("NetworkDefinitionCreationFlag", creation),
        BuilderFlag=_enum("BuilderFlag", [*precision_flags, "TF32", "REFIT"]),
        MemoryPoolType=_enum("MemoryPoolType", ["WORKSPACE"]),
        ProfilingVerbosity=_enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"]),
        LayerInformationFormat=_enum("LayerInformationFormat", ["ONELINE", "JSON"]),
        TensorIOMode=_enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"]),
    )


def make_tensorrt(version: str = "10.16.1.11", *, real: Any = None) -> tuple[types.ModuleType, BuildState]:
    """Return a fake ``tensorrt`` module and its :class:`BuildState`.

    Without ``real`` the fake defines its own enums, with TensorRT 11's API when ``version`` is 11.x.
    With ``real`` (the real binding module) it takes enums and value classes from it, and every attribute
    of a fake object must exist on the real class.
    """
    weak_typing = int(version.split(".")[0]) < 11
    state = BuildState(version=version, weak_typing=weak_typing)
    api = _Api(enums=real if real is not None else _own_api(weak_typing), real=real)
    module = types.ModuleType("tensorrt")
    for name in _ENUMS_AND_VALUE_TYPES:
        setattr(module, name, getattr(api.enums, name))
    module.__version__ = version
    module.Builder = lambda logger: _Builder(state, api, logger)
    module.OnnxParser = lambda network, logger: _Parser(state, api, network, logger)
    module.Runtime = lambda logger: _Runtime(state, api)
    module.init_libnvinfer_plugins = lambda logger, namespace: state.plugins_load
    return module, state
