"""gdino-bag's input failures: printed as one line, exit status 3 (see :mod:`gdino_ros.errors`)."""
from __future__ import annotations

from gdino_ros.errors import InputError


class BagToolError(InputError):
    """The input bag or prompt schedule cannot be used; the message says what and what to do."""


class BadRecordError(BagToolError):
    """A record of the input could not be read or decoded; processing stops there."""
