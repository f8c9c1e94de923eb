"""ONNX Runtime backend: the CPU provider everywhere, the CUDA provider when onnxruntime-gpu is installed.

The text tensors live in ORT values bound once per prompt (on the GPU with the CUDA provider); each
frame binds only the image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from gdino_ros import contract
from gdino_ros.backends.base import Backend, BackendError, TensorSpec, check_io, parse_device

_ORT_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(uint8)": np.dtype(np.uint8),
}
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def _spec(arg: ort.NodeArg) -> TensorSpec:
    dtype = _ORT_DTYPES.get(arg.type)
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    return TensorSpec(arg.name, np.dtype(object) if dtype is None else dtype, shape)  # object: unknown type


class OnnxRuntimeBackend(Backend):
    """Runs an exported ``.onnx`` with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        path = Path(path)
        kind, index = parse_device(device)
        available = ort.get_available_providers()
        if kind == "cuda" and _CUDA not in available:
            raise BackendError(
                f"device {device!r} needs ONNX Runtime's CUDA provider, but this onnxruntime only has "
                f"{', '.join(available)}; install onnxruntime-gpu, or use device='cpu'"
            )
        use_cuda = kind == "cuda" or (kind == "auto" and _CUDA in available)
        providers: list[str | tuple[str, dict[str, str]]] = [_CPU]
        if use_cuda:
            providers.insert(0, (_CUDA, {"device_id": str(index)}))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # noqa: BLE001 - ORT raises its own unexported exception types
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BackendError(
                f"ONNX Runtime cannot load {path}: {message}. Check that the file is a complete ONNX "
                "export (re-export it with gdino-export if in doubt)"
            ) from None
        io = check_io(
            {arg.name: _spec(arg) for arg in self._session.get_inputs()},
            {arg.name: _spec(arg) for arg in self._session.get_outputs()},
            str(path),
        )
        on_gpu = _CUDA in self._session.get_providers()
        super().__init__(
            device=f"cuda:{index}" if on_gpu else "cpu",
            precision="fp16" if io.input_dtypes[contract.INPUT_IMAGE] == np.float16 else "fp32",
            input_hw=io.input_hw,
            input_dtypes=io.input_dtypes,
            output_names=io.output_names,
            dynamic_text=io.dynamic_text,
            camera_input=io.camera_input,
        )
        self._ort_device = ("cuda", index) if on_gpu else ("cpu", 0)
        self._binding = self._session.io_binding()
        self._text_values: dict[str, ort.OrtValue] = {}
        for name in self.output_names:
            self._binding.bind_output(name)

    def _set_text(self, text_inputs: dict[str, np.ndarray]) -> None:
        device_type, device_id = self._ort_device
        # Kept referenced: on the CPU an OrtValue borrows the numpy array's memory, and the binding
        # does not keep the Python objects alive.
        self._text_values = {
            name: ort.OrtValue.ortvalue_from_numpy(value, device_type, device_id)
            for name, value in text_inputs.items()
        }
        for name, value in self._text_values.items():
            self._binding.bind_ortvalue_input(name, value)

    def _run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        self._binding.bind_cpu_input(contract.INPUT_IMAGE, image)
        self._session.run_with_iobinding(self._binding)
        return dict(zip(self.output_names, self._binding.copy_outputs_to_cpu(), strict=True))

    def _release(self) -> None:
        """Drop the session (ONNX Runtime frees its memory when the last reference goes)."""
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._text_values = {}
        del self._session
