"""Whether a gdino/segment request (service or action goal) can be served, and with which thresholds.

Checked on the executor thread when the request arrives, so an unusable one fails at once with one
sentence saying what was wrong and what would work, instead of after a frame.
"""
from __future__ import annotations

from typing import Any

from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.prompt import PROMPT_MODES
from gdino_ros.node.parameters import THRESHOLDS, parameter_problems, thresholds_from
from gdino_ros.node.shown import shown
from gdino_ros.srv import Segment

REQUEST_TIMEOUT_S = 5.0  # gdino/segment requests that give timeout_s 0


def request_problem(
    request: Any, *, enabled: bool, node_name: str, default_mode: str, thresholds: PostprocessParams
) -> tuple[str, PostprocessParams]:
    """Why ``request`` cannot be served (one sentence, empty if it can) and its thresholds.

    ``thresholds`` are the node's; a request's threshold field that is negative (0 for an integer one)
    keeps the node's value.
    """
    if not enabled:
        return (
            "segment_node is disabled (parameter enabled is false); enable it with "
            f"'ros2 param set {node_name} enabled true'",
            thresholds,
        )
    if not request.prompt.strip():
        return "empty prompt: say what to find, e.g. 'cup . bottle' or 'the mug left of the plate'", (
            thresholds
        )
    if request.prompt_mode and request.prompt_mode not in PROMPT_MODES:
        return (
            f"prompt_mode must be one of {', '.join(PROMPT_MODES)} (or empty for the node's "
            f"'{default_mode}'), got '{shown(request.prompt_mode)}'",
            thresholds,
        )
    if request.frame not in (Segment.Request.FRAME_LATEST, Segment.Request.FRAME_NEXT):
        return f"frame must be FRAME_LATEST (0) or FRAME_NEXT (1), got {request.frame}", thresholds
    if not request.timeout_s >= 0:
        return f"timeout_s must be 0 (for {REQUEST_TIMEOUT_S:g} s) or more, got {request.timeout_s}", (
            thresholds
        )
    given = {}
    for setting in THRESHOLDS:
        value = getattr(request, setting.name)
        if value > 0 or (value == 0 and setting.kind is float):
            given[setting.name] = value
    problems = parameter_problems(given)
    if problems:
        return "; ".join(problems), thresholds
    try:
        return "", thresholds_from(given, thresholds)
    except ValueError as error:
        return str(error), thresholds
