"""The class a consumer filters on, for every output that names one (messages, LabelInfo, tracks).

Phrases mode: the detection's phrase. Expression mode: the whole expression, the same in every frame,
rather than the words whose tokens passed the text threshold (those vary from frame to frame and go
into their own field).
"""
from __future__ import annotations

from gdino_ros.core.result import EXPRESSION, Detection, Result


def class_id_of(detection: Detection, result: Result) -> str:
    """Return ``detection``'s class: its phrase, or in expression mode the whole expression."""
    if result.mode == EXPRESSION and result.phrases:
        return result.phrases[0]
    return str(detection.label)
