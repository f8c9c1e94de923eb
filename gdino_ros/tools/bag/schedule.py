"""gdino-bag's prompt schedule: a YAML list of prompts that take effect at bag times.

Format (``--prompt-schedule``)::

    - at: 0            # seconds from the bag's first message ...
      prompt: "cup . bottle ."
    - at: 12.5
      prompt: "the person holding the red cup"
      mode: expression # optional; default --mode
    - at_ns: 1700000042000000000   # ... or an absolute log time in nanoseconds
      prompt: "door handle"

A frame uses the last entry at or before its log time; frames before the first entry use ``--prompt``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gdino_ros.core.prompt import PROMPT_MODES
from gdino_ros.tools.bag.errors import BagToolError


@dataclass(frozen=True)
class ScheduleEntry:
    """A prompt that takes effect at ``at_s`` seconds from the bag start or at log time ``at_ns``."""

    prompt: str
    mode: str
    at_s: float | None = None
    at_ns: int | None = None

    def log_time(self, bag_start_ns: int) -> int:
        """Absolute log time (ns) at which this entry takes effect."""
        return self.at_ns if self.at_ns is not None else bag_start_ns + round((self.at_s or 0.0) * 1e9)


def load_schedule(path: Path, default_mode: str) -> list[ScheduleEntry]:
    """Read and validate a prompt schedule YAML file (format in the module docstring)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise BagToolError(f"cannot read prompt schedule {path}: {error}") from None
    if not isinstance(data, list) or not data:
        raise BagToolError(f"prompt schedule {path} must be a non-empty YAML list of {{at, prompt}} entries")
    entries = []
    for index, item in enumerate(data):
        where = f"prompt schedule {path}, entry {index + 1}"
        if not isinstance(item, dict) or set(item) - {"at", "at_ns", "prompt", "mode"}:
            raise BagToolError(
                f"{where}: expected keys at (or at_ns), prompt and optionally mode, got {item!r}"
            )
        if ("at" in item) == ("at_ns" in item):
            raise BagToolError(
                f"{where}: give exactly one of at (seconds from bag start) or at_ns (log time)"
            )
        prompt, mode = item.get("prompt"), item.get("mode", default_mode)
        if not isinstance(prompt, str) or not prompt.strip():
            raise BagToolError(f"{where}: prompt must be a non-empty string")
        if mode not in PROMPT_MODES:
            raise BagToolError(f"{where}: mode must be one of {', '.join(PROMPT_MODES)}, got {mode!r}")
        at = item.get("at", item.get("at_ns"))
        if (
            isinstance(at, bool)
            or not isinstance(at, (int, float))
            or ("at_ns" in item and not isinstance(at, int))
        ):
            raise BagToolError(f"{where}: at must be seconds (a number), at_ns an integer nanosecond time")
        if at < 0:
            raise BagToolError(f"{where}: time {at} is negative")
        entries.append(
            ScheduleEntry(prompt, mode, at_s=float(at), at_ns=None)
            if "at" in item
            else ScheduleEntry(prompt, mode, at_ns=int(at))
        )
    return entries


class PromptPlan:
    """Which prompt applies at each log time: ``--prompt`` first, then the schedule's entries."""

    def __init__(self, initial: tuple[str, str] | None, entries: list[ScheduleEntry], start_ns: int):
        timed = sorted(((e.log_time(start_ns), e.prompt, e.mode) for e in entries), key=lambda t: t[0])
        if initial is None and (not timed or timed[0][0] > start_ns):
            raise BagToolError(
                "give --prompt, or a prompt schedule whose first entry is at 0 (the bag start)"
            )
        self._changes = timed
        self._current = initial if initial is not None else (timed[0][1], timed[0][2])
        self._next = 0

    def at(self, log_time: int) -> tuple[str, str]:
        """Return the (prompt, mode) in force at ``log_time``; log times must not decrease between calls."""
        while self._next < len(self._changes) and self._changes[self._next][0] <= log_time:
            _, prompt, mode = self._changes[self._next]
            self._current = (prompt, mode)
            self._next += 1
        return self._current
