"""Encoded prompts of recent gdino/segment requests: a planner repeating a question pays no tokenising.

Each entry is a :class:`~gdino_ros.core.segmenter.Segmenter` of its own around the node's backend and
tokenizer, with the request's prompt set: it runs a frame with that prompt without touching the streaming
segmenter's prompt, and keeps one text-input set per prompt, which a GPU backend uploads only when the
prompt it last ran differs. The entries share the backend, so they are never closed; the node closes the
backend once, through its own segmenter. Used by the worker thread only.
"""
from __future__ import annotations

from collections import OrderedDict

from gdino_ros.core.segmenter import Segmenter

CACHED_PROMPTS = 16


class PromptCache:
    """The :data:`CACHED_PROMPTS` most recently used (prompt, mode) pairs, each ready to run."""

    def __init__(self, streaming: Segmenter, size: int = CACHED_PROMPTS) -> None:
        self._streaming = streaming
        self._size = size
        self._entries: OrderedDict[tuple[str, str], Segmenter] = OrderedDict()
        self.encoded = 0  # prompts tokenised so far (cache misses)

    def segmenter_for(self, prompt: str, mode: str) -> Segmenter:
        """Return a segmenter whose prompt is ``prompt`` read in ``mode``; PromptError for an unusable one."""
        key = (prompt, mode)
        entry = self._entries.get(key)
        if entry is None:
            entry = Segmenter(self._streaming.backend, self._streaming.tokenizer)
            entry.set_prompt(prompt, mode)
            self.encoded += 1
            self._entries[key] = entry
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry
