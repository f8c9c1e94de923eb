"""Multi-scale deformable attention (Deformable DETR), with TAO's parameter names.

The learned part (``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``) lives in
:class:`MultiScaleDeformableAttention`. The sampling itself is one function,
:func:`ms_deform_attn_core`, whose arguments are exactly the inputs of TensorRT's
``MultiscaleDeformableAttnPlugin_TRT``; each module calls it through its ``core`` attribute, so an
exporter can swap in a function that emits the plugin node without touching the network.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SpatialShapes = Sequence[tuple[int, int]]
# (value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> output
MSDACore = Callable[[torch.Tensor, SpatialShapes, Sequence[int], torch.Tensor, torch.Tensor], torch.Tensor]


def ms_deform_attn_core(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: Sequence[int],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinearly sample every level at the sampling locations and sum with the attention weights.

    Args:
        value: [N, S, M, D] per-head values of all levels, flattened row-major level by level
            (S = sum of h*w).
        spatial_shapes: the (h, w) of each of the L levels, as Python ints (static shapes; the
            TensorRT plugin takes them as an INT32 [L, 2] tensor).
        level_start_index: offset of each level in S (the plugin's INT32 [L] input).
        sampling_locations: [N, Lq, M, L, P, 2] (x, y) in [0, 1] of the level's map; outside samples
            read zeros.
        attention_weights: [N, Lq, M, L, P], already softmaxed over L*P.

    Returns:
        [N, Lq, M*D]. Sampling is ``grid_sample(align_corners=False, padding_mode="zeros")``, i.e. pixel
        centres at (j+0.5)/w, the same convention as the CUDA kernel and the TensorRT plugin.
    """
    n, _, heads, dim = value.shape
    _, num_query, _, levels, points, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1
    # N, Lq, M, L, P -> N*M, 1, Lq, L, P
    weights = attention_weights.permute(0, 2, 1, 3, 4).reshape(n * heads, 1, num_query, levels, points)
    # Each level's weighted samples are summed over its points and added up level by level: stacking the
    # levels' samples first costs a copy of all of them (as long as the sampling itself, in ONNX Runtime).
    output: torch.Tensor | None = None
    for level, (h, w) in enumerate(spatial_shapes):
        start = level_start_index[level]
        # N, h*w, M, D -> N*M, D, h, w
        value_l = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(n * heads, dim, h, w)
        # N, Lq, M, P, 2 -> N*M, Lq, P, 2
        grid_l = grids[:, :, :, level].permute(0, 2, 1, 3, 4).flatten(0, 1)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        # N*M, D, Lq, P -> N*M, D, Lq
        level_sum = (sampled * weights[..., level, :]).sum(-1)
        output = level_sum if output is None else output + level_sum
    assert output is not None, "at least one level"
    return output.reshape(n, heads * dim, num_query).transpose(1, 2)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over L feature levels, P points per level and head (batch first).

    ``core`` is the sampling function (default :func:`ms_deform_attn_core`); replace it per instance to
    route the sampling elsewhere, e.g. to a TensorRT plugin node during ONNX export.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.core: MSDACore = ms_deform_attn_core
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on a ring of directions, one per head, growing per point."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: Sequence[int],
    ) -> torch.Tensor:
        """Attend from each query [N, Lq, C] (position embedding added) around its reference -> [N, Lq, C].

        ``reference_points`` are [N, Lq, L, 2] points (x, y) or [N, Lq, L, 4] boxes (cx, cy, w, h), in
        [0, 1]; for boxes the offsets are scaled by half the box size divided by P. ``value`` [N, S, C]
        holds the flattened levels, laid out as ``spatial_shapes``/``level_start_index`` describe (see
        :func:`ms_deform_attn_core`).
        """
        n, num_query, _ = query.shape
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value).view(n, value.shape[1], heads, -1)
        offsets = self.sampling_offsets(query).view(n, num_query, heads, levels, points, 2)
        weights = self.attention_weights(query).view(n, num_query, heads, levels * points).softmax(-1)
        weights = weights.view(n, num_query, heads, levels, points)
        if reference_points.shape[-1] == 2:
            normalizer = torch.tensor(
                [[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device
            )
            locations = (
                reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
            )
        else:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        output = self.core(value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(output)
