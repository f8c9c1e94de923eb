"""The one base class of the errors a user can fix, and the exit code each kind gives a command.

Every error that reaches a user derives from :class:`GdinoError`: its message is one line that says what
was wrong and what to do. The command-line tools catch :class:`GdinoError` once
(:func:`gdino_ros.tools.cli.run`), print ``<tool>: error: <message>`` and exit with the kind's code;
anything else is a bug and keeps its traceback. The node logs the same message and keeps running (or,
at start-up, exits with the same code).

Exit codes (the same in every tool):

====  ==================================================================================
0     success
1     unexpected failure (a bug: Python's traceback is printed)
2     the command line is wrong (unknown or conflicting options)
3     an input cannot be used (image, bag, dataset, prompt)
4     the model cannot be used (checkpoint, ONNX, engine, tokenizer, device)
5     an output cannot be written (permissions, disk full, an existing file in the way)
130   interrupted (Ctrl-C or SIGTERM); what was written is complete or removed, as the tool says
====  ==================================================================================
"""
from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_MODEL = 4
EXIT_OUTPUT = 5
EXIT_INTERRUPTED = 130


class GdinoError(Exception):
    """Base of every user-facing error; ``exit_code`` says which kind it is."""

    exit_code: ClassVar[int] = EXIT_BUG


class UsageError(GdinoError):
    """Options that contradict each other or do not apply."""

    exit_code = EXIT_USAGE


class InputError(GdinoError):
    """Data the user gave cannot be used: an image, a bag, a dataset, a prompt."""

    exit_code = EXIT_INPUT


class ModelError(GdinoError):
    """The model, its tokenizer or the device it needs cannot be used."""

    exit_code = EXIT_MODEL


class OutputError(GdinoError):
    """A result cannot be written where the user asked."""

    exit_code = EXIT_OUTPUT
