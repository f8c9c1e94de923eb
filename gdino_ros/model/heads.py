"""Small shared pieces: the MLP used by every box/parameter head, inverse sigmoid, the contrastive head."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gdino_ros.model.config import LogScale


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (TAO's ``MLP``, parameters ``layers.{i}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., input_dim] -> [..., output_dim]."""
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def static_shape(tensor: torch.Tensor) -> tuple[int, ...]:
    """Return the shape as Python ints.

    While ``torch.onnx.export`` traces, ``tensor.shape`` yields traced values that turn into Shape/Gather
    nodes; converting them freezes the size into the graph, which TAO's batch-1, fixed-size engine
    allows, and which the dynamic mask convolutions need (ONNX Conv requires a kernel of known shape).
    """
    return tuple(int(s) for s in tensor.shape)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms to >= eps, as TAO does."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


# TAO's initial class bias: the logit of a 1 % prior probability.
CLASS_BIAS_INIT = -math.log((1 - 0.01) / 0.01)


class ContrastiveEmbed(nn.Module):
    """TAO's contrastive class head: [B, Q, C] x [B, T, C] -> [B, Q, max_text_len] scaled dot products.

    ``log_scale`` "auto" divides by sqrt(C); a float makes a learnable ``log_scale`` parameter [1]
    (initialised to it) whose exp() multiplies; None leaves the dot products as they are.
    ``class_embed_bias`` adds a learnable ``bias`` [1]. Neither "auto" nor None has a parameter, which is
    why a checkpoint cannot tell them apart. Positions where ``text_token_mask`` [B, T] (bool, True = real
    token) is False, and the right padding up to ``max_text_len``, are -inf, so ``sigmoid`` gives 0 there.
    """

    def __init__(self, log_scale: LogScale, class_embed_bias: bool, max_text_len: int) -> None:
        super().__init__()
        self.max_text_len = max_text_len
        self.auto_scale = log_scale == "auto"
        self.log_scale = (
            nn.Parameter(torch.tensor([float(log_scale)])) if isinstance(log_scale, float) else None
        )
        self.bias = nn.Parameter(torch.tensor([CLASS_BIAS_INIT])) if class_embed_bias else None

    def forward(
        self, visual: torch.Tensor, text: torch.Tensor, text_token_mask: torch.Tensor
    ) -> torch.Tensor:
        """Return the logits [B, Q, max_text_len] (float32, -inf at padded tokens)."""
        logits = visual @ text.transpose(-1, -2)
        if self.auto_scale:
            logits = logits / math.sqrt(visual.shape[-1])
        elif self.log_scale is not None:
            logits = logits * self.log_scale.exp()
        if self.bias is not None:
            logits = logits + self.bias
        logits = logits.masked_fill(~text_token_mask[:, None, :], float("-inf"))
        # Unconditional, so that a graph traced at one text length pads correctly at every other.
        return F.pad(logits, (0, self.max_text_len - logits.shape[-1]), value=float("-inf"))
