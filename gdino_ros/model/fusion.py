"""Bidirectional image <-> text attention of the Grounding DINO encoder (TAO's ``BiAttentionBlock``)."""
from __future__ import annotations

import torch
from torch import nn

# TAO clamps the attention logits to this range so that they stay finite in half precision.
LOGIT_CLAMP = 50000.0


class BiMultiHeadAttention(nn.Module):
    """One set of image-text logits, softmaxed both ways: image queries read text, text queries read image."""

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)
        for layer in (self.v_proj, self.l_proj, self.values_v_proj, self.values_l_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        for layer in (self.out_v_proj, self.out_l_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, vis: torch.Tensor, lang: torch.Tensor, text_padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute (delta_v, delta_l) from vis [B, Nv, Cv], lang [B, Nl, Cl] and text_padding [B, Nl].

        ``text_padding`` is True at padding tokens. The image side has no padding: the exported graph
        always sees a full, unpadded image.

        TAO projects the ~10,845 image tokens three times to ``embed_dim`` (queries, values, and back
        from the attended values). Each of those products is linear, so it is regrouped here to act on
        the few text positions instead: the query weights are multiplied into the keys, the output
        projection into the text values, and the image values are projected after the text side's
        attention has averaged them (its probabilities sum to 1 over the image). Same values up to float
        rounding; the image tokens meet only ``heads x Nl`` columns per product instead of 1024.
        """
        batch, tokens = lang.shape[0], lang.shape[1]
        heads, dim = self.num_heads, self.head_dim
        columns = heads * tokens
        key = self.l_proj(lang).view(batch, tokens, heads, dim).transpose(1, 2)  # B, h, Nl, d
        value_l = self.values_l_proj(lang).view(batch, tokens, heads, dim).transpose(1, 2)
        # logits[b, n, h, t] = scale * v_proj(vis)[b, n, h, :] . key[b, h, t, :]
        query_weight = self.v_proj.weight.view(heads, dim, -1) * self.scale  # h, d, Cv
        query_key = (key @ query_weight).permute(0, 3, 1, 2).reshape(batch, -1, columns)  # B, Cv, h*Nl
        query_bias = (key @ (self.v_proj.bias.view(heads, dim, 1) * self.scale)).view(batch, 1, columns)
        logits = (vis @ query_key + query_bias).view(batch, -1, heads, tokens)  # B, Nv, h, Nl
        # Stabilise with the global maximum, then clamp (TAO's order of operations).
        logits = (logits - logits.max()).clamp(min=-LOGIT_CLAMP, max=LOGIT_CLAMP)
        # TAO also subtracts each row's maximum here and clamps again; softmax subtracts the row maximum
        # itself, and the clamp only maps exp() values that are already 0 to 0, so both are left out (three
        # passes over the largest tensor of the encoder, for the same probabilities).
        probs_v = logits.masked_fill(text_padding[:, None, None, :], float("-inf")).softmax(dim=-1)
        probs_l = logits.softmax(dim=1)  # each text token's distribution over the image
        out_weight = self.out_v_proj.weight.view(-1, heads, dim).permute(1, 2, 0)  # h, d, Cv
        value_out = (value_l @ out_weight).reshape(batch, columns, -1)  # B, h*Nl, Cv
        delta_v = probs_v.reshape(batch, -1, columns) @ value_out + self.out_v_proj.bias
        pooled = (probs_l.reshape(batch, -1, columns).transpose(1, 2) @ vis).view(batch, heads, tokens, -1)
        value_weight = self.values_v_proj.weight.view(heads, dim, -1).transpose(1, 2)  # h, Cv, d
        value_v = pooled @ value_weight + self.values_v_proj.bias.view(heads, 1, dim)  # B, h, Nl, d
        delta_l = self.out_l_proj(value_v.transpose(1, 2).reshape(batch, tokens, -1))
        return delta_v, delta_l


class BiAttentionBlock(nn.Module):
    """LayerNorm both streams, exchange information, add back scaled by learned ``gamma_v``/``gamma_l``.

    As in TAO, the residual is added to the *normalised* inputs.
    """

    def __init__(
        self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int, init_values: float = 1e-4
    ) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads)
        self.gamma_v = nn.Parameter(init_values * torch.ones(v_dim))
        self.gamma_l = nn.Parameter(init_values * torch.ones(l_dim))

    def forward(
        self, vis: torch.Tensor, lang: torch.Tensor, text_padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update (vis [B, Nv, Cv], lang [B, Nl, Cl]); text_padding [B, Nl] is True at padding tokens."""
        vis = self.layer_norm_v(vis)
        lang = self.layer_norm_l(lang)
        delta_v, delta_l = self.attn(vis, lang, text_padding)
        return vis + self.gamma_v * delta_v, lang + self.gamma_l * delta_l
