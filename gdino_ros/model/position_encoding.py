"""Sine position encodings used by Grounding DINO: image grids, text positions and query boxes.

All three interleave sin and cos per frequency pair, ``[sin(p/t0), cos(p/t0), sin(p/t1), cos(p/t1), ...]``
with ``t_k = temperature ** (2k / num_feats)``, as TAO's code does.
"""
from __future__ import annotations

import math

import torch


def _interleaved_sine(positions: torch.Tensor, num_feats: int, temperature: float) -> torch.Tensor:
    """[..., ] positions -> [..., num_feats] interleaved sine/cosine features."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=positions.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    scaled = positions[..., None] / dim_t
    return torch.stack((scaled[..., 0::2].sin(), scaled[..., 1::2].cos()), dim=-1).flatten(-2)


def image_position_embedding(
    height: int,
    width: int,
    num_feats: int,
    temperature_h: float,
    temperature_w: float,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Normalised 2-D sine encoding of an unpadded feature map: -> [1, 2*num_feats, H, W], y features first.

    Row i and column j are encoded as ``(i+1)/(H+eps)*2pi`` and ``(j+1)/(W+eps)*2pi`` (TAO's cumulative
    sum over an all-valid mask, normalised with eps 1e-6). It depends only on the map size, so it
    becomes a constant in an exported graph.
    """
    eps = 1e-6
    scale = 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * scale
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * scale
    pos_y = _interleaved_sine(y, num_feats, temperature_h)  # H, F
    pos_x = _interleaved_sine(x, num_feats, temperature_w)  # W, F
    pos_y = pos_y[:, None, :].expand(height, width, num_feats)
    pos_x = pos_x[None, :, :].expand(height, width, num_feats)
    pos = torch.cat((pos_y, pos_x), dim=-1)
    return pos.permute(2, 0, 1).unsqueeze(0)


def text_position_embedding(position_ids: torch.Tensor, num_feats: int = 256) -> torch.Tensor:
    """Sine encoding of per-phrase token positions: int64 [B, T] -> float32 [B, T, num_feats].

    Temperature 10000 and scale 2pi, the text-enhancer's positional embedding in TAO's encoder.
    """
    return _interleaved_sine(position_ids.to(torch.float32) * (2 * math.pi), num_feats, 10000.0)


def box_sine_embedding(boxes: torch.Tensor, num_feats: int = 128) -> torch.Tensor:
    """Sine encoding of reference boxes: [..., 4] (cx, cy, w, h) in [0, 1] -> [..., 4*num_feats].

    The feature blocks come in the order y, x, w, h (TAO's ``gen_sineembed_for_position``), with
    temperature 10000 and scale 2pi; the decoder's ``ref_point_head`` turns this into the query position.
    """
    scaled = boxes * (2 * math.pi)
    parts = [_interleaved_sine(scaled[..., i], num_feats, 10000.0) for i in (1, 0, 2, 3)]
    return torch.cat(parts, dim=-1)
