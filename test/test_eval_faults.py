"""gdino-eval under faults (#13 item 5 and the fault list): a results file of another model is refused by
content, an interrupted or disk-full run resumes to the same summary, the data is never written over."""
from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from model_fixtures import make_contract_onnx
from refer_fixtures import write_photo_datasets
from tool_faults import interrupt_when, run, start, tree_digest

from gdino_ros.errors import EXIT_INTERRUPTED, EXIT_OUTPUT
from gdino_ros.tools.evaluate import main

MODULE = "gdino_ros.tools.evaluate"
SAMPLES = 5  # the photo datasets' val split


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_photo_datasets(root)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_contract_onnx(tmp_path_factory.mktemp("model") / "model.onnx", input_hw=(64, 96), rela=False)


def _args(model: Path, vocab: Path, data: Path, out: Path) -> list[str]:
    return ["--model", str(model), "--tokenizer", str(vocab), "--dataset", "refcoco", "--data-root",
            str(data), "--out", str(out), "--device", "cpu"]


def _metrics(out: Path) -> dict[str, object]:
    return dict(json.loads(out.read_text())["metrics"])


@pytest.fixture(scope="module")
def clean_metrics(
    tmp_path_factory: pytest.TempPathFactory, model: Path, vocab_path: Path, data: Path
) -> dict[str, object]:
    out = tmp_path_factory.mktemp("clean") / "s.json"
    assert main(_args(model, vocab_path, data, out)) == 0
    return _metrics(out)


def test_results_of_another_model_at_the_same_path_are_refused(
    tmp_path: Path, model: Path, vocab_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """#13 item 5: the model file was replaced between two runs; the summary must not mix them."""
    mine = tmp_path / "model.onnx"
    shutil.copy(model, mine)
    out = tmp_path / "s.json"
    assert main([*_args(mine, vocab_path, data, out), "--limit", "2"]) == 0
    earlier = tree_digest(out.with_suffix(".jsonl"))
    make_contract_onnx(mine, input_hw=(64, 96), rela=True)  # another model, same path
    assert main(_args(mine, vocab_path, data, out)) == EXIT_OUTPUT
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert "holds results of another run (model_sha256:" in line and "choose another --out" in line
    assert tree_digest(out.with_suffix(".jsonl")) == earlier


def test_outputs_never_replace_the_data_or_a_stranger(
    tmp_path: Path, model: Path, vocab_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree_digest(data)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    for out in (data / "refcoco" / "instances.json", data / "refcoco", notes):
        assert main(_args(model, vocab_path, data, out)) == EXIT_OUTPUT
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "is not an earlier gdino-eval summary" in line
    assert tree_digest(data) == before and notes.read_text() == '{"mine": true}'
    assert not (data / "refcoco" / "instances.jsonl").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_resumes_to_the_same_summary(
    tmp_path: Path, model: Path, vocab_path: Path, data: Path, clean_metrics: dict[str, object],
    signum: signal.Signals,
) -> None:
    before = tree_digest(data)
    out = tmp_path / "s.json"
    lines = out.with_suffix(".jsonl")
    process, logs = start(MODULE, _args(model, vocab_path, data, out), tmp_path, per_frame_s=1.0)

    def under_way() -> bool:
        return lines.exists() and len(lines.read_text().splitlines()) >= 2  # header and a sample

    outcome = interrupt_when(process, logs, under_way, signum)
    assert outcome.returncode == EXIT_INTERRUPTED, outcome.stderr
    done = len(lines.read_text().splitlines()) - 1
    assert 1 <= done < SAMPLES
    assert f"holds {done} of {SAMPLES} samples; run the same command again to resume" in outcome.stderr
    assert not out.exists()  # no summary of a partial run
    assert run(MODULE, _args(model, vocab_path, data, out), tmp_path).returncode == 0
    assert _metrics(out) == clean_metrics and tree_digest(data) == before


@pytest.mark.slow
def test_disk_full_keeps_the_samples_before_and_resumes(
    tmp_path: Path, model: Path, vocab_path: Path, data: Path, clean_metrics: dict[str, object]
) -> None:
    out = tmp_path / "s.json"
    outcome = run(MODULE, _args(model, vocab_path, data, out), tmp_path, file_limit=1500)
    assert outcome.returncode == EXIT_OUTPUT, outcome.stderr
    last = outcome.stderr.strip().splitlines()[-1]
    results = out.with_suffix(".jsonl")
    assert last.startswith(f"gdino-eval: error: cannot write {results}: the file size limit")
    assert "samples before are kept: run the same command again to resume" in last
    assert not out.exists()
    assert run(MODULE, _args(model, vocab_path, data, out), tmp_path).returncode == 0
    assert _metrics(out) == clean_metrics
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
