"""setup.cfg's TensorRT extras say what gdino_ros/backends/install_hints.py states, and pip resolves each
line to versions inside its ranges.

Resolving needs PyPI (reachable here and on CI). The TensorRT meta-packages (``tensorrt-cu12``,
``tensorrt-cu13``) are source distributions that pin ``tensorrt-cuXX-bindings`` and ``tensorrt-cuXX-libs``;
the libs package fetches its files from NVIDIA's own index when built, which no machine here reaches. So a
desktop line is resolved in two steps: the meta-package without its dependencies (pip builds only its
metadata), then the pinned bindings wheel with cuda-python, wheels only, dependencies included. The libs
package is the one part left unresolved here.
"""
from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from gdino_ros.backends.install_hints import (
    DESKTOP_CUDA12,
    DESKTOP_CUDA13,
    INSTALL_LINES,
    JETSON,
    InstallLine,
)

ROOT = Path(__file__).resolve().parents[1]


def extras() -> dict[str, list[str]]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    section = config["options.extras_require"]
    return {name: section[name].split() for name in section}


def resolve(report: Path, requirements: list[str], *options: str) -> dict[str, dict[str, Any]]:
    """What ``pip install`` would install for ``requirements`` into an empty environment: name -> metadata."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--report", str(report), *options, *requirements]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr[-3000:]}"
    installs = json.loads(report.read_text())["install"]
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in installs}


def version_of(resolved: dict[str, dict[str, Any]], requirement: Requirement) -> Version:
    """The resolved version of ``requirement``'s package, checked to lie in its range."""
    version = Version(resolved[canonicalize_name(requirement.name)]["version"])
    assert requirement.specifier.contains(version, prereleases=False), f"{requirement.name} {version}"
    return version


def check_cuda_python(resolved: dict[str, dict[str, Any]], requirement: Requirement, cuda_major: int) -> None:
    """cuda-python lies in its range and brings ``cuda.bindings`` of the CUDA major the line is for."""
    version = version_of(resolved, requirement)
    assert version.major == cuda_major
    # 12.6.2.post1 holds cuda.bindings itself; later releases depend on the cuda-bindings wheel.
    if "cuda-bindings" in resolved:
        assert Version(resolved["cuda-bindings"]["version"]).major == cuda_major
    else:
        assert version == Version("12.6.2.post1")


def test_extras_state_the_install_lines() -> None:
    declared = extras()
    for line in INSTALL_LINES:
        assert declared[line.extra] == list(line.requirements), line.extra
    others = [name for name in declared if name not in {line.extra for line in INSTALL_LINES}]
    for name in others:
        assert not any(Requirement(r).name.startswith(("tensorrt", "cuda")) for r in declared[name]), name


def test_readme_gives_each_install_line() -> None:
    readme = (ROOT / "README.md").read_text()
    for line in INSTALL_LINES:
        assert line.command() in readme, line.command()


@pytest.mark.slow  # pip resolves against PyPI and builds the meta-package's metadata
@pytest.mark.parametrize("line", [DESKTOP_CUDA12, DESKTOP_CUDA13], ids=lambda line: line.extra)
def test_desktop_line_resolves_within_its_ranges(line: InstallLine, tmp_path: Path) -> None:
    tensorrt, cuda_python, onnx = map(Requirement, line.requirements)
    cuda_major = int(tensorrt.name.removeprefix("tensorrt-cu"))
    top = resolve(tmp_path / "meta.json", list(line.requirements), "--no-deps")
    tensorrt_version = version_of(top, tensorrt)
    requires = map(Requirement, top[canonicalize_name(tensorrt.name)]["requires_dist"])
    pins = {str(canonicalize_name(pin.name)): pin for pin in requires if not pin.marker}
    for part in ("bindings", "libs"):
        assert str(pins[f"{tensorrt.name}-{part}"].specifier) == f"=={tensorrt_version}"
    bindings = pins[f"{tensorrt.name}-bindings"]
    wheels = resolve(tmp_path / "wheels.json", [str(bindings), str(cuda_python), str(onnx)],
                     "--only-binary=:all:")
    assert Version(wheels[canonicalize_name(bindings.name)]["version"]) == tensorrt_version
    check_cuda_python(wheels, cuda_python, cuda_major)
    assert "onnx" in wheels


@pytest.mark.slow  # pip resolves against PyPI
def test_jetson_line_resolves_to_wheels_for_jetpack_6(tmp_path: Path) -> None:
    """JetPack 6.1/6.2: Ubuntu 22.04 on aarch64, so CPython 3.10 and glibc 2.35."""
    cuda_python, onnx = map(Requirement, JETSON.requirements)
    platforms = ["manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 36))]
    wheels = resolve(tmp_path / "jetson.json", list(JETSON.requirements), "--only-binary=:all:",
                     "--python-version=3.10", "--implementation=cp", *(f"--platform={p}" for p in platforms))
    check_cuda_python(wheels, cuda_python, 12)
    assert onnx.name in wheels  # gdino-build-engine reads the graph; a cp310 aarch64 wheel exists
