"""Engine build records (cache key, staleness), precision reports and gdino-build-engine's command line.

The record logic runs everywhere; building and running real engines needs TensorRT and a GPU and is
skipped without them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import make_contract_onnx

from gdino_ros import contract
from gdino_ros.backends import BackendError, open_backend
from gdino_ros.backends.engine_meta import (
    BuildKey,
    BuildRecord,
    file_sha256,
    is_reusable,
    read_record,
    sidecar_path,
    stale_reasons,
    summarize_precision,
    write_record,
)
from gdino_ros.tools import build_engine

ONNX_BYTES = b"onnx bytes"
KEY = BuildKey.create(hashlib.sha256(ONNX_BYTES).hexdigest(), "10.13.0.35", "NVIDIA H100 PCIe", "fp16",
                      ["*LayerNorm*"])


def real_tensorrt_with_gpu() -> bool:
    spec = importlib.util.find_spec("tensorrt")
    if spec is None or spec.origin in (None, "namespace"):
        return False
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return False
    error, count = cudart.cudaGetDeviceCount()
    return error == cudart.cudaError_t.cudaSuccess and count > 0


needs_tensorrt_gpu = pytest.mark.skipif(not real_tensorrt_with_gpu(), reason="needs TensorRT and a CUDA GPU")


def record_for(engine: Path, onnx: Path, key: BuildKey = KEY) -> BuildRecord:
    stat = onnx.stat()
    return BuildRecord(key, str(onnx), stat.st_size, stat.st_mtime_ns, file_sha256(engine), "fp16", 1.0)


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in engine file with a record, and the ONNX file the record names."""
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(ONNX_BYTES)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    write_record(engine, record_for(engine, onnx))
    return engine, onnx


def test_key_ignores_pattern_order_and_repeats() -> None:
    patterns = ["*LayerNorm*", "*Softmax*", "*LayerNorm*"]
    assert BuildKey.create("x", "10", "gpu", "fp16", patterns) == BuildKey.create(
        "x", "10", "gpu", "fp16", ["*Softmax*", "*LayerNorm*"]
    )


def test_record_round_trip_and_location(built: tuple[Path, Path]) -> None:
    engine, onnx = built
    assert sidecar_path(engine) == engine.parent / "model.engine.json"
    record = read_record(engine)
    assert record == record_for(engine, onnx)
    assert json.loads(sidecar_path(engine).read_text())["key"]["gpu_name"] == "NVIDIA H100 PCIe"


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "cd" * 32},
        {"tensorrt_version": "10.14.1"},
        {"gpu_name": "Orin"},
        {"precision": "fp32"},
        {"fp32_layers": ()},
    ],
)
def test_any_key_difference_forces_a_rebuild(built: tuple[Path, Path], change: dict[str, object]) -> None:
    engine, _ = built
    assert is_reusable(engine, KEY)
    other = BuildKey(**{**KEY.__dict__, **change})
    assert not is_reusable(engine, other)


def test_record_of_another_engine_file_is_not_trusted(built: tuple[Path, Path]) -> None:
    engine, _ = built
    engine.write_bytes(b"an engine copied over the old one")
    assert not is_reusable(engine, KEY)


def test_missing_or_corrupt_record_is_not_reusable(built: tuple[Path, Path]) -> None:
    engine, _ = built
    sidecar_path(engine).write_text("{not json")
    assert read_record(engine) is None
    assert not is_reusable(engine, KEY)
    sidecar_path(engine).unlink()
    assert not is_reusable(engine, KEY)


def test_stale_reasons_name_each_mismatch(built: tuple[Path, Path]) -> None:
    engine, onnx = built
    record = read_record(engine)
    assert record is not None
    assert stale_reasons(record, "10.13.0.35", "NVIDIA H100 PCIe") == []
    reasons = stale_reasons(record, "10.3.0", "Orin (nvgpu)")
    assert reasons == [
        "it was built with TensorRT 10.13.0.35, this is TensorRT 10.3.0",
        "it was built on a NVIDIA H100 PCIe, this GPU is a Orin (nvgpu)",
    ]
    # Touching the ONNX file without changing it is not a change ...
    os.utime(onnx, ns=(record.onnx_mtime_ns + 10**9, record.onnx_mtime_ns + 10**9))
    assert stale_reasons(record, "10.13.0.35", "NVIDIA H100 PCIe") == []
    # ... re-exporting it with other content is.
    onnx.write_bytes(b"other onnx bytes")
    changed = [f"{onnx} has changed since the engine was built from it"]
    assert stale_reasons(record, "10.13.0.35", "NVIDIA H100 PCIe") == changed


def _layer(kind: str, *formats: str) -> dict[str, object]:
    return {"Name": kind, "LayerType": kind, "Outputs": [{"Format/Datatype": f} for f in formats]}


def test_precision_summary_from_inspector_json() -> None:
    def summary(*layers: dict[str, object]) -> str:
        return summarize_precision(json.dumps({"Layers": list(layers)}))

    assert summary(_layer("CaskConvolution", "Row major linear FP32"), _layer("MatMul", "Float")) == "fp32"
    assert summary(_layer("CaskConvolution", "Channel major FP16 format where channel % 8 == 0"),
                   _layer("MatMul", "Half"), _layer("Reformat", "Row major linear FP32")) == "fp16"
    mixed = summary(_layer("MatMul", "Half"), _layer("MatMul", "Half"),
                    _layer("Norm", "Row major linear FP32"), _layer("Shape", "Row major linear Int64"))
    assert mixed == "fp16 (1 of 3 layers fp32)"
    # Layer names only (built without detailed profiling verbosity): nothing to tell.
    assert summarize_precision(json.dumps({"Layers": ["conv1", "matmul"]})) == "unknown"
    assert summarize_precision("not json") == "unknown"


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = build_engine.main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def test_cli_rejects_missing_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    absent = tmp_path / "absent.onnx"
    code, lines = _run_cli(capsys, "--onnx", str(absent), "--output", str(tmp_path / "m.engine"))
    assert code == 1
    assert lines == [f"gdino-build-engine: error: ONNX file {tmp_path / 'absent.onnx'} does not exist"]


def test_cli_rejects_wrong_output_suffix_and_fp32_layers_without_fp16(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx = make_contract_onnx(tmp_path / "m.onnx")
    code, lines = _run_cli(capsys, "--onnx", str(onnx), "--output", str(tmp_path / "m.trt"))
    assert code == 1 and "must end in .engine or .plan" in lines[-1]
    code, lines = _run_cli(capsys, "--onnx", str(onnx), "--output", str(tmp_path / "m.engine"),
                           "--fp32-layers", "*Norm*")
    assert code == 1 and "--fp32-layers needs --fp16" in lines[-1]


@pytest.mark.skipif(real_tensorrt_with_gpu(), reason="TensorRT is usable here; tests the message without it")
def test_cli_without_tensorrt_prints_one_line_saying_how_to_get_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx = make_contract_onnx(tmp_path / "m.onnx")
    code, lines = _run_cli(capsys, "--onnx", str(onnx), "--output", str(tmp_path / "m.engine"), "--fp16")
    assert code == 1
    assert len(lines) == 1
    assert "pip install tensorrt" in lines[0]
    assert not (tmp_path / "m.engine").exists()


def _text_inputs() -> dict[str, np.ndarray]:
    ids = np.zeros((1, 256), np.int64)
    ids[0, :4] = [101, 3899, 1012, 102]
    return {
        contract.INPUT_IDS: ids,
        contract.ATTENTION_MASK: ids != 0,
        contract.POSITION_IDS: np.zeros((1, 256), np.int64),
        contract.TOKEN_TYPE_IDS: np.zeros((1, 256), np.int64),
        contract.TEXT_TOKEN_MASK: np.eye(256, dtype=bool)[None],
    }


@needs_tensorrt_gpu
def test_engine_build_run_reuse_and_staleness(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx = make_contract_onnx(tmp_path / "m.onnx", input_hw=(64, 96))
    engine = tmp_path / "m.engine"
    code, lines = _run_cli(capsys, "--onnx", str(onnx), "--output", str(engine))
    assert code == 0, lines
    assert read_record(engine) is not None
    image = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    text = _text_inputs()
    with open_backend(onnx, device="cpu") as reference, open_backend(engine) as backend:
        assert backend.name == "tensorrt" and backend.device == "cuda:0"
        assert backend.output_names == reference.output_names
        expected = reference.infer(image, text)
        got = backend.infer(image, text)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5)
    # Same key: not rebuilt.
    before = engine.stat().st_mtime_ns
    code, lines = _run_cli(capsys, "--onnx", str(onnx), "--output", str(engine))
    assert code == 0 and "up to date" in lines[-1] and engine.stat().st_mtime_ns == before
    # The ONNX changes: the old engine is refused, and the build runs again.
    shutil.copy(make_contract_onnx(tmp_path / "other.onnx", input_hw=(64, 96), queries=7), onnx)
    with pytest.raises(BackendError, match="is stale: .*has changed since the engine was built"):
        open_backend(engine)
    code, lines = _run_cli(capsys, "--onnx", str(onnx), "--output", str(engine))
    assert code == 0 and "wrote" in lines[-1]
    with open_backend(engine) as backend:
        assert backend.infer(image, text)[contract.PRED_BOXES].shape == (1, 7, 4)
