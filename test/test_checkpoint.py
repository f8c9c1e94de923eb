"""Loading TAO checkpoints: TAO's Lightning container loads strictly and exports; bad files fail clearly."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_export import PHRASES, REFERRING, _assert_outputs_close, _image, _text_inputs, _torch_outputs

from gdino_ros import contract
from gdino_ros.errors import EXIT_MODEL
from gdino_ros.model.checkpoint import (
    CheckpointError,
    build_model,
    build_model_from_checkpoint,
    check_state_dict,
    infer_config,
    load_tao_checkpoint,
    save_checkpoint,
)
from gdino_ros.model.config import MaskGDINOConfig
from gdino_ros.tools import export as export_cli

TSV = Path(__file__).parent / "data" / "tao_state_dict_keys.tsv"


def _tao_container(state_dict: dict[str, torch.Tensor], **extra: object) -> dict[str, object]:
    """What TAO's Lightning ModelCheckpoint writes for Mask GDINO, minus optimizer state.

    The layout: docs/engine_contract.md#checkpoint-layout.
    """
    return {
        "epoch": 11,
        "global_step": 1200,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {"model.model." + key: value for key, value in state_dict.items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 11}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": "", "dirpath": "/results"}},
        "optimizer_states": [],
        "lr_schedulers": [{"milestones": {10: 1}, "gamma": 0.1, "last_epoch": 11}],
        "tao_model": "mask_grounding_dino",
        **extra,
    }


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {key: value.clone() for key, value in build_model(MaskGDINOConfig.tiny()).state_dict().items()}


@pytest.fixture
def tao_file(tiny_state: dict[str, torch.Tensor], tmp_path: Path) -> Path:
    path = tmp_path / "mask_gdino_model_latest.pth"
    # Older transformers saved BERT's position_ids as a persistent buffer; TAO checkpoints may carry it.
    legacy = {**tiny_state, "bert.embeddings.position_ids": torch.arange(512)[None]}
    torch.save(_tao_container(legacy), path)
    return path


def test_tao_checkpoint_loads_strictly(tao_file: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    checkpoint = load_tao_checkpoint(tao_file)
    assert checkpoint.config == MaskGDINOConfig.tiny()
    assert checkpoint.metadata["format"] == "tao-lightning"
    assert checkpoint.metadata["tao_model"] == "mask_grounding_dino" and checkpoint.metadata["epoch"] == "11"
    assert len(checkpoint.metadata["sha256"]) == 64
    assert set(checkpoint.state_dict) == set(tiny_state)
    model, _ = build_model_from_checkpoint(tao_file)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, tiny_state[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_tao_checkpoint_exports(tao_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "tao.onnx"
    assert (
        export_cli.main(["--checkpoint", str(tao_file), "--output", str(output), "--msda", "grid-sample"])
        == 0
    )
    assert "num_region_queries=10" in capsys.readouterr().out
    proto = onnx.load(str(output), load_external_data=False)
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert metadata[contract.META_SOURCE].startswith(f"checkpoint {tao_file} sha256 ")
    assert (metadata[contract.META_INPUT_HEIGHT], metadata[contract.META_INPUT_WIDTH]) == ("128", "224")
    assert [value.name for value in proto.graph.output] == list(contract.RELA_OUTPUT_NAMES)


def test_num_region_queries_is_inferred_from_the_keys(
    tiny_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    torch.manual_seed(2)
    config = MaskGDINOConfig.tiny(num_region_queries=0)
    path = tmp_path / "no_rela.pth"
    torch.save(build_model(config).state_dict(), path)  # a bare state dict, no container
    checkpoint = load_tao_checkpoint(path)
    assert checkpoint.config == config and checkpoint.metadata["format"] == "state-dict"
    assert not any(key.startswith("rela.") for key in checkpoint.state_dict)


def _tao_layout() -> dict[str, torch.Tensor]:
    """TAO's real checkpoint layout (data/tao_state_dict_keys.tsv), prefix removed, as meta tensors."""
    state = {}
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        size = [int(dim) for dim in shape.strip("()").split(",") if dim.strip()]
        state[key.removeprefix("model.model.")] = torch.empty(
            size, dtype=getattr(torch, dtype), device="meta"
        )
    return state


def test_taos_full_layout_infers_the_full_config_and_checks_strictly() -> None:
    state = _tao_layout()
    assert infer_config(state) == MaskGDINOConfig.full()  # BERT-base sizes, 100 region queries, ...
    check_state_dict(state, MaskGDINOConfig.full())
    without_rela = {key: value for key, value in state.items() if not key.startswith("rela.")}
    assert infer_config(without_rela) == MaskGDINOConfig.full(num_region_queries=0)
    check_state_dict(without_rela, MaskGDINOConfig.full(num_region_queries=0))
    spec = r"num_region_queries=100, log_scale=auto class_embed_bias=True"
    with pytest.raises(CheckpointError, match=spec + r"\): \d+ missing key\(s\): rela\."):
        check_state_dict(without_rela, MaskGDINOConfig.full())


def _with_class_head(
    state: dict[str, torch.Tensor], leaf: str, seed: int, dec_layers: int = 6
) -> dict[str, torch.Tensor]:
    """Add TAO's 13 class-head scalars ``leaf`` (the decoder's 6 heads share one value, as in TAO)."""
    generator = torch.Generator().manual_seed(seed)
    shared, selection = torch.randn(1, generator=generator), torch.randn(1, generator=generator)
    heads = {f"{prefix}{i}.{leaf}": shared for prefix in ("class_embed.", "transformer.decoder.class_embed.")
             for i in range(dec_layers)}
    return {**state, **heads, f"transformer.enc_out_class_embed.{leaf}": selection}


@pytest.fixture
def card_file(tiny_state: dict[str, torch.Tensor], tmp_path: Path) -> Path:
    """A TAO-format checkpoint with the model card's class head (13 bias keys, log_scale 'auto')."""
    path = tmp_path / "card.pth"
    torch.save(_tao_container(_with_class_head(tiny_state, "bias", seed=3)), path)
    return path


def test_taos_layout_with_the_card_head_infers_it_and_without_falls_back_to_taos_default() -> None:
    state = _tao_layout()
    assert infer_config(state).head_spec == "log_scale=auto class_embed_bias=True"
    default = {
        key: value for key, value in state.items() if not ("class_embed" in key and key.endswith(".bias"))
    }
    assert len(state) - len(default) == 13
    assert infer_config(default) == MaskGDINOConfig.full(log_scale=None, class_embed_bias=False)
    check_state_dict(default, infer_config(default))


def test_model_card_checkpoint_loads_strictly_and_says_why(
    card_file: Path, tiny_state: dict[str, torch.Tensor]
) -> None:
    said: list[str] = []
    checkpoint = load_tao_checkpoint(card_file, progress=said.append)
    assert checkpoint.config == MaskGDINOConfig.tiny(log_scale="auto", class_embed_bias=True)
    assert any("model card" in line and "log_scale=auto" in line for line in said), said
    model, _ = build_model_from_checkpoint(card_file)
    state = model.state_dict()
    assert set(state) == set(checkpoint.state_dict) == set(_with_class_head(tiny_state, "bias", seed=3))
    assert len(state) == len(tiny_state) + 13
    for key, value in checkpoint.state_dict.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def test_learnable_log_scale_is_read_from_the_file(
    tiny_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "learnable.pth"
    state = _with_class_head(_with_class_head(tiny_state, "bias", seed=4), "log_scale", seed=5)
    torch.save(_tao_container(state), path)
    checkpoint = load_tao_checkpoint(path)
    assert checkpoint.config.class_embed_bias and isinstance(checkpoint.config.log_scale, float)
    model, _ = build_model_from_checkpoint(path)
    torch.testing.assert_close(model.class_embed[0].log_scale, state["class_embed.0.log_scale"])
    torch.testing.assert_close(
        model.transformer.enc_out_class_embed.log_scale, state["transformer.enc_out_class_embed.log_scale"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("head", ["card", "learnable"])
def test_class_head_checkpoint_exports_and_onnxruntime_equals_pytorch(
    tiny_state: dict[str, torch.Tensor], tmp_path: Path, head: str
) -> None:
    """Both scalings ('auto' with bias, a learnable log_scale with bias) survive the export exactly."""
    state = _with_class_head(tiny_state, "bias", seed=8)
    if head == "learnable":
        state = _with_class_head(state, "log_scale", seed=9)
    path = tmp_path / f"{head}.pth"
    torch.save(_tao_container(state), path)
    output = tmp_path / f"{head}.onnx"
    assert export_cli.main(["--checkpoint", str(path), "--output", str(output), "--msda", "grid-sample"]) == 0
    model, checkpoint = build_model_from_checkpoint(path)
    proto = onnx.load(str(output), load_external_data=False)
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    want_scale = "auto" if head == "card" else str(checkpoint.config.log_scale)
    assert metadata[contract.META_LOG_SCALE] == want_scale
    assert metadata[contract.META_CLASS_EMBED_BIAS] == "True"
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    for text, mode in ((PHRASES, "phrases"), (REFERRING, "expression")):
        feed = {contract.INPUT_IMAGE: _image(checkpoint.config, seed=1), **_text_inputs(text, mode)}
        want = _torch_outputs(model, feed)
        _assert_outputs_close(contract.RELA_OUTPUT_NAMES, session.run(None, feed), want)
    # The head is really in the graph: the same weights without bias and scaling give other logits.
    plain = build_model(MaskGDINOConfig.tiny())
    plain.load_state_dict(tiny_state)
    assert not np.allclose(_torch_outputs(plain.eval(), feed)[0], want[0])


def test_log_scale_override(card_file: Path) -> None:
    assert load_tao_checkpoint(card_file, log_scale="none").config.log_scale is None
    assert load_tao_checkpoint(card_file, log_scale="auto").config.log_scale == "auto"


@pytest.mark.parametrize(
    ("edit", "override", "message"),
    [
        ("drop-one-bias", None, r"class-head bias on some heads and not others: 12 present.*1 missing.*"
                                r"transformer\.enc_out_class_embed\.bias"),
        ("wide-log-scale", None, r"log_scale must be one number per head \(shape \[1\]\).*\[2\]"),
        ("learnable", "auto", r"--log-scale auto contradicts the checkpoint, which has a learnable"),
        ("learnable", "none", r"--log-scale none contradicts"),
        ("card", "0.5", r"--log-scale 0.5 needs the checkpoint's learnable log_scale keys"),
        ("card", "sqrt", r"--log-scale: log_scale 'sqrt' is not 'auto', 'none' or a number"),
    ],
)
def test_bad_class_head_is_one_clear_error(
    tiny_state: dict[str, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    edit: str, override: str | None, message: str,
) -> None:
    state = _with_class_head(tiny_state, "bias", seed=6)
    if edit == "drop-one-bias":
        del state["transformer.enc_out_class_embed.bias"]
    elif edit == "wide-log-scale":
        state = _with_class_head(state, "log_scale", seed=7)
        state["class_embed.2.log_scale"] = torch.zeros(2)
    elif edit == "learnable":
        state = _with_class_head(state, "log_scale", seed=7)
    path = tmp_path / f"{edit}.pth"
    torch.save(_tao_container(state), path)
    output = tmp_path / "out.onnx"
    argv = ["--checkpoint", str(path), "--output", str(output), "--msda", "grid-sample"]
    assert export_cli.main(argv + (["--log-scale", override] if override else [])) == EXIT_MODEL
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and not output.exists(), stderr
    assert re.search(message, stderr), stderr


def test_log_scale_flag_is_refused_with_random_init(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "r.onnx"
    argv = ["--random-init", "--config", "tiny", "--output", str(output), "--log-scale", "none"]
    assert export_cli.main(argv) == 2
    assert "--log-scale only applies to --checkpoint" in capsys.readouterr().err and not output.exists()


def test_own_format_round_trip(tiny_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    config = MaskGDINOConfig.tiny(input_height=160, input_width=256)
    model = build_model(config)
    model.load_state_dict(tiny_state)
    path = tmp_path / "ours.pth"
    save_checkpoint(model, config, path)
    checkpoint = load_tao_checkpoint(path)
    assert checkpoint.config == config and checkpoint.metadata["format"] == "gdino_ros"


def test_own_format_of_version_0_1_0_still_loads(
    tiny_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """0.1.0 stored the settings that have one value; they are accepted with that value only."""
    path = tmp_path / "old.pth"
    fixed = {"two_stage_type": "standard", "has_mask": True, "hidden_dim": 256, "max_text_len": 256}
    stored = {**dataclasses.asdict(MaskGDINOConfig.tiny()), **fixed}
    torch.save(_tao_container(tiny_state, gdino_ros={"version": "0.1.0", "config": stored}), path)
    assert load_tao_checkpoint(path).config == MaskGDINOConfig.tiny()
    stored["hidden_dim"] = 128
    torch.save(_tao_container(tiny_state, gdino_ros={"version": "0.1.0", "config": stored}), path)
    with pytest.raises(CheckpointError, match="config this version .* cannot read"):
        load_tao_checkpoint(path)


def test_missing_key(tiny_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "missing.pth"
    state = {key: value for key, value in tiny_state.items() if key != "controller.layers.2.bias"}
    torch.save(_tao_container(state), path)
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): controller\.layers\.2\.bias$"):
        load_tao_checkpoint(path)


def test_unexpected_and_mis_shaped_keys(tiny_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "unexpected.pth"
    state = dict(tiny_state)
    state["label_enc.weight"] = torch.zeros(4, 256)
    state["feat_map.bias"] = torch.zeros(7)
    torch.save(_tao_container(state), path)
    with pytest.raises(CheckpointError) as raised:
        load_tao_checkpoint(path)
    assert "1 unexpected key(s): label_enc.weight" in str(raised.value)
    assert "feat_map.bias: checkpoint (7,), network (256,)" in str(raised.value)


def test_long_key_lists_are_truncated_with_counts(
    tiny_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "no_mask_branch.pth"
    heads = ("mask_head.", "controller.")
    state = {key: value for key, value in tiny_state.items() if not key.startswith(heads)}
    torch.save(_tao_container(state), path)
    removed = sum(key.startswith(heads) for key in tiny_state)
    assert removed > 12
    with pytest.raises(
        CheckpointError, match=rf"{removed} missing key\(s\): .*\.\.\. and {removed - 12} more"
    ):
        load_tao_checkpoint(path)


def test_decompression_bomb_is_refused_before_loading(tao_file: Path, tmp_path: Path) -> None:
    """A deflated 256 MiB record in a small file: refused from the zip directory, nothing inflated."""
    bomb = tmp_path / "bomb.pth"
    shutil.copy(tao_file, bomb)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        name = archive.namelist()[0].split("/")[0] + "/data/999"
        with archive.open(name, "w", force_zip64=True) as entry:
            block = bytes(1 << 20)
            for _ in range(256):
                entry.write(block)
    assert bomb.stat().st_size < tao_file.stat().st_size + (4 << 20)
    with pytest.raises(CheckpointError, match=r"data/999 would expand from 0\.\d MiB to 256\.0 MiB"):
        load_tao_checkpoint(bomb)


def test_truncated_file(tao_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.pth"
    data = tao_file.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_tao_checkpoint(path)


def test_non_checkpoint_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("model: mask_grounding_dino\n")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_tao_checkpoint(text)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_tao_checkpoint(empty)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match="holds a Tensor, not a checkpoint dictionary"):
        load_tao_checkpoint(tensor)
    other = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"model.conv1.weight": torch.zeros(1)}}, other)
    with pytest.raises(CheckpointError, match="not a Mask Grounding DINO checkpoint"):
        load_tao_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tao_checkpoint(tmp_path / "nowhere.pth")


def test_pickled_object_needs_trust(tiny_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "with_args.pth"
    torch.save(_tao_container(tiny_state, hyper_parameters=argparse.Namespace(lr=1e-4)), path)
    with pytest.raises(CheckpointError, match=r"argparse\.Namespace.*--trust-checkpoint"):
        load_tao_checkpoint(path)
    assert load_tao_checkpoint(path, trust_checkpoint=True).config == MaskGDINOConfig.tiny()


@pytest.mark.slow
def test_cli_trust_checkpoint(
    tiny_state: dict[str, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "with_args.pth"
    torch.save(_tao_container(tiny_state, hyper_parameters=argparse.Namespace(lr=1e-4)), path)
    output = tmp_path / "trusted.onnx"
    argv = ["--checkpoint", str(path), "--output", str(output), "--msda", "plugin"]
    assert export_cli.main(argv) == EXIT_MODEL
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "--trust-checkpoint" in stderr and not output.exists()
    assert export_cli.main([*argv, "--trust-checkpoint"]) == 0
    assert output.stat().st_size > 0


def test_encrypted_checkpoint(tiny_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "encrypted.pth"
    container = _tao_container({}, state_dict_encrypted=True)
    container["state_dict"] = b"\x00" * 64
    torch.save(container, path)
    with pytest.raises(CheckpointError, match="encrypted by TAO.*patch_decrypt_checkpoint"):
        load_tao_checkpoint(path)


def test_other_tao_model_is_refused(tiny_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "gdino.pth"
    torch.save(_tao_container(tiny_state, tao_model="grounding_dino"), path)
    with pytest.raises(CheckpointError, match="'grounding_dino', not 'mask_grounding_dino'"):
        load_tao_checkpoint(path)
