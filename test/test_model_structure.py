"""The network's parameters mirror TAO 7.0.1's Mask GDINO checkpoint, and the config rejects bad sizes.

``data/tao_state_dict_keys.tsv`` lists every tensor of TAO's checkpoint (``model.model.`` prefix, shape,
dtype) as dumped from TAO's own ``MaskGDINOModel`` (docs/engine_contract.md#checkpoint-layout). The full-size
model is built on the meta device, so no weights are allocated.
"""
from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gdino_ros import contract
from gdino_ros.model import MaskGDINOConfig, MaskGroundingDINO
from gdino_ros.model.config import LogScale, parse_log_scale
from gdino_ros.model.heads import ContrastiveEmbed
from gdino_ros.model.mask_head import NUM_DYNAMIC_PARAMS

TSV = Path(__file__).parent / "data" / "tao_state_dict_keys.tsv"
PREFIX = "model.model."


def tao_keys() -> dict[str, tuple[tuple[int, ...], str]]:
    entries = {}
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        assert key.startswith(PREFIX), key
        entries[key[len(PREFIX):]] = (tuple(ast.literal_eval(shape)), dtype)
    return entries


def our_keys(config: MaskGDINOConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    with torch.device("meta"):
        model = MaskGroundingDINO(config)
    return {
        key: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for key, t in model.state_dict().items()
    }


# The model card's class head adds one bias per head: 6 decoder heads under two names + query selection.
BIAS_KEYS = 13


def _is_class_bias(key: str) -> bool:
    return "class_embed" in key and key.endswith(".bias")


def _assert_same_layout(ours: dict[str, object], expected: dict[str, object]) -> None:
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    mismatched = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert mismatched == {}


def test_full_model_state_dict_equals_tao_checkpoint_layout() -> None:
    """The model card's spec (log_scale auto, class_embed_bias True): all 1,099 keys of TAO's file."""
    expected = tao_keys()
    assert len(expected) == 1099
    assert sum(map(_is_class_bias, expected)) == BIAS_KEYS
    assert all(expected[k] == ((1,), "float32") for k in expected if _is_class_bias(k))
    _assert_same_layout(our_keys(MaskGDINOConfig.full()), expected)


def test_taos_config_default_head_has_no_class_bias_keys() -> None:
    expected = {k: v for k, v in tao_keys().items() if not _is_class_bias(k)}
    assert len(expected) == 1086
    for log_scale in (None, "auto"):  # "auto" has no parameter, so it leaves no key either
        config = MaskGDINOConfig.full(log_scale=log_scale, class_embed_bias=False)
        _assert_same_layout(our_keys(config), expected)


def test_learnable_log_scale_adds_one_key_per_head() -> None:
    ours = our_keys(MaskGDINOConfig.full(log_scale=0.0))
    scales = sorted(k for k in ours if k.endswith(".log_scale"))
    assert len(scales) == BIAS_KEYS and all(ours[k] == ((1,), "float32") for k in scales)
    assert "transformer.enc_out_class_embed.log_scale" in scales
    assert set(ours) - set(scales) == set(tao_keys())


@pytest.mark.parametrize(
    ("config", "count"),
    [
        # 184,989,944: TAO's MaskGDINOModel with ReLA and its config-default head;
        # the card's spec adds two scalar biases (the decoder's shared one and query selection's).
        (MaskGDINOConfig.full(log_scale=None, class_embed_bias=False), 184_989_944),
        (MaskGDINOConfig.full(), 184_989_946),
    ],
)
def test_full_model_parameter_count_matches_tao(config: MaskGDINOConfig, count: int) -> None:
    with torch.device("meta"):
        model = MaskGroundingDINO(config)
    assert sum(p.numel() for p in model.parameters()) == count


def test_box_head_is_one_module_under_both_names() -> None:
    with torch.device("meta"):
        model = MaskGroundingDINO(MaskGDINOConfig.full())
    heads = list(model.bbox_embed) + list(model.transformer.decoder.bbox_embed)
    assert len(heads) == 12 and all(head is heads[0] for head in heads)
    # The two-stage box head is a separate copy (TAO's two_stage_bbox_embed_share=False).
    assert model.transformer.enc_out_bbox_embed is not heads[0]
    classes = list(model.class_embed) + list(model.transformer.decoder.class_embed)
    assert len(classes) == 12 and all(head is classes[0] for head in classes)
    assert model.transformer.enc_out_class_embed is not classes[0]


@pytest.mark.parametrize("class_embed_bias", [True, False])
def test_without_rela_the_rela_keys_disappear(class_embed_bias: bool) -> None:
    expected = {
        k: v for k, v in tao_keys().items()
        if not k.startswith("rela.") and (class_embed_bias or not _is_class_bias(k))
    }
    ours = our_keys(MaskGDINOConfig.full(num_region_queries=0, class_embed_bias=class_embed_bias))
    assert ours == expected
    assert sum(k.startswith("rela.") for k in tao_keys()) == 132


VISUAL = torch.tensor([[[1.0, 2.0, 0.0, 1.0], [0.0, -1.0, 3.0, 2.0]]])  # [B=1, Q=2, C=4]
TEXT = torch.tensor([[[1.0, 0.0, 1.0, 0.0], [2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 1.0]]])  # [1, T=3, 4]
DOTS = [[1.0, 3.0, 1.0], [3.0, -3.0, 2.0]]  # VISUAL @ TEXT^T by hand
REAL_TOKENS = torch.tensor([[True, True, False]])
BIAS = -math.log(99.0)  # TAO's init: the logit of a 1 % prior


@pytest.mark.parametrize(
    ("log_scale", "class_embed_bias", "transform"),
    [
        (None, False, lambda d: d),
        ("auto", False, lambda d: d / 2.0),  # divided by sqrt(C) = sqrt(4)
        (0.5, False, lambda d: d * math.exp(0.5)),
        ("auto", True, lambda d: d / 2.0 + BIAS),
        (-1.0, True, lambda d: d * math.exp(-1.0) + BIAS),
        (None, True, lambda d: d + BIAS),
    ],
)
def test_contrastive_head_scaling_and_bias_by_hand(
    log_scale: LogScale, class_embed_bias: bool, transform: Callable[[float], float]
) -> None:
    head = ContrastiveEmbed(log_scale, class_embed_bias, max_text_len=5)
    with torch.no_grad():
        got = head(VISUAL, TEXT, REAL_TOKENS)
    inf = float("-inf")
    want = torch.tensor([[[transform(row[0]), transform(row[1]), inf, inf, inf] for row in DOTS]])
    torch.testing.assert_close(got, want)
    assert {name for name, _ in head.named_parameters()} == (
        ({"log_scale"} if isinstance(log_scale, float) else set()) | ({"bias"} if class_embed_bias else set())
    )


@pytest.mark.parametrize(
    ("text", "value"), [("auto", "auto"), ("AUTO", "auto"), ("none", None), ("0.25", 0.25), ("-1", -1.0)]
)
def test_log_scale_spellings(text: str, value: LogScale) -> None:
    assert parse_log_scale(text) == value


@pytest.mark.parametrize("text", ["", "sqrt", "nan", "inf"])
def test_log_scale_spelling_errors(text: str) -> None:
    with pytest.raises(ValueError, match="log_scale"):
        parse_log_scale(text)


def test_controller_makes_169_parameters_per_query() -> None:
    assert NUM_DYNAMIC_PARAMS == 169
    assert tao_keys()["controller.layers.2.weight"][0] == (169, 256)


def test_settings_with_one_value_are_not_fields() -> None:
    names = {field.name for field in dataclasses.fields(MaskGDINOConfig)}
    assert not names & {"two_stage_type", "has_mask", "hidden_dim", "max_text_len"}
    assert MaskGDINOConfig.tiny().hidden_dim == 256 and MaskGDINOConfig.tiny().max_text_len == 256


def test_configs_keep_the_engine_interface() -> None:
    full, tiny = MaskGDINOConfig.full(), MaskGDINOConfig.tiny()
    assert full.input_height == contract.DEFAULT_INPUT_HEIGHT
    assert full.input_width == contract.DEFAULT_INPUT_WIDTH
    assert full.num_queries == contract.NUM_QUERIES and full.num_region_queries == 100
    for config in (full, tiny):
        assert config.max_text_len == contract.MAX_TEXT_LEN
        assert config.output_names == contract.RELA_OUTPUT_NAMES
        assert config.text_vocab_size == 30522
    assert full.replace(num_region_queries=0).output_names == contract.OUTPUT_NAMES


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backbone": "resnet_50"}, "backbone 'resnet_50' is not supported"),
        ({"num_feature_levels": 3}, "num_feature_levels must be >= 4"),
        ({"dec_layers": 1}, "dec_layers must be >= 2"),
        ({"num_region_queries": -1}, "num_region_queries must be >= 0"),
        ({"input_height": 540}, "must be a multiple of 32"),
        ({"log_scale": "none"}, "log_scale must be None, 'auto' or a finite float"),
        ({"log_scale": float("inf")}, "log_scale must be None, 'auto' or a finite float"),
    ],
)
def test_config_rejects_sizes_tao_cannot_build(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MaskGDINOConfig.full(**changes)
