"""Read TAO Mask Grounding DINO checkpoints safely, infer the network's sizes from them, load strictly.

Accepted containers (docs/engine_contract.md#checkpoint-layout):

* TAO's Lightning ``.pth``: ``{"state_dict": {"model.model.<key>": tensor}, "tao_model": ..., ...}``;
* a bare state dict, with or without a prefix (``model.model.``, ``model.``, ``module.``);
* our own checkpoint, written by :func:`save_checkpoint`: the Lightning layout plus a ``"gdino_ros"``
  entry that holds the exact :class:`MaskGDINOConfig` as plain types.

Files are opened with ``torch.load(weights_only=True)``, which cannot run code from the file. A file
that needs arbitrary unpickling is refused unless the caller passes ``trust_checkpoint=True``
(``--trust-checkpoint`` on the command line). The network is never configured by name: every size
(BERT included) comes from the tensor shapes, and the result is checked key for key and shape for
shape against the network built from it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from gdino_ros import __version__
from gdino_ros.errors import ModelError
from gdino_ros.model.config import (
    HIDDEN_DIM,
    SWIN_VARIANTS,
    LogScale,
    MaskGDINOConfig,
    SwinSpec,
    parse_log_scale,
)

TAO_PREFIX = "model.model."
TAO_MODEL_NAME = "mask_grounding_dino"
OWN_FORMAT_KEY = "gdino_ros"
# Every Mask Grounding DINO state dict has this key; whatever precedes it is the container's prefix.
ANCHOR_KEY = "backbone.0.body.patch_embed.proj.weight"
# Non-persistent buffers in current transformers that older TAO checkpoints still carry.
IGNORED_KEYS: frozenset[str] = frozenset({"bert.embeddings.position_ids", "bert.embeddings.token_type_ids"})
# Modules that hold a contrastive class head (``.bias``/``.log_scale`` when it has parameters);
# ``{i}`` runs over the decoder layers.
_CLASS_HEADS = ("class_embed.{i}", "transformer.decoder.class_embed.{i}", "transformer.enc_out_class_embed")
# Settings that gdino_ros 0.1.0 kept in its own checkpoints but that have only one valid value.
_ONE_VALUE_SETTINGS: dict[str, object] = {
    "two_stage_type": "standard", "has_mask": True, "hidden_dim": HIDDEN_DIM, "max_text_len": 256,
}
_NOT_ONE_VALUE = object()
_KEY_LIST_LIMIT = 12
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_INFLATION = 16 << 20  # bytes an archive entry may expand beyond its stored size
_PICKLE_PROTO = 0x80


class CheckpointError(ModelError, ValueError):
    """A checkpoint that cannot be used; the message says what is wrong and what to do."""


class TaoCheckpoint(NamedTuple):
    """A checkpoint reduced to what the network needs.

    ``state_dict`` has no container prefix and no ignorable BERT buffers; ``config`` was inferred from
    its shapes (or read from our own format); ``metadata`` holds plain strings for provenance
    (``path``, ``sha256``, ``format``, and ``tao_model``/``epoch``/... when the file has them).
    """

    state_dict: dict[str, torch.Tensor]
    config: MaskGDINOConfig
    metadata: dict[str, str]


def load_tao_checkpoint(
    path: str | Path,
    *,
    trust_checkpoint: bool = False,
    log_scale: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> TaoCheckpoint:
    """Read a checkpoint file, strip its container, infer the config and check every key and shape.

    ``log_scale`` ("auto", "none" or a number, as ``gdino-export --log-scale``) overrides the class
    head's scaling that :func:`infer_class_head` would choose; ``None`` infers it.
    Raises :class:`CheckpointError` for a missing, empty, truncated, encrypted, unsafe (without
    ``trust_checkpoint``) or non-checkpoint file, for any missing, unexpected or mis-shaped key, and for
    a ``log_scale`` that contradicts the checkpoint.
    """
    path = Path(path)
    say = progress or (lambda _message: None)
    say(f"reading checkpoint {path}")
    raw = _read_file(path, trust_checkpoint)
    state_dict, metadata, stored_config = _unwrap(raw, path)
    config = stored_config if stored_config is not None else infer_config(state_dict)
    if stored_config is None or log_scale is not None:
        scale, bias, reason = infer_class_head(state_dict, config.dec_layers, log_scale)
        config = config.replace(log_scale=scale, class_embed_bias=bias)
        say(f"class head: {config.head_spec} ({reason})")
    metadata["class_head"] = config.head_spec
    check_state_dict(state_dict, config)
    say(f"hashing {path.name}")
    metadata.update(path=str(path), sha256=_sha256(path))
    return TaoCheckpoint(state_dict, config, metadata)


def build_model_from_checkpoint(
    path: str | Path,
    *,
    trust_checkpoint: bool = False,
    input_size: tuple[int, int] | None = None,
    log_scale: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[torch.nn.Module, TaoCheckpoint]:
    """Build ``MaskGroundingDINO`` with the checkpoint's weights, in eval mode on the CPU.

    ``input_size`` (height, width) is the image size the network will run at; checkpoints do not store
    it, so the default is the inferred preset's (544x960 for TAO's network). The returned checkpoint's
    ``config`` includes it.
    """
    checkpoint = load_tao_checkpoint(
        path, trust_checkpoint=trust_checkpoint, log_scale=log_scale, progress=progress
    )
    if input_size is not None:
        config = checkpoint.config.replace(input_height=input_size[0], input_width=input_size[1])
        checkpoint = checkpoint._replace(config=config)
    if progress is not None:
        progress("building the network and loading the weights")
    model = build_model(checkpoint.config)
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return model.eval(), checkpoint


def build_model(config: MaskGDINOConfig, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Construct the network for ``config`` (random weights; ``device="meta"`` allocates nothing)."""
    from gdino_ros.model.mask_grounding_dino import MaskGroundingDINO

    with torch.device(device):
        return MaskGroundingDINO(config)


def save_checkpoint(model: torch.nn.Module, config: MaskGDINOConfig, path: str | Path) -> None:
    """Write our own checkpoint: TAO's Lightning layout plus the exact config, loadable weights-only."""
    state_dict = {TAO_PREFIX + key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save(
        {
            "state_dict": state_dict,
            "tao_model": TAO_MODEL_NAME,
            OWN_FORMAT_KEY: {"version": __version__, "config": dataclasses.asdict(config)},
        },
        Path(path),
    )


def check_state_dict(state_dict: Mapping[str, torch.Tensor], config: MaskGDINOConfig) -> None:
    """Compare ``state_dict`` with the network ``config`` describes (built on the meta device).

    Raises :class:`CheckpointError` listing missing keys, unexpected keys and shape mismatches, with
    counts, so that a wrong ``num_region_queries`` or a foreign checkpoint is named precisely.
    """
    expected = {key: tuple(value.shape) for key, value in build_model(config, "meta").state_dict().items()}
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)}, network {expected[key]}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != expected[key]
    ]
    problems = []
    if missing:
        problems.append(_listing(f"{len(missing)} missing key(s)", missing))
    if unexpected:
        problems.append(_listing(f"{len(unexpected)} unexpected key(s)", unexpected))
    if mismatched:
        problems.append(_listing(f"{len(mismatched)} shape mismatch(es)", mismatched))
    if problems:
        raise CheckpointError(
            "checkpoint does not match the Mask Grounding DINO network "
            f"(num_region_queries={config.num_region_queries}, {config.head_spec}): " + "; ".join(problems)
        )


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> MaskGDINOConfig:
    """Derive the network's sizes from tensor shapes.

    Read from shapes: the Swin variant (embedding width, depths, heads, window), the number of feature
    levels, encoder/decoder depth, FFN width, deformable points, queries, ``num_region_queries`` (0 when
    the ``rela.*`` keys are absent), the class head (:func:`infer_class_head`) and every BERT size.
    Attention head counts are not visible in weight shapes: they come from the preset with the same
    backbone (TAO's 8 heads; bert-base's 12, or 64-wide heads for any other BERT width). The input size
    is not stored; it stays at the preset's.
    """
    try:
        swin = _infer_swin(state_dict)
        backbone = next((name for name, spec in SWIN_VARIANTS.items() if spec == swin), None)
        if backbone is None:
            raise CheckpointError(
                f"the checkpoint's Swin backbone ({swin}) is none of the supported variants "
                f"{sorted(SWIN_VARIANTS)}"
            )
        tiny = MaskGDINOConfig.tiny()
        preset = tiny if backbone == tiny.backbone else MaskGDINOConfig.full()
        levels, hidden = _shape(state_dict, "transformer.level_embed")
        if hidden != HIDDEN_DIM:
            raise CheckpointError(
                f"the checkpoint's transformer is {hidden} wide; Mask Grounding DINO's is {HIDDEN_DIM}"
            )
        per_head = levels * preset.nheads * 2
        enc_offsets = _shape(state_dict, "transformer.encoder.layers.0.self_attn.sampling_offsets.weight")[0]
        dec_offsets = _shape(state_dict, "transformer.decoder.layers.0.cross_attn.sampling_offsets.weight")[0]
        if enc_offsets % per_head or dec_offsets % per_head:
            raise CheckpointError(
                f"deformable attention offsets ({enc_offsets}, {dec_offsets} rows) do not split into "
                f"{preset.nheads} heads x {levels} levels x points x 2"
            )
        bert_hidden = _shape(state_dict, "bert.embeddings.word_embeddings.weight")[1]
        bert_heads = preset.text_num_heads if bert_hidden == preset.text_hidden_size else bert_hidden // 64
        rela = "rela.query_feat.weight" in state_dict
        dec_layers = _count(state_dict, "transformer.decoder.layers.")
        log_scale, class_embed_bias, _ = infer_class_head(state_dict, dec_layers)
        return preset.replace(
            backbone=backbone,
            num_feature_levels=levels,
            enc_layers=_count(state_dict, "transformer.encoder.layers."),
            dec_layers=dec_layers,
            log_scale=log_scale,
            class_embed_bias=class_embed_bias,
            dim_feedforward=_shape(state_dict, "transformer.encoder.layers.0.linear1.weight")[0],
            enc_n_points=enc_offsets // per_head,
            dec_n_points=dec_offsets // per_head,
            num_queries=_shape(state_dict, "transformer.tgt_embed.weight")[0],
            num_region_queries=_shape(state_dict, "rela.query_feat.weight")[0] if rela else 0,
            text_vocab_size=_shape(state_dict, "bert.embeddings.word_embeddings.weight")[0],
            text_hidden_size=bert_hidden,
            text_num_layers=_count(state_dict, "bert.encoder.layer."),
            text_num_heads=bert_heads,
            text_intermediate_size=_shape(state_dict, "bert.encoder.layer.0.intermediate.dense.weight")[0],
            text_max_position_embeddings=_shape(state_dict, "bert.embeddings.position_embeddings.weight")[0],
            text_type_vocab_size=_shape(state_dict, "bert.embeddings.token_type_embeddings.weight")[0],
        )
    except ValueError as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint sizes do not describe a valid network: {error}") from None


def infer_class_head(
    state_dict: Mapping[str, torch.Tensor], dec_layers: int, override: str | None = None
) -> tuple[LogScale, bool, str]:
    """Decide the contrastive head's ``log_scale`` and ``class_embed_bias``; also say why.

    The bias keys (one per head: 2 x ``dec_layers`` + 1) give ``class_embed_bias``, and ``log_scale``
    keys a learnable scale. "auto" and no scaling leave no key, so with bias keys and no ``log_scale``
    key the model card's "auto" is taken, and without either TAO's default (no scaling). ``override``
    (``--log-scale``) replaces that guess but must not contradict a learnable scale in the file.
    """
    bias = _head_keys(state_dict, dec_layers, "bias")
    learnable = _head_keys(state_dict, dec_layers, "log_scale")
    if learnable:
        shapes = {key: tuple(state_dict[key].shape) for key in learnable}
        wrong = [f"{key} {list(shape)}" for key, shape in shapes.items() if shape != (1,)]
        if wrong:
            raise CheckpointError(
                "checkpoint's class-head log_scale must be one number per head (shape [1]), got: "
                + ", ".join(wrong[:_KEY_LIST_LIMIT])
            )
    if override is not None:
        try:
            wanted = parse_log_scale(override)
        except ValueError as error:
            raise CheckpointError(f"--log-scale: {error}") from None
        if learnable and not isinstance(wanted, float):
            raise CheckpointError(
                f"--log-scale {override} contradicts the checkpoint, which has a learnable log_scale "
                f"({learnable[0]}); drop --log-scale"
            )
        if isinstance(wanted, float) and not learnable:
            raise CheckpointError(
                f"--log-scale {override} needs the checkpoint's learnable log_scale keys, and it has "
                "none; use --log-scale auto or none"
            )
    if learnable:
        return float(state_dict[learnable[0]].reshape(-1)[0]), bool(bias), "learnable log_scale in the file"
    if override is not None:
        return parse_log_scale(override), bool(bias), "--log-scale given"
    if bias:
        return "auto", True, "bias keys without log_scale keys: the model card's log_scale=auto"
    return None, False, "no bias or log_scale keys: TAO's config default"


def _head_keys(state_dict: Mapping[str, torch.Tensor], dec_layers: int, leaf: str) -> list[str]:
    """List the class heads' ``leaf`` keys: all of them or none; a partial set is a broken checkpoint."""
    wanted = [
        f"{head.format(i=i)}.{leaf}"
        for head in _CLASS_HEADS
        for i in (range(dec_layers) if "{i}" in head else [0])
    ]
    present = [key for key in wanted if key in state_dict]
    if present and len(present) != len(wanted):
        absent = [key for key in wanted if key not in state_dict]
        raise CheckpointError(
            f"checkpoint has a class-head {leaf} on some heads and not others: "
            + _listing(f"{len(present)} present", present) + "; "
            + _listing(f"{len(absent)} missing", absent)
            + ". TAO writes it on all or none; the file is damaged or was edited"
        )
    return present


def _infer_swin(state_dict: Mapping[str, torch.Tensor]) -> SwinSpec:
    """Swin width, depths, heads and window from the patch embedding and relative-position tables."""
    prefix = "backbone.0.body.layers."
    stages = _count(state_dict, prefix)
    depths = tuple(_count(state_dict, f"{prefix}{stage}.blocks.") for stage in range(stages))
    table = "blocks.0.attn.relative_position_bias_table"
    tables = [_shape(state_dict, f"{prefix}{stage}.{table}") for stage in range(stages)]
    window = (math.isqrt(tables[0][0]) + 1) // 2
    return SwinSpec(
        embed_dim=_shape(state_dict, "backbone.0.body.patch_embed.proj.weight")[0],
        depths=depths,
        num_heads=tuple(table[1] for table in tables),
        window_size=window,
    )


def _shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"checkpoint does not match the Mask Grounding DINO network: missing key {key}")
    return tuple(state_dict[key].shape)


def _count(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Count the consecutive numbered sub-modules ``prefix0.``, ``prefix1.``, ... in the state dict."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(match.group(1)) for key in state_dict if (match := pattern.match(key))}
    count = 0
    while count in indices:
        count += 1
    if count == 0:
        raise CheckpointError(f"checkpoint does not match the Mask Grounding DINO network: no {prefix}0.*")
    return count


# --- reading the file ---------------------------------------------------------------------------------


def _read_file(path: Path, trust_checkpoint: bool) -> Any:
    """``torch.load`` with one clear error per failure mode (missing, truncated, unsafe, foreign)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); copy it again")
    is_zip = head == _ZIP_MAGIC
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted (its zip directory is missing); "
            "download or copy it again and compare its size with the original"
        )
    if is_zip:
        _check_zip_sizes(path)
    if not is_zip and head[0] != _PICKLE_PROTO:
        hint = " (ONNX and TensorRT files are not checkpoints)" if path.suffix in {".onnx", ".engine"} else ""
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (.pth written by torch.save){hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint, mmap=is_zip)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"GLOBAL (\S+) was not an allowed global", str(error))
        if unsafe is not None and not trust_checkpoint:
            raise CheckpointError(
                f"checkpoint {path} contains a pickled Python object ({unsafe.group(1)}) that only "
                "unrestricted unpickling can create, which can run arbitrary code; if you trust the "
                "file's source, pass --trust-checkpoint (trust_checkpoint=True)"
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(error)})") from None
    except (EOFError, RuntimeError) as error:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupted ({_first_line(error)}); copy it again"
        ) from None
    except Exception as error:  # noqa: BLE001 - trusted unpickling can raise anything the file asks for
        raise CheckpointError(
            f"{path} could not be loaded: {type(error).__name__}: {_first_line(error)}"
        ) from None


def _check_zip_sizes(path: Path) -> None:
    """Refuse an archive that would expand far beyond its size before anything is decompressed.

    ``torch.save`` stores its records uncompressed, so a real checkpoint expands to its own size; an entry
    that inflates by more than :data:`_MAX_INFLATION` bytes is a decompression bomb or a foreign archive.
    """
    with zipfile.ZipFile(path) as archive:
        for entry in archive.infolist():
            if entry.file_size - entry.compress_size > _MAX_INFLATION:
                raise CheckpointError(
                    f"checkpoint {path}: its entry {entry.filename} would expand from "
                    f"{entry.compress_size / 2**20:.1f} MiB to {entry.file_size / 2**20:.1f} MiB, which "
                    "torch.save never writes; refusing it (re-save the checkpoint with torch.save)"
                )


def _unwrap(raw: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], MaskGDINOConfig | None]:
    """Find the state dict in a TAO, bare or own container; strip its prefix and ignorable buffers."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(raw).__name__}, not a checkpoint dictionary; save the model's "
            "state_dict() (or use TAO's .pth) instead"
        )
    metadata: dict[str, str] = {}
    if raw.get("state_dict_encrypted"):
        raise CheckpointError(
            f"checkpoint {path} is encrypted by TAO (state_dict_encrypted=True). Decrypt it inside the "
            "TAO PyTorch container with your encryption key: torch.load it, pass it through "
            "nvidia_tao_pytorch.core.utilities.patch_decrypt_checkpoint(checkpoint, key) and torch.save "
            "the result; then give that file to this tool"
        )
    stored_config = None
    if "state_dict" in raw:
        tensors = raw["state_dict"]
        metadata["format"] = "tao-lightning"
        for key in ("tao_model", "epoch", "global_step", "pytorch-lightning_version"):
            if key in raw:
                metadata[key] = str(raw[key])
        if OWN_FORMAT_KEY in raw:
            metadata["format"] = OWN_FORMAT_KEY
            stored_config = _config_from_dict(raw[OWN_FORMAT_KEY], path)
        if "tao_model" in raw and raw["tao_model"] != TAO_MODEL_NAME:
            raise CheckpointError(
                f"{path} is a TAO checkpoint of '{raw['tao_model']}', not '{TAO_MODEL_NAME}'"
            )
    else:
        tensors = raw
        metadata["format"] = "state-dict"
    if not isinstance(tensors, Mapping) or not any(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{path} contains no tensors under 'state_dict'; it is not a model checkpoint")
    anchors = [key for key in tensors if key.endswith(ANCHOR_KEY)]
    if not anchors:
        raise CheckpointError(
            f"{path} is not a Mask Grounding DINO checkpoint: it has no '{ANCHOR_KEY}' "
            f"(first keys: {', '.join(list(tensors)[:3])})"
        )
    prefix = anchors[0][: -len(ANCHOR_KEY)]
    state_dict: dict[str, torch.Tensor] = {}
    foreign: list[str] = []
    for key, value in tensors.items():
        if not key.startswith(prefix):
            foreign.append(key)
            continue
        name = key[len(prefix):]
        if name not in IGNORED_KEYS:
            state_dict[name] = value
    if foreign:
        raise CheckpointError(
            "checkpoint does not match the Mask Grounding DINO network: "
            + _listing(f"{len(foreign)} unexpected key(s) outside the '{prefix}' prefix", foreign)
        )
    metadata["prefix"] = prefix
    return state_dict, metadata, stored_config


def _config_from_dict(entry: Any, path: Path) -> MaskGDINOConfig:
    """Rebuild the config stored by :func:`save_checkpoint`; unknown fields mean a newer writer."""
    fields = {field.name for field in dataclasses.fields(MaskGDINOConfig)}
    values = entry.get("config") if isinstance(entry, Mapping) else None
    if isinstance(values, Mapping):  # version 0.1.0 also stored the settings that have one value
        values = {k: v for k, v in values.items() if _ONE_VALUE_SETTINGS.get(k, _NOT_ONE_VALUE) != v}
    if not isinstance(values, Mapping) or set(values) - fields:
        raise CheckpointError(
            f"{path} has a '{OWN_FORMAT_KEY}' config this version ({__version__}) cannot read; "
            "re-save it with this version of gdino_ros"
        )
    try:
        return MaskGDINOConfig(**values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path} stores an invalid '{OWN_FORMAT_KEY}' config: {error}") from None


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_KEY_LIST_LIMIT])
    more = f", ... and {len(keys) - _KEY_LIST_LIMIT} more" if len(keys) > _KEY_LIST_LIMIT else ""
    return f"{title}: {shown}{more}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
