"""Prompts as log lines and diagnostics show them: cut to a readable length, with the full length stated.

A prompt may be up to 4096 characters (and a rejected one longer); printing it whole makes log lines
of kilobytes that hide everything around them.
"""
from __future__ import annotations

SHOWN_CHARS = 80  # characters of a prompt shown in a log line or a diagnostics value


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` itself, or its first ``limit`` characters followed by ``... (N characters)``."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
