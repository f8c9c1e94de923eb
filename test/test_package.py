"""ROS package hygiene: manifest, build files, lint, XML, and a core that imports without ROS."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rosharness import REPO_ROOT

MANIFESTS = [REPO_ROOT / "package.xml", REPO_ROOT / "interfaces" / "vision_msgs" / "package.xml"]


def _cmake_find_packages(cmakelists: Path) -> set[str]:
    text = cmakelists.read_text()
    return set(re.findall(r"find_package\((\w+)\s+REQUIRED\)", text))


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.parent.name)
def test_manifest_is_valid_format_3_and_declares_every_build_dependency(manifest: Path) -> None:
    from catkin_pkg.package import parse_package

    package = parse_package(str(manifest))
    package.validate()
    assert package.package_format == 3
    declared = {d.name for d in package.build_depends + package.buildtool_depends}
    missing = _cmake_find_packages(manifest.parent / "CMakeLists.txt") - declared
    assert not missing, f"{manifest}: find_package() without a build dependency: {sorted(missing)}"
    assert "rosidl_interface_packages" in {g.name for g in package.member_of_groups}
    assert {d.name for d in package.exec_depends} >= {"rosidl_default_runtime"}


def test_gdino_manifest_declares_runtime_dependencies() -> None:
    from catkin_pkg.package import parse_package

    package = parse_package(str(REPO_ROOT / "package.xml"))
    run = {d.name for d in package.exec_depends}
    assert {"rclpy", "vision_msgs", "sensor_msgs", "std_msgs", "diagnostic_msgs", "launch_ros"} <= run
    assert package.get_build_type() == "ament_cmake"
    assert package.name == "gdino_ros"
    assert package.version == _setup_cfg_version()


def _setup_cfg_version() -> str:
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    return cfg["metadata"]["version"]


def test_every_msg_file_is_built() -> None:
    for package_dir in (REPO_ROOT, REPO_ROOT / "interfaces" / "vision_msgs"):
        listed = set(re.findall(r"msg/(\w+)\.msg", (package_dir / "CMakeLists.txt").read_text()))
        on_disk = {p.stem for p in (package_dir / "msg").glob("*.msg")}
        assert listed == on_disk, package_dir


def test_console_scripts_match_installed_executables() -> None:
    """setup.cfg (pip) and CMakeLists.txt (colcon) install the same commands to the same modules."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    pip_scripts = {
        name.strip(): target.strip().split(":")[0]
        for name, target in (
            line.split("=") for line in cfg["options.entry_points"]["console_scripts"].split("\n") if line
        )
    }
    cmake_scripts = dict(re.findall(r'"([\w-]+):([\w.]+)"', (REPO_ROOT / "CMakeLists.txt").read_text()))
    assert pip_scripts == cmake_scripts


@pytest.mark.parametrize(
    "xml_file",
    sorted(
        p for p in REPO_ROOT.rglob("*.xml") if not {".venv", "build"} & set(p.relative_to(REPO_ROOT).parts)
    ),
    ids=lambda p: str(p.relative_to(REPO_ROOT)),
)
def test_xml_is_well_formed(xml_file: Path) -> None:
    ET.parse(xml_file)


def test_loopback_profile_allows_only_127_0_0_1() -> None:
    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(REPO_ROOT / "config" / "fastdds_loopback.xml").getroot()
    addresses = {a.text for a in root.iterfind(".//d:address", ns)}
    assert addresses == {"127.0.0.1"}
    assert root.find(".//d:useBuiltinTransports", ns).text == "false"
    assert root.find(".//d:participant", ns).get("is_default_profile") == "true"


def test_ruff_lint_is_clean() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    run = subprocess.run([str(ruff), "check", "--no-cache", str(REPO_ROOT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


_BLOCK_ROS = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    class NoRos(importlib.abc.MetaPathFinder):
        ROS = ("rclpy", "rosidl", "rmw", "rcl_", "std_msgs", "sensor_msgs", "vision_msgs",
               "geometry_msgs", "diagnostic_msgs", "builtin_interfaces", "ament_index_python", "launch",
               "gdino_ros.msg")
        def find_spec(self, name, path=None, target=None):
            if name.startswith(self.ROS):
                raise ImportError(f"ROS module {name} is not available on this machine")
            return None

    sys.meta_path.insert(0, NoRos())
    import gdino_ros
    skipped = {"gdino_ros.node", "gdino_ros.msg"}
    names = [m.name for m in pkgutil.walk_packages(gdino_ros.__path__[:1], "gdino_ros.")
             if not any(m.name == s or m.name.startswith(s + ".") for s in skipped)]
    for name in names:
        importlib.import_module(name)
    print(len(names), "modules imported")
    """
)


@pytest.mark.slow
def test_core_imports_without_ros() -> None:
    """Everything but the node imports when no ROS module can be found."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-c", _BLOCK_ROS],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert int(run.stdout.split()[0]) >= 2


def test_installed_package_exposes_messages_and_python_modules(tmp_path: Path) -> None:
    """The CMake install (what colcon runs) puts gdino_ros.msg and our modules in one package."""
    probe = (  # the development venv puts the checkout first on sys.path; look past it
        f"import sys; sys.path[:] = [p for p in sys.path if p not in ('', {str(REPO_ROOT)!r})]; "
        "import gdino_ros, gdino_ros.contract, gdino_ros.node; from gdino_ros.msg import SegmentationResult; "
        "print(gdino_ros.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    installed = Path(run.stdout.strip()).parent
    assert installed.is_relative_to(Path(sys.prefix)), installed
    assert (installed / "msg" / "_segmentation_result.py").exists()
    prefix = Path(sys.prefix)
    assert os.access(prefix / "lib" / "gdino_ros" / "segment_node", os.X_OK)
    assert (prefix / "share" / "gdino_ros" / "launch").is_dir()
    assert (prefix / "share" / "gdino_ros" / "config" / "params.yaml").exists()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "gdino_ros").exists()


def test_setup_reports_missing_build_tools_in_one_line(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname",):
        os.symlink(shutil.which(tool), bin_dir / tool)
    run = subprocess.run(
        ["/bin/bash", str(REPO_ROOT / "tools" / "setup_env.sh"), str(tmp_path / "venv")],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "missing cmake ninja gcc g++ make" in lines[0]
    assert "apt-get install cmake ninja-build build-essential" in lines[0]
    assert not (tmp_path / "venv").exists()
