"""The Grounding DINO feature enhancer (TAO's ``TransformerEncoder``).

Each layer runs image-text fusion (``fusion_layers``), text self-attention (``text_layers``) and
deformable image self-attention (``layers``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gdino_ros.model.fusion import BiAttentionBlock
from gdino_ros.model.ms_deform_attn import MultiScaleDeformableAttention, SpatialShapes
from gdino_ros.model.position_encoding import text_position_embedding


class DeformableEncoderLayer(nn.Module):
    """Post-norm deformable self-attention over all levels, then a post-norm ReLU FFN."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, n_heads, n_levels, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: Sequence[int],
    ) -> torch.Tensor:
        """src, pos [B, S, C]; reference_points [B, S, L, 2] -> [B, S, C]."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index)
        src = self.norm1(src + attended)
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class TextEnhancerLayer(nn.Module):
    """Post-norm text self-attention restricted to each phrase, then a post-norm ReLU FFN.

    TAO passes only the phrase mask (``text_token_mask``) to the attention, not the padding mask:
    padding tokens form their own 1-token blocks, so no real token attends to them anyway.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int) -> None:
        super().__init__()
        self.nhead = nhead
        self.self_attn = nn.MultiheadAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, text: torch.Tensor, blocked: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """text, pos [T, B, C] (sequence first); blocked [B, T, T] (True = may not attend) -> [T, B, C]."""
        mask = blocked.repeat_interleave(self.nhead, dim=0)
        q = k = text + pos
        attended = self.self_attn(q, k, value=text, attn_mask=mask, need_weights=False)[0]
        text = self.norm1(text + attended)
        return self.norm2(text + self.linear2(F.relu(self.linear1(text))))


def encoder_reference_points(
    spatial_shapes: SpatialShapes, num_levels: int, device: torch.device
) -> torch.Tensor:
    """Pixel centres of every level, normalised: -> [1, S, num_levels, 2] (x, y), the same for all levels."""
    points = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
    return torch.cat(points, 0)[None, :, None, :].expand(-1, -1, num_levels, -1)


class TransformerEncoder(nn.Module):
    """``num_layers`` x (fusion, text enhancer, deformable image layer)."""

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        n_levels: int,
        n_points: int,
    ) -> None:
        super().__init__()
        self.num_levels = n_levels
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, dim_feedforward, n_levels, nhead, n_points)
            for _ in range(num_layers)
        )
        self.text_layers = nn.ModuleList(
            TextEnhancerLayer(d_model, nhead // 2, dim_feedforward // 2) for _ in range(num_layers)
        )
        self.fusion_layers = nn.ModuleList(
            BiAttentionBlock(d_model, d_model, dim_feedforward // 2, nhead // 2) for _ in range(num_layers)
        )

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: Sequence[int],
        text: torch.Tensor,
        text_padding: torch.Tensor,
        text_self_attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Enhance image tokens and text tokens together -> (memory [B, S, C], enhanced text [B, T, C]).

        ``src`` and ``pos`` [B, S, C] are the flattened levels (layout ``spatial_shapes``,
        ``level_start_index``) and their position + level embeddings; ``text`` [B, T, C] the projected
        BERT features; ``text_padding`` [B, T] bool, True at padding tokens; ``text_self_attention_mask``
        [B, T, T] bool, True where token i may attend to token j; ``position_ids`` [B, T] int64 positions
        inside each phrase.
        """
        reference_points = encoder_reference_points(spatial_shapes, self.num_levels, src.device)
        text_pos = text_position_embedding(position_ids, text.shape[-1]).transpose(0, 1)
        blocked = ~text_self_attention_mask
        output = src
        for fusion, text_layer, layer in zip(self.fusion_layers, self.text_layers, self.layers, strict=True):
            output, text = fusion(output, text, text_padding)
            text = text_layer(text.transpose(0, 1), blocked, text_pos).transpose(0, 1)
            output = layer(output, pos, reference_points, spatial_shapes, level_start_index)
        return output, text
