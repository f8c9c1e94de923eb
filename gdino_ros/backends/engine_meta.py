"""What a TensorRT engine was built from, kept in a JSON file next to it, so a stale engine is caught.

A TensorRT engine is only valid for the ONNX file, TensorRT version, GPU and precision settings it was
built with, and nothing in the ``.engine`` file lets a user see them. ``gdino-build-engine`` writes
``<engine>.json`` (a :class:`BuildRecord`); the build reuses an engine only when its record's
:class:`BuildKey` equals the new one, and the TensorRT backend refuses an engine whose record says it
belongs to another TensorRT, GPU or ONNX file. The GPU is its identity text (``GpuInfo.identity()``:
name, compute capability, SM count, memory and, on Jetson, the L4T release), because Orin Nano, NX and
AGX all report the name "Orin". Nothing here needs TensorRT.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECORD_FORMAT = 2  # 1: the GPU was its name only (cannot tell Orin Nano, NX and AGX apart)
SIDECAR_SUFFIX = ".json"
TIMING_CACHE_SUFFIX = ".timing.cache"
# Engine-inspector layer types that move or relabel data rather than compute.
_DATA_MOVEMENT_LAYERS = frozenset({"Reformat", "NoOp", "Constant", "Shuffle", "Identity"})
_WIDEST_FIRST = ("fp32", "bf16", "fp16", "fp8", "int8")
# Inspector type names, lower case, checked in this order ("bfloat16" before "float", "fp16" before "fp1").
_TYPE_TOKENS = (("bf16", "bf16"), ("bfloat", "bf16"), ("fp8", "fp8"), ("int8", "int8"), ("fp16", "fp16"),
                ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32"))


@dataclass(frozen=True)
class BuildKey:
    """Everything that makes two engine builds interchangeable."""

    onnx_sha256: str  # the ONNX file the user gave (before any FP16 conversion)
    tensorrt_version: str
    gpu: str  # GpuInfo.identity(): name, sm_XY, SM count, memory, L4T release on Jetson
    precision: str  # the network's precision: "fp16" (mixed FP16/FP32 graph) or "fp32"
    fp32_layers: tuple[str, ...] = ()  # node-name patterns the FP16 conversion kept in FP32, sorted

    @classmethod
    def create(
        cls, onnx_sha256: str, tensorrt_version: str, gpu: str, precision: str, fp32_layers: list[str]
    ) -> BuildKey:
        """Normalise the pattern list so that order and repeats do not change the key."""
        return cls(onnx_sha256, tensorrt_version, gpu, precision, tuple(sorted(set(fp32_layers))))


@dataclass(frozen=True)
class BuildRecord:
    """The sidecar's content: the key, where the ONNX was, and what was built."""

    key: BuildKey
    onnx_path: str
    onnx_size: int
    onnx_mtime_ns: int
    engine_sha256: str
    engine_precision: str  # what the built engine really runs, from the engine inspector
    build_seconds: float
    format: int = RECORD_FORMAT  # older formats are read so that the runtime can say why they are stale
    # The tokenizer's vocab.txt that gdino-export stored in the ONNX, carried along so that the engine
    # needs nothing beside it (None when the ONNX had none).
    vocab: str | None = None


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def timing_cache_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.timing.cache``: TensorRT's kernel timings, kept across rebuilds."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + TIMING_CACHE_SUFFIX)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 4 MiB blocks (ONNX files and engines are hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_record(engine_path: str | Path, record: BuildRecord) -> Path:
    """Write the sidecar of ``engine_path`` and return its path."""
    path = sidecar_path(engine_path)
    path.write_text(json.dumps(dataclasses.asdict(record), indent=2) + "\n")
    return path


def _key_fields(key: dict[str, Any], record_format: int) -> dict[str, Any]:
    """Turn a record's key into :class:`BuildKey` arguments; format 1 named the GPU ``gpu_name``."""
    if record_format == 1:
        key["gpu"] = key.pop("gpu_name")
    key["fp32_layers"] = tuple(key["fp32_layers"])
    return key


def read_record(engine_path: str | Path) -> BuildRecord | None:
    """Return the sidecar of ``engine_path``, or ``None`` if there is none or it is not a record."""
    path = sidecar_path(engine_path)
    try:
        content = json.loads(path.read_text())
        record_format = content.pop("format")
        if record_format not in (1, RECORD_FORMAT):
            return None
        key = BuildKey(**_key_fields(content.pop("key"), record_format))
        return BuildRecord(key=key, format=record_format, **content)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def is_reusable(engine_path: str | Path, key: BuildKey) -> bool:
    """Tell whether ``engine_path`` exists, has a current record with exactly ``key``, and it is its own."""
    engine_path = Path(engine_path)
    record = read_record(engine_path)
    return (
        engine_path.is_file()
        and record is not None
        and record.format == RECORD_FORMAT
        and record.key == key
        and record.engine_sha256 == file_sha256(engine_path)
    )


def stale_reasons(record: BuildRecord, tensorrt_version: str, gpu: str) -> list[str]:
    """Why an engine built as ``record`` must not run here; empty when it may.

    ``gpu`` is this GPU's ``GpuInfo.identity()``. A record of an older format cannot tell which GPU the
    engine was built for, so it is stale. The ONNX file is only hashed when its size or modification
    time differ from the record's, so a check at start-up costs a ``stat`` in the usual case.
    """
    reasons = []
    if record.format != RECORD_FORMAT:
        reasons.append(
            f"its build record (format {record.format}) names the GPU model only, so it may have been "
            f"built for another GPU of that name (this GPU: {gpu})"
        )
    if record.key.tensorrt_version != tensorrt_version:
        reasons.append(
            f"it was built with TensorRT {record.key.tensorrt_version}, this is TensorRT {tensorrt_version}"
        )
    if record.format == RECORD_FORMAT and record.key.gpu != gpu:
        reasons.append(f"it was built on {record.key.gpu}, this GPU is {gpu}")
    onnx = Path(record.onnx_path)
    if onnx.is_file():
        stat = onnx.stat()
        changed = (stat.st_size, stat.st_mtime_ns) != (record.onnx_size, record.onnx_mtime_ns)
        if changed and file_sha256(onnx) != record.key.onnx_sha256:
            reasons.append(f"{onnx} has changed since the engine was built from it")
    return reasons


def _tensor_precision(tensor: dict[str, Any]) -> str | None:
    """Return the float type of one inspector tensor entry; ``None`` for non-float data.

    TensorRT 10 writes one ``"Format/Datatype"`` text (e.g. ``"Row major linear FP32"``, ``"Half"``);
    TensorRT 11 splits it into ``"Format"`` and ``"DataType"`` (e.g. ``"Half"``), and the data type wins.
    """
    text = str(tensor.get("DataType") or tensor.get("Format/Datatype") or tensor.get("Format") or "").lower()
    for token, name in _TYPE_TOKENS:
        if token in text:
            return name
    return None


def summarize_precision(engine_information: str) -> str:
    """Describe the precision an engine really computes in, from its inspector JSON.

    ``engine_information`` is ``EngineInspector.get_engine_information(LayerInformationFormat.JSON)``
    (TensorRT 10 or 11 layout). Each compute layer counts with the float type of its outputs. Returns
    ``"fp32"``, ``"fp16"``, a mix such as ``"fp16 (37 of 1200 layers fp32)"``, or ``"unknown"`` when the
    engine was built without detailed profiling verbosity (the inspector then lists layer names only).
    """
    try:
        layers = json.loads(engine_information).get("Layers", [])
    except (ValueError, AttributeError):
        return "unknown"
    counts: Counter[str] = Counter()
    for layer in layers:
        if not isinstance(layer, dict) or layer.get("LayerType") in _DATA_MOVEMENT_LAYERS:
            continue
        found = {_tensor_precision(t) for t in layer.get("Outputs", []) if isinstance(t, dict)}
        kinds = [kind for kind in _WIDEST_FIRST if kind in found]
        if kinds:
            counts[kinds[0]] += 1  # a layer with FP32 and FP16 outputs counts as FP32
    if not counts:
        return "unknown"
    total = sum(counts.values())
    main, _ = counts.most_common(1)[0]
    others = ", ".join(f"{n} of {total} layers {kind}" for kind, n in counts.most_common() if kind != main)
    return f"{main} ({others})" if others else main
