"""What one frame produced: the data type every consumer (node, tools, evaluator) reads."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from gdino_ros.core.instance_crop import InstanceCrop, tight_crop

PromptMode = Literal["phrases", "expression"]
PHRASES: PromptMode = "phrases"
EXPRESSION: PromptMode = "expression"


#: The most instances whose ids (1..n) a uint8 label image holds: what a mono8 mask can carry.
UINT8_MAX_INSTANCES = int(np.iinfo(np.uint8).max)


def label_dtype(instances: int) -> np.dtype:
    """Return the label image's type for ``instances`` instances: uint8 while their ids fit, else uint16.

    A label image is written, copied and sent whole every frame; at 1080p uint8 is 2 MB less of each.
    """
    return np.dtype(np.uint8) if instances <= UINT8_MAX_INSTANCES else np.dtype(np.uint16)


@dataclass(frozen=True)
class Detection:
    """One instance, in the pixels of the original (camera) image.

    ``instance_id`` is the value of this instance's pixels in :attr:`Result.label_image` (1, 2, ...).
    ``label`` is the prompt phrase (phrases mode) or the expression's words that matched
    (expression mode); ``phrase_index`` indexes the prompt's phrases, -1 in expression mode.
    ``box_xyxy`` is (x0, y0, x1, y1), float pixels, clipped to the image.
    :attr:`mask` is bool [H0, W0]: the instance's own pixels, overlaps with other instances included.
    ``mask_source`` is that array, or a function that computes it: post-processing defers each
    full-size mask until :attr:`mask` is read (most consumers need only the label image, and hundreds of
    full-size masks cost more than everything else post-processing does).
    ``mask_window`` (y0, y1, x0, x1), when known, is a rectangle outside which ``mask`` is all False, so
    consumers crop without scanning the whole image; None means the whole image.
    :attr:`crop` is the mask cropped to its pixels; ``crop_source``, when given, computes it without a
    full-size mask (post-processing gives one: the node's messages need only crops).
    """

    instance_id: int
    label: str
    phrase_index: int
    score: float
    box_xyxy: tuple[float, float, float, float]
    mask_source: np.ndarray | Callable[[], np.ndarray] = field(repr=False)
    mask_window: tuple[int, int, int, int] | None = None
    crop_source: Callable[[], InstanceCrop] | None = field(default=None, repr=False)

    @cached_property
    def mask(self) -> np.ndarray:
        """The instance mask, bool [H0, W0]; computed on first access when post-processing deferred it."""
        source = self.mask_source
        return source if isinstance(source, np.ndarray) else source()

    @cached_property
    def crop(self) -> InstanceCrop:
        """:attr:`mask` cropped to the smallest rectangle holding its pixels; computed on first access."""
        if self.crop_source is not None:
            return self.crop_source()
        full = self.mask
        y0, y1, x0, x1 = self.mask_window or (0, full.shape[0], 0, full.shape[1])
        return tight_crop(full[y0:y1, x0:x1], y0, x0)


@dataclass
class Result:
    """Everything one frame produced.

    ``detections`` are sorted by descending score. ``label_image`` is [H0, W0] of :func:`label_dtype`
    (uint8 up to 255 detections): 0 background, k the pixels of the detection with ``instance_id`` k
    (where instances overlap, the higher score wins). ``no_target`` is the model's image-level "nothing
    matches" decision; ``no_target_probability`` is NaN when the model has no no-target (ReLA) head.
    ``timings_ms`` maps stage name (preprocess, inference, postprocess, ...) to milliseconds.
    ``phrases`` is the prompt's class vocabulary (``EncodedPrompt.vocabulary``): a detection's class is
    ``phrases[phrase_index]`` in phrases mode and ``phrases[0]``, the whole expression, in expression mode.
    """

    prompt: str
    mode: PromptMode
    detections: list[Detection]
    label_image: np.ndarray
    no_target: bool
    no_target_probability: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    phrases: tuple[str, ...] = ()
