"""Inference backends behind one interface; :func:`open_backend` picks one from the model file.

``.onnx`` runs on ONNX Runtime, ``.pth`` on PyTorch, ``.engine``/``.plan`` on TensorRT. Each backend
module is imported only when its kind of file is opened, so TensorRT and PyTorch stay optional.
"""
from __future__ import annotations

from pathlib import Path

from gdino_ros.backends.base import Backend, BackendError, parse_device

__all__ = ["Backend", "BackendError", "MODEL_SUFFIXES", "open_backend"]

MODEL_SUFFIXES = {
    ".onnx": "ONNX Runtime",
    ".pth": "PyTorch checkpoint",
    ".engine": "TensorRT engine",
    ".plan": "TensorRT engine",
}


def open_backend(
    model_path: str | Path,
    device: str = "auto",
    *,
    input_hw: tuple[int, int] | None = None,
    trust_checkpoint: bool = False,
) -> Backend:
    """Open ``model_path`` with the backend its extension names.

    ``device`` is ``"auto"`` (the GPU when the backend can use one, else the CPU), ``"cpu"``, ``"cuda"``
    or ``"cuda:N"``. ``input_hw`` sets the image size for a ``.pth`` checkpoint (ONNX files and engines
    have theirs built in; asking for another size is an error). ``trust_checkpoint`` allows a ``.pth``
    that needs unrestricted unpickling (only for files from a trusted source).
    """
    path = Path(model_path)
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        known = ", ".join(f"{ext} ({kind})" for ext, kind in MODEL_SUFFIXES.items())
        raise BackendError(f"cannot tell how to run '{path.name}' from its extension; use one of: {known}")
    if not path.is_file():
        raise BackendError(f"model file {path} does not exist (or is not a file)")
    parse_device(device)
    backend: Backend
    if suffix == ".pth":
        from gdino_ros.backends.torch import TorchBackend

        return TorchBackend(path, device, input_hw=input_hw, trust_checkpoint=trust_checkpoint)
    if suffix == ".onnx":
        from gdino_ros.backends.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(path, device)
    else:
        from gdino_ros.backends.tensorrt import TensorRTBackend

        backend = TensorRTBackend(path, device)
    if input_hw is not None and tuple(input_hw) != backend.input_hw:
        hw = backend.input_hw
        backend.close()
        raise BackendError(
            f"{path.name} is built for {hw[0]}x{hw[1]} images and cannot run at {input_hw[0]}x{input_hw[1]}; "
            "export (and build) the model at the size you need"
        )
    return backend
