"""gdino-segment under faults (#13 item 4 and the fault list): earlier results are never truncated, the
input images stay byte-identical, each PNG is complete or absent, results.jsonl lists what was done."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import cv2
import pytest
import skimage.data
from model_fixtures import make_contract_onnx
from rosharness import python_executable, subprocess_environment
from tool_faults import interrupt_when, run, start, tree_digest

from gdino_ros.errors import EXIT_INTERRUPTED, EXIT_OUTPUT
from gdino_ros.tools import segment

MODULE = "gdino_ros.tools.segment"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_contract_onnx(tmp_path_factory.mktemp("model") / "model.onnx", input_hw=(64, 96), rela=False)


def _photos(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    bgr = cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR)
    paths = []
    for i in range(count):
        path = folder / f"photo{i:02d}.png"
        assert cv2.imwrite(str(path), bgr)
        paths.append(path)
    return paths


def _args(model: Path, vocab: Path, images: list[Path], out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--tokenizer", str(vocab), "--prompt", "cup", "--device", "cpu",
            "--image", *map(str, images), "--out", str(out), *extra]


def _records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_second_run_never_truncates_earlier_results(
    tmp_path: Path, model: Path, vocab_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """#13 item 4: the second run into the same --out used to leave results.jsonl empty."""
    photos = _photos(tmp_path / "photos", 2)
    out = tmp_path / "out"
    assert segment.main(_args(model, vocab_path, photos, out)) == 0
    earlier = tree_digest(out)
    assert segment.main(_args(model, vocab_path, photos[:1], out)) == EXIT_OUTPUT
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert "already exists" in line and "--overwrite" in line
    assert tree_digest(out) == earlier and len(_records(out)) == 2

    assert segment.main(_args(model, vocab_path, photos[:1], out, "--overwrite")) == 0
    assert [Path(str(r["image"])).name for r in _records(out)] == ["photo00.png"]

    stranger = out / "photo01_labels.png"
    stranger.write_bytes(b"someone else's")
    assert segment.main(_args(model, vocab_path, photos, out, "--overwrite")) == EXIT_OUTPUT
    assert "not written by gdino-segment" in capsys.readouterr().err
    assert stranger.read_bytes() == b"someone else's"


def test_out_next_to_the_images_keeps_them_and_never_overwrites_one(
    tmp_path: Path, model: Path, vocab_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(tmp_path / "photos", 2)
    before = tree_digest(tmp_path / "photos")
    assert segment.main(_args(model, vocab_path, photos, tmp_path / "photos")) == 0
    after = tree_digest(tmp_path / "photos")
    assert {name: after[name] for name in before} == before
    clash = photos[0].with_name("photo00_overlay.png")
    clash.write_bytes(photos[1].read_bytes())
    code = segment.main(_args(model, vocab_path, [photos[0], clash], tmp_path / "photos", "--overwrite"))
    assert code == EXIT_OUTPUT and "would replace an input image" in capsys.readouterr().err
    assert clash.read_bytes() == photos[1].read_bytes()


def test_out_that_is_a_file_or_under_a_file_is_one_line(
    tmp_path: Path, model: Path, vocab_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = _photos(tmp_path / "photos", 1)
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for out, words in ((notes, "is a file, not a folder"), (notes / "sub", "is a file, not a folder")):
        assert segment.main(_args(model, vocab_path, photos, out)) == EXIT_OUTPUT
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("gdino-segment: error:") and words in line
    assert notes.read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_lists_the_images_done(
    tmp_path: Path, model: Path, vocab_path: Path, signum: signal.Signals
) -> None:
    photos = _photos(tmp_path / "photos", 12)
    before = tree_digest(tmp_path / "photos")
    out = tmp_path / "out"
    process, logs = start(MODULE, _args(model, vocab_path, photos, out), tmp_path, per_frame_s=0.3)
    outcome = interrupt_when(process, logs, lambda: len(list(out.glob("*_labels.png"))) >= 2, signum)
    assert outcome.returncode == EXIT_INTERRUPTED, outcome.stderr
    records = _records(out)
    assert 2 <= len(records) < len(photos)
    assert f"lists the {len(records)} of {len(photos)} image(s) done" in outcome.stderr
    for record in records:
        assert cv2.imread(str(record["overlay"])) is not None
        assert cv2.imread(str(record["label_image"]), cv2.IMREAD_UNCHANGED) is not None
    assert tree_digest(tmp_path / "photos") == before and _hidden(out) == []


@pytest.mark.slow
def test_disk_full_is_one_line_and_leaves_no_partial_png(
    tmp_path: Path, model: Path, vocab_path: Path
) -> None:
    photos = _photos(tmp_path / "photos", 3)
    before = tree_digest(tmp_path / "photos")
    out = tmp_path / "out"
    outcome = run(MODULE, _args(model, vocab_path, photos, out), tmp_path, file_limit=100_000)
    assert outcome.returncode == EXIT_OUTPUT, outcome.stderr
    last = outcome.stderr.strip().splitlines()[-1]
    assert last.startswith("gdino-segment: error: cannot write") and "file size limit" in last
    assert "lists the 0 of 3 image(s) done" in last
    assert _records(out) == [] and not list(out.glob("*.png")) and _hidden(out) == []
    assert tree_digest(tmp_path / "photos") == before


def test_results_lines_hold_no_nan(tmp_path: Path, model: Path, vocab_path: Path) -> None:
    """The shared serialisation: a 3-output model's undefined probability is null, numbers are plain."""
    photos = _photos(tmp_path / "photos", 1)
    assert segment.main(_args(model, vocab_path, photos, tmp_path / "out")) == 0
    text = (tmp_path / "out" / "results.jsonl").read_text()
    assert "NaN" not in text and json.loads(text)["no_target_probability"] is None


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root without setpriv")
def test_unwritable_out_is_one_line_not_a_traceback(tmp_path: Path, model: Path, vocab_path: Path) -> None:
    """#13 item 4: a --out the user may not write into (root drops its override capabilities here)."""
    photos = _photos(tmp_path / "photos", 1)
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    unprivileged = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [*unprivileged, python_executable(), "-m", MODULE, *_args(model, vocab_path, photos, out)],
        capture_output=True, text=True, timeout=300, env=subprocess_environment(OMP_NUM_THREADS="1"),
    )
    assert done.returncode == EXIT_OUTPUT, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line == f"gdino-segment: error: cannot write in {out}: permission denied; choose another --out"
    assert list(out.iterdir()) == []
