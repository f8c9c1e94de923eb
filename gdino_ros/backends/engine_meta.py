"""What a TensorRT engine was built from, kept in a JSON file next to it, so a stale engine is caught.

A TensorRT engine is only valid for the ONNX file, TensorRT version, GPU model and precision settings it
was built with, and nothing in the ``.engine`` file lets a user see them. ``gdino-build-engine`` writes
``<engine>.json`` (a :class:`BuildRecord`); the build reuses an engine only when its record's
:class:`BuildKey` equals the new one, and the TensorRT backend refuses an engine whose record says it
belongs to another TensorRT, GPU or ONNX file. Nothing here needs TensorRT.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

RECORD_FORMAT = 1
SIDECAR_SUFFIX = ".json"
# Engine-inspector layer types that move or relabel data rather than compute.
_DATA_MOVEMENT_LAYERS = frozenset({"Reformat", "NoOp", "Constant", "Shuffle", "Identity"})
_WIDEST_FIRST = ("fp32", "bf16", "fp16", "fp8", "int8")


@dataclass(frozen=True)
class BuildKey:
    """Everything that makes two engine builds interchangeable."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    precision: str  # what was asked for: "fp16" (FP16 allowed) or "fp32"
    fp32_layers: tuple[str, ...] = ()  # layer-name patterns pinned to FP32, sorted

    @classmethod
    def create(
        cls, onnx_sha256: str, tensorrt_version: str, gpu_name: str, precision: str, fp32_layers: list[str]
    ) -> BuildKey:
        """Normalise the pattern list so that order and repeats do not change the key."""
        return cls(onnx_sha256, tensorrt_version, gpu_name, precision, tuple(sorted(set(fp32_layers))))


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


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


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
    content = {"format": RECORD_FORMAT, **dataclasses.asdict(record)}
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def read_record(engine_path: str | Path) -> BuildRecord | None:
    """Return the sidecar of ``engine_path``, or ``None`` if there is none or it is not a record."""
    path = sidecar_path(engine_path)
    try:
        content = json.loads(path.read_text())
        if content.pop("format") != RECORD_FORMAT:
            return None
        key = content.pop("key")
        key["fp32_layers"] = tuple(key["fp32_layers"])
        return BuildRecord(key=BuildKey(**key), **content)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def is_reusable(engine_path: str | Path, key: BuildKey) -> bool:
    """Tell whether ``engine_path`` exists, has a record with exactly ``key``, and the record is its own."""
    engine_path = Path(engine_path)
    record = read_record(engine_path)
    return (
        engine_path.is_file()
        and record is not None
        and record.key == key
        and record.engine_sha256 == file_sha256(engine_path)
    )


def stale_reasons(record: BuildRecord, tensorrt_version: str, gpu_name: str) -> list[str]:
    """Why an engine built as ``record`` must not run here; empty when it may.

    The ONNX file is only hashed when its size or modification time differ from the record's, so a
    check at start-up costs a ``stat`` in the usual case.
    """
    reasons = []
    if record.key.tensorrt_version != tensorrt_version:
        reasons.append(
            f"it was built with TensorRT {record.key.tensorrt_version}, this is TensorRT {tensorrt_version}"
        )
    if record.key.gpu_name != gpu_name:
        reasons.append(f"it was built on a {record.key.gpu_name}, this GPU is a {gpu_name}")
    onnx = Path(record.onnx_path)
    if onnx.is_file():
        stat = onnx.stat()
        changed = (stat.st_size, stat.st_mtime_ns) != (record.onnx_size, record.onnx_mtime_ns)
        if changed and file_sha256(onnx) != record.key.onnx_sha256:
            reasons.append(f"{onnx} has changed since the engine was built from it")
    return reasons


def _tensor_precision(format_text: str) -> str | None:
    """Map the inspector's "Format/Datatype" text to a float type; ``None`` for non-float data."""
    text = format_text.lower()
    tokens = (("bf16", "bf16"), ("fp8", "fp8"), ("int8", "int8"), ("fp16", "fp16"), ("half", "fp16"),
              ("fp32", "fp32"), ("float", "fp32"))
    for token, name in tokens:
        if token in text:
            return name
    return None


def summarize_precision(engine_information: str) -> str:
    """Describe the precision an engine really computes in, from its inspector JSON.

    ``engine_information`` is ``EngineInspector.get_engine_information(LayerInformationFormat.JSON)``.
    Each compute layer counts with the float type of its outputs. Returns ``"fp32"``, ``"fp16"``, a mix
    such as ``"fp16 (37 of 1200 layers fp32)"``, or ``"unknown"`` when the engine was built without
    detailed profiling verbosity (the inspector then lists layer names only).
    """
    try:
        layers = json.loads(engine_information).get("Layers", [])
    except (ValueError, AttributeError):
        return "unknown"
    counts: Counter[str] = Counter()
    for layer in layers:
        if not isinstance(layer, dict) or layer.get("LayerType") in _DATA_MOVEMENT_LAYERS:
            continue
        found = {_tensor_precision(str(t.get("Format/Datatype", ""))) for t in layer.get("Outputs", [])}
        kinds = [kind for kind in _WIDEST_FIRST if kind in found]
        if kinds:
            counts[kinds[0]] += 1  # a layer with FP32 and FP16 outputs counts as FP32
    if not counts:
        return "unknown"
    total = sum(counts.values())
    main, _ = counts.most_common(1)[0]
    others = ", ".join(f"{n} of {total} layers {kind}" for kind, n in counts.most_common() if kind != main)
    return f"{main} ({others})" if others else main
