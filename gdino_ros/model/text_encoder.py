"""BERT text encoder, built locally from a config and run with Grounding DINO's phrase mask.

Grounding DINO gives BERT the 3-D block-diagonal ``text_token_mask`` as its attention mask and the
per-phrase ``position_ids``, so that every phrase is encoded as if it were its own sentence. Current
transformers releases build their own 2-D masks inside ``BertModel.forward``; this module therefore
calls BERT's embeddings and encoder directly with an additive 4-D mask, which is what TAO's
``BertModelWraper`` does with older releases.
"""
from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

from gdino_ros.model.config import MaskGDINOConfig


def build_bert(config: MaskGDINOConfig) -> BertModel:
    """Build a randomly initialised BERT with the configured sizes; nothing is downloaded."""
    bert_config = BertConfig(
        vocab_size=config.text_vocab_size,
        hidden_size=config.text_hidden_size,
        num_hidden_layers=config.text_num_layers,
        num_attention_heads=config.text_num_heads,
        intermediate_size=config.text_intermediate_size,
        max_position_embeddings=config.text_max_position_embeddings,
        type_vocab_size=config.text_type_vocab_size,
        attn_implementation="eager",  # type: ignore[call-arg]  # a PretrainedConfig keyword
    )
    bert = BertModel(bert_config, add_pooling_layer=True)
    # The pooler is in TAO's checkpoint but never used; TAO freezes it too.
    bert.get_submodule("pooler").requires_grad_(False)
    return bert


def encode_text(
    bert: BertModel,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    position_ids: torch.Tensor,
    text_self_attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Token ids [B, T] (int64) and phrase mask [B, T, T] (bool) -> last hidden state [B, T, hidden]."""
    embeddings = bert.embeddings(
        input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids
    )
    dtype = embeddings.dtype
    # 0 where attention is allowed, the most negative float where it is not (BERT's extended mask).
    additive = (1.0 - text_self_attention_mask[:, None].to(dtype)) * torch.finfo(dtype).min
    return bert.encoder(embeddings, attention_mask=additive).last_hidden_state
