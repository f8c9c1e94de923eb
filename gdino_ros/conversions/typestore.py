"""A rosbags typestore that knows the project's messages, registered from the project's own .msg files.

rosbags ships the standard ROS 2 types (std_msgs, sensor_msgs, geometry_msgs, ...) but not vision_msgs
and of course not gdino_ros. :func:`project_typestore` adds both from the very ``.msg`` files the ROS
build compiles, so a bag written with it embeds the same definitions and RIHS01 type hashes that a
ROS 2 system computes for those types.

Where the files are found (first match wins):

* a source checkout: ``<repo>/msg/*.msg`` and ``<repo>/interfaces/vision_msgs/msg/*.msg``;
* an installed tree: ``<prefix>/share/gdino_ros/msg`` and ``<prefix>/share/vision_msgs/msg`` for each
  prefix in ``AMENT_PREFIX_PATH``, the prefix this module is installed under, and ``sys.prefix``.

Usage::

    store = project_typestore()                      # Jazzy base types + ours
    Detection2DArray = store.types["vision_msgs/msg/Detection2DArray"]
    raw = store.serialize_cdr(msg, "vision_msgs/msg/Detection2DArray")
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

VISION_MSGS = "vision_msgs"
GDINO_MSGS = "gdino_ros"

# The message types registered, per package; the vision_msgs subset is what the project publishes
# (the Detection2D and Detection3D closures and LabelInfo).
PROJECT_MESSAGES: dict[str, tuple[str, ...]] = {
    VISION_MSGS: (
        "Point2D",
        "Pose2D",
        "BoundingBox2D",
        "ObjectHypothesis",
        "ObjectHypothesisWithPose",
        "Detection2D",
        "Detection2DArray",
        "BoundingBox3D",
        "Detection3D",
        "Detection3DArray",
        "VisionClass",
        "LabelInfo",
    ),
    GDINO_MSGS: ("SegmentationResult",),
}

# ROS distribution -> rosbags store holding its standard types.
DISTRO_STORES = {"humble": "ROS2_HUMBLE", "jazzy": "ROS2_JAZZY"}
DEFAULT_DISTRO = "jazzy"

_REPO_ROOT = Path(__file__).resolve().parents[2]
_SOURCE_DIRS = {GDINO_MSGS: _REPO_ROOT / "msg", VISION_MSGS: _REPO_ROOT / "interfaces" / VISION_MSGS / "msg"}


class MessageDefinitionsNotFoundError(FileNotFoundError):
    """The project's .msg files are neither in a source checkout nor in an installed ROS prefix."""


def _install_prefixes() -> list[Path]:
    """Candidate install prefixes, most specific first, without duplicates."""
    candidates = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    # Installed as <prefix>/lib/pythonX.Y/site-packages/gdino_ros/conversions/typestore.py
    lib = next((parent for parent in Path(__file__).resolve().parents if parent.name == "lib"), None)
    if lib is not None:
        candidates.append(lib.parent)
    candidates.append(Path(sys.prefix))
    unique: list[Path] = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def message_directory(package: str) -> Path:
    """Find the directory holding ``package``'s .msg files (source checkout first, then install prefixes).

    Raises :class:`MessageDefinitionsNotFoundError` listing every place looked at.
    """
    first = PROJECT_MESSAGES[package][0]
    searched = [_SOURCE_DIRS[package]]
    searched += [prefix / "share" / package / "msg" for prefix in _install_prefixes()]
    for directory in searched:
        if (directory / f"{first}.msg").is_file():
            return directory
    raise MessageDefinitionsNotFoundError(
        f"cannot find {package}'s .msg files (looked for {first}.msg in: "
        f"{', '.join(str(d) for d in searched)}); run from a gdino_ros source checkout or source the ROS "
        f"workspace that installed {package} (it sets AMENT_PREFIX_PATH)"
    )


def project_typestore(distro: str = DEFAULT_DISTRO) -> Typestore:
    """Build a fresh rosbags typestore: ``distro``'s standard types plus vision_msgs and gdino_ros."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    if distro not in DISTRO_STORES:
        raise ValueError(f"unknown ROS distribution {distro!r}; choose one of {sorted(DISTRO_STORES)}")
    store = get_typestore(getattr(Stores, DISTRO_STORES[distro]))
    types: dict = {}
    for package, names in PROJECT_MESSAGES.items():
        directory = message_directory(package)
        for name in names:
            path = directory / f"{name}.msg"
            if not path.is_file():
                raise MessageDefinitionsNotFoundError(f"{path} is missing: {directory} is an incomplete copy")
            types.update(get_types_from_msg(path.read_text(encoding="utf-8"), f"{package}/msg/{name}"))
    store.register(types)
    return store
