"""Pieces of the network checked against answers computed independently (loops, closed forms)."""
from __future__ import annotations

import math

import pytest
import torch

from gdino_ros.model.backbone import SwinTransformer, shifted_window_mask, window_partition, window_reverse
from gdino_ros.model.config import SWIN_VARIANTS
from gdino_ros.model.fusion import BiMultiHeadAttention
from gdino_ros.model.heads import ContrastiveEmbed
from gdino_ros.model.mask_head import aligned_bilinear, dynamic_mask_logits, split_dynamic_params
from gdino_ros.model.ms_deform_attn import MultiScaleDeformableAttention, ms_deform_attn_core
from gdino_ros.model.position_encoding import (
    box_sine_embedding,
    image_position_embedding,
    text_position_embedding,
)
from gdino_ros.model.rela import ReLA
from gdino_ros.model.transformer import encoder_output_proposals


def bilinear_zero_padded(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample image [D, h, w] at normalised (x, y) with pixel centres at (j+0.5)/w; zeros outside."""
    _, h, w = image.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = torch.zeros(image.shape[0], dtype=torch.float64)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * image[:, yy, xx].double()
    return total


def test_msda_core_equals_a_slow_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 3)]
    starts = [0, 12]
    n, heads, dim, queries, points = 1, 2, 3, 5, 2
    value = torch.randn(n, 18, heads, dim, generator=generator)
    # Locations cover the inside, the border and the outside (zero padding) of each map.
    locations = torch.rand(n, queries, heads, len(shapes), points, 2, generator=generator) * 1.4 - 0.2
    weights = torch.rand(n, queries, heads, len(shapes), points, generator=generator)
    out = ms_deform_attn_core(value, shapes, starts, locations, weights)
    assert out.shape == (n, queries, heads * dim)
    expected = torch.zeros(n, queries, heads, dim, dtype=torch.float64)
    for q in range(queries):
        for m in range(heads):
            for level, (h, w) in enumerate(shapes):
                image = value[0, starts[level] : starts[level] + h * w, m].T.reshape(dim, h, w)
                for p in range(points):
                    x, y = locations[0, q, m, level, p].tolist()
                    expected[0, q, m] += weights[0, q, m, level, p] * bilinear_zero_padded(image, x, y)
    torch.testing.assert_close(out, expected.reshape(n, queries, heads * dim).float(), rtol=0, atol=1e-5)


def test_msda_box_references_scale_the_initial_offsets_by_half_the_box() -> None:
    attn = MultiScaleDeformableAttention(embed_dim=16, num_heads=4, num_levels=1, num_points=2)
    seen: list[torch.Tensor] = []

    def record(value, spatial_shapes, level_start_index, locations, weights):  # type: ignore[no-untyped-def]
        seen.append(locations)
        return ms_deform_attn_core(value, spatial_shapes, level_start_index, locations, weights)

    attn.core = record
    box = torch.tensor([0.5, 0.4, 0.2, 0.1])
    with torch.no_grad():
        attn(torch.zeros(1, 1, 16), box.view(1, 1, 1, 4), torch.randn(1, 6, 16), [(2, 3)], [0])
    locations = seen[0][0, 0, :, 0]  # heads, points, 2
    # Initial offsets: head k points along angle 2*pi*k/4 (scaled to the unit square), point i at i+1.
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for k in range(4):
        for i in range(2):
            expected = box[:2] + directions[k] * (i + 1) / 2 * box[2:] * 0.5
            torch.testing.assert_close(locations[k, i], expected, rtol=0, atol=1e-6)


def test_aligned_bilinear_doubles_and_shifts_by_half_an_input_pixel() -> None:
    ramp = torch.arange(5, dtype=torch.float32).view(1, 1, 1, 5).expand(1, 1, 3, 5)
    out = aligned_bilinear(ramp, 2)
    assert out.shape == (1, 1, 6, 10)
    # Output column m samples input position (m - 1) / 2; column 0 replicates column 1.
    expected = torch.tensor([max(m - 1, 0) / 2 for m in range(10)])
    torch.testing.assert_close(out[0, 0], expected.expand(6, 10), rtol=0, atol=1e-6)
    constant = torch.full((2, 3, 4, 7), 2.5)
    torch.testing.assert_close(aligned_bilinear(constant, 2), torch.full((2, 3, 8, 14), 2.5))
    assert aligned_bilinear(constant, 1) is constant


def test_image_sine_encoding_values() -> None:
    pos = image_position_embedding(2, 3, num_feats=4, temperature_h=20, temperature_w=20)
    assert pos.shape == (1, 8, 2, 3)
    i, j = 1, 2
    y = (i + 1) / (2 + 1e-6) * 2 * math.pi
    x = (j + 1) / (3 + 1e-6) * 2 * math.pi
    t = math.sqrt(20)  # 20 ** (2 * 1 / 4) for features 2 and 3
    expected = [math.sin(y), math.cos(y), math.sin(y / t), math.cos(y / t)]
    expected += [math.sin(x), math.cos(x), math.sin(x / t), math.cos(x / t)]
    torch.testing.assert_close(pos[0, :, i, j], torch.tensor(expected), rtol=0, atol=1e-5)


def test_text_sine_encoding_values() -> None:
    pos = text_position_embedding(torch.tensor([[0, 3]]), num_feats=256)
    assert pos.shape == (1, 2, 256)
    torch.testing.assert_close(pos[0, 0, 0::2], torch.zeros(128))
    torch.testing.assert_close(pos[0, 0, 1::2], torch.ones(128))
    for k in (0, 5, 127):
        angle = 3 * 2 * math.pi / 10000 ** (2 * k / 256)
        assert pos[0, 1, 2 * k].item() == pytest.approx(math.sin(angle), abs=1e-5)
        assert pos[0, 1, 2 * k + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_box_sine_encoding_orders_y_x_w_h() -> None:
    box = torch.tensor([[0.1, 0.7, 0.2, 0.4]])
    pos = box_sine_embedding(box)
    assert pos.shape == (1, 512)
    for block, value in enumerate((0.7, 0.1, 0.2, 0.4)):
        assert pos[0, 128 * block].item() == pytest.approx(math.sin(value * 2 * math.pi), abs=1e-6)
        assert pos[0, 128 * block + 1].item() == pytest.approx(math.cos(value * 2 * math.pi), abs=1e-6)


def test_dynamic_params_split_80_64_8_then_biases_8_8_1() -> None:
    params = torch.arange(2 * 169, dtype=torch.float32).view(2, 169)
    weights, biases = split_dynamic_params(params)
    assert [tuple(w.shape) for w in weights] == [(16, 10, 1, 1), (16, 8, 1, 1), (2, 8, 1, 1)]
    assert [tuple(b.shape) for b in biases] == [(16,), (16,), (2,)]
    for q in range(2):
        base = 169 * q
        rows = slice(8 * q, 8 * q + 8)
        torch.testing.assert_close(weights[0][rows, :, 0, 0], base + torch.arange(80.0).view(8, 10))
        torch.testing.assert_close(weights[1][rows, :, 0, 0], base + 80 + torch.arange(64.0).view(8, 8))
        torch.testing.assert_close(weights[2][q, :, 0, 0], base + 144 + torch.arange(8.0))
        torch.testing.assert_close(biases[0][rows], base + 152 + torch.arange(8.0))
        torch.testing.assert_close(biases[1][rows], base + 160 + torch.arange(8.0))
        assert biases[2][q].item() == base + 168


def test_dynamic_mask_input_starts_with_relative_pixel_coordinates() -> None:
    h, w, image = 3, 5, (24, 40)
    features = torch.randn(1, 8, h, w)

    def copy_channel(channel: int) -> torch.Tensor:
        """Parameters of a dynamic network whose output is input channel ``channel`` (kept if >= 0)."""
        params = torch.zeros(169)
        params[channel] = 1.0  # layer 1: out 0 <- in channel
        params[80] = 1.0  # layer 2: out 0 <- in 0
        params[144] = 1.0  # layer 3: out <- in 0
        return params

    reference = torch.tensor([[1.0, 0.2], [0.3, 1.0]])  # query 0 reads dx, query 1 reads dy
    logits = dynamic_mask_logits(features, reference, torch.stack([copy_channel(0), copy_channel(1)]), image)
    assert logits.shape == (1, 2, 2 * h, 2 * w)
    # Odd output pixels (2i+1, 2j+1) sit exactly on stride-8 feature pixel (i, j), centre (8j+4, 8i+4).
    dx = torch.tensor([1.0 * 40 - (8 * j + 4) for j in range(w)]).expand(h, w)
    dy = torch.tensor([1.0 * 24 - (8 * i + 4) for i in range(h)])[:, None].expand(h, w)
    torch.testing.assert_close(logits[0, 0, 1::2, 1::2], dx, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[0, 1, 1::2, 1::2], dy, rtol=0, atol=1e-5)


def test_window_partition_round_trip_and_shift_mask() -> None:
    x = torch.randn(2, 14, 21, 3)
    windows = window_partition(x, 7)
    assert windows.shape == (12, 49, 3)
    torch.testing.assert_close(windows[1].view(7, 7, 3), x[0, :7, 7:14])
    torch.testing.assert_close(window_reverse(windows, 7, 14, 21), x)
    mask = shifted_window_mask(14, 14, 7, 3)
    assert mask.shape == (4, 49, 49)
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    # The bottom-right window holds 4 regions of 4x4, 4x3, 3x4 and 3x3 tokens.
    same = (mask[3] == 0).sum().item()
    assert same == 16**2 + 12**2 + 12**2 + 9**2
    assert set(mask.unique().tolist()) == {0.0, -100.0}


def test_swin_pads_sizes_that_windows_and_merging_do_not_divide() -> None:
    torch.manual_seed(0)
    swin = SwinTransformer(SWIN_VARIANTS["swin_test"]).eval()
    with torch.no_grad():
        maps = swin(torch.randn(1, 3, 100, 150))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 13, 19), (1, 128, 7, 10), (1, 256, 4, 5)]
    assert all(torch.isfinite(m).all() for m in maps)


def test_fusion_ignores_padded_text_tokens_on_the_image_side() -> None:
    torch.manual_seed(0)
    attn = BiMultiHeadAttention(v_dim=16, l_dim=16, embed_dim=32, num_heads=4).eval()
    vis, lang = torch.randn(1, 6, 16), torch.randn(1, 5, 16)
    padding = torch.tensor([[False, False, False, True, True]])
    changed = lang.clone()
    changed[0, 3:] = 3 * torch.randn(2, 16)
    with torch.no_grad():
        delta_v, _ = attn(vis, lang, padding)
        delta_v_changed, _ = attn(vis, changed, padding)
    torch.testing.assert_close(delta_v, delta_v_changed)


def test_contrastive_logits_pad_with_minus_inf() -> None:
    visual, text = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
    mask = torch.tensor([[True, True, False, True]])
    logits = ContrastiveEmbed(None, False, max_text_len=6)(visual, text, mask)
    assert logits.shape == (1, 3, 6)
    torch.testing.assert_close(logits[0, :, [0, 1, 3]], (visual @ text.transpose(1, 2))[0, :, [0, 1, 3]])
    assert (logits[0, :, [2, 4, 5]] == float("-inf")).all()


def test_proposals_at_the_border_are_invalid() -> None:
    memory = torch.ones(1, 120 + 4, 2)
    output, proposals = encoder_output_proposals(memory, [(1, 120), (2, 2)])
    # Centres (j + 0.5) / 120 outside (0.01, 0.99): j = 0 and j = 119. Height 1 gives cy = 0.5.
    invalid = torch.isinf(proposals[0]).all(-1)
    assert invalid.nonzero().flatten().tolist() == [0, 119]
    assert (output[0, invalid] == 0).all() and (output[0, ~invalid] == 1).all()
    cx, cy, w, h = proposals[0, 1].sigmoid().tolist()
    assert (cx, cy, w, h) == pytest.approx((1.5 / 120, 0.5, 0.05, 0.05), abs=1e-6)
    torch.testing.assert_close(proposals[0, 120:, 2:].sigmoid(), torch.full((4, 2), 0.1))


def test_rela_blocks_where_the_region_mask_is_off_and_unblocks_empty_rows() -> None:
    rela = ReLA(num_queries=2, hidden_dim=8, nheads=2, dim_feedforward=16, dec_layers=1)
    with torch.no_grad():
        for layer in rela.mask_embed.layers:
            layer.weight.zero_()
            layer.bias.zero_()
        rela.mask_embed.layers[-1].bias.fill_(1.0)  # every query's mask embedding is all ones
    features = -torch.ones(1, 8, 4, 6)
    features[..., :3] = 1.0  # left half on
    blocked = rela._blocked(torch.zeros(1, 2, 8), features, (4, 6))
    assert blocked.shape == (2, 2, 24)  # batch * heads, queries, pixels
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[:, 3:] = True
    assert (blocked == expected.flatten()).all()
    # A mask that is off everywhere would block the whole row: TAO unblocks it instead.
    assert not rela._blocked(torch.zeros(1, 2, 8), -torch.ones(1, 8, 4, 6), (4, 6)).any()
