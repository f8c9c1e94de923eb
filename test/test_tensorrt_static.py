"""The TensorRT code cannot run on CI (no GPU, no TensorRT), so it is type-checked against real stubs.

``tools/type_stubs.py`` repairs a copy of ``tensorrt-stubs`` and builds ``cuda.bindings.runtime`` stubs
from the installed cuda-python; mypy then checks every TensorRT and CUDA call in the modules below. The
second test shows the check is not vacuous: a snippet with typical mistakes must be rejected.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["gdino_ros/backends/tensorrt.py", "gdino_ros/tools/build_engine.py"]


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run([sys.executable, str(ROOT / "tools" / "type_stubs.py"), str(out)], check=True,
                   capture_output=True, text=True)
    return out


def run_mypy(stubs: Path, files: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MYPYPATH": str(stubs)}
    command = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary",
               "--cache-dir", str(cache), *files]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def test_tensorrt_modules_type_check(stubs: Path, tmp_path: Path) -> None:
    result = run_mypy(stubs, CHECKED, tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mistakes_in_tensorrt_and_cuda_calls_are_rejected(stubs: Path, tmp_path: Path) -> None:
    snippet = tmp_path / "wrong.py"
    snippet.write_text(
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
    )
    result = run_mypy(stubs, [str(snippet)], tmp_path / "cache")
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    lines_with_errors = {int(line.split(":")[1]) for line in errors}
    assert lines_with_errors == {5, 6, 7, 8, 9, 10}, result.stdout
    assert 'has no attribute "execute_async_v4"' in result.stdout
    assert 'has no attribute "cudaStreamSynchronise"' in result.stdout
