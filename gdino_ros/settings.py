"""User-facing settings, each declared once: name, type, range, default and help.

A setting is declared as a dataclass field (:func:`setting`), so its name is the field's name, or as a
:class:`Setting` of its own (:data:`DEVICE`). Everything else is generated from these declarations: the
node's parameter descriptors (:mod:`gdino_ros.node.parameters`), the command-line flags every tool shares
(:mod:`gdino_ros.tools.arguments`) and the check of config/params.yaml (a test). So a setting has one name,
the one users see (``box_threshold``, ``--box-threshold``), and one range everywhere.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

from gdino_ros.conversions.encodings import MASK_AUTO, MASK_ENCODINGS

_METADATA_KEY = "gdino_ros.setting"

Value = bool | int | float | str


@dataclass(frozen=True)
class Setting:
    """One setting and what values it allows.

    ``low``/``high`` bound numbers (inclusive unless ``open_range``: then both ends are excluded);
    ``choices`` lists the allowed strings; ``read_only`` settings are fixed once the node runs.
    """

    name: str
    default: Value
    help: str
    low: float | None = None
    high: float | None = None
    open_range: bool = False
    choices: tuple[str, ...] = ()
    read_only: bool = False

    @property
    def kind(self) -> type:
        """The value's Python type: bool, int, float or str (the default's)."""
        return type(self.default)

    @property
    def flag(self) -> str:
        """The command-line flag: ``box_threshold`` -> ``--box-threshold``."""
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """``[0, 1]``, ``(0, 1)`` or ``""`` for a setting without bounds."""
        if self.low is None or self.high is None:
            return ""
        opening, closing = ("(", ")") if self.open_range else ("[", "]")
        return f"{opening}{self.low:g}, {self.high:g}{closing}"

    def describe(self) -> str:
        """Return the help with the range or the choices appended (shown by --help and ros2 param)."""
        text = self.help
        if self.range_text():
            text += f" Range {self.range_text()}."
        if self.choices:
            text += f" One of: {', '.join(self.choices)}."
        return text

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed for this setting (one sentence naming it), or None."""
        if not _has_kind(value, self.kind):
            return f"{self.name} must be {_KIND_NAMES[self.kind]}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}"
        if self.low is not None and self.high is not None:
            inside = self.low < value < self.high if self.open_range else self.low <= value <= self.high
            if not inside:
                return f"{self.name} must be within {self.range_text()}, got {value}"
        return None


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _has_kind(value: Any, kind: type) -> bool:
    """Whether ``value`` is of ``kind``; numpy numbers count, a bool is no number."""
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    if kind is float:
        return isinstance(value, numbers.Real)
    if kind is int:
        return isinstance(value, numbers.Integral)
    return isinstance(value, kind)


def setting(
    default: Value,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    open_range: bool = False,
    choices: tuple[str, ...] = (),
    read_only: bool = False,
) -> Any:
    """Declare a dataclass field as a setting named after the field (see :func:`settings_of`)."""
    declared = Setting("", default, help, low, high, open_range, choices, read_only)
    return dataclasses.field(default=default, metadata={_METADATA_KEY: declared})


def settings_of(cls: type) -> tuple[Setting, ...]:
    """Return the settings among the fields of dataclass ``cls``, in declaration order."""
    return tuple(
        dataclasses.replace(f.metadata[_METADATA_KEY], name=f.name)
        for f in dataclasses.fields(cls)
        if _METADATA_KEY in f.metadata
    )


def check_settings(instance: Any) -> None:
    """Raise ValueError naming the first setting field of dataclass ``instance`` that is out of range."""
    for declared in settings_of(type(instance)):
        problem = declared.problem(getattr(instance, declared.name))
        if problem is not None:
            raise ValueError(problem + ".")


DEVICE = Setting("device", "auto", "Where the model runs: auto, cpu, cuda or cuda:N.", read_only=True)

MASK_ENCODING = Setting(
    "mask_encoding",
    MASK_AUTO,
    "Encoding of the label image (gdino/mask): auto (mono8 while a frame has at most 255 instances, "
    "mono16 above; read the message's encoding), mono8 (instances beyond 255 are left out of the frame's "
    "outputs) or mono16.",
    choices=MASK_ENCODINGS,
)

DEPTH = Setting(
    "depth",
    False,
    "Subscribe depth (16UC1 mm or 32FC1 m, registered to the colour camera) and camera_info, and publish "
    "gdino/detections_3d (and gdino/points while subscribed).",
    read_only=True,
)
DEPTH_STAMP_TOLERANCE_S = Setting(
    "depth_stamp_tolerance_s",
    0.02,
    "A colour frame is paired with the depth image of the nearest stamp within this many seconds; "
    "frames without one are processed in 2-D only.",
    low=0.0,
    high=1.0,
)
TRACKING = Setting(
    "tracking",
    True,
    "Give detections track ids (Detection2D/3D.id), the same for one object across frames.",
    read_only=True,
)
