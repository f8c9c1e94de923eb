"""PyTorch Mask Grounding DINO mirroring TAO 7.0.1's checkpoint layout and exported interface."""
from __future__ import annotations

from gdino_ros.model.config import MaskGDINOConfig
from gdino_ros.model.mask_grounding_dino import MaskGroundingDINO

__all__ = ["MaskGDINOConfig", "MaskGroundingDINO"]
