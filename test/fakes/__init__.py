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
        cuda = types.ModuleType("cuda")
        cuda.__path__ = []  # a package
        bindings = types.ModuleType("cuda.bindings")
        bindings.__path__ = []
        runtime = self.gpu.module()
        cuda.bindings = bindings  # type: ignore[attr-defined]
        bindings.runtime = runtime  # type: ignore[attr-defined]
        modules = {"tensorrt": self.trt.module(), "cuda": cuda, "cuda.bindings": bindings,
                   "cuda.bindings.runtime": runtime}
        for name, module in modules.items():
            monkeypatch.setitem(sys.modules, name, module)


def install(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    """Install a fresh fake GPU and TensorRT for the rest of the test."""
    gpu = FakeGpu()
    fakes = Fakes(gpu, FakeTensorRT(gpu))
    fakes.reinstall(monkeypatch)
    return fakes
