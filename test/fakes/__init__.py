"""Test doubles of TensorRT and the CUDA runtime, to run the real TensorRT backend on a CPU.

:func:`install` puts fresh fakes in ``sys.modules`` for one test (``tensorrt``, ``cuda``,
``cuda.bindings``, ``cuda.bindings.runtime``); the backend imports them as it would the real packages.
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

from fakes.cuda_runtime import FakeGpu
from fakes.tensorrt_runtime import FakeTensorRT


@dataclass
class Fakes:
    """The state of one test's fake GPU and fake TensorRT."""

    gpu: FakeGpu
    trt: FakeTensorRT

    def reinstall(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Put the modules in ``sys.modules`` again (after changing ``trt.version``)."""
        for name, module in {**cuda_modules(self.gpu), "tensorrt": self.trt.module()}.items():
            monkeypatch.setitem(sys.modules, name, module)


def cuda_modules(gpu: FakeGpu) -> dict[str, types.ModuleType]:
    """``cuda``, ``cuda.bindings`` and ``cuda.bindings.runtime`` of the fake GPU, for ``sys.modules``.

    They stand in whether or not cuda-python is installed (CI's environment has none).
    """
    cuda = types.ModuleType("cuda")
    cuda.__path__ = []  # a package
    bindings = types.ModuleType("cuda.bindings")
    bindings.__path__ = []
    runtime = gpu.module()
    cuda.bindings = bindings  # type: ignore[attr-defined]
    bindings.runtime = runtime  # type: ignore[attr-defined]
    return {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": runtime}


def install(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    """Install a fresh fake GPU and TensorRT for the rest of the test."""
    gpu = FakeGpu()
    fakes = Fakes(gpu, FakeTensorRT(gpu))
    fakes.reinstall(monkeypatch)
    return fakes
