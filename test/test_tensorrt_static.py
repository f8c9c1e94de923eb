"""The TensorRT code cannot run here (no GPU, no TensorRT libraries), so it is type-checked instead.

The stubs come from the real binding modules of every supported version (test/trt_bindings.py:
TensorRT 10.3 of JetPack 6, the newest 10.x and 11.x, imported over stand-in native libraries;
cuda-python 12.6.2.post1 and 13.x), written by ``tools/type_stubs.py``. mypy --strict then checks every
``gdino_ros`` module that imports ``tensorrt`` or ``cuda.bindings`` against each pairing that a user can
install (setup.cfg's extras). More tests show the check is not vacuous: typical mistakes are rejected on
every version; code written for 10.x weak typing (``BuilderFlag.FP16``) passes against 10.x and fails
against 11.x; a ``cudaDeviceProp`` field that CUDA 13 removed passes against 12.x and fails against 13.x.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trt_bindings

ROOT = Path(__file__).resolve().parents[1]
_IMPORTS_BINDINGS = re.compile(r"^\s*(import|from) (tensorrt|cuda\.bindings)\b", re.M)
CHECKED = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "gdino_ros").rglob("*.py")
                 if _IMPORTS_BINDINGS.search(path.read_text()))


def _cuda_for(trt_label: str) -> str:
    """The cuda-python version that goes with a TensorRT wheel: its CUDA major (tensorrt-cuXX-bindings)."""
    cuda_major = re.search(r"tensorrt-cu(\d+)-bindings", trt_bindings.requirement(trt_label))
    assert cuda_major is not None, trt_bindings.requirement(trt_label)
    return next(label for label in trt_bindings.CUDA_LABELS if label.split(".")[0] == cuda_major[1])


# Each TensorRT version with the cuda-python of its CUDA major: 10.3 + 12.6.2.post1 is JetPack 6 (the
# `jetson` extra), 10.x + 12.x the `tensorrt-cu12` extra, 11.x + 13.x the `tensorrt-cu13` extra.
COMBOS = [(label, _cuda_for(label)) for label in trt_bindings.LABELS]

StubMaker = Callable[[str], Path]


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> StubMaker:
    """Stubs of one binding module (by label), written once per test module."""
    made: dict[str, Path] = {}

    def make(label: str) -> Path:
        trt_bindings.require(label)
        if label not in made:
            out = tmp_path_factory.mktemp(f"stubs-{label}")
            module = "tensorrt" if label in trt_bindings.LABELS else "cuda"
            result = subprocess.run([sys.executable, str(ROOT / "tools" / "type_stubs.py"), module, str(out)],
                                    env=trt_bindings.subprocess_env(label), capture_output=True, text=True)
            assert result.returncode == 0, result.stderr[-3000:]
            made[label] = out
        return made[label]

    return make


# torch and transformers (reached through gdino_ros imports) are not followed: they are unrelated to the
# TensorRT calls, take a minute to analyse, and torch's own imports of cuda.bindings would make every
# cuda-python version re-analyse them. Errors are reported in the checked files only.
MYPY_CONFIG = "[mypy]\n[mypy-torch.*,transformers.*]\nfollow_imports = skip\n"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache and config for all runs: numpy and onnx are analysed once, each stub set anew."""
    cache = tmp_path_factory.mktemp("mypy-cache")
    (cache / "mypy.ini").write_text(MYPY_CONFIG)
    return cache


def run_mypy(stub_dirs: list[Path], files: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MYPYPATH": os.pathsep.join(map(str, stub_dirs))}
    command = [sys.executable, "-m", "mypy", "--config-file", str(cache / "mypy.ini"), "--strict",
               "--follow-imports=silent", "--no-error-summary", "--cache-dir", str(cache), *files]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def error_lines(result: subprocess.CompletedProcess[str]) -> set[int]:
    return {int(line.split(":")[1]) for line in result.stdout.splitlines() if ": error:" in line}


def test_the_checked_modules_include_both_code_paths() -> None:
    assert {"gdino_ros/backends/tensorrt.py", "gdino_ros/tools/build_engine.py"} <= set(CHECKED)


@pytest.mark.slow  # 10-20 s per version pair on the 2-core development machine
@pytest.mark.parametrize(("trt_label", "cuda_label"), COMBOS)
def test_tensorrt_code_type_checks_against_real_bindings(
    stubs: StubMaker, cache: Path, trt_label: str, cuda_label: str
) -> None:
    result = run_mypy([stubs(trt_label), stubs(cuda_label)], CHECKED, cache)
    versions = f"TensorRT {trt_label}, cuda-python {cuda_label}"
    assert result.returncode == 0, f"{versions}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("trt_label", trt_bindings.LABELS)
def test_real_bindings_import_over_stand_in_libraries(trt_label: str) -> None:
    trt_bindings.require(trt_label)
    script = (
        "import tensorrt as trt\n"
        "print(trt.__version__)\n"
        "print(trt.__file__)\n"
        "try:\n"
        "    trt.Builder(trt.Logger(trt.Logger.WARNING))\n"
        "except TypeError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=trt_bindings.subprocess_env(trt_label),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    version, module_file, error = result.stdout.splitlines()
    assert version == trt_label
    assert Path(module_file).is_relative_to(trt_bindings.directory(trt_label))
    assert error == trt_bindings.NULL_FACTORY_ERROR


@pytest.mark.parametrize("cuda_label", trt_bindings.CUDA_LABELS)
def test_real_cuda_bindings_import(cuda_label: str) -> None:
    trt_bindings.require(cuda_label)
    script = "import cuda.bindings.runtime\nfrom cuda import bindings as b\nprint(b.__version__, b.__file__)"
    result = subprocess.run([sys.executable, "-c", script], env=trt_bindings.subprocess_env(cuda_label),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    version, module_file = result.stdout.split()
    assert version == cuda_label
    assert Path(module_file).is_relative_to(trt_bindings.directory(cuda_label))


MISTAKES = (
    "from __future__ import annotations\n"
    "import tensorrt as trt\n"
    "from cuda.bindings import runtime as cudart\n"
    "def run(context: trt.IExecutionContext, engine: trt.ICudaEngine) -> None:\n"
    "    context.execute_async_v4(0)\n"  # misspelt method
    "    context.set_tensor_address('inputs')\n"  # missing argument
    "    engine.get_tensor_shape(3)\n"  # wrong argument type
    "    error, pointer, extra = cudart.cudaMalloc(16)\n"  # returns (error, pointer)
    "    cudart.cudaMemcpyAsync(pointer, pointer, 16, 1, 0)\n"  # kind must be a cudaMemcpyKind
    "    cudart.cudaStreamSynchronise(0)\n"  # misspelt function
    "    trt.IBuilder\n"  # the class is trt.Builder
    "    cudart.cudaGetDeviceProperties(0)[1].multiprocessorCount\n"  # the field is multiProcessorCount
)


@pytest.mark.parametrize(("trt_label", "cuda_label"), COMBOS)
@pytest.mark.slow
def test_mistakes_in_tensorrt_and_cuda_calls_are_rejected(
    stubs: StubMaker, cache: Path, trt_label: str, cuda_label: str, tmp_path: Path
) -> None:
    snippet = tmp_path / "wrong.py"
    snippet.write_text(MISTAKES)
    result = run_mypy([stubs(trt_label), stubs(cuda_label)], [str(snippet)], cache)
    assert result.returncode == 1, result.stdout + result.stderr
    assert error_lines(result) == set(range(5, 13)), result.stdout
    assert 'has no attribute "execute_async_v4"' in result.stdout
    assert 'has no attribute "cudaStreamSynchronise"' in result.stdout


WEAK_TYPING = (
    "from __future__ import annotations\n"
    "import tensorrt as trt\n"
    "def fp16(config: trt.IBuilderConfig, layer: trt.ILayer) -> None:\n"
    "    config.set_flag(trt.BuilderFlag.FP16)\n"
    "    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)\n"
    "    layer.precision = trt.float32\n"
    "    layer.set_output_type(0, trt.float32)\n"
)


@pytest.mark.parametrize("trt_label", trt_bindings.LABELS)
@pytest.mark.slow
def test_weak_typing_api_is_caught_where_it_was_removed(
    stubs: StubMaker, cache: Path, trt_label: str, tmp_path: Path
) -> None:
    """TensorRT 11 removed weak typing; the same 10.x code must pass against 10.x and fail against 11.x."""
    snippet = tmp_path / "weak_typing.py"
    snippet.write_text(WEAK_TYPING)
    result = run_mypy([stubs(trt_label)], [str(snippet)], cache)
    if int(trt_label.split(".")[0]) < 11:
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert error_lines(result) == {4, 5, 6, 7}, result.stdout
        assert 'has no attribute "FP16"' in result.stdout
        assert 'has no attribute "set_output_type"' in result.stdout


REMOVED_IN_CUDA_13 = (
    "from __future__ import annotations\n"
    "from cuda.bindings import runtime as cudart\n"
    "def clock_khz(device: int) -> int:\n"
    "    error, properties = cudart.cudaGetDeviceProperties(device)\n"
    "    return properties.clockRate\n"
)


@pytest.mark.parametrize("cuda_label", trt_bindings.CUDA_LABELS)
def test_cuda_13_removals_are_caught(stubs: StubMaker, cache: Path, cuda_label: str, tmp_path: Path) -> None:
    """CUDA 13 dropped cudaDeviceProp.clockRate; reading it must pass against 12.x and fail against 13.x."""
    snippet = tmp_path / "clock_rate.py"
    snippet.write_text(REMOVED_IN_CUDA_13)
    result = run_mypy([stubs(cuda_label)], [str(snippet)], cache)
    if int(cuda_label.split(".")[0]) < 13:
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert error_lines(result) == {5}, result.stdout
        assert 'has no attribute "clockRate"' in result.stdout
