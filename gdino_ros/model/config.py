"""Architecture configuration of Mask Grounding DINO, with TAO 7.0.1's field names and defaults.

Field names follow TAO's ``model`` section (``config/grounding_dino/model.py`` plus the Mask GDINO
additions) so that a TAO spec maps onto this dataclass one to one. TAO fixes a few more choices in code
rather than in its config (post-norm, no dropout, ``embed_init_tgt``, shared decoder box head, separate
two-stage box head); those are not fields here because the checkpoint layout depends on them. Nor are
the TAO settings that Mask Grounding DINO allows one value of: ``two_stage_type`` ("standard"),
``has_mask`` (True), ``hidden_dim`` (256) and ``max_text_len`` (256); the last two are properties.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, TypeAlias

from gdino_ros import contract

# TAO's ``log_scale`` of the contrastive class head: None (no scaling), "auto" (divide by
# sqrt(hidden_dim)) or a float (the initial value of a learnable log-scale, multiplied in as exp()).
LogScale: TypeAlias = Literal["auto"] | float | None
# Transformer width. The dynamic mask head takes HIDDEN_DIM // 32 = 8 feature channels, which gives TAO's
# 169 controller parameters, and the decoder's query sine embedding is fixed at 4 x 128 features.
HIDDEN_DIM = 256


@dataclass(frozen=True)
class SwinSpec:
    """Size of one Swin Transformer variant (patch size 4, MLP ratio 4, no absolute position embedding)."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int


# TAO's name for the only backbone its Mask GDINO checkpoints use, plus a small test variant.
SWIN_VARIANTS: dict[str, SwinSpec] = {
    "swin_tiny_224_1k": SwinSpec(96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    # Not a TAO variant: a narrow Swin with the same structure (4 stages, shifted windows, padding) that
    # keeps unit tests fast on a CPU.
    "swin_test": SwinSpec(32, (2, 2, 2, 2), (1, 2, 4, 8), 7),
}


@dataclass(frozen=True)
class MaskGDINOConfig:
    """Hyper-parameters that determine the network's layers and tensor shapes.

    ``text_*`` fields are the BERT sizes (bert-base-uncased by default); ``input_height``/``input_width``
    are the image size the exported engine is built for (TAO's ``export.input_height/width``).
    """

    backbone: str = "swin_tiny_224_1k"
    # TAO's config defaults; the released checkpoint's model card sets "auto" and True (see ``full``).
    log_scale: LogScale = None
    class_embed_bias: bool = False
    num_feature_levels: int = 4
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    enc_n_points: int = 4
    dec_n_points: int = 4
    num_queries: int = contract.NUM_QUERIES
    pe_temperatureH: int = 20
    pe_temperatureW: int = 20
    num_select: int = contract.NUM_SELECT
    num_region_queries: int = 100
    text_encoder_type: str = contract.TEXT_ENCODER_TYPE
    text_vocab_size: int = 30522
    text_hidden_size: int = 768
    text_num_layers: int = 12
    text_num_heads: int = 12
    text_intermediate_size: int = 3072
    text_max_position_embeddings: int = 512
    text_type_vocab_size: int = 2
    input_height: int = contract.DEFAULT_INPUT_HEIGHT
    input_width: int = contract.DEFAULT_INPUT_WIDTH

    def __post_init__(self) -> None:
        """Reject combinations that TAO's network cannot be built with."""
        if self.backbone not in SWIN_VARIANTS:
            raise ValueError(
                f"backbone {self.backbone!r} is not supported; use one of {sorted(SWIN_VARIANTS)}"
            )
        if self.num_feature_levels < 4:
            raise ValueError(
                f"num_feature_levels must be >= 4 (3 Swin stages + the extra stride-2 level), "
                f"got {self.num_feature_levels}"
            )
        if self.dec_layers < 2:
            raise ValueError(
                f"dec_layers must be >= 2 (the final box is refined from layer -2), got {self.dec_layers}"
            )
        if self.num_region_queries < 0:
            raise ValueError(
                f"num_region_queries must be >= 0 (0 disables ReLA), got {self.num_region_queries}"
            )
        if not (
            self.log_scale is None
            or self.log_scale == "auto"
            or (isinstance(self.log_scale, float) and math.isfinite(self.log_scale))
        ):
            raise ValueError(f"log_scale must be None, 'auto' or a finite float, got {self.log_scale!r}")
        stride = 32
        if self.input_height % stride or self.input_width % stride:
            raise ValueError(
                f"input size {self.input_height}x{self.input_width} must be a multiple of {stride} "
                f"so that masks are exactly H/{contract.MASK_STRIDE} x W/{contract.MASK_STRIDE}"
            )

    @property
    def hidden_dim(self) -> int:
        """Transformer width: TAO's 256 (its 169 mask-controller parameters depend on it)."""
        return HIDDEN_DIM

    @property
    def max_text_len(self) -> int:
        """Text tokens: the engine's 256."""
        return contract.MAX_TEXT_LEN

    @property
    def head_spec(self) -> str:
        """The class head's spec as TAO's config writes it, e.g. ``log_scale=auto class_embed_bias=True``."""
        scale = "none" if self.log_scale is None else str(self.log_scale)
        return f"log_scale={scale} class_embed_bias={self.class_embed_bias}"

    @property
    def swin(self) -> SwinSpec:
        """The Swin variant named by ``backbone``."""
        return SWIN_VARIANTS[self.backbone]

    @property
    def has_rela(self) -> bool:
        """True when the ReLA no-target head exists (5-output engine)."""
        return self.num_region_queries > 0

    @property
    def output_names(self) -> tuple[str, ...]:
        """Engine output names of this network, in forward order."""
        return contract.RELA_OUTPUT_NAMES if self.has_rela else contract.OUTPUT_NAMES

    def replace(self, **changes: object) -> MaskGDINOConfig:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def full(cls, **changes: object) -> MaskGDINOConfig:
        """Return the released checkpoint's spec (NGC model card): TAO's defaults plus its class head.

        Swin-T, bert-base-uncased, 900 queries, ReLA with 100 queries, 544x960, and the contrastive head
        with ``log_scale="auto"`` and ``class_embed_bias=True`` (TAO's config defaults have neither).
        """
        card = cls(log_scale="auto", class_embed_bias=True)
        return dataclasses.replace(card, **changes)  # type: ignore[arg-type]

    @classmethod
    def tiny(cls, **changes: object) -> MaskGDINOConfig:
        """Return a small network config with the same interface, for tests on a CPU.

        Keeps 256 text tokens, the output names, 169 mask-controller parameters and ReLA; shrinks the
        backbone, BERT, the number of encoder layers, queries and FFN widths, and the input to 128x224.
        The class head is TAO's config default (no scale, no bias).
        BERT keeps the bert-base-uncased vocabulary so that real token ids work.
        """
        tiny = cls(
            backbone="swin_test",
            enc_layers=2,
            dim_feedforward=512,
            num_queries=50,
            num_select=50,
            num_region_queries=10,
            text_hidden_size=32,
            text_num_layers=2,
            text_num_heads=2,
            text_intermediate_size=64,
            input_height=128,
            input_width=224,
        )
        return dataclasses.replace(tiny, **changes)  # type: ignore[arg-type]


def parse_log_scale(text: str) -> LogScale:
    """``"auto"``, ``"none"`` or a number (TAO's spellings) -> :data:`LogScale`; ValueError otherwise."""
    lowered = text.strip().lower()
    if lowered == "auto":
        return "auto"
    if lowered == "none":
        return None
    try:
        value = float(lowered)
    except ValueError:
        raise ValueError(f"log_scale {text!r} is not 'auto', 'none' or a number") from None
    if not math.isfinite(value):
        raise ValueError(f"log_scale {text!r} must be finite")
    return value
