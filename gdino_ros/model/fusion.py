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

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, E] -> [B*heads, N, E/heads]."""
        b, n, _ = x.shape
        x = x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        return x.reshape(b * self.num_heads, n, self.head_dim)

    def _merge(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """[B*heads, N, E/heads] -> [B, N, E]."""
        n = x.shape[1]
        return x.view(batch, self.num_heads, n, self.head_dim).transpose(1, 2).reshape(batch, n, -1)

    def forward(
        self, vis: torch.Tensor, lang: torch.Tensor, text_padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute (delta_v, delta_l) from vis [B, Nv, Cv], lang [B, Nl, Cl] and text_padding [B, Nl].

        ``text_padding`` is True at padding tokens. The image side has no padding: the exported graph
        always sees a full, unpadded image.
        """
        batch = vis.shape[0]
        query = self._heads(self.v_proj(vis) * self.scale)
        key = self._heads(self.l_proj(lang))
        value_v = self._heads(self.values_v_proj(vis))
        value_l = self._heads(self.values_l_proj(lang))
        logits = torch.bmm(query, key.transpose(1, 2))  # B*h, Nv, Nl
        # Stabilise with the global maximum, then clamp (TAO's order of operations).
        logits = (logits - logits.max()).clamp(min=-LOGIT_CLAMP, max=LOGIT_CLAMP)
        # TAO also subtracts each row's maximum here and clamps again; softmax subtracts the row maximum
        # itself, and the clamp only maps exp() values that are already 0 to 0, so both are left out (three
        # passes over the largest tensor of the encoder, for the same probabilities).
        logits_l = logits.transpose(1, 2)
        pad = text_padding[:, None, None, :].expand(-1, self.num_heads, -1, -1).flatten(0, 1)
        probs_v = logits.masked_fill(pad, float("-inf")).softmax(dim=-1)
        probs_l = logits_l.softmax(dim=-1)
        out_v = self._merge(torch.bmm(probs_v, value_l), batch)
        out_l = self._merge(torch.bmm(probs_l, value_v), batch)
        return self.out_v_proj(out_v), self.out_l_proj(out_l)


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
