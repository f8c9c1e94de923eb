"""gdino-eval: per-sample records, resumable results file, summary table and plot, bad input, and an
end-to-end run of the small random-weight model on tiny datasets in each real release format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from refer_fixtures import COFFEE, PHOTO_SPLIT_BY, coco_image_name, write_photo_datasets

from gdino_ros.core.result import EXPRESSION, Detection, Result
from gdino_ros.errors import EXIT_INPUT, EXIT_MODEL, EXIT_USAGE, OutputError
from gdino_ros.eval.datasets import Instance, Sample, load_split
from gdino_ros.eval.metrics import mask_to_rle, rle_to_mask
from gdino_ros.tools.evaluate import (
    ResultsFile,
    build_parser,
    draw_plot,
    main,
    markdown_table,
    results_header,
    sample_record,
)


def box(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def result_of(detections: list[tuple[float, np.ndarray]], *, no_target: bool = False) -> Result:
    """A Result as the Segmenter returns it: detections sorted by score, label image, no-target flag."""
    h, w = detections[0][1].shape if detections else (1, 1)
    dets = []
    label = np.zeros((h, w), np.uint16)
    for k, (score, mask) in enumerate(sorted(detections, key=lambda d: -d[0]), start=1):
        ys, xs = np.nonzero(mask)
        dets.append(Detection(k, "thing", -1, score, (float(xs.min()), float(ys.min()),
                                                      float(xs.max() + 1), float(ys.max() + 1)), mask))
        label[mask & (label == 0)] = k
    return Result("x", EXPRESSION, dets, label, no_target, float("nan"), {"inference": 5.0})


def sample_with(gt: np.ndarray, *, no_target: bool = False, key: str = "1:10") -> Sample:
    h, w = gt.shape
    inst = () if no_target else (Instance(7, (0.0, 0.0, 1.0, 1.0), mask_to_rle(gt)),)
    return Sample(key, 1, 10, 1, Path("img.jpg"), h, w, "expr", no_target, inst)


def test_sample_record_scores_the_union_of_overlapping_detections() -> None:
    h, w = 6, 8
    gt = box(h, w, 2, 1, 6, 4)  # 12 px
    a = box(h, w, 0, 1, 4, 4)  # 12 px, 6 inside gt
    b = box(h, w, 3, 2, 7, 5)  # 12 px, 6 inside gt, 2 shared with a (both inside gt)
    rec = sample_record(sample_with(gt), result_of([(0.9, a), (0.6, b)]))
    # |a | b| = 22; I = 6 + 6 - 2 = 10; U = 22 + 12 - 10 = 24
    assert (rec["I"], rec["U"]) == (10, 24)
    assert rec["iou"] == pytest.approx(10 / 24)
    assert (rec["gt_nt"], rec["pred_nt"], rec["no_target_probability"]) == (False, False, None)
    first = rec["detections"][0]
    assert first["score"] == 0.9 and first["box_xyxy"] == [0.0, 1.0, 4.0, 4.0]
    assert np.array_equal(rle_to_mask(first["mask"]), a)
    assert rec["gt"][0]["ann_id"] == 7
    json.dumps(rec)  # the record is plain JSON


def test_sample_record_of_a_rejected_no_target_sample() -> None:
    gt = np.zeros((5, 5), bool)
    rec = sample_record(sample_with(gt, no_target=True), result_of([], no_target=True))
    assert (rec["I"], rec["U"], rec["iou"], rec["gt_nt"], rec["pred_nt"]) == (0, 0, 1.0, True, True)
    assert rec["detections"] == [] and rec["gt"] == []


# --- results file --------------------------------------------------------------------------------------

HEADER = {"gdino_eval": 1, "model": "/m.onnx", "dataset": "refcoco", "split_by": "unc", "split": "val"}


def test_results_file_resumes_and_cuts_a_half_written_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    f = ResultsFile(path, HEADER)
    f.append({"key": "1:10", "iou": 0.5})
    f.append({"key": "2:20", "iou": 0.25})
    with open(path, "a") as fh:
        fh.write('{"key": "3:30", "io')  # interrupted mid-write
    again = ResultsFile(path, HEADER)
    assert list(again.records) == ["1:10", "2:20"]
    again.append({"key": "3:30", "iou": 1.0})
    lines = path.read_text().splitlines()
    assert [json.loads(line).get("key") for line in lines] == [None, "1:10", "2:20", "3:30"]


def test_results_file_of_another_run_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    ResultsFile(path, HEADER)
    with pytest.raises(OutputError, match="split: 'val', this run: 'testA'.*choose another --out"):
        ResultsFile(path, {**HEADER, "split": "testA"})
    path.write_text(json.dumps(HEADER) + "\nnot json\n{}\n")
    with pytest.raises(OutputError, match="line 2 is not JSON"):
        ResultsFile(path, HEADER)


# --- table and plot ------------------------------------------------------------------------------------


def test_markdown_table_lays_out_one_row_with_na_for_undefined_numbers() -> None:
    metrics = {
        "samples": 3, "target_samples": 3, "no_target_samples": 0, "gIoU": 50.0, "cIoU": 41.256,
        "N-acc": None, "T-acc": 100.0, "Pr@0.5": 33.333, "Pr@0.7": 0.0, "Pr@0.8": 0.0, "Pr@0.9": 0.0,
        "mask mAP": 12.5, "mask mAP50": 25.0, "box AP": 10.0, "box AP50": 20.0,
    }
    summary = {
        "dataset": "refcocog", "split_by": "umd", "split": "val", "model": "/x/m.onnx", "metrics": metrics,
        "counts": {"skipped_missing_image": 2, "missing_images": 1, "invalid_polygons": 0, "dropped_refs": 1},
    }
    lines = markdown_table(summary).splitlines()
    assert lines[0].startswith("| Dataset | Split | Samples | gIoU | cIoU | N-acc | T-acc | Pr@0.5 |")
    assert lines[1].count("|") == lines[0].count("|")
    assert lines[2] == (
        "| RefCOCOg (umd) | val | 3 | 50.00 | 41.26 | n/a | 100.00 | 33.33 | 0.00 | 0.00 | 0.00 "
        "| 12.50 | 25.00 | 10.00 | 20.00 |"
    )
    assert "2 sample(s) whose image is missing (1 image(s))" in lines[5]


def test_plot_draws_both_panels() -> None:
    from gdino_ros.eval.metrics import SampleIoU

    scores = [SampleIoU(1, 2, 0.5, False, False), SampleIoU(9, 10, 0.9, False, False),
              SampleIoU(0, 0, 1.0, True, True)]
    img = draw_plot(scores, "title")
    assert img.dtype == np.uint8 and img.ndim == 3
    half = img.shape[1] // 2
    blue = np.all(img == (180, 110, 30), axis=-1)
    orange = np.all(img == (40, 130, 240), axis=-1)
    assert blue[:, :half].sum() > 100 and not blue[:, half:].any()  # histogram bars on the left
    assert orange[:, half:].sum() > 100 and not orange[:, :half].any()  # precision curve on the right


# --- CLI without a model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_photo_datasets(root)
    return root


@pytest.fixture
def dummy_model(tmp_path: Path) -> Path:
    path = tmp_path / "never_loaded.onnx"
    path.write_bytes(b"not a model")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--split", "testB"], EXIT_INPUT,
            "unknown split 'testB' for refcoco (unc); valid splits in refs(unc).p: train, val",
        ),
        (["--limit", "0"], EXIT_USAGE, "--limit must be a positive number of samples, got 0"),
        (["--split-by", "umd"], EXIT_INPUT, "refcoco has no 'umd' split scheme; valid: unc, google"),
    ],
)
def test_bad_arguments_print_one_line_and_exit_with_their_kind(
    capsys: pytest.CaptureFixture[str], photo_root: Path, dummy_model: Path, args: list[str], code: int,
    message: str,
) -> None:
    """A split the data does not have is an input error (3), a nonsensical flag a usage error (2)."""
    rc, out, err = run_cli(capsys, "--model", str(dummy_model), "--dataset", "refcoco", "--data-root",
                           str(photo_root), *args)
    assert rc == code and out == ""
    assert err == f"gdino-eval: error: {message}\n"


def test_missing_model_and_unsafe_pickle_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, photo_root: Path, dummy_model: Path
) -> None:
    rc, _, err = run_cli(capsys, "--model", str(tmp_path / "nope.onnx"), "--dataset", "refcoco",
                         "--data-root", str(photo_root))
    nope = tmp_path / "nope.onnx"
    assert rc == EXIT_MODEL
    assert err == f"gdino-eval: error: model file {nope} does not exist (or is not a file)\n"
    evil = tmp_path / "evil"
    (evil / "refcoco").mkdir(parents=True)
    (evil / "refcoco" / "instances.json").write_text('{"images": [], "annotations": []}')
    (evil / "refcoco" / "refs(unc).p").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    rc, _, err = run_cli(
        capsys, "--model", str(dummy_model), "--dataset", "refcoco", "--data-root", str(evil)
    )
    assert rc == EXIT_INPUT and err.count("\n") == 1 and "refusing to load 'os.system'" in err


def test_rerun_with_every_sample_done_skips_inference_and_summarises_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, photo_root: Path, dummy_model: Path
) -> None:
    """The model file is not even a model: the run only works because nothing is left to infer."""
    split = load_split("refcoco", "val", photo_root)
    out = tmp_path / "res.json"
    argv = ["--model", str(dummy_model), "--dataset", "refcoco", "--data-root", "."]
    results_file = out.with_suffix(".jsonl")
    results = ResultsFile(results_file, results_header(dummy_model, split, build_parser().parse_args(argv)))
    for k, sample in enumerate(split.samples):
        gt = sample.gt_mask()
        if k == 0:  # perfect prediction
            results.append(sample_record(sample, result_of([(0.8, gt)])))
        else:  # predicted no target, no mask
            results.append(sample_record(sample, result_of([], no_target=True)))
    n = len(split.samples)
    rc, out_text, err = run_cli(capsys, "--model", str(dummy_model), "--dataset", "refcoco", "--data-root",
                                str(photo_root), "--out", str(out))
    assert rc == 0, err
    summary = json.loads(out.read_text())
    m = summary["metrics"]
    assert m["samples"] == n and m["no_target_samples"] == 0
    assert m["gIoU"] == pytest.approx(100 / n)  # one IoU-1 sample, the rest 0
    assert m["T-acc"] == pytest.approx(100 / n) and m["N-acc"] is None
    gt0 = split.samples[0].gt_mask().sum()
    union_others = sum(int(s.gt_mask().sum()) for s in split.samples[1:])
    assert m["cIoU"] == pytest.approx(100 * gt0 / (gt0 + union_others))
    assert m["Pr@0.9"] == pytest.approx(100 / n)
    # One exact detection among n ground-truth objects: precision 1 up to recall 1/n, nothing beyond,
    # at every IoU threshold; COCO's AP samples precision at the 101 recall points 0, 0.01, ..., 1.
    expected_ap = 100 * np.count_nonzero(np.linspace(0, 1, 101) <= 1 / n) / 101
    assert m["mask mAP"] == pytest.approx(expected_ap) and m["mask mAP50"] == pytest.approx(expected_ap)
    assert summary["counts"]["evaluated"] == n and summary["counts"]["skipped_missing_image"] == 0
    assert out_text == out.with_suffix(".md").read_text()
    assert out_text.splitlines()[2].startswith(f"| RefCOCO (unc) | val | {n} | {100 / n:.2f} |")
    png = cv2.imread(str(out.with_suffix(".png")))
    assert png is not None and png.shape[0] > 100


# --- end to end with the random-weight tiny model ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gdino_ros.tools.export import main as export_main

    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    assert export_main(["--random-init", "--config", "tiny", "--output", str(path)]) == 0
    return path


def _in_range(value: object) -> bool:
    return value is None or (isinstance(value, float) and 0.0 <= value <= 100.0 and not math.isnan(value))


@pytest.mark.parametrize("dataset", ["refcoco", "refcoco+", "refcocog", "grefcoco"])
@pytest.mark.slow
def test_end_to_end_on_each_release_format(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    photo_root: Path,
    tiny_model: Path,
    vocab_path: Path,
    dataset: str,
) -> None:
    out = tmp_path / "summary.json"
    args = [
        "--model", str(tiny_model), "--dataset", dataset, "--split", "val", "--data-root", str(photo_root),
        "--out", str(out), "--tokenizer", str(vocab_path),
    ]
    rc, table, err = run_cli(capsys, *args)
    assert rc == 0, err
    split = load_split(dataset, "val", photo_root, PHOTO_SPLIT_BY[dataset])
    summary = json.loads(out.read_text())
    metrics = summary["metrics"]
    assert metrics["samples"] == len(split.samples) == summary["counts"]["evaluated"]
    for name in ("gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.5", "Pr@0.7", "Pr@0.8", "Pr@0.9",
                 "mask mAP", "mask mAP50", "box AP", "box AP50"):
        assert _in_range(metrics[name]), (name, metrics[name])
    assert (metrics["N-acc"] is None) == (dataset != "grefcoco")  # only gRefCOCO has no-target samples
    assert metrics["no_target_samples"] == (1 if dataset == "grefcoco" else 0)
    lines = table.splitlines()
    assert lines[0].startswith("| Dataset | Split | Samples | gIoU |") and lines[1].startswith("|---|")
    assert lines[2].startswith("| ")
    assert len(lines[2].split("|")) == len(lines[0].split("|"))
    records = out.with_suffix(".jsonl").read_text().splitlines()[1:]
    assert [json.loads(r)["key"] for r in records] == [s.key for s in split.samples]
    for r in map(json.loads, records):
        assert 0.0 <= r["iou"] <= 1.0 and r["U"] >= r["I"] >= 0
        assert "inference" in "".join(r["timings_ms"])  # the Segmenter's own stage timings came through
    assert cv2.imread(str(out.with_suffix(".png"))) is not None
    # A rerun resumes: nothing left to infer, same numbers, no new lines.
    rc, table_again, _ = run_cli(capsys, *args)
    assert rc == 0 and table_again == table
    assert out.with_suffix(".jsonl").read_text().splitlines()[1:] == records


def test_end_to_end_missing_image_is_skipped_with_a_warning_and_counted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_model: Path, vocab_path: Path
) -> None:
    root = tmp_path / "data"
    write_photo_datasets(root)
    (root / "images" / "train2014" / coco_image_name(COFFEE)).unlink()
    out = tmp_path / "s.json"
    rc, table, err = run_cli(
        capsys, "--model", str(tiny_model), "--dataset", "grefcoco", "--data-root", str(root),
        "--out", str(out), "--tokenizer", str(vocab_path), "--limit", "2",
    )
    assert rc == 0, err
    assert f"image {root / 'images' / 'train2014' / coco_image_name(COFFEE)} is missing" in err
    summary = json.loads(out.read_text())
    # val: ref 1 (1 sentence), ref 2 (2, coffee), ref 3 (1, coffee, no target), ref 4 (1): 3 skipped
    assert summary["counts"]["skipped_missing_image"] == 3 and summary["counts"]["missing_images"] == 1
    assert summary["counts"]["samples_in_split"] == 5 and summary["counts"]["evaluated"] == 2
    assert "Skipped: 3 sample(s) whose image is missing (1 image(s))" in table
