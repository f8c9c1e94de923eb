"""How to install TensorRT and cuda-python on each supported machine, stated once.

setup.cfg's extras carry the same requirements (test/test_install_extras.py checks that and resolves
each line with pip); the README and the backends' "not installed" messages quote these lines.

The ranges follow what the code is checked against (test/test_tensorrt_static.py): TensorRT 10.3
(JetPack 6.1/6.2), the newest 10.x and the newest 11.x. cuda-python 12.6.2.post1 is the first release
with ``cuda.bindings``; its major version must match the CUDA of the TensorRT build.
"""
from __future__ import annotations

from dataclasses import dataclass

CUDA_PYTHON_12 = "cuda-python>=12.6.2.post1,<13"
CUDA_PYTHON_13 = "cuda-python>=13,<14"
# gdino-build-engine reads the ONNX graph (precision, FP16 conversion) before TensorRT parses it.
ONNX = "onnx"


@dataclass(frozen=True)
class InstallLine:
    """The packages one kind of machine needs; ``extra`` names the setup.cfg extra with the same pip part."""

    extra: str
    machine: str
    requirements: tuple[str, ...]
    apt_packages: tuple[str, ...] = ()

    def command(self) -> str:
        """Return the shell command: ``pip install "tensorrt-cu12>=10.3,<11" "cuda-python>=..."``, etc."""
        pip = "pip install " + " ".join(f'"{requirement}"' for requirement in self.requirements)
        return f"sudo apt-get install {' '.join(self.apt_packages)} && {pip}" if self.apt_packages else pip


DESKTOP_CUDA12 = InstallLine("tensorrt-cu12", "desktop GPU with CUDA 12",
                             ("tensorrt-cu12>=10.3,<11", CUDA_PYTHON_12, ONNX))
DESKTOP_CUDA13 = InstallLine("tensorrt-cu13", "desktop GPU with CUDA 13 (driver R580 or newer)",
                             ("tensorrt-cu13>=11,<12", CUDA_PYTHON_13, ONNX))
JETSON = InstallLine("jetson", "Jetson with JetPack 6.1/6.2 (TensorRT 10.3 from apt)",
                     (CUDA_PYTHON_12, ONNX), ("python3-libnvinfer",))
INSTALL_LINES = (DESKTOP_CUDA12, DESKTOP_CUDA13, JETSON)

# For "TensorRT / cuda-python is not installed" messages: every machine's line, in one sentence.
TENSORRT_INSTALL_HINT = "; ".join(f"{line.machine}: {line.command()}" for line in INSTALL_LINES)
CUDA_PYTHON_INSTALL_HINT = (f'pip install "{CUDA_PYTHON_12}" (CUDA 12, JetPack 6) or '
                            f'pip install "{CUDA_PYTHON_13}" (CUDA 13)')
