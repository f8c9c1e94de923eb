"""The real TensorRT and cuda-python binding modules that ``tools/setup_env.sh`` fetched, for tests.

``tools/binding-wheels.txt`` lists them; setup unpacks each into ``build/<kind>/<label>/``, the label
being the exact version. TensorRT's pybind11 module comes from the PyPI wheel ``tensorrt-cuXX-bindings``
(package ``tensorrt_bindings``, re-exported as ``tensorrt`` the way the ``tensorrt-cuXX`` meta-package
does); its native libraries are stand-ins (``libnvinfer.so.N``, ``libnvinfer_plugin.so.N``,
``libnvonnxparser.so.N`` from ``tools/trt_standin/standin.c``) that define only the entry points the
module resolves at load, returning NULL or 0.

With the stand-ins, everything the module defines without calling into the library is real:
``tensorrt.__version__``; every enum and member (``trt.BuilderFlag.FP16`` exists in 10.x and raises
AttributeError in 11.x); every class with its methods and properties as attributes
(``trt.ILayer.precision``, ``trt.IBuilderConfig.set_flag``); value types such as ``trt.Logger(...)`` and
``trt.Dims``. Nothing the library creates exists: ``trt.Builder(logger)`` and ``trt.Runtime(logger)``
raise ``TypeError`` with :data:`NULL_FACTORY_ERROR`; ``trt.get_plugin_registry()`` returns None;
``trt.init_libnvinfer_plugins(logger, "")`` returns False. So no network, engine or context can be made.

Import the module in a subprocess started with :func:`subprocess_env` (the loader reads
``LD_LIBRARY_PATH`` at process start, and one process can hold only one ``tensorrt``)::

    trt_bindings.require(label)
    subprocess.run([sys.executable, "-c", "import tensorrt"], env=trt_bindings.subprocess_env(label))
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "tools" / "binding-wheels.txt"

# What the real bindings raise when the library returns no builder or runtime (the stand-ins never do).
NULL_FACTORY_ERROR = "pybind11::init(): factory function returned nullptr"


def _read_list() -> dict[str, tuple[str, str]]:
    """Label -> (kind, requirement) for every line of tools/binding-wheels.txt."""
    entries = {}
    for line in LIST.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            kind, label, pinned = fields
            entries[label] = (kind, pinned)
    return entries


_ENTRIES = _read_list()
# TensorRT versions, oldest first: JetPack 6's 10.3, the newest 10.x, the newest 11.x.
LABELS: tuple[str, ...] = tuple(label for label, (kind, _) in _ENTRIES.items() if kind == "trt")
# cuda-python versions: 12.6.2.post1 (the first with cuda.bindings) and the newest 13.x.
CUDA_LABELS: tuple[str, ...] = tuple(label for label, (kind, _) in _ENTRIES.items() if kind == "cuda")


def requirement(label: str) -> str:
    """The pinned requirement that setup fetched for ``label``, e.g. ``tensorrt-cu12-bindings==10.3.0``."""
    return _ENTRIES[label][1]


def directory(label: str) -> Path:
    """Where setup put the binding module of ``label`` (a TensorRT or cuda-python version)."""
    kind, _ = _ENTRIES[label]
    return ROOT / "build" / kind / label


def require(label: str) -> None:
    """Skip the calling test, saying why, when setup did not provide the bindings of ``label``."""
    dest = directory(label)
    if (dest / ".stamp").is_file():
        return
    failed = dest.with_name(f"{label}.failed")
    if failed.is_file():
        lines = [line for line in failed.read_text().splitlines() if line.strip()]
        last = lines[-1] if lines else "no output"
        pytest.skip(f"tools/setup_env.sh could not fetch {requirement(label)} ({last}); see {failed}")
    pytest.skip(f"{requirement(label)} is not in {dest}: run tools/setup_env.sh")


def subprocess_env(label: str) -> dict[str, str]:
    """The environment in which ``python -c "import tensorrt"`` (or ``cuda.bindings``) imports ``label``'s.

    The binding directory goes first on PYTHONPATH, so it also wins over any ``tensorrt`` or ``cuda``
    package installed in the venv; for TensorRT, LD_LIBRARY_PATH points at the stand-in libraries.
    """
    dest = directory(label)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(dest), env.get("PYTHONPATH", "")) if p)
    if _ENTRIES[label][0] == "trt":
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(dest / "lib"), env.get("LD_LIBRARY_PATH", "")) if p)
    return env
