"""The command-line flags every gdino tool shares, generated from the settings' declarations.

``--device`` and the post-processing thresholds (``--box-threshold``, ``--text-threshold``,
``--nms-threshold``, ``--mask-threshold``, ``--max-detections``) are the node's parameters of the same
names, with the same defaults, ranges and help (:mod:`gdino_ros.settings`). argparse refuses a value out
of range with the setting's name, before any model is opened.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.settings import DEVICE, Setting, Value, settings_of


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the group of shared flags (device and thresholds) to ``parser``."""
    group = parser.add_argument_group("model settings (the node's parameters of the same names)")
    for declared in (DEVICE, *settings_of(PostprocessParams)):
        add_setting_argument(group, declared)


def add_setting_argument(parser: argparse._ActionsContainer, declared: Setting) -> None:
    """Add ``declared`` as a flag: its name, default, help and range, checked as the node checks them."""
    parser.add_argument(
        declared.flag,
        type=_converter(declared),
        default=declared.default,
        help=f"{declared.describe()} Default: %(default)s.",
    )


def postprocess_params(args: argparse.Namespace) -> PostprocessParams:
    """Return the thresholds given on the command line (of a parser with :func:`add_model_arguments`)."""
    return PostprocessParams(**{s.name: getattr(args, s.name) for s in settings_of(PostprocessParams)})


def _converter(declared: Setting) -> Callable[[str], Value]:
    """Turn a flag's text into the setting's type; a bad value is refused naming the setting."""

    def convert(text: str) -> Value:
        try:
            value = declared.kind(text)
        except ValueError:
            value = text  # not a number: Setting.problem says what it must be
        problem = declared.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value  # type: ignore[no-any-return]

    convert.__name__ = declared.name  # argparse names the converter in some messages
    return convert
