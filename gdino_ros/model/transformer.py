"""Encoder, language-guided two-stage query selection and decoder (TAO's ``transformer`` module)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gdino_ros.model.config import MaskGDINOConfig
from gdino_ros.model.decoder import TransformerDecoder
from gdino_ros.model.encoder import TransformerEncoder
from gdino_ros.model.heads import MLP, ContrastiveEmbed
from gdino_ros.model.ms_deform_attn import MultiScaleDeformableAttention, SpatialShapes


@dataclass
class TransformerOutput:
    """What the heads need from the transformer.

    ``hs[i]`` [B, Q, C] normalised decoder outputs; ``references[i]`` [B, Q, 4] boxes (sigmoid space),
    ``references[0]`` the selected proposals; ``memory`` [B, S, C] encoder output; ``text`` [B, T, C]
    enhanced text features.
    """

    hs: list[torch.Tensor]
    references: list[torch.Tensor]
    memory: torch.Tensor
    text: torch.Tensor


def encoder_output_proposals(
    memory: torch.Tensor, spatial_shapes: SpatialShapes
) -> tuple[torch.Tensor, torch.Tensor]:
    """One anchor box per encoder token and the memory with invalid anchors zeroed.

    Anchors are centred on the token with size 0.05 * 2**level; an anchor with any coordinate outside
    (0.01, 0.99) is invalid: its logit box becomes +inf and its memory row 0 (TAO's
    ``gen_encoder_output_proposals`` for an unpadded image).

    Returns:
        (output_memory [B, S, C], proposals [1, S, 4] in logit space).
    """
    proposals = []
    for level, (h, w) in enumerate(spatial_shapes):
        ys = (torch.arange(h, dtype=torch.float32, device=memory.device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=memory.device) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        wh = torch.full((h * w, 2), 0.05 * 2.0**level, device=memory.device)
        proposals.append(torch.cat((grid_x.reshape(-1, 1), grid_y.reshape(-1, 1), wh), -1))
    anchors = torch.cat(proposals, 0)[None]
    valid = ((anchors > 0.01) & (anchors < 0.99)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors)).masked_fill(~valid, float("inf"))
    return memory.masked_fill(~valid, 0.0), anchors


class Transformer(nn.Module):
    """Deformable transformer with text fusion and language-guided query selection."""

    enc_out_bbox_embed: MLP

    def __init__(self, config: MaskGDINOConfig) -> None:
        super().__init__()
        d_model = config.hidden_dim
        self.num_queries = config.num_queries
        self.max_text_len = config.max_text_len
        self.encoder = TransformerEncoder(
            config.enc_layers, d_model, config.nheads, config.dim_feedforward,
            config.num_feature_levels, config.enc_n_points,
        )
        self.decoder = TransformerDecoder(
            config.dec_layers, d_model, config.dim_feedforward, config.num_feature_levels,
            config.nheads, config.dec_n_points,
        )
        self.level_embed = nn.Parameter(torch.empty(config.num_feature_levels, d_model))
        self.tgt_embed = nn.Embedding(config.num_queries, d_model)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self._reset_parameters()
        # Query selection's own class head (TAO's two_stage_class_embed_share=False).
        self.enc_out_class_embed = ContrastiveEmbed(
            config.log_scale, config.class_embed_bias, self.max_text_len
        )

    def _reset_parameters(self) -> None:
        """TAO's init: Xavier for every matrix, then the deformable-attention and level-embedding inits."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self,
        srcs: list[torch.Tensor],
        pos_embeds: list[torch.Tensor],
        text: torch.Tensor,
        text_token_mask: torch.Tensor,
        text_self_attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> TransformerOutput:
        """Run encoder, query selection and decoder.

        ``srcs`` and ``pos_embeds`` are, per level, the projected features [B, C, h, w] and their sine
        position embeddings; ``text`` [B, T, C] the projected BERT features; ``text_token_mask`` [B, T]
        bool, True for real tokens; ``text_self_attention_mask`` [B, T, T] bool phrase blocks;
        ``position_ids`` [B, T] int64.
        """
        spatial_shapes = [(int(s.shape[2]), int(s.shape[3])) for s in srcs]
        level_start_index = [0]
        for h, w in spatial_shapes[:-1]:
            level_start_index.append(level_start_index[-1] + h * w)
        src_flatten = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flatten = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1)
                for i, p in enumerate(pos_embeds)
            ],
            1,
        )
        text_padding = ~text_token_mask
        memory, text = self.encoder(
            src_flatten, pos_flatten, spatial_shapes, level_start_index,
            text, text_padding, text_self_attention_mask, position_ids,
        )

        output_memory, proposals = encoder_output_proposals(memory, spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        token_logits = self.enc_out_class_embed(output_memory, text, text_token_mask)
        topk = torch.topk(token_logits.max(-1)[0], self.num_queries, dim=1)[1]  # B, Q
        boxes_unselected = self.enc_out_bbox_embed(output_memory) + proposals
        refpoints = torch.gather(boxes_unselected, 1, topk.unsqueeze(-1).expand(-1, -1, 4))
        tgt = self.tgt_embed.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)

        hs, references = self.decoder(
            tgt, refpoints, memory, spatial_shapes, level_start_index, text, text_padding
        )
        return TransformerOutput(hs=hs, references=references, memory=memory, text=text)
