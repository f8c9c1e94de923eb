"""The feature fusion's regrouped products equal TAO's order of operations (model/fusion.py).

The reference below is the bi-directional attention as TAO writes it: project the image tokens to
queries and values, project the text to keys and values, one set of logits softmaxed both ways, then the
output projections. ``BiMultiHeadAttention`` computes the same with the projections moved onto the text
side; the two must agree to float rounding at any text length, with and without padding.
"""
from __future__ import annotations

import pytest
import torch

from gdino_ros.model.fusion import LOGIT_CLAMP, BiMultiHeadAttention


def _taos_order(
    attn: BiMultiHeadAttention, vis: torch.Tensor, lang: torch.Tensor, padding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    heads, dim = attn.num_heads, attn.head_dim

    def split(x: torch.Tensor) -> torch.Tensor:  # B, N, h*d -> B*h, N, d
        return x.view(x.shape[0], x.shape[1], heads, dim).transpose(1, 2).flatten(0, 1)

    def merge(x: torch.Tensor) -> torch.Tensor:  # B*h, N, d -> B, N, h*d
        return x.view(-1, heads, x.shape[1], dim).transpose(1, 2).flatten(2)

    query = split(attn.v_proj(vis) * attn.scale)
    key, value_l = split(attn.l_proj(lang)), split(attn.values_l_proj(lang))
    value_v = split(attn.values_v_proj(vis))
    logits = query @ key.transpose(1, 2)
    logits = (logits - logits.max()).clamp(min=-LOGIT_CLAMP, max=LOGIT_CLAMP)
    logits_l = logits.transpose(1, 2)
    logits_l = logits_l - logits_l.max(-1, keepdim=True)[0]  # TAO's row maximum and second clamp
    probs_l = logits_l.clamp(min=-LOGIT_CLAMP, max=LOGIT_CLAMP).softmax(-1)
    mask = padding[:, None, None, :].expand(-1, heads, -1, -1).flatten(0, 1)
    probs_v = logits.masked_fill(mask, float("-inf")).softmax(-1)
    return attn.out_v_proj(merge(probs_v @ value_l)), attn.out_l_proj(merge(probs_l @ value_v))


@pytest.mark.parametrize(("tokens", "padded"), [(1, 0), (7, 1), (32, 20), (256, 250)])
def test_regrouped_fusion_equals_taos_order(tokens: int, padded: int) -> None:
    torch.manual_seed(tokens)
    attn = BiMultiHeadAttention(v_dim=64, l_dim=48, embed_dim=128, num_heads=4).eval()
    for parameter in attn.parameters():  # the init zeroes biases; give every term a value
        torch.nn.init.normal_(parameter, std=0.2)
    vis, lang = torch.randn(1, 300, 64), torch.randn(1, tokens, 48)
    padding = torch.zeros(1, tokens, dtype=torch.bool)
    padding[0, tokens - padded:] = True
    with torch.no_grad():
        got, want = attn(vis, lang, padding), _taos_order(attn, vis, lang, padding)
    for name, have, expected in zip(("delta_v", "delta_l"), got, want, strict=True):
        assert have.shape == expected.shape, name
        torch.testing.assert_close(have, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
