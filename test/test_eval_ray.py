"""gdino-eval --ray on a local two-CPU Ray instance (loopback only): the summary equals the single-machine
run's, the results file holds the same samples, and a rerun after a partial run infers only what is
missing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray_harness import local_ray
from refer_fixtures import write_photo_datasets

from gdino_ros.tools.evaluate import main

pytestmark = pytest.mark.slow  # a Ray instance and the tiny model end to end


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    with local_ray() as ray:
        yield ray


def _records(out: Path) -> dict[str, dict[str, Any]]:
    lines = out.with_suffix(".jsonl").read_text().splitlines()[1:]
    return {r["key"]: r for r in map(json.loads, lines)}


def _without_timings(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "mean_timings_ms"}


def test_summary_equals_the_single_machine_run_and_a_rerun_resumes(
    ray_local: Any, tmp_path: Path, tiny_model_files: Any, vocab_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "data"
    write_photo_datasets(root)
    common = ["--model", str(tiny_model_files.onnx), "--dataset", "grefcoco", "--data-root", str(root),
              "--tokenizer", str(vocab_path), "--device", "cpu"]
    single, spread = tmp_path / "single.json", tmp_path / "ray.json"
    assert main([*common, "--out", str(single)]) == 0
    # Interrupted after two samples: keep only the header and the first two lines.
    assert main([*common, "--out", str(spread), "--ray", "--limit", "2"]) == 0
    kept = _records(spread)
    assert len(kept) == 2
    assert main([*common, "--out", str(spread), "--ray"]) == 0
    capsys.readouterr()

    expected, got = json.loads(single.read_text()), json.loads(spread.read_text())
    assert _without_timings(got) == _without_timings(expected)
    assert got["counts"]["evaluated"] == expected["counts"]["evaluated"] > 2
    records = _records(spread)
    for key, record in _records(single).items():
        assert {k: v for k, v in records[key].items() if k != "timings_ms"} == {
            k: v for k, v in record.items() if k != "timings_ms"
        }
    for key, record in kept.items():  # the rerun did not infer them again
        assert records[key]["timings_ms"] == record["timings_ms"]
    assert spread.with_suffix(".md").read_text() == single.with_suffix(".md").read_text()
