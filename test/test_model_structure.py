"""The network's parameters mirror TAO 7.0.1's Mask GDINO checkpoint, and the config rejects bad sizes.

``data/tao_state_dict_keys.tsv`` lists every tensor of TAO's checkpoint (``model.model.`` prefix, shape,
dtype) as dumped from TAO's own ``MaskGDINOModel`` (design notes, tao_contract.md §5.5). The full-size
model is built on the meta device, so no weights are allocated.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from gdino_ros import contract
from gdino_ros.model import MaskGDINOConfig, MaskGroundingDINO
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


def test_full_model_state_dict_equals_tao_checkpoint_layout() -> None:
    expected = tao_keys()
    ours = our_keys(MaskGDINOConfig.full())
    assert len(expected) == 1086
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    mismatched = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert mismatched == {}


def test_full_model_parameter_count_matches_tao() -> None:
    with torch.device("meta"):
        model = MaskGroundingDINO(MaskGDINOConfig.full())
    # 184,989,944 parameters: the count of TAO's MaskGDINOModel with ReLA (tao_contract.md §5.5).
    assert sum(p.numel() for p in model.parameters()) == 184_989_944


def test_box_head_is_one_module_under_both_names() -> None:
    with torch.device("meta"):
        model = MaskGroundingDINO(MaskGDINOConfig.full())
    heads = list(model.bbox_embed) + list(model.transformer.decoder.bbox_embed)
    assert len(heads) == 12 and all(head is heads[0] for head in heads)
    # The two-stage box head is a separate copy (TAO's two_stage_bbox_embed_share=False).
    assert model.transformer.enc_out_bbox_embed is not heads[0]


def test_without_rela_the_rela_keys_disappear() -> None:
    expected = {k: v for k, v in tao_keys().items() if not k.startswith("rela.")}
    ours = our_keys(MaskGDINOConfig.full(num_region_queries=0))
    assert ours == expected
    assert len(tao_keys()) - len(expected) == 132


def test_controller_makes_169_parameters_per_query() -> None:
    assert NUM_DYNAMIC_PARAMS == 169
    assert tao_keys()["controller.layers.2.weight"][0] == (169, 256)


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
        ({"two_stage_type": "no"}, "two_stage_type must be 'standard'"),
        ({"has_mask": False}, "has_mask must be True"),
        ({"hidden_dim": 128}, "hidden_dim must be 256"),
        ({"num_feature_levels": 3}, "num_feature_levels must be >= 4"),
        ({"dec_layers": 1}, "dec_layers must be >= 2"),
        ({"max_text_len": 128}, "max_text_len must be 256"),
        ({"num_region_queries": -1}, "num_region_queries must be >= 0"),
        ({"input_height": 540}, "must be a multiple of 32"),
    ],
)
def test_config_rejects_sizes_tao_cannot_build(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MaskGDINOConfig.full(**changes)
