"""ReLA head of Mask GDINO (TAO >= 6.25.11): "is anything referred to?" and the union mask.

A small Mask2Former-style decoder with ``num_region_queries`` region queries. Each layer attends to one
of the encoder's three finest levels (coarse to fine, cycling) under a mask predicted by the previous
layer, reads the enhanced text once (first layer only), then runs self-attention and an FFN. The last
layer's queries give ``no_targets`` [B, 2] (mean over queries of ``nt_embed``) and
``union_mask_logits`` [B, 2, H/8, W/8] (minimap-weighted sum of the region masks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gdino_ros.model.heads import MLP

RLA_WEIGHT = 0.1
NUM_RELA_LEVELS = 3


def _xavier_matrices(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention: ``norm(tgt + attn(tgt + query_pos, memory + pos, memory))``."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        _xavier_matrices(self)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from tgt [Q, B, C] to memory [S, B, C].

        ``memory_mask`` [B*heads, Q, S] is bool (True = blocked) or float (added to the attention logits).
        """
        query = tgt if query_pos is None else tgt + query_pos
        key = memory if pos is None else memory + pos
        out = self.multihead_attn(query, key, memory, attn_mask=memory_mask, need_weights=False)[0]
        return self.norm(tgt + out)


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention with a query position embedding on queries and keys."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """[Q, B, C] -> [Q, B, C]."""
        q = k = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, k, tgt, need_weights=False)[0])


class FFNLayer(nn.Module):
    """Post-norm ReLU FFN."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """[..., C] -> [..., C]."""
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


def padding_weights(token_mask: torch.Tensor, max_text_len: int) -> torch.Tensor:
    """Additive attention logits [B, T] that make the padding tokens present count as ``max_text_len``'s.

    TAO's ReLA attends to every one of the 256 text positions, padding included. Padding tokens all have
    the same features (each attends only to itself in BERT and the text enhancer), so the 256 - n pads of
    a prompt with n real tokens act as one token whose attention weight is multiplied by 256 - n: adding
    log((256 - n) / pads) to each of the ``pads`` padding tokens given reproduces that exactly, whatever
    T the text was cut to (0 for a full 256-long input). ``token_mask`` is True at real tokens.
    """
    real = token_mask.sum(-1, keepdim=True).to(torch.float32)
    pads = token_mask.shape[-1] - real
    weight = torch.log(max_text_len - real) - torch.log(pads)
    return torch.where(token_mask, torch.zeros_like(weight), weight)


class ReLA(nn.Module):
    """Region queries over the encoder memory; outputs (no_targets, union_mask_logits) of the last layer."""

    def __init__(
        self, num_queries: int, hidden_dim: int, nheads: int, dim_feedforward: int, dec_layers: int
    ) -> None:
        super().__init__()
        self.num_heads = nheads
        self.RLA_vision = nn.ModuleList(SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.RIA_layers = nn.ModuleList(CrossAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.lang_weight = nn.Parameter(torch.tensor(0.0))
        self.RLA_lang_att = CrossAttentionLayer(hidden_dim, nheads)
        self.level_embed = nn.Embedding(NUM_RELA_LEVELS, hidden_dim)
        self.minimap_embed = nn.Linear(hidden_dim, 2)
        self.nt_embed = MLP(hidden_dim, hidden_dim, 2, 2)
        self.mask_embed = MLP(hidden_dim, hidden_dim, hidden_dim, 3)

    def _blocked(
        self, region: torch.Tensor, mask_features: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Attention mask for the next layer: block where the query's own mask has sigmoid < 0.5.

        region [B, Q, C] normalised queries -> bool [B*heads, Q, h*w]. Rows blocked everywhere are
        unblocked entirely (otherwise softmax over nothing gives NaN).
        """
        all_mask = torch.einsum("bqc,bchw->bqhw", self.mask_embed(region), mask_features)
        all_mask = F.interpolate(all_mask, size=size, mode="bilinear", align_corners=False)
        blocked = (all_mask.sigmoid() < 0.5).flatten(2).repeat_interleave(self.num_heads, dim=0)
        return blocked & ~blocked.all(-1, keepdim=True)

    def forward(
        self,
        srcs: list[torch.Tensor],
        pos_embeds: list[torch.Tensor],
        spatial_shapes: list[tuple[int, int]],
        mask_features: torch.Tensor,
        lang_feat: torch.Tensor,
        token_mask: torch.Tensor,
        max_text_len: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the region decoder.

        Args:
            srcs: the three finest encoder-memory levels, coarse to fine, each [B, h*w, C].
            pos_embeds: their sine position embeddings, each [B, h*w, C] (no level embedding).
            spatial_shapes: their (h, w).
            mask_features: [B, C, H/8, W/8] from the mask pixel decoder.
            lang_feat: [B, T, C] enhanced text; padding is attended as TAO's 256 positions are, padding
                included, also when the text was cut shorter (:func:`padding_weights`).
            token_mask: [B, T] bool, True at real tokens.
            max_text_len: the text length TAO's network attends over (256).

        Returns:
            (no_targets [B, 2], union_mask_logits [B, 2, H/8, W/8]).
        """
        memories = [
            (src + self.level_embed.weight[i][None, None, :]).transpose(0, 1) for i, src in enumerate(srcs)
        ]
        positions = [p.transpose(0, 1) for p in pos_embeds]
        batch = srcs[0].shape[0]
        query_pos = self.query_embed.weight.unsqueeze(1).expand(-1, batch, -1)
        output = self.query_feat.weight.unsqueeze(1).expand(-1, batch, -1)
        lang = lang_feat.transpose(0, 1)
        # One additive row per query and head: [B*heads, Q, T].
        lang_weights = padding_weights(token_mask, max_text_len)[:, None, :].expand(-1, output.shape[0], -1)
        lang_weights = lang_weights.repeat_interleave(self.num_heads, dim=0)
        blocked = self._blocked(self.decoder_norm(output).transpose(0, 1), mask_features, spatial_shapes[0])
        num_layers = len(self.RIA_layers)
        for i in range(num_layers):
            level = i % len(srcs)
            output = self.RIA_layers[i](output, memories[level], blocked, positions[level], query_pos)
            if i == 0:
                # RLA_lang_att already adds its input back (post-norm), and that sum is added again here.
                lang_att = self.RLA_lang_att(output, lang, lang_weights)
                output = output + lang_att * torch.sigmoid(self.lang_weight) * RLA_WEIGHT
            output = self.RLA_vision[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            if i < num_layers - 1:
                next_size = spatial_shapes[(i + 1) % len(srcs)]
                blocked = self._blocked(self.decoder_norm(output).transpose(0, 1), mask_features, next_size)
        region = self.decoder_norm(output).transpose(0, 1)  # B, Q, C
        region_embed = self.mask_embed(region)
        union_embed = torch.einsum("bqa,bqc->bac", self.minimap_embed(region), region_embed)
        union_mask_logits = torch.einsum("bac,bchw->bahw", union_embed, mask_features)
        no_targets = self.nt_embed(region).mean(dim=1)
        return no_targets, union_mask_logits
