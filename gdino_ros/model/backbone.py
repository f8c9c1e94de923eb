"""Swin Transformer backbone as TAO builds it for Grounding DINO (``backbone.0.body``).

Four stages with shifted-window attention and patch merging; stages 1-3 (strides 8, 16, 32) are
returned, each through its own LayerNorm ``norm1..norm3``. Feature maps whose size is not a multiple
of the window are padded at the bottom/right for attention and cropped afterwards, and odd sizes are
padded before patch merging, so any input size works.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gdino_ros.model.config import SwinSpec

PATCH_SIZE = 4
MLP_RATIO = 4.0
OUT_INDICES = (1, 2, 3)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of window) -> [B*nW, window*window, C]."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """[B*nW, window*window, C] -> [B, H, W, C]; the inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def shifted_window_mask(hp: int, wp: int, window: int, shift: int) -> torch.Tensor:
    """Additive mask [nW, window^2, window^2]: -100 between tokens that the cyclic shift made neighbours.

    The region map is filled in numpy so that the ONNX tracer records one constant, not slice writes
    (an empty slice, when the map is a single window, breaks the exporter's shape inference).
    """
    img = np.zeros((1, hp, wp, 1), dtype=np.float32)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    region = 0
    for hs in bounds:
        for ws in bounds:
            img[:, hs, ws, :] = region
            region += 1
    windows = window_partition(torch.from_numpy(img), window).squeeze(-1)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    relative_position_index: torch.Tensor

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        grid = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        coords = torch.stack(grid).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * window - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """[B*nW, N, C] windows (mask [nW, N, N] additive or None) -> [B*nW, N, C]."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(bw // num_windows, num_windows, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    """Linear - GELU - Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., dim] -> [..., dim]."""
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention block followed by a pre-norm MLP block."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * MLP_RATIO))

    def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor) -> torch.Tensor:
        """[B, h*w, C] -> [B, h*w, C]; ``mask`` is the shifted-window mask of the padded map."""
        b, _, c = x.shape
        win = self.window
        y = self.norm1(x).view(b, h, w, c)
        pad_b, pad_r = (win - h % win) % win, (win - w % win) % win
        y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, win), mask if self.shift else None)
        y = window_reverse(y, win, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        y = y[:, :h, :w, :].reshape(b, h * w, c)
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm -> Linear(4C, 2C): halves the resolution (odd sizes padded)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """[B, h*w, C] -> [B, ceil(h/2)*ceil(w/2), 2C]."""
        b, _, c = x.shape
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """One stage: ``depth`` blocks alternating plain and shifted windows, then optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, downsample: bool) -> None:
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2) for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """[B, h*w, C] -> (stage output [B, h*w, C], next stage input, its h, its w)."""
        win = self.window
        hp, wp = -(-h // win) * win, -(-w // win) * win
        mask = shifted_window_mask(hp, wp, win, win // 2).to(x.device, x.dtype)
        for block in self.blocks:
            x = block(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """4x4 stride-4 convolution (input padded to a multiple of 4) followed by LayerNorm."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, C, ceil(H/4), ceil(W/4)]."""
        h, w = images.shape[-2:]
        images = F.pad(images, (0, (-w) % PATCH_SIZE, 0, (-h) % PATCH_SIZE))
        x = self.proj(images)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SwinTransformer(nn.Module):
    """Swin backbone returning the normalised maps of stages 1, 2 and 3 (strides 8, 16, 32)."""

    def __init__(self, spec: SwinSpec) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(spec.embed_dim)
        stages = len(spec.depths)
        self.num_channels = [spec.embed_dim * 2**i for i in range(stages)]
        self.layers = nn.ModuleList(
            SwinStage(
                self.num_channels[i],
                spec.depths[i],
                spec.num_heads[i],
                spec.window_size,
                downsample=i < stages - 1,
            )
            for i in range(stages)
        )
        for i in OUT_INDICES:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_channels[i]))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Initialise like TAO's Swin (timm's ViT init): truncated-normal linears, unit LayerNorms."""
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def out_channels(self) -> list[int]:
        """Channels of the returned maps."""
        return [self.num_channels[i] for i in OUT_INDICES]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, H, W] -> maps [B, C_i, H_i, W_i] of stages 1-3 (strides 8, 16, 32, sizes rounded up)."""
        x = self.patch_embed(images)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        outs = []
        for i, stage in enumerate(self.layers):
            out, x, next_h, next_w = stage(x, h, w)
            if i in OUT_INDICES:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous())
            h, w = next_h, next_w
        return outs
