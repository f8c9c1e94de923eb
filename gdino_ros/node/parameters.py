"""segment_node's parameters, generated from the settings' declarations (:mod:`gdino_ros.settings`).

The post-processing thresholds are :class:`~gdino_ros.core.postprocess.PostprocessParams`' own settings;
the others are the node's and are declared here. ``ros2 param describe`` shows each one's help, range
or choices; rclpy enforces the ranges and read-only flags, :meth:`Setting.problem` the rest.
config/params.yaml holds the same names and defaults (a test keeps them equal).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.prompt import PROMPT_MODES
from gdino_ros.node.planner_outputs import PLANNER_SETTINGS
from gdino_ros.settings import DEVICE, MASK_ENCODING, Setting, settings_of

INPUT_QOS_CHOICES = ("sensor_data", "reliable")

THRESHOLDS = settings_of(PostprocessParams)

PARAMETERS: dict[str, Setting] = {
    setting.name: setting
    for setting in (
        Setting(
            "model",
            "",
            "Model file: .onnx (gdino-export), .engine (gdino-build-engine) or a TAO .pth checkpoint.",
            read_only=True,
        ),
        DEVICE,
        Setting(
            "tokenizer",
            "",
            "bert-base-uncased vocab.txt or tokenizer directory; empty: a vocab.txt next to the model, else "
            "the Hugging Face cache (nothing is downloaded).",
            read_only=True,
        ),
        Setting(
            "initial_prompt",
            "",
            "Streaming prompt at start-up; change it at runtime on gdino/prompt (std_msgs/String), and read "
            "the prompt in force on gdino/active_prompt. Empty: frames wait for a prompt on gdino/prompt "
            "(gdino/segment requests are served all the same).",
            read_only=True,
        ),
        Setting(
            "prompt_mode",
            "auto",
            "How prompts are read: phrases ('cup . bottle' lists things to find), expression (one referring "
            "expression), auto (phrases when every item between '.'/',' has at most three words).",
            choices=PROMPT_MODES,
        ),
        *THRESHOLDS,
        MASK_ENCODING,
        Setting("overlay", True, "Publish gdino/overlay (drawn only while something subscribes to it)."),
        Setting(
            "input_qos",
            "sensor_data",
            "Image subscription QoS: sensor_data (best effort, keep last 1; matches every camera) or "
            "reliable (keep last 1).",
            choices=INPUT_QOS_CHOICES,
            read_only=True,
        ),
        Setting(
            "enabled",
            True,
            "false: the node drops its image subscription and processes nothing (the model stays loaded, "
            "the prompt is kept); true: it subscribes again.",
        ),
        Setting(
            "compressed_input",
            False,
            "Subscribe to image/compressed (sensor_msgs/CompressedImage) instead of image.",
            read_only=True,
        ),
        *PLANNER_SETTINGS,
    )
}


def descriptor(setting: Setting) -> ParameterDescriptor:
    """Build the descriptor ``ros2 param describe`` shows: help, range or choices, read-only."""
    described = ParameterDescriptor(description=setting.describe(), read_only=setting.read_only)
    if setting.low is not None and setting.high is not None:
        # ROS ranges are closed; the open ends of an open range are refused by Setting.problem.
        if setting.kind is float:
            described.floating_point_range = [
                FloatingPointRange(from_value=float(setting.low), to_value=float(setting.high), step=0.0)
            ]
        elif setting.kind is int:
            described.integer_range = [
                IntegerRange(from_value=int(setting.low), to_value=int(setting.high), step=1)
            ]
    return described


def parameter_problems(values: dict[str, Any]) -> list[str]:
    """Why some of ``values`` (parameter name -> value) are not allowed: one sentence each."""
    return [problem for name, value in values.items() if (problem := PARAMETERS[name].problem(value))]


def thresholds_from(values: dict[str, Any], base: PostprocessParams) -> PostprocessParams:
    """Apply the threshold parameters among ``values`` (already checked) to ``base``."""
    names = {setting.name for setting in THRESHOLDS}
    return dataclasses.replace(base, **{name: value for name, value in values.items() if name in names})
