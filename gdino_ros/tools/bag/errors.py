"""gdino-bag's user-facing failures: printed as one line, exit status 1."""
from __future__ import annotations


class BagToolError(Exception):
    """A user-facing failure: the message is printed as one line and the tool exits with status 1."""


class BadRecordError(BagToolError):
    """A record of the input could not be read or decoded; processing stops there."""
