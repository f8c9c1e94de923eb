"""What the model runs on, by name, for /diagnostics' ``hardware_id``: the CPU model or the GPU's name.

``hardware_id`` groups diagnostics by physical device in tools such as rqt_robot_monitor, so it names the
device ("AMD EPYC 7763 64-Core Processor", "NVIDIA H200"), not the backend. Read once at start-up.
"""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")  # Jetson: "NVIDIA Jetson AGX Orin Developer Kit"


def device_name(device: str) -> str:
    """Name the device a backend reports (``"cpu"``, ``"cuda:N"``); fall back to ``device`` itself."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        return _gpu_name(int(index or 0)) or _board_name() or device
    return cpu_name(CPUINFO) or _board_name() or platform.processor() or platform.machine() or device


def cpu_name(cpuinfo: Path) -> str | None:
    """Return the first ``model name`` of a /proc/cpuinfo-format file (x86; most ARM kernels omit it)."""
    try:
        lines = cpuinfo.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return " ".join(value.split())
    return None


def _board_name() -> str | None:
    try:
        return DEVICE_TREE_MODEL.read_text(errors="replace").strip("\x00\n ") or None
    except OSError:
        return None


def _gpu_name(index: int) -> str | None:
    """nvidia-smi's name for GPU ``index`` (absent on Jetson, which has the board name instead)."""
    try:
        run = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    name = run.stdout.strip()
    return name if run.returncode == 0 and name else None
