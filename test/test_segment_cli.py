"""gdino-segment end to end: real photos in, overlay PNG + 16-bit label PNG + JSON line out, exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from model_fixtures import make_contract_onnx

from gdino_ros.errors import EXIT_INPUT, EXIT_MODEL
from gdino_ros.tools import segment


def write_photo(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def read_lines(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def check_outputs(record: dict[str, object], photo: np.ndarray) -> None:
    overlay = cv2.imread(str(record["overlay"]), cv2.IMREAD_UNCHANGED)
    labels = cv2.imread(str(record["label_image"]), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == photo.shape and overlay.dtype == np.uint8
    assert labels.shape == photo.shape[:2] and labels.dtype == np.uint16
    detections = record["detections"]
    assert isinstance(detections, list)
    assert int(labels.max()) <= len(detections)
    assert set(record["timings_ms"]) == {"preprocess", "inference", "postprocess"}  # type: ignore[arg-type]


def test_segments_several_photos_and_reports_a_missing_one(
    tmp_path: Path, vocab_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = make_contract_onnx(tmp_path / "model.onnx", input_hw=(64, 96), rela=False)
    photos = {"coffee": skimage.data.coffee(), "chelsea": skimage.data.chelsea()}
    paths = [write_photo(tmp_path / f"{name}.png", rgb) for name, rgb in photos.items()]
    missing = tmp_path / "absent.jpg"
    out = tmp_path / "out"
    code = segment.main(["--model", str(model), "--prompt", "cup . cat", "--tokenizer", str(vocab_path),
                         "--image", str(paths[0]), str(missing), str(paths[1]), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_INPUT
    assert f"{missing}: cannot read image" in err
    assert "1 of 3 image(s) failed" in err
    records = read_lines(out)
    assert [Path(str(r["image"])).stem for r in records] == ["coffee", "chelsea"]
    for record, rgb in zip(records, photos.values(), strict=True):
        assert record["prompt"] == "cup . cat" and record["mode"] == "phrases"
        assert record["backend"] == "onnxruntime" and record["no_target_probability"] is None
        assert record["height"] == rgb.shape[0] and record["width"] == rgb.shape[1]
        check_outputs(record, rgb)
        # The small graph's single surviving box is labelled with the prompt's first phrase.
        assert [d["label"] for d in record["detections"]] == ["cup"]  # type: ignore[union-attr,index]


def test_streamed_images_equal_one_call_each(tmp_path: Path, vocab_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Images are streamed (the next one queued before this one is written); outputs are per-image calls'."""
    from gdino_ros.core.segmenter import Segmenter

    model = make_contract_onnx(tmp_path / "model.onnx", input_hw=(64, 96), rela=False)
    photos = {"coffee": skimage.data.coffee(), "tiny": skimage.data.coffee()[:16, :16],
              "chelsea": skimage.data.chelsea(), "astronaut": skimage.data.astronaut()}
    paths = [write_photo(tmp_path / f"{name}.png", rgb) for name, rgb in photos.items()]
    out = tmp_path / "out"
    code = segment.main(["--model", str(model), "--prompt", "cup . cat", "--tokenizer", str(vocab_path),
                         "--image", *map(str, paths), "--out", str(out)])
    assert code == EXIT_INPUT and "tiny.png: The image is 16×16 pixels" in capsys.readouterr().err
    records = read_lines(out)
    assert [Path(str(r["image"])).stem for r in records] == ["coffee", "chelsea", "astronaut"]
    with Segmenter.from_model(model, tokenizer_path=vocab_path, prompt="cup . cat") as segmenter:
        for record in records:
            bgr = cv2.imread(str(record["image"]))
            expected = segmenter(bgr, bgr=True)
            labels = cv2.imread(str(record["label_image"]), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(labels, expected.label_image)
            assert [d["score"] for d in record["detections"]] == pytest.approx(  # type: ignore[union-attr]
                [d.score for d in expected.detections])


def test_model_and_prompt_errors_are_one_line(
    tmp_path: Path, vocab_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = write_photo(tmp_path / "coffee.png", skimage.data.coffee())
    code = segment.main(["--model", str(tmp_path / "absent.onnx"), "--prompt", "cup", "--image", str(photo),
                         "--tokenizer", str(vocab_path), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_MODEL
    absent = tmp_path / "absent.onnx"
    assert lines == [f"gdino-segment: error: model file {absent} does not exist (or is not a file)"]
    model = make_contract_onnx(tmp_path / "model.onnx", rela=False)
    code = segment.main(["--model", str(model), "--prompt", " . , ", "--mode", "phrases", "--image",
                         str(photo), "--tokenizer", str(vocab_path), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_INPUT and len(lines) == 1 and "no letters or digits" in lines[0]


@pytest.mark.slow
def test_full_size_untrained_export_end_to_end(
    full_random_onnx: Path, vocab_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rgb = skimage.data.astronaut()
    photo = write_photo(tmp_path / "astronaut.png", rgb)
    out = tmp_path / "out"
    code = segment.main(["--model", str(full_random_onnx), "--prompt", "person . flag", "--image", str(photo),
                         "--tokenizer", str(vocab_path), "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    [record] = read_lines(out)
    assert (out / "astronaut_overlay.png").is_file() and (out / "astronaut_labels.png").is_file()
    check_outputs(record, rgb)
    assert isinstance(record["no_target_probability"], float)  # the full model has the ReLA head
