"""The Mask GDINO mask branch: a conv pixel decoder and CondInst-style dynamic convolutions per query.

Every query's controller output (169 numbers) is unpacked into a tiny 3-layer 1x1-conv network that runs
on 8 shared feature channels plus the query's relative coordinates, at stride 8; the logits are then
upsampled x2 to stride 4.
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from gdino_ros import contract
from gdino_ros.model.heads import static_shape

MASK_FEATURE_STRIDE = 8
DYNAMIC_CHANNELS = 8  # hidden width of the per-query network
REL_COORDS = 2  # (dx, dy) input channels
# Weights of the three dynamic layers (out x in), then their biases: 80 + 64 + 8 + 8 + 8 + 1 = 169.
WEIGHT_NUMS = (
    (REL_COORDS + DYNAMIC_CHANNELS) * DYNAMIC_CHANNELS,
    DYNAMIC_CHANNELS * DYNAMIC_CHANNELS,
    DYNAMIC_CHANNELS,
)
BIAS_NUMS = (DYNAMIC_CHANNELS, DYNAMIC_CHANNELS, 1)
NUM_DYNAMIC_PARAMS = sum(WEIGHT_NUMS) + sum(BIAS_NUMS)


class MaskHeadConv(nn.Module):
    """Top-down fusion of the encoder's stride 32/16/8 maps (no norms, ReLU after each 3x3 conv).

    ``lay3`` on stride 32, ``lay4`` on stride 16 + upsampled, ``jia_dcn`` on stride 8 + upsampled gives the
    256-channel ``mask_features`` (also used by ReLA); ``lay1`` and ``lay2`` reduce them to 8 channels.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lay1 = nn.Conv2d(dim, dim // 4, 3, padding=1)
        self.lay2 = nn.Conv2d(dim // 4, dim // 32, 3, padding=1)
        self.lay3 = nn.Conv2d(dim, dim, 3, padding=1)
        self.lay4 = nn.Conv2d(dim, dim, 3, padding=1)
        self.jia_dcn = nn.Conv2d(dim, dim, 3, padding=1)
        for conv in (self.lay1, self.lay2, self.lay3, self.lay4, self.jia_dcn):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(cast(torch.Tensor, conv.bias))

    def forward(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse maps [s8, s16, s32] ([B, C, h, w] each) -> (mask_features [B, C, h8, w8], [B, 8, h8, w8])."""
        x = F.relu(self.lay3(maps[2]))
        x = F.relu(self.lay4(maps[1] + F.interpolate(x, size=maps[1].shape[-2:], mode="nearest")))
        x = maps[0] + F.interpolate(x, size=maps[0].shape[-2:], mode="nearest")
        mask_features = F.relu(self.jia_dcn(x))
        features = F.relu(self.lay2(F.relu(self.lay1(mask_features))))
        return mask_features, features


def aligned_bilinear(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Upsample [N, C, h, w] -> [N, C, factor*h, factor*w] keeping pixel corners aligned (CondInst).

    Replicate-pad right/bottom by 1, resize with ``align_corners=True`` to (factor*h+1, factor*w+1),
    replicate-pad left/top by factor//2 and crop; the result is shifted so that output pixel centres sit
    where the stride-``factor`` grid expects them.
    """
    if factor == 1:
        return x
    h, w = static_shape(x)[-2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    x = F.interpolate(x, size=(factor * h + 1, factor * w + 1), mode="bilinear", align_corners=True)
    x = F.pad(x, (factor // 2, 0, factor // 2, 0), mode="replicate")
    return x[:, :, : factor * h, : factor * w]


def feature_locations(h: int, w: int, stride: int, device: torch.device) -> torch.Tensor:
    """Input-pixel coordinates of the centres of an (h, w) map at ``stride``: -> [h, w, 2] (x, y)."""
    ys = torch.arange(h, dtype=torch.float32, device=device) * stride + stride // 2
    xs = torch.arange(w, dtype=torch.float32, device=device) * stride + stride // 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x, grid_y), -1)


def split_dynamic_params(params: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Unpack [N, 169] into grouped-conv weights [N*8, 10, 1, 1], [N*8, 8, 1, 1], [N, 8, 1, 1] and biases.

    The 169 numbers are all weights first (80, 64, 8) then all biases (8, 8, 1); each weight block is
    row-major (out, in); the biases are [N*8], [N*8], [N].
    """
    n = static_shape(params)[0]
    # A reshape to the static shape keeps the kernel shapes known to ONNX shape inference, which Conv needs.
    chunks = torch.split(params.reshape(n, NUM_DYNAMIC_PARAMS), list(WEIGHT_NUMS + BIAS_NUMS), dim=1)
    outs = (DYNAMIC_CHANNELS, DYNAMIC_CHANNELS, 1)
    weights = [chunk.reshape(n * out, -1, 1, 1) for chunk, out in zip(chunks[:3], outs, strict=True)]
    biases = [chunk.reshape(n * out) for chunk, out in zip(chunks[3:], outs, strict=True)]
    return weights, biases


def dynamic_mask_logits(
    features: torch.Tensor, reference_xy: torch.Tensor, params: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Run every query's dynamic network on the shared features (batch 1).

    Args:
        features: [1, 8, h, w] at stride 8.
        reference_xy: [Q, 2] query centres (x, y) in [0, 1] of the input image.
        params: [Q, 169] controller outputs.
        image_size: (H, W) of the network input, which scales ``reference_xy`` to input pixels.

    Returns:
        [1, Q, 2h, 2w] mask logits at stride 4 (``contract.MASK_STRIDE``).
    """
    _, channels, h, w = static_shape(features)
    num_queries = static_shape(params)[0]
    scale = torch.tensor([image_size[1], image_size[0]], dtype=features.dtype, device=features.device)
    locations = feature_locations(h, w, MASK_FEATURE_STRIDE, features.device)
    # Relative coordinates in input pixels, not normalised (TAO): Q, 2, h, w.
    relative = ((reference_xy * scale)[:, None, None, :] - locations[None]).permute(0, 3, 1, 2)
    shared = features.expand(num_queries, -1, -1, -1)
    x = torch.cat((relative, shared), 1).reshape(1, num_queries * (REL_COORDS + channels), h, w)
    weights, biases = split_dynamic_params(params)
    for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        x = F.conv2d(x, weight, bias=bias, groups=num_queries)
        if i < len(weights) - 1:
            x = F.relu(x)
    factor = MASK_FEATURE_STRIDE // contract.MASK_STRIDE
    logits = aligned_bilinear(x.reshape(num_queries, 1, h, w), factor)
    return logits.reshape(1, num_queries, factor * h, factor * w)
