"""sensor_msgs/Image encoding names and their pixel layouts: the one place the project spells them.

The strings are those of ROS's ``sensor_msgs/image_encodings.hpp``; both directions of the image
conversion (message -> numpy in :mod:`.image`, numpy -> message in :mod:`.messages`) use these.
"""
from __future__ import annotations

import numpy as np

RGB8 = "rgb8"
BGR8 = "bgr8"
RGBA8 = "rgba8"
BGRA8 = "bgra8"
MONO8 = "mono8"
MONO16 = "mono16"

# encoding -> (channels, dtype of one channel)
PIXEL_LAYOUT: dict[str, tuple[int, np.dtype]] = {
    RGB8: (3, np.dtype(np.uint8)),
    BGR8: (3, np.dtype(np.uint8)),
    RGBA8: (4, np.dtype(np.uint8)),
    BGRA8: (4, np.dtype(np.uint8)),
    MONO8: (1, np.dtype(np.uint8)),
    MONO16: (1, np.dtype(np.uint16)),
}

#: The label image's encoding chosen per frame: mono8 when its instance ids fit (at most 255 instances, any
#: real scene), mono16 for a frame with more. A mono16 image is twice the bytes to copy and send.
MASK_AUTO = "auto"
# What the label image (instance mask) may be published as: chosen per frame, or always one encoding.
MASK_ENCODINGS: tuple[str, ...] = (MASK_AUTO, MONO8, MONO16)
