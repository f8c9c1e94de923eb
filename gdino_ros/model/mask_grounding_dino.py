"""Mask Grounding DINO assembled from its parts, with TAO's module names and its export-time forward.

``state_dict()`` keys equal TAO's checkpoint keys without the Lightning prefix ``model.model.``. The
forward is the one TAO exports (batch 1, unpadded image, no auxiliary outputs), including its quirk of
refining the final box from the reference *before* the last decoder layer's input (``references[-3]``),
and it is traceable by ``torch.onnx.export``: all shapes are static Python ints except the text length,
which the graph computes from its inputs (any length up to 256 runs, with the same outputs).
"""
from __future__ import annotations

import copy
from typing import cast

import torch
from torch import nn

from gdino_ros import contract
from gdino_ros.model.backbone import SwinTransformer
from gdino_ros.model.config import MaskGDINOConfig
from gdino_ros.model.heads import MLP, ContrastiveEmbed, inverse_sigmoid
from gdino_ros.model.mask_head import NUM_DYNAMIC_PARAMS, MaskHeadConv, dynamic_mask_logits
from gdino_ros.model.position_encoding import image_position_embedding
from gdino_ros.model.rela import NUM_RELA_LEVELS, ReLA
from gdino_ros.model.text_encoder import build_bert, encode_text
from gdino_ros.model.transformer import Transformer

GROUP_NORM_GROUPS = 32


class BackboneWrapper(nn.Module):
    """Holds the Swin body as ``body`` (TAO's ``Backbone`` inside a ``Joiner``, hence ``backbone.0.body``)."""

    def __init__(self, config: MaskGDINOConfig) -> None:
        super().__init__()
        self.body = SwinTransformer(config.swin)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[1, 3, H, W] -> the body's stride 8/16/32 maps."""
        return self.body(images)


def _input_projections(in_channels: list[int], num_levels: int, hidden_dim: int) -> nn.ModuleList:
    """1x1 conv + GroupNorm per backbone level, then 3x3 stride-2 conv + GroupNorm for each extra level."""
    convs = [nn.Conv2d(c, hidden_dim, kernel_size=1) for c in in_channels]
    channels = in_channels[-1]
    for _ in range(num_levels - len(in_channels)):
        convs.append(nn.Conv2d(channels, hidden_dim, kernel_size=3, stride=2, padding=1))
        channels = hidden_dim
    for conv in convs:
        nn.init.xavier_uniform_(conv.weight)
        nn.init.zeros_(cast(torch.Tensor, conv.bias))
    return nn.ModuleList(nn.Sequential(conv, nn.GroupNorm(GROUP_NORM_GROUPS, hidden_dim)) for conv in convs)


def _init_linears(mlp: MLP) -> None:
    """Xavier weights and zero biases (TAO's init of the mask controller)."""
    for name, param in mlp.named_parameters():
        if name.endswith("weight"):
            nn.init.xavier_uniform_(param)
        else:
            nn.init.zeros_(param)


class MaskGroundingDINO(nn.Module):
    """Swin-T + BERT + deformable DETR with text fusion, dynamic-conv masks and (optionally) ReLA.

    Build with :class:`MaskGDINOConfig`; weights are random until a checkpoint is loaded. Use in eval mode.
    """

    def __init__(self, config: MaskGDINOConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_dim
        backbone = BackboneWrapper(config)
        self.backbone = nn.ModuleList([backbone])
        self.input_proj = _input_projections(backbone.body.out_channels, config.num_feature_levels, hidden)
        self.bert = build_bert(config)
        self.feat_map = nn.Linear(config.text_hidden_size, hidden)
        nn.init.xavier_uniform_(self.feat_map.weight)
        nn.init.zeros_(self.feat_map.bias)
        self.transformer = Transformer(config)

        box_head = MLP(hidden, hidden, 4, 3)
        for param in box_head.layers[-1].parameters():
            nn.init.zeros_(param)
        # One MLP shared by every decoder layer, registered under both names (as TAO does).
        self.bbox_embed = nn.ModuleList([box_head] * config.dec_layers)
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.transformer.enc_out_bbox_embed = copy.deepcopy(box_head)
        # Likewise one contrastive class head for all decoder layers (it has parameters only with
        # class_embed_bias or a learnable log_scale); query selection has its own in the transformer.
        class_head = ContrastiveEmbed(config.log_scale, config.class_embed_bias, config.max_text_len)
        self.class_embed = nn.ModuleList([class_head] * config.dec_layers)
        self.transformer.decoder.class_embed = self.class_embed

        self.controller = MLP(hidden, hidden, NUM_DYNAMIC_PARAMS, 3)
        _init_linears(self.controller)
        self.mask_head = MaskHeadConv(hidden)
        self.rela = (
            ReLA(config.num_region_queries, hidden, config.nheads, config.dim_feedforward, config.dec_layers)
            if config.has_rela
            else None
        )

    def _check_inputs(
        self,
        inputs: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        text_token_mask: torch.Tensor,
    ) -> None:
        """Raise ValueError naming the first input whose shape or dtype breaks the engine contract.

        The text inputs may have any length T from 1 to ``max_text_len`` (the same for all five): the
        network is length-generic, and a prompt shorter than ``max_text_len`` tokens runs on its real
        tokens plus one padding token (docs/engine_contract.md#text-length).
        """
        if inputs.dim() != 4 or inputs.shape[0] != contract.BATCH_SIZE or inputs.shape[1] != 3:
            raise ValueError(
                f"{contract.INPUT_IMAGE} must be float32 [1, 3, H, W] (batch 1), got {tuple(inputs.shape)}"
            )
        t, longest = int(input_ids.shape[-1]), self.config.max_text_len
        if not 1 <= t <= longest:
            raise ValueError(
                f"{contract.INPUT_IDS} must be {torch.int64} [1, T] with T from 1 to {longest} tokens, got "
                f"{list(input_ids.shape)}; build the text inputs with gdino_ros.core.prompt"
            )
        expected = {
            contract.INPUT_IDS: (input_ids, (1, t), torch.int64),
            contract.ATTENTION_MASK: (attention_mask, (1, t), torch.bool),
            contract.POSITION_IDS: (position_ids, (1, t), torch.int64),
            contract.TOKEN_TYPE_IDS: (token_type_ids, (1, t), torch.int64),
            contract.TEXT_TOKEN_MASK: (text_token_mask, (1, t, t), torch.bool),
        }
        for name, (tensor, shape, dtype) in expected.items():
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise ValueError(
                    f"{name} must be {dtype} {list(shape)} (T = {t} tokens, as {contract.INPUT_IDS}), got "
                    f"{tensor.dtype} {list(tensor.shape)}; build the text inputs with gdino_ros.core.prompt"
                )

    def forward(
        self,
        inputs: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        text_token_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """Run the network on one image and one tokenised prompt (names and dtypes as in ``contract``).

        ``inputs`` is float32 [1, 3, H, W] normalised RGB; ``input_ids``, ``position_ids`` and
        ``token_type_ids`` are int64 [1, T]; ``attention_mask`` is bool [1, T], True for real tokens;
        ``text_token_mask`` is bool [1, T, T] phrase blocks. T is 256, or the prompt's real tokens plus
        one padding token: the outputs are the same.

        Returns:
            ``pred_logits`` [1, Q, 256] (-inf at padding), ``pred_boxes`` [1, Q, 4] (cx, cy, w, h) in [0, 1],
            ``pred_masks`` [1, Q, 1, H/4, W/4] logits, and with ReLA also ``no_targets`` [1, 2] and
            ``union_mask_logits`` [1, 2, H/8, W/8]; the order of ``config.output_names``.
        """
        self._check_inputs(inputs, input_ids, attention_mask, position_ids, token_type_ids, text_token_mask)
        config = self.config
        image_size = (int(inputs.shape[2]), int(inputs.shape[3]))
        token_mask = attention_mask.bool()
        text = self.feat_map(encode_text(self.bert, input_ids, token_type_ids, position_ids, text_token_mask))

        features = self.backbone[0](inputs)
        srcs = [proj(feature) for proj, feature in zip(self.input_proj, features, strict=False)]
        for level in range(len(features), config.num_feature_levels):
            srcs.append(self.input_proj[level](features[-1] if level == len(features) else srcs[-1]))
        half = config.hidden_dim // 2
        pos = [
            image_position_embedding(
                s.shape[2], s.shape[3], half, config.pe_temperatureH, config.pe_temperatureW, inputs.device
            )
            for s in srcs
        ]
        out = self.transformer(srcs, pos, text, token_mask, text_token_mask, position_ids)

        last = len(out.hs) - 1
        pred_logits = self.class_embed[last](out.hs[last], out.text, token_mask)
        # TAO's export path refines the last layer's output from references[last - 1], i.e. the reference
        # that went *into* the second-to-last layer, not the last layer's own input reference.
        box_logits = self.bbox_embed[last](out.hs[last]) + inverse_sigmoid(out.references[last - 1])
        pred_boxes = box_logits.sigmoid()

        shapes = [(int(s.shape[2]), int(s.shape[3])) for s in srcs]
        memory_levels = torch.split(out.memory, [h * w for h, w in shapes], dim=1)
        maps = [
            m.transpose(1, 2).reshape(m.shape[0], -1, h, w)
            for m, (h, w) in zip(memory_levels[:NUM_RELA_LEVELS], shapes[:NUM_RELA_LEVELS], strict=True)
        ]
        mask_features, mask_input = self.mask_head(maps)
        params = self.controller(out.hs[-1])
        # Masks are centred on the reference the last decoder layer received (references[-2]).
        reference_xy = out.references[-2][0, :, :2]
        pred_masks = dynamic_mask_logits(mask_input, reference_xy, params[0], image_size).unsqueeze(2)
        outputs: tuple[torch.Tensor, ...] = (pred_logits, pred_boxes, pred_masks)
        if self.rela is not None:
            finest = list(range(NUM_RELA_LEVELS))[::-1]  # coarse to fine: strides 32, 16, 8
            no_targets, union_mask_logits = self.rela(
                [memory_levels[i] for i in finest],
                [pos[i].flatten(2).transpose(1, 2) for i in finest],
                [shapes[i] for i in finest],
                mask_features,
                out.text,
                token_mask,
                config.max_text_len,
            )
            outputs += (no_targets, union_mask_logits)
        return outputs
