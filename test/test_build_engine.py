"""Engine build records (cache key, staleness), precision reports and gdino-build-engine's command line.

The record logic runs everywhere. The build runs against a fake TensorRT builder
(``test/fakes/trt_builder.py``): with its own 10.x- and 11.x-shaped API, and, per supported version, in a
subprocess whose ``tensorrt`` is the real binding module (``test/trt_bindings.py``), so that every
TensorRT attribute the build uses must exist in that version. Building and running a real engine needs
TensorRT and a GPU and is skipped without them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import trt_bindings
from fakes import cuda_modules
from fakes.cuda_runtime import FakeGpu
from fakes.trt_builder import BuildState, make_tensorrt
from model_fixtures import make_contract_onnx

from gdino_ros import contract
from gdino_ros.backends import BackendError, open_backend
from gdino_ros.backends.cuda import GpuInfo
from gdino_ros.backends.engine_meta import (
    BuildKey,
    BuildRecord,
    file_sha256,
    is_reusable,
    read_record,
    sidecar_path,
    stale_reasons,
    summarize_precision,
    timing_cache_path,
    write_record,
)
from gdino_ros.core.model_metadata import read_onnx_metadata
from gdino_ros.core.precision_check import CALIBRATION_PROMPTS, PrecisionReport
from gdino_ros.errors import EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE
from gdino_ros.model.precision import DEFAULT_FP32_LAYERS, META_FP32_LAYERS, META_PRECISION, convert_to_fp16
from gdino_ros.tools import build_engine

ROOT = Path(__file__).resolve().parents[1]
ONNX_BYTES = b"onnx bytes"
H100 = "NVIDIA H100 PCIe sm_90 114SM 81559MiB"
ORIN_NX = "Orin sm_87 8SM 15656MiB L4T 36.4.3"
KEY = BuildKey.create(hashlib.sha256(ONNX_BYTES).hexdigest(), "10.13.0.35", H100, "fp16", ["*LayerNorm*"])


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
    assert json.loads(sidecar_path(engine).read_text())["key"]["gpu"] == H100


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "cd" * 32},
        {"tensorrt_version": "10.14.1"},
        {"gpu": ORIN_NX},
        {"gpu": "NVIDIA H100 PCIe sm_90 132SM 81559MiB"},  # same name, another SKU
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
    assert stale_reasons(record, "10.13.0.35", H100) == []
    reasons = stale_reasons(record, "10.3.0", ORIN_NX)
    assert reasons == [
        "it was built with TensorRT 10.13.0.35, this is TensorRT 10.3.0",
        f"it was built on {H100}, this GPU is {ORIN_NX}",
    ]
    # Touching the ONNX file without changing it is not a change ...
    os.utime(onnx, ns=(record.onnx_mtime_ns + 10**9, record.onnx_mtime_ns + 10**9))
    assert stale_reasons(record, "10.13.0.35", H100) == []
    # ... re-exporting it with other content is.
    onnx.write_bytes(b"other onnx bytes")
    changed = [f"{onnx} has changed since the engine was built from it"]
    assert stale_reasons(record, "10.13.0.35", H100) == changed


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
    assert code == EXIT_MODEL
    assert lines == [f"gdino-build-engine: error: ONNX file {tmp_path / 'absent.onnx'} does not exist"]


def test_cli_rejects_wrong_output_suffix_and_fp32_layers_without_fp16(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx = make_contract_onnx(tmp_path / "m.onnx")
    code, lines = _run_cli(capsys, "--onnx", str(onnx), "--output", str(tmp_path / "m.trt"))
    assert code == EXIT_USAGE and "must end in .engine or .plan" in lines[-1]
    code, lines = _run_cli(capsys, "--onnx", str(onnx), "--output", str(tmp_path / "m.engine"),
                           "--fp32-layers", "*Norm*")
    assert code == EXIT_USAGE and "--fp32-layers needs --fp16" in lines[-1]


@pytest.mark.skipif(real_tensorrt_with_gpu(), reason="TensorRT is usable here; tests the message without it")
def test_cli_without_tensorrt_prints_one_line_saying_how_to_get_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx = make_contract_onnx(tmp_path / "m.onnx")
    code, lines = _run_cli(capsys, "--onnx", str(onnx), "--output", str(tmp_path / "m.engine"), "--fp16")
    assert code == EXIT_MODEL
    assert len(lines) == 1
    assert "pip install \"tensorrt-cu12" in lines[0] and "python3-libnvinfer" in lines[0]
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


# --- Records of older formats and TensorRT 11's inspector JSON ------------------------------------------


def test_old_format_record_is_stale_and_never_reused(built: tuple[Path, Path]) -> None:
    engine, _ = built
    content = json.loads(sidecar_path(engine).read_text())
    content["format"] = 1
    content["key"]["gpu_name"] = "Orin"  # format 1 knew the GPU by name only
    del content["key"]["gpu"]
    sidecar_path(engine).write_text(json.dumps(content))
    record = read_record(engine)
    assert record is not None and record.format == 1 and record.key.gpu == "Orin"
    old_key = BuildKey(**{**KEY.__dict__, "gpu": "Orin"})
    assert not is_reusable(engine, old_key)
    reasons = stale_reasons(record, "10.13.0.35", ORIN_NX)
    assert len(reasons) == 1
    assert "format 1" in reasons[0] and "names the GPU model only" in reasons[0] and ORIN_NX in reasons[0]


# TensorRT 10.x: one "Format/Datatype" text per tensor, "Bindings" a list of names.
INSPECTOR_10 = """{"Layers": [
 {"Name": "/backbone/conv", "LayerType": "CaskConvolution", "Inputs": [{"Name": "inputs",
  "Location": "Device", "Dimensions": [1,3,64,96], "Format/Datatype": "Row major linear FP32"}],
  "Outputs": [{"Name": "c", "Location": "Device", "Dimensions": [1,96,16,24],
  "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}], "TacticValue": "0x1"},
 {"Name": "/encoder/LayerNormalization", "LayerType": "Normalization", "Outputs": [{"Name": "n",
  "Location": "Device", "Dimensions": [1,256,768], "Format/Datatype": "Row major linear FP32"}]},
 {"Name": "/decoder/MatMul", "LayerType": "MatrixMultiply", "Outputs": [{"Name": "m", "Location": "Device",
  "Dimensions": [1,900,256], "Format/Datatype": "Half"}]},
 {"Name": "Reformatting CopyNode", "LayerType": "Reformat", "Outputs": [{"Name": "r", "Location": "Device",
  "Dimensions": [1,900,256], "Format/Datatype": "Row major linear FP32"}]},
 {"Name": "/shape", "LayerType": "Shape", "Outputs": [{"Name": "s", "Location": "Device", "Dimensions": [2],
  "Format/Datatype": "Row major linear Int64 format"}]}],
 "Bindings": ["inputs", "pred_logits"]}"""

# TensorRT 11.x: "Format" and "DataType" are separate keys, "I/O Tensors" replaces "Bindings".
INSPECTOR_11 = """{"Layers": [
 {"Name": "/backbone/conv", "LayerType": "CaskConvolution", "Inputs": [{"Name": "inputs",
  "Location": "Device", "Dimensions": [1,3,64,96], "Format": "Row major linear FP32 format (kLINEAR)",
  "DataType": "Float"}],
  "Outputs": [{"Name": "c", "Location": "Device", "Dimensions": [1,96,16,24],
  "Format": "Channel major FP16 format where channel % 8 == 0 (kHWC8)", "DataType": "Half"}]},
 {"Name": "/encoder/LayerNormalization", "LayerType": "Normalization", "Outputs": [{"Name": "n",
  "Location": "Device", "Dimensions": [1,256,768], "Format": "Row major linear FP32 format (kLINEAR)",
  "DataType": "Float"}]},
 {"Name": "/decoder/MatMul", "LayerType": "MatrixMultiply", "Outputs": [{"Name": "m", "Location": "Device",
  "Dimensions": [1,900,256], "Format": "Row major linear FP16 format (kLINEAR)", "DataType": "Half"}]},
 {"Name": "/head/Cast", "LayerType": "Cast", "Outputs": [{"Name": "b", "Location": "Device",
  "Dimensions": [1,900,256], "Format": "Row major linear FP16 format (kLINEAR)", "DataType": "BFloat16"}]},
 {"Name": "/shape", "LayerType": "Shape", "Outputs": [{"Name": "s", "Location": "Device", "Dimensions": [2],
  "Format": "Row major linear Int64 format (kLINEAR)", "DataType": "Int64"}]}],
 "I/O Tensors": [{"Name": "inputs", "IOMode": "Input", "DataType": "Float", "Dimensions": [1,3,64,96],
  "Location": "Device", "IsShapeInferenceIO": false}]}"""


def test_precision_summary_reads_tensorrt_10_and_11_inspector_json() -> None:
    assert summarize_precision(INSPECTOR_10) == "fp16 (1 of 3 layers fp32)"
    # The 11.x layout: the data type decides, not the format text ("BFloat16" is not FP32 "Float").
    assert summarize_precision(INSPECTOR_11) == "fp16 (1 of 4 layers fp32, 1 of 4 layers bf16)"


# --- gdino-build-engine against the fake TensorRT builder (test/fakes/trt_builder.py) ------------------

ORIN = GpuInfo(index=0, name="Orin", compute_capability=(8, 7), sm_count=8, total_memory=7620 << 20,
               integrated=True, l4t_release="36.4.3")
BIG_GPU = GpuInfo(index=0, name="NVIDIA H200", compute_capability=(9, 0), sm_count=132,
                  total_memory=143771 << 20, integrated=False, l4t_release=None)
VERSIONS = ("10.3.0", "10.16.1.11", "11.4.0.106")


class FakeBuild:
    """Installs a fake ``tensorrt`` and a fake GPU; runs the command line in ``tmp_path``."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        self.monkeypatch, self.capsys = monkeypatch, capsys
        self.onnx = make_contract_onnx(tmp_path / "m.onnx")
        self.engine = tmp_path / "m.engine"
        self.state = self.use("10.16.1.11", ORIN)

    def use(self, version: str, gpu: GpuInfo) -> BuildState:
        module, self.state = make_tensorrt(version)
        self.monkeypatch.setitem(sys.modules, "tensorrt", module)
        for name, fake_cuda in cuda_modules(FakeGpu()).items():  # require_tensorrt imports cuda-python
            self.monkeypatch.setitem(sys.modules, name, fake_cuda)
        self.monkeypatch.setattr(build_engine, "select_gpu", lambda index: gpu)
        return self.state

    def run(self, *extra: str) -> tuple[int, list[str]]:
        return _run_cli(self.capsys, "--onnx", str(self.onnx), "--output", str(self.engine), *extra)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> FakeBuild:
    return FakeBuild(monkeypatch, capsys, tmp_path)


@pytest.mark.parametrize("version", VERSIONS)
def test_build_is_strongly_typed_and_uses_no_weak_typing_api(fake: FakeBuild, version: str) -> None:
    state = fake.use(version, ORIN)
    code, lines = fake.run()
    assert code == 0, lines
    trt = sys.modules["tensorrt"]
    assert state.network_flags == [1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)]
    assert state.flags_set == []  # no BuilderFlag.FP16 / PREFER_PRECISION_CONSTRAINTS (gone in 11.x)
    assert not [name for name in state.touched if name.startswith("ILayer.")]
    record = read_record(fake.engine)
    assert record is not None and record.key.tensorrt_version == version
    assert record.key.precision == "fp32" and record.engine_precision == "fp32"


def test_the_11x_fake_has_no_weak_typing_api() -> None:
    """What makes the test above fail if the build used weak typing on 11.x (and only there)."""
    trt10, _ = make_tensorrt("10.16.1.11")
    trt11, _ = make_tensorrt("11.4.0.106")
    assert hasattr(trt10.BuilderFlag, "FP16") and hasattr(trt10.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS")
    assert not hasattr(trt11.BuilderFlag, "FP16")
    assert not hasattr(trt11.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS")


def test_builder_objects_are_released_before_the_engine_is_deserialised(fake: FakeBuild) -> None:
    code, lines = fake.run()
    assert code == 0, lines
    assert fake.state.deserialized == 1
    assert fake.state.alive_at_deserialize == []


def test_the_engine_carries_the_vocabulary_of_its_onnx(
    fake: FakeBuild, vocab_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gdino-export's stored vocabulary goes into the build record: the engine needs no ONNX beside it."""
    from gdino_ros.core import tokenizer

    model = onnx.load(str(fake.onnx))
    model.metadata_props.add(key=contract.META_VOCAB, value=vocab_path.read_text())
    onnx.save(model, str(fake.onnx))
    code, lines = fake.run()
    assert code == 0, lines
    assert read_record(fake.engine).vocab == vocab_path.read_text()  # type: ignore[union-attr]
    fake.onnx.unlink()
    monkeypatch.setattr(tokenizer, "_VOCAB_PACKAGE", "no_such_vocabulary_package")
    loaded = tokenizer.load_tokenizer(model_path=fake.engine)
    assert loaded.convert_tokens_to_ids("dog") == vocab_path.read_text().split("\n").index("dog")


def test_timing_cache_is_saved_and_reused_and_a_foreign_one_ignored(fake: FakeBuild) -> None:
    cache = timing_cache_path(fake.engine)
    assert cache.name == "m.engine.timing.cache"
    code, lines = fake.run()
    assert code == 0 and cache.is_file(), lines
    first = cache.read_bytes()
    assert fake.state.timing_cache_loaded == b""  # nothing to reuse on the first build
    state = fake.use("10.16.1.11", ORIN)
    code, lines = fake.run("--force")
    assert code == 0, lines
    assert state.timing_cache_loaded == first
    assert any(f"reusing kernel timings from {cache}" in line for line in lines)
    assert cache.read_bytes().startswith(first)  # the second build added its timings
    cache.write_bytes(b"a cache from another GPU")
    state = fake.use("10.16.1.11", ORIN)
    code, lines = fake.run("--force")
    assert code == 0 and state.timing_cache_rejected, lines
    assert any("from another GPU or TensorRT version" in line for line in lines)


@pytest.mark.parametrize(("gpu", "argv", "expected"), [
    (ORIN, (), (7620 << 20) // 2),  # half of an 8 GB Orin's memory
    (BIG_GPU, (), 8 << 30),  # at most 8 GiB
    (ORIN, ("--workspace-gb", "1.5"), int(1.5 * (1 << 30))),
])
def test_workspace_is_at_most_half_the_gpu_memory_by_default(
    fake: FakeBuild, gpu: GpuInfo, argv: tuple[str, ...], expected: int
) -> None:
    state = fake.use("10.3.0", gpu)
    code, lines = fake.run(*argv)
    assert code == 0, lines
    assert state.workspace == expected


def test_workspace_beyond_the_gpu_memory_is_refused(fake: FakeBuild) -> None:
    code, lines = fake.run("--workspace-gb", "16")
    assert code == EXIT_USAGE
    assert lines[-1] == ("gdino-build-engine: error: --workspace-gb 16 does not fit Orin (7.4 GiB); leave it "
                         "out to use 3.7 GiB")
    assert not fake.engine.exists()


def test_cache_key_holds_the_gpu_identity_not_just_its_name(fake: FakeBuild) -> None:
    nano = dataclasses.replace(ORIN, sm_count=4)  # Orin Nano and NX both report the name "Orin"
    fake.use("10.3.0", ORIN)
    assert fake.run()[0] == 0
    fake.use("10.3.0", ORIN)
    code, lines = fake.run()
    assert code == 0 and "is up to date" in lines[-1]
    state = fake.use("10.3.0", nano)
    code, lines = fake.run()
    assert code == 0 and state.builds == 1
    change = f"gpu was {ORIN.identity()!r}, now {nano.identity()!r}"
    assert f"gdino-build-engine: replacing {fake.engine}: {change}" in lines
    record = read_record(fake.engine)
    assert record is not None and record.key.gpu == nano.identity()


def test_a_file_not_written_by_the_tool_is_replaced_only_with_force(fake: FakeBuild) -> None:
    fake.engine.write_bytes(b"an engine from trtexec")
    code, lines = fake.run()
    assert code == EXIT_OUTPUT
    assert "was not written by gdino-build-engine" in lines[-1] and "--force" in lines[-1]
    assert fake.engine.read_bytes() == b"an engine from trtexec"
    assert fake.state.builds == 0
    code, lines = fake.run("--force")
    assert code == 0 and read_record(fake.engine) is not None, lines


def test_output_naming_the_onnx_file_is_refused(fake: FakeBuild) -> None:
    onnx_as_engine = fake.onnx.with_suffix(".engine")
    shutil.copy(fake.onnx, onnx_as_engine)
    before = onnx_as_engine.read_bytes()
    code, lines = _run_cli(fake.capsys, "--onnx", str(onnx_as_engine), "--output", str(onnx_as_engine),
                           "--force")
    assert code == EXIT_USAGE and "is the ONNX file itself" in lines[-1]
    assert onnx_as_engine.read_bytes() == before


@pytest.mark.parametrize(("knob", "expected"), [
    ({"plugins_load": False},
     "TensorRT's plugin library (libnvinfer_plugin) did not load: install the one of TensorRT 10.16.1.11"),
    ({"parse_errors": ["In node 7 (importPlugin): UNSUPPORTED_NODE: No importer registered for op: "
                       "MultiscaleDeformableAttnPlugin_TRT"]},
     "or export with gdino-export --msda grid-sample"),
    ({"build_error": "[defaultAllocator.cpp::allocate::31] Error Code 1: Cuda Runtime (out of memory)"},
     "TensorRT ran out of GPU memory while building: pass a smaller --workspace-gb (this build used 3.7)"),
    ({"build_error": "Error Code 10: Internal Error (Could not find any implementation for node x)"},
     "TensorRT failed to build the engine (see its messages above)"),
])
def test_build_failures_say_what_to_do(fake: FakeBuild, knob: dict[str, object], expected: str) -> None:
    for name, value in knob.items():
        setattr(fake.state, name, value)
    code, lines = fake.run()
    assert code == EXIT_MODEL
    assert lines[-1].startswith("gdino-build-engine: error: ") and expected in lines[-1], lines[-1]
    assert not fake.engine.exists() and not sidecar_path(fake.engine).exists()


def test_tensorrt_older_than_10_is_named(fake: FakeBuild) -> None:
    fake.use("8.6.1", ORIN)
    code, lines = fake.run()
    assert code == EXIT_MODEL and len(lines) == 1, lines
    assert lines[0].startswith("gdino-build-engine: error: TensorRT 8.6.1 is too old: this backend needs "
                               "TensorRT 10 or newer (")  # ... and how to get it
    assert fake.state.builds == 0 and not fake.engine.exists()


# --- FP16: conversion next to the engine, and the accuracy check after the build -------------------------


def _report(**change: object) -> PrecisionReport:
    values: dict[str, object] = dict(
        per_output={contract.PRED_LOGITS: (0.5, 0.01), contract.PRED_BOXES: (0.002, 0.0004)},
        box_l1_px=0.3, mask_iou=0.97, detection_agreement=1.0, no_target_agreement=1.0,
        nan_counts={}, runs=2, matched=6, reference_detections=6, candidate_detections=6,
    )
    return PrecisionReport(**{**values, **change})  # type: ignore[arg-type]


class FakeComparison:
    """Stands in for the backends and compare_backends: records what was compared, returns ``report``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, report: PrecisionReport) -> None:
        self.report = report
        self.calls: list[tuple[str, str, int, tuple[str, ...]]] = []

        class Opened:
            def __init__(self, path: Path, device: str = "auto") -> None:
                self.path = Path(path)

            def __enter__(self) -> Opened:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

        def compare(reference: Opened, candidate: Opened, images: list[np.ndarray], prompts: tuple[str, ...],
                    tokenizer: object) -> PrecisionReport:
            assert read_record(candidate.path) is not None  # the new engine and its record, not installed yet
            self.calls.append((reference.path.name, candidate.path.name, len(images), tuple(prompts)))
            return self.report

        monkeypatch.setattr("gdino_ros.backends.onnxruntime.OnnxRuntimeBackend", Opened)
        monkeypatch.setattr("gdino_ros.backends.tensorrt.TensorRTBackend", Opened)
        monkeypatch.setattr("gdino_ros.core.precision_check.compare_backends", compare)
        monkeypatch.setattr("gdino_ros.core.tokenizer.load_tokenizer", lambda *args: "tokenizer")


def test_fp16_converts_the_onnx_next_to_the_engine_and_checks_the_engine(
    fake: FakeBuild, monkeypatch: pytest.MonkeyPatch
) -> None:
    comparison = FakeComparison(monkeypatch, _report())
    before = fake.onnx.read_bytes()
    code, lines = fake.run("--fp16")
    assert code == 0, lines
    converted = fake.engine.with_name("m.fp16.onnx")
    assert build_engine.is_mixed_fp16(onnx.load(str(converted)))
    metadata = read_onnx_metadata(converted)
    assert metadata[META_PRECISION] == "fp16" and build_engine.onnx_precision(converted) == "fp16"
    assert json.loads(metadata[META_FP32_LAYERS]) == list(DEFAULT_FP32_LAYERS)
    assert fake.onnx.read_bytes() == before  # the user's file is never rewritten
    record = read_record(fake.engine)
    assert record is not None and record.key.precision == "fp16"
    assert record.engine_precision.startswith("fp16")
    assert record.onnx_path == str(fake.onnx.resolve())
    assert comparison.calls == [("m.onnx", "m.engine.partial", 1, CALIBRATION_PROMPTS)]
    assert "FP16 engine within tolerance of FP32 (box L1 0.30 px, mask IoU 0.970" in lines[-2]
    assert not list(fake.engine.parent.glob("*.partial*"))
    # A rebuild for another GPU reuses the conversion (same ONNX, same keep-list).
    fake.use("10.16.1.11", dataclasses.replace(ORIN, sm_count=16))
    code, lines = fake.run("--fp16")
    assert code == 0 and any("reusing" in line and "m.fp16.onnx" in line for line in lines), lines


def test_fp16_check_warns_with_the_numbers_beyond_the_tolerance(
    fake: FakeBuild, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeComparison(monkeypatch, _report(box_l1_px=4.25, detection_agreement=0.5, matched=3))
    code, lines = fake.run("--fp16")
    assert code == 0, lines  # a warning, not an error: what is acceptable depends on the application
    text = "\n".join(lines)
    warning = "warning: FP16 engine differs from FP32 beyond the tolerance: "
    assert warning + "matched boxes differ by 4.25 px" in text
    assert "detections agree 0.500 (3 matched of 6 reference / 6 candidate; tolerance 0.900)" in text
    assert "| box L1, matched detections, median (px) | 4.250 |" in text
    assert read_record(fake.engine) is not None


def test_fp16_engine_with_nan_outputs_is_not_installed(
    fake: FakeBuild, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeComparison(monkeypatch, _report())
    assert fake.run()[0] == 0  # an FP32 engine is in place
    fp32_engine = fake.engine.read_bytes()
    FakeComparison(monkeypatch, _report(nan_counts={contract.PRED_MASKS: 17}))
    fake.use("10.16.1.11", ORIN)
    code, lines = fake.run("--fp16")
    assert code == EXIT_MODEL
    assert lines[-1].startswith(
        "gdino-build-engine: error: the FP16 engine's outputs contain NaN (pred_masks: 17 NaN value(s)")
    assert "it was not installed" in lines[-1] and "--fp32-layers" in lines[-1]
    assert fake.engine.read_bytes() == fp32_engine
    record = read_record(fake.engine)
    assert record is not None and record.key.precision == "fp32"
    assert not list(fake.engine.parent.glob("*.partial*"))


def test_fp16_onnx_builds_fp16_and_keeps_its_export_time_keep_list(
    fake: FakeBuild, monkeypatch: pytest.MonkeyPatch
) -> None:
    comparison = FakeComparison(monkeypatch, _report())
    fp16_onnx = fake.onnx.with_name("exported_fp16.onnx")
    onnx.save(convert_to_fp16(onnx.load(str(fake.onnx))), str(fp16_onnx))
    argv = ("--onnx", str(fp16_onnx), "--output", str(fake.engine))
    code, lines = _run_cli(fake.capsys, *argv, "--fp32-layers", "*/Softmax*", "--fp16")
    assert code == EXIT_USAGE and "is already FP16" in lines[-1]
    assert "gdino-export ... --precision fp16 --fp32-layers */Softmax*" in lines[-1]
    code, lines = _run_cli(fake.capsys, *argv)  # no --fp16 needed: the graph says FP16
    assert code == 0, lines
    record = read_record(fake.engine)
    assert record is not None and record.key.precision == "fp16"
    assert not fake.engine.with_name("m.fp16.onnx").exists()
    assert comparison.calls == [] and any("pass --reference-onnx" in line for line in lines)
    code, lines = _run_cli(fake.capsys, *argv, "--reference-onnx", str(fake.onnx), "--force")
    assert code == 0 and comparison.calls == [("m.onnx", "m.engine.partial", 1, CALIBRATION_PROMPTS)], lines


def test_fp16_conversion_refuses_bad_patterns_and_foreign_files(fake: FakeBuild) -> None:
    code, lines = fake.run("--fp16", "--fp32-layers", "*NoSuchLayer*")
    assert code == EXIT_MODEL and "cannot convert" in lines[-1] and "'*NoSuchLayer*'" in lines[-1]
    user_file = fake.engine.with_name("m.fp16.onnx")
    user_file.write_bytes(onnx.load(str(fake.onnx)).SerializeToString())
    code, lines = fake.run("--fp16")
    assert code == EXIT_OUTPUT and f"{user_file} exists and is not an FP16 conversion written by" in lines[-1]
    assert not build_engine.is_mixed_fp16(onnx.load(str(user_file)))


# --- The same build against the real binding modules of TensorRT 10.3, newest 10.x, newest 11.x ----------

# Runs in a subprocess whose `import tensorrt` is the real pybind module (test/trt_bindings.py). The module
# seen by gdino-build-engine is a proxy: enums, Dims, ILogger and IProgressMonitor are the real ones and
# every `trt.X` / `trt.Enum.MEMBER` read is recorded; Builder, OnnxParser, Runtime and
# init_libnvinfer_plugins (which need the native library) come from the fake builder, whose objects accept
# only attributes the real classes have. So any API the build uses that this version lacks fails the run.
REAL_BINDINGS_SCRIPT = r"""
import json, sys, types
from pathlib import Path
import tensorrt as real
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/test"]
from fakes import cuda_modules
from fakes.cuda_runtime import FakeGpu
from fakes.trt_builder import make_tensorrt
from gdino_ros.backends.cuda import GpuInfo
from gdino_ros.tools import build_engine

fake, state = make_tensorrt(real.__version__, real=real)
used = []

class Members:
    def __init__(self, value, name):
        self._value, self._name = value, name
    def __getattr__(self, member):
        used.append(f"{self._name}.{member}")
        return getattr(self._value, member)

class Proxy(types.ModuleType):
    def __getattr__(self, name):
        used.append(name)
        if name in ("Builder", "OnnxParser", "Runtime", "init_libnvinfer_plugins"):
            return getattr(fake, name)
        value = getattr(real, name)
        return Members(value, name) if hasattr(value, "__members__") else value

sys.modules.update(cuda_modules(FakeGpu()))  # cuda-python need not be installed
proxy = Proxy("tensorrt")
proxy.__spec__ = real.__spec__  # importlib.util.find_spec("tensorrt") (transformers asks) needs one
sys.modules["tensorrt"] = proxy
gpu = GpuInfo(0, "Orin", (8, 7), 8, 7620 << 20, True, "36.4.3")
build_engine.select_gpu = lambda index: gpu
code = build_engine.main(["--onnx", sys.argv[2], "--output", sys.argv[3]])
weak = ["BuilderFlag.FP16", "BuilderFlag.PREFER_PRECISION_CONSTRAINTS", "ILayer.precision",
        "ILayer.set_output_type"]
strongly_typed = 1 << int(real.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
print(json.dumps({
    "code": code, "version": real.__version__, "used": sorted(set(used)),
    "touched": sorted(set(state.touched)), "flags": state.network_flags, "strongly_typed": strongly_typed,
    "alive": state.alive_at_deserialize, "weak_typing_api": {
        path: hasattr(getattr(real, path.split(".")[0]), path.split(".")[1]) for path in weak},
}))
"""


@pytest.mark.parametrize("label", trt_bindings.LABELS)
@pytest.mark.slow
def test_build_uses_only_api_the_real_tensorrt_module_has(label: str, tmp_path: Path) -> None:
    trt_bindings.require(label)
    onnx_path = make_contract_onnx(tmp_path / "m.onnx")
    engine = tmp_path / "m.engine"
    result = subprocess.run(
        [sys.executable, "-c", REAL_BINDINGS_SCRIPT, str(ROOT), str(onnx_path), str(engine)],
        env=trt_bindings.subprocess_env(label), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["version"] == label
    assert report["code"] == 0, result.stderr[-3000:]
    assert report["flags"] == [report["strongly_typed"]]
    assert report["alive"] == []
    # The paths the build took on this version; each exists in the real module (or the run failed above).
    for path in ("NetworkDefinitionCreationFlag.STRONGLY_TYPED", "MemoryPoolType.WORKSPACE",
                 "ProfilingVerbosity.DETAILED", "LayerInformationFormat.JSON", "ILogger", "IProgressMonitor",
                 "Dims", "init_libnvinfer_plugins"):
        assert path in report["used"], path
    for method in ("IBuilderConfig.create_timing_cache", "IBuilderConfig.set_timing_cache",
                   "IBuilderConfig.get_timing_cache", "IBuilderConfig.set_memory_pool_limit",
                   "IBuilderConfig.progress_monitor", "Builder.build_serialized_network",
                   "OnnxParser.parse_from_file", "Runtime.deserialize_cuda_engine"):
        assert method in report["touched"], method
    # Weak typing is there on 10.x and gone on 11.x, and the build used none of it on either.
    assert set(report["weak_typing_api"].values()) == {label.startswith("10.")}
    assert not [p for p in report["used"] + report["touched"] if "FP16" in p or p.startswith("ILayer.")]
    record = read_record(engine)
    assert record is not None and record.key.tensorrt_version == label


def test_without_the_onnx_package_the_build_says_how_to_get_it(
    fake: FakeBuild, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    code, lines = fake.run()
    assert code == EXIT_MODEL
    assert lines == ["gdino-build-engine: error: gdino-build-engine reads the ONNX graph with the onnx "
                     "package: pip install onnx"]
