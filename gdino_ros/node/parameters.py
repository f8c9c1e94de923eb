"""segment_node's parameters: default (the value config/params.yaml holds), description, limits.

rclpy enforces the ranges and read-only flags of the descriptors built here; the choices and the
post-processing thresholds are checked by :func:`choice_problem` and :func:`thresholds_from`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from gdino_ros.conversions.encodings import MASK_ENCODINGS, MONO16
from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.prompt import PROMPT_MODES

INPUT_QOS_CHOICES = ("sensor_data", "reliable")

_DEFAULT_THRESHOLDS = PostprocessParams()


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter: default (the same value as in config/params.yaml), description and limits."""

    default: Any
    description: str
    read_only: bool = False
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    choices: tuple[str, ...] = ()

    def descriptor(self) -> ParameterDescriptor:
        """Build the descriptor ``ros2 param describe`` shows; rclpy enforces its ranges and read-only."""
        text = self.description + (f" One of: {', '.join(self.choices)}." if self.choices else "")
        descriptor = ParameterDescriptor(description=text, read_only=self.read_only)
        if self.float_range is not None:
            low, high = self.float_range
            descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
        if self.int_range is not None:
            low, high = self.int_range
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
        return descriptor


PARAMETERS: dict[str, ParameterSpec] = {
    "model": ParameterSpec(
        "", "Model file: .onnx (gdino-export), .engine (gdino-build-engine) or a TAO .pth checkpoint.", True
    ),
    "device": ParameterSpec("auto", "Where the model runs: auto, cpu, cuda or cuda:N.", True),
    "tokenizer": ParameterSpec(
        "",
        "bert-base-uncased vocab.txt or tokenizer directory; empty: a vocab.txt next to the model, else the "
        "Hugging Face cache (nothing is downloaded).",
        True,
    ),
    "prompt": ParameterSpec(
        "",
        "Prompt from the first frame on; change it at runtime on gdino/prompt (std_msgs/String). Empty: "
        "frames wait for a prompt on gdino/prompt.",
        True,
    ),
    "prompt_mode": ParameterSpec(
        "auto",
        "How prompts are read: phrases ('cup . bottle' lists things to find), expression (one referring "
        "expression), auto (phrases when every item between '.'/',' has at most three words).",
        choices=PROMPT_MODES,
    ),
    "box_threshold": ParameterSpec(
        _DEFAULT_THRESHOLDS.conf_threshold, "Minimum detection score, in [0, 1].", float_range=(0.0, 1.0)
    ),
    "text_threshold": ParameterSpec(
        _DEFAULT_THRESHOLDS.text_threshold,
        "Minimum token probability for a word of the prompt to label a box, in [0, 1].",
        float_range=(0.0, 1.0),
    ),
    "nms_threshold": ParameterSpec(
        _DEFAULT_THRESHOLDS.nms_threshold,
        "Class-agnostic NMS: a box overlapping a better one with IoU above this is dropped; 0 disables NMS.",
        float_range=(0.0, 1.0),
    ),
    "mask_threshold": ParameterSpec(
        _DEFAULT_THRESHOLDS.mask_threshold,
        "A pixel belongs to an instance when its mask probability exceeds this; in (0, 1).",
        float_range=(0.0, 1.0),
    ),
    "max_detections": ParameterSpec(
        _DEFAULT_THRESHOLDS.max_detections,
        "At most this many instances per frame, best first.",
        int_range=(1, int(np.iinfo(np.uint16).max)),
    ),
    "mask_encoding": ParameterSpec(
        MONO16, "Encoding of gdino/mask; mono8 holds at most 255 instances.", choices=MASK_ENCODINGS
    ),
    "overlay": ParameterSpec(True, "Publish gdino/overlay (drawn only while something subscribes to it)."),
    "input_qos": ParameterSpec(
        "sensor_data",
        "Image subscription QoS: sensor_data (best effort, keep last 1; matches every camera) or reliable "
        "(keep last 1).",
        True,
        choices=INPUT_QOS_CHOICES,
    ),
    "compressed_input": ParameterSpec(
        False, "Subscribe to image/compressed (sensor_msgs/CompressedImage) instead of image.", True
    ),
}

# Node parameter -> PostprocessParams field.
THRESHOLD_FIELDS = {
    "box_threshold": "conf_threshold",
    "text_threshold": "text_threshold",
    "nms_threshold": "nms_threshold",
    "mask_threshold": "mask_threshold",
    "max_detections": "max_detections",
}


def thresholds_from(
    values: dict[str, Any], base: PostprocessParams = _DEFAULT_THRESHOLDS
) -> PostprocessParams:
    """Apply the threshold parameters among ``values`` to ``base``; ValueError names a bad one."""
    changes = {THRESHOLD_FIELDS[name]: value for name, value in values.items() if name in THRESHOLD_FIELDS}
    return dataclasses.replace(base, **changes)


def choice_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not one of the choices of parameter ``name``, or None."""
    choices = PARAMETERS[name].choices
    if choices and value not in choices:
        return f"{name} must be one of {', '.join(choices)}, not {value!r}"
    return None
