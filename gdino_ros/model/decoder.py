"""The Grounding DINO decoder with iterative box refinement by the shared ``bbox_embed``.

Each layer runs self-attention, text cross-attention, deformable image cross-attention and an FFN.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gdino_ros.model.heads import MLP, inverse_sigmoid
from gdino_ros.model.ms_deform_attn import MultiScaleDeformableAttention, SpatialShapes
from gdino_ros.model.position_encoding import box_sine_embedding


class DecoderLayer(nn.Module):
    """One post-norm decoder layer (sequence first, as TAO's ``DeformableTransformerDecoderLayer``)."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.cross_attn = MultiScaleDeformableAttention(d_model, n_heads, n_levels, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.ca_text = nn.MultiheadAttention(d_model, n_heads)
        self.catext_norm = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: Sequence[int],
        text: torch.Tensor,
        text_padding: torch.Tensor,
    ) -> torch.Tensor:
        """Update the queries ``tgt`` [Q, B, C] -> [Q, B, C].

        ``query_pos`` [Q, B, C]; ``reference_points`` [B, Q, L, 4] boxes in [0, 1]; ``memory`` [B, S, C]
        encoder output with its level layout ``spatial_shapes``/``level_start_index``; ``text`` [T, B, C]
        enhanced text and ``text_padding`` [B, T] (True = pad).
        """
        q = k = tgt + query_pos
        tgt = self.norm2(tgt + self.self_attn(q, k, tgt, need_weights=False)[0])
        attended = self.ca_text(
            tgt + query_pos, text, text, key_padding_mask=text_padding, need_weights=False
        )[0]
        tgt = self.catext_norm(tgt + attended)
        sampled = self.cross_attn(
            (tgt + query_pos).transpose(0, 1), reference_points, memory, spatial_shapes, level_start_index
        ).transpose(0, 1)
        tgt = self.norm1(tgt + sampled)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class TransformerDecoder(nn.Module):
    """Decoder stack with iterative box refinement.

    ``bbox_embed`` is assigned by the owning model: one MLP shared by all layers and also registered as the
    model's top-level ``bbox_embed``, which is why TAO's checkpoint stores it under both names. The
    contrastive ``class_embed`` is registered the same way; the export-time forward only uses the
    model's copy on the last layer, so the decoder just holds it for the checkpoint layout.
    """

    bbox_embed: nn.ModuleList
    class_embed: nn.ModuleList

    def __init__(
        self, num_layers: int, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, d_ffn, n_levels, n_heads, n_points) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)

    def forward(
        self,
        tgt: torch.Tensor,
        refpoints_unsigmoid: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: Sequence[int],
        text: torch.Tensor,
        text_padding: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run all layers from content queries ``tgt`` [B, Q, C] and boxes ``refpoints_unsigmoid`` [B, Q, 4].

        ``memory`` [B, S, C] has the level layout ``spatial_shapes``/``level_start_index``; ``text``
        [B, T, C] and ``text_padding`` [B, T] are the enhanced text and its padding.

        Returns:
            (hs, references): ``hs[i]`` [B, Q, C] is layer i's output after ``norm``; ``references[0]`` is
            the initial box and ``references[i+1]`` [B, Q, 4] the box refined after layer i (sigmoid space).
        """
        num_levels = len(spatial_shapes)
        output = tgt.transpose(0, 1)
        text_seq = text.transpose(0, 1)
        reference = refpoints_unsigmoid.sigmoid()
        references = [reference]
        hs = []
        for layer, box_head in zip(self.layers, self.bbox_embed, strict=True):
            query_pos = self.ref_point_head(box_sine_embedding(reference)).transpose(0, 1)
            reference_input = reference[:, :, None, :].expand(-1, -1, num_levels, -1)
            output = layer(
                output, query_pos, reference_input, memory, spatial_shapes, level_start_index,
                text_seq, text_padding,
            )
            # Refinement uses the un-normalised layer output; the heads later use the normalised one.
            reference = (box_head(output.transpose(0, 1)) + inverse_sigmoid(reference)).sigmoid()
            references.append(reference)
            hs.append(self.norm(output).transpose(0, 1))
        return hs, references
