"""The tiny network's forward pass on a real photo and real bert-base-uncased token ids.

Token ids come from ``BertTokenizerFast`` over the bert-base-uncased vocabulary; ``position_ids`` and
``text_token_mask`` are built here by the contract's rule (docs/engine_contract.md#text-inputs),
independently of ``gdino_ros.core.prompt``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from transformers import BertTokenizerFast

from gdino_ros import contract
from gdino_ros.model import MaskGDINOConfig, MaskGroundingDINO
from gdino_ros.model.transformer import TransformerOutput

PHRASES = "cup . red bottle ."
EXPRESSION = "the man on the left holding a red umbrella ."


def encode_caption(tokenizer: BertTokenizerFast, caption: str) -> dict[str, torch.Tensor]:
    """The five text inputs for ``caption``, per docs/engine_contract.md#text-inputs."""
    t = contract.MAX_TEXT_LEN
    ids = tokenizer(caption, padding="max_length", max_length=t)["input_ids"][:t]
    mask = torch.eye(t, dtype=torch.bool)
    positions = torch.zeros(t, dtype=torch.int64)
    previous = 0
    for col in [i for i, token in enumerate(ids) if token in contract.DELIMITER_IDS]:
        if col in (0, t - 1):
            mask[col, col] = True
        else:
            mask[previous + 1 : col + 1, previous + 1 : col + 1] = True
            positions[previous + 1 : col + 1] = torch.arange(col - previous)
        previous = col
    input_ids = torch.tensor([ids], dtype=torch.int64)
    return {
        contract.INPUT_IDS: input_ids,
        contract.ATTENTION_MASK: input_ids != contract.PAD_ID,
        contract.POSITION_IDS: positions[None],
        contract.TOKEN_TYPE_IDS: torch.zeros_like(input_ids),
        contract.TEXT_TOKEN_MASK: mask[None],
    }


def photo(height: int, width: int) -> torch.Tensor:
    """skimage's astronaut, stretched to (height, width) and normalised like the engine input."""
    rgb = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 255
    rgb = F.interpolate(rgb, size=(height, width), mode="bilinear", align_corners=False)
    mean = torch.tensor(contract.IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(contract.IMAGE_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std


@pytest.fixture(scope="module")
def tokenizer(vocab_path: Path) -> BertTokenizerFast:
    return BertTokenizerFast(str(vocab_path))


@pytest.fixture(scope="module")
def tiny_model() -> MaskGroundingDINO:
    torch.manual_seed(0)
    return MaskGroundingDINO(MaskGDINOConfig.tiny()).eval()


def run(model: MaskGroundingDINO, tokenizer: BertTokenizerFast, caption: str) -> tuple[torch.Tensor, ...]:
    config = model.config
    inputs = {contract.INPUT_IMAGE: photo(config.input_height, config.input_width)}
    inputs.update(encode_caption(tokenizer, caption))
    with torch.no_grad():
        return model(*(inputs[name] for name in contract.INPUT_NAMES))


def test_encoded_caption_follows_the_contract_example(tokenizer: BertTokenizerFast) -> None:
    # docs/engine_contract.md#text-inputs: "cat . dog ." -> blocks {0}, {1,2}, {3,4}, {5};
    # positions 0,0,1,0,1,0.
    text = encode_caption(tokenizer, "cat . dog .")
    assert text[contract.POSITION_IDS][0, :7].tolist() == [0, 0, 1, 0, 1, 0, 0]
    block = text[contract.TEXT_TOKEN_MASK][0, :7, :7].int().tolist()
    assert block[1][:4] == [0, 1, 1, 0] and block[3][:6] == [0, 0, 0, 1, 1, 0] and block[5][5] == 1
    assert text[contract.ATTENTION_MASK][0].sum() == 6


@pytest.mark.parametrize("caption", [PHRASES, EXPRESSION])
def test_outputs_have_the_contract_shapes_and_dtypes(
    tiny_model: MaskGroundingDINO, tokenizer: BertTokenizerFast, caption: str
) -> None:
    config = tiny_model.config
    h, w, q = config.input_height, config.input_width, config.num_queries
    outputs = run(tiny_model, tokenizer, caption)
    shapes = {
        contract.PRED_LOGITS: (1, q, contract.MAX_TEXT_LEN),
        contract.PRED_BOXES: (1, q, 4),
        contract.PRED_MASKS: (1, q, 1, h // contract.MASK_STRIDE, w // contract.MASK_STRIDE),
        contract.NO_TARGETS: (1, 2),
        contract.UNION_MASK_LOGITS: (1, 2, h // contract.UNION_MASK_STRIDE, w // contract.UNION_MASK_STRIDE),
    }
    assert len(outputs) == len(contract.RELA_OUTPUT_NAMES)
    for name, output in zip(contract.RELA_OUTPUT_NAMES, outputs, strict=True):
        assert tuple(output.shape) == shapes[name], name
        assert output.dtype == torch.float32, name


@pytest.mark.parametrize("caption", [PHRASES, EXPRESSION])
def test_logits_are_minus_inf_exactly_at_padding(
    tiny_model: MaskGroundingDINO, tokenizer: BertTokenizerFast, caption: str
) -> None:
    real = encode_caption(tokenizer, caption)[contract.ATTENTION_MASK][0]
    logits = run(tiny_model, tokenizer, caption)[0][0]
    assert torch.isfinite(logits[:, real]).all()
    assert (logits[:, ~real] == float("-inf")).all()
    assert int(real.sum()) == len(tokenizer(caption)["input_ids"])


@pytest.mark.parametrize("caption", [PHRASES, EXPRESSION])
def test_boxes_masks_and_rela_outputs_are_finite_and_in_range(
    tiny_model: MaskGroundingDINO, tokenizer: BertTokenizerFast, caption: str
) -> None:
    _, boxes, masks, no_targets, union = run(tiny_model, tokenizer, caption)
    assert ((boxes >= 0) & (boxes <= 1)).all()
    for tensor in (masks, no_targets, union):
        assert torch.isfinite(tensor).all()
    # Random weights still give masks that differ between queries and over the image.
    assert masks.std(dim=(2, 3, 4)).min() > 0
    assert masks[0, :, 0].std(dim=0).max() > 0


def test_forward_is_deterministic_in_eval_mode(
    tiny_model: MaskGroundingDINO, tokenizer: BertTokenizerFast
) -> None:
    first = run(tiny_model, tokenizer, PHRASES)
    second = run(tiny_model, tokenizer, PHRASES)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_prompt_changes_the_outputs(tiny_model: MaskGroundingDINO, tokenizer: BertTokenizerFast) -> None:
    phrases = run(tiny_model, tokenizer, PHRASES)
    expression = run(tiny_model, tokenizer, EXPRESSION)
    assert not torch.allclose(phrases[1], expression[1])
    assert not torch.allclose(phrases[3], expression[3])


def test_final_box_is_refined_from_the_fifth_reference(tokenizer: BertTokenizerFast) -> None:
    """TAO's export path: box = sigmoid(bbox_embed(hs[5]) + logit(references[4])), not references[5]."""
    torch.manual_seed(1)
    tiny_model = MaskGroundingDINO(MaskGDINOConfig.tiny()).eval()
    # TAO zero-initialises the box head's last layer, which would make every reference equal.
    torch.nn.init.normal_(tiny_model.bbox_embed[0].layers[-1].weight, std=0.1)
    captured: list[TransformerOutput] = []
    hook = tiny_model.transformer.register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        boxes = run(tiny_model, tokenizer, PHRASES)[1]
    finally:
        hook.remove()
    out = captured[0]
    assert len(out.hs) == 6 and len(out.references) == 7

    def refine(reference: torch.Tensor) -> torch.Tensor:
        r = reference.clamp(0, 1)
        logit = torch.log(r.clamp(min=1e-5) / (1 - r).clamp(min=1e-5))
        with torch.no_grad():
            return (tiny_model.bbox_embed[5](out.hs[5]) + logit).sigmoid()

    torch.testing.assert_close(boxes, refine(out.references[4]), rtol=0, atol=1e-6)
    assert not torch.allclose(boxes, refine(out.references[5]), atol=1e-4)


def test_without_rela_the_forward_returns_three_outputs(tokenizer: BertTokenizerFast) -> None:
    torch.manual_seed(0)
    model = MaskGroundingDINO(MaskGDINOConfig.tiny(num_region_queries=0)).eval()
    assert model.rela is None
    outputs = run(model, tokenizer, EXPRESSION)
    assert len(outputs) == len(contract.OUTPUT_NAMES)
    assert tuple(outputs[2].shape) == (1, 50, 1, 32, 56)


def test_real_and_random_images_give_different_outputs(
    tiny_model: MaskGroundingDINO, tokenizer: BertTokenizerFast
) -> None:
    text = encode_caption(tokenizer, PHRASES)
    config = tiny_model.config
    h, w = config.input_height, config.input_width
    images = [photo(h, w), torch.zeros(1, 3, h, w)]
    with torch.no_grad():
        outs = [tiny_model(image, *(text[n] for n in contract.TEXT_INPUT_NAMES)) for image in images]
    assert not torch.allclose(outs[0][2], outs[1][2])


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        (contract.INPUT_IMAGE, torch.zeros(2, 3, 128, 224), r"inputs must be float32 \[1, 3, H, W\]"),
        (contract.INPUT_IMAGE, torch.zeros(1, 4, 128, 224), r"inputs must be float32 \[1, 3, H, W\]"),
        (contract.ATTENTION_MASK, torch.ones(1, 256, dtype=torch.int64), "attention_mask must be torch.bool"),
        (contract.INPUT_IDS, torch.zeros(1, 300, dtype=torch.int64), r"input_ids must be torch.int64 \[1, "),
        (contract.TEXT_TOKEN_MASK, torch.ones(1, 256, 255, dtype=torch.bool), "text_token_mask must be"),
    ],
)
def test_bad_inputs_are_rejected_with_the_input_name(
    tiny_model: MaskGroundingDINO, tokenizer: BertTokenizerFast, name: str, bad: torch.Tensor, message: str
) -> None:
    inputs = {contract.INPUT_IMAGE: torch.zeros(1, 3, 128, 224), **encode_caption(tokenizer, PHRASES)}
    inputs[name] = bad
    with pytest.raises(ValueError, match=message), torch.no_grad():
        tiny_model(*(inputs[n] for n in contract.INPUT_NAMES))


def test_photo_is_normalised_like_the_engine_input() -> None:
    image = photo(64, 64)
    assert image.shape == (1, 3, 64, 64)
    # A white pixel would map to (1 - mean) / std; the photo stays inside the normalised range.
    upper = (1 - np.array(contract.IMAGE_MEAN)) / np.array(contract.IMAGE_STD)
    assert (image.amax(dim=(0, 2, 3)).numpy() <= upper + 1e-6).all()


@pytest.mark.slow
def test_full_size_forward_at_544x960(tokenizer: BertTokenizerFast) -> None:
    """TAO's defaults (Swin-T, BERT-base, 900 queries, ReLA) produce the contract's 544x960 shapes."""
    torch.manual_seed(0)
    model = MaskGroundingDINO(MaskGDINOConfig.full()).eval()
    _, _, masks, _, union = outputs = run(model, tokenizer, EXPRESSION)
    assert [tuple(o.shape) for o in outputs] == [
        (1, 900, 256), (1, 900, 4), (1, 900, 1, 136, 240), (1, 2), (1, 2, 68, 120)
    ]
    real = encode_caption(tokenizer, EXPRESSION)[contract.ATTENTION_MASK][0]
    assert torch.isfinite(outputs[0][0][:, real]).all() and (outputs[0][0][:, ~real] == float("-inf")).all()
    assert torch.isfinite(masks).all() and torch.isfinite(union).all()
