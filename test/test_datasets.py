"""Dataset readers on tiny files written here in each real release format."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from refer_fixtures import Ann, Ref, coco_image_name, rect, write_images, write_refer_dataset

from gdino_ros.eval.datasets import DatasetError, load_refer_pickle, load_split

H, W = 60, 80
SIZES = {1: (H, W), 2: (H, W)}
ANNS = [
    Ann(101, 1, 1, [rect(10, 20, 30, 40)]),
    Ann(102, 1, 1, [rect(50, 5, 70, 15)]),
    Ann(201, 2, 1, [rect(0, 0, 8, 6)]),
]


def box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_images(tmp_path, {1: np.zeros((H, W, 3), np.uint8), 2: np.full((H, W, 3), 90, np.uint8)})
    return tmp_path


def refcoco_refs() -> list[Ref]:
    return [
        Ref(1, 1, 101, "val", ["Left Box", "the square one"]),
        Ref(2, 1, 102, "testA", ["top right box"]),
        Ref(3, 2, 201, "val", ["corner"]),
        Ref(4, 2, 201, "train", ["corner again"]),
    ]


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_refcoco_pickle_gives_one_sample_per_sentence(root: Path, protocol: int) -> None:
    write_refer_dataset(root, "refcoco", "unc", SIZES, ANNS, refcoco_refs(), pickle_protocol=protocol)
    split = load_split("refcoco", "val", root)
    assert split.split_by == "unc"
    assert [s.key for s in split.samples] == ["1:10", "1:11", "3:30"]
    first = split.samples[0]
    assert first.expression == "Left Box"  # the raw sentence, as ReLA feeds it
    assert first.image_path == root / "images" / "train2014" / coco_image_name(1)
    assert (first.height, first.width, first.image_id, first.no_target) == (H, W, 1, False)
    assert [i.ann_id for i in first.instances] == [101]
    assert first.instances[0].bbox_xywh == (10.0, 20.0, 20.0, 20.0)
    assert np.array_equal(first.gt_mask(), box(10, 20, 30, 40))
    assert (split.skipped_samples, split.invalid_polygons, split.missing_images) == (0, 0, [])


@pytest.mark.parametrize(
    ("dataset", "split_by"),
    [("refcoco+", "unc"), ("refcocog", "umd"), ("refcocog", "google"), ("refcoco", "google")],
)
def test_every_refer_dataset_and_split_scheme_reads_its_own_file(
    root: Path, dataset: str, split_by: str
) -> None:
    refs = [Ref(7, 2, 201, "test", ["corner"]), Ref(8, 1, 102, "val", ["box"])]
    path = write_refer_dataset(root, dataset, split_by, SIZES, ANNS, refs)
    assert path.name == f"refs({split_by}).p"
    assert [s.key for s in load_split(dataset, "test", root, split_by).samples] == ["7:70"]


def test_refcocog_defaults_to_the_umd_split(root: Path) -> None:
    write_refer_dataset(root, "refcocog", "umd", SIZES, ANNS, [Ref(1, 1, 101, "val", ["a"])])
    assert load_split("refcocog", "val", root).split_by == "umd"


def test_grefcoco_multi_target_no_target_and_scalar_ann_ids(root: Path) -> None:
    refs = [
        Ref(1, 1, [101, 102], "val", ["both boxes"]),
        Ref(2, 2, [-1], "val", ["the dog", "a cat"], no_target=True),
        Ref(3, 2, 201, "val", ["corner"]),  # scalar ann_id: read as [201]
        Ref(4, 1, [101], "train", ["left"]),
    ]
    write_refer_dataset(root, "grefcoco", "unc", SIZES, ANNS, refs)
    split = load_split("grefcoco", "val", root)
    by_key = {s.key: s for s in split.samples}
    assert list(by_key) == ["1:10", "2:20", "2:21", "3:30"]
    multi = by_key["1:10"]
    assert [i.ann_id for i in multi.instances] == [101, 102] and not multi.no_target
    assert np.array_equal(multi.gt_mask(), box(10, 20, 30, 40) | box(50, 5, 70, 15))
    for key in ("2:20", "2:21"):
        nt = by_key[key]
        assert nt.no_target and nt.instances == ()
        assert nt.gt_mask().shape == (H, W) and not nt.gt_mask().any()
    assert [i.ann_id for i in by_key["3:30"].instances] == [201]


def test_unknown_split_names_the_valid_ones(root: Path) -> None:
    write_refer_dataset(root, "refcoco", "unc", SIZES, ANNS, refcoco_refs())
    expected = r"unknown split 'testB' .*valid splits in refs\(unc\)\.p: testA, train, val"
    with pytest.raises(DatasetError, match=expected):
        load_split("refcoco", "testB", root)


def test_unknown_dataset_and_split_scheme_name_the_valid_ones(root: Path) -> None:
    with pytest.raises(DatasetError, match="valid datasets: grefcoco, refcoco, refcoco\\+, refcocog"):
        load_split("refclef", "val", root)
    with pytest.raises(DatasetError, match="refcoco\\+ has no 'umd' split scheme; valid: unc"):
        load_split("refcoco+", "val", root, "umd")


def test_missing_annotation_files_say_what_data_root_must_hold(root: Path) -> None:
    expected = r"refs\(unc\)\.p not found: --data-root must hold refcoco/refs\(unc\)\.p"
    with pytest.raises(DatasetError, match=expected):
        load_split("refcoco", "val", root)


def test_missing_image_is_skipped_with_a_warning_and_counted(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_refer_dataset(root, "refcoco", "unc", SIZES, ANNS, refcoco_refs())
    (root / "images" / "train2014" / coco_image_name(1)).unlink()
    with caplog.at_level(logging.WARNING, logger="gdino_ros.eval.datasets"):
        split = load_split("refcoco", "val", root)
    assert [s.key for s in split.samples] == ["3:30"]
    assert split.skipped_samples == 2  # both sentences of ref 1
    assert split.missing_images == [str(root / "images" / "train2014" / coco_image_name(1))]
    assert f"image {root / 'images' / 'train2014' / coco_image_name(1)} is missing" in caplog.text
    assert "2 expression(s) skipped" in caplog.text


def test_polygon_with_fewer_than_three_points_is_dropped_with_a_warning_naming_it(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    anns = [
        Ann(101, 1, 1, [rect(10, 20, 30, 40), [40.0, 40.0, 45.0, 45.0]]),  # second polygon: 2 points
        Ann(102, 1, 1, [[1.0, 2.0, 3.0, 4.0]]),  # only polygon: 2 points
    ]
    refs = [Ref(1, 1, 101, "val", ["a"]), Ref(2, 1, 102, "val", ["b"])]
    write_refer_dataset(root, "refcoco", "unc", SIZES, anns, refs)
    with caplog.at_level(logging.WARNING, logger="gdino_ros.eval.datasets"):
        split = load_split("refcoco", "val", root)
    assert split.invalid_polygons == 2
    assert "annotation 101 (image 1): polygon 1 has 4 coordinates, fewer than 3 points" in caplog.text
    assert "annotation 102 (image 1): polygon 0 has 4 coordinates, fewer than 3 points" in caplog.text
    (a,) = split.samples  # ref 2 has no instance left: dropped whole, as the official loader does
    assert np.array_equal(a.gt_mask(), box(10, 20, 30, 40))  # the valid polygon stays
    assert split.dropped_refs == 1
    assert "ref 2 has no valid ground-truth instance left; its 1 sentence(s) are left out" in caplog.text


def test_refs_naming_an_unknown_annotation_or_inconsistent_no_target_fail_clearly(root: Path) -> None:
    write_refer_dataset(root, "refcoco", "unc", SIZES, ANNS, [Ref(1, 1, 999, "val", ["x"])])
    with pytest.raises(DatasetError, match="ref 1 names annotation 999, which .*instances.json lacks"):
        load_split("refcoco", "val", root)
    flagged = Ref(1, 1, [101], "val", ["x"], no_target=True)
    write_refer_dataset(root, "grefcoco", "unc", SIZES, ANNS, [flagged])
    with pytest.raises(DatasetError, match="no_target=True but ann_id \\[101\\]"):
        load_split("grefcoco", "val", root)
    write_refer_dataset(root, "grefcoco", "unc", SIZES, ANNS, [Ref(1, 1, [101, -1], "val", ["x"])])
    with pytest.raises(DatasetError, match="mixes the no-target id -1"):
        load_split("grefcoco", "val", root)


# --- restricted unpickling ---------------------------------------------------------------------------


def test_plain_data_pickles_load_including_sets_and_tuples(tmp_path: Path) -> None:
    data = [{"a": (1, 2.5, "x"), "b": {3, 4}, "c": frozenset({"y"}), "d": [True, None, -7]}]
    for protocol in (0, 2, 5):
        path = tmp_path / f"ok{protocol}.p"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert load_refer_pickle(path) == data


def test_python2_refer_pickle_with_str_and_unicode_loads(tmp_path: Path) -> None:
    # Protocol 0 as Python 2 writes it: S'...' is a py2 str, V... a py2 unicode, L...L a long.
    path = tmp_path / "py2.p"
    path.write_bytes(
        b"(lp0\n(dp1\nS'split'\np2\nS'val'\np3\nsVraw\np4\nVa man\np5\nsS'ref_id'\np6\nL12L\nsa."
    )
    assert load_refer_pickle(path) == [{"split": "val", "raw": "a man", "ref_id": 12}]


def test_pickle_that_would_run_code_is_refused_naming_the_class(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.p"
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(DatasetError, match="refusing to load 'os.system'"):
        load_refer_pickle(path)
    assert not marker.exists()


def test_pickle_of_a_numpy_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "array.p"
    path.write_bytes(pickle.dumps([{"ann_id": np.arange(3)}]))
    with pytest.raises(DatasetError, match="refusing to load 'numpy.*': a RefCOCO refs file holds only"):
        load_refer_pickle(path)


def test_refs_file_with_an_object_fails_load_split_with_the_class_name(root: Path) -> None:
    folder = root / "refcoco"
    write_refer_dataset(root, "refcoco", "unc", SIZES, ANNS, refcoco_refs())
    (folder / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": 1, "when": Path("/x")}]))
    with pytest.raises(DatasetError, match="refusing to load 'pathlib.*PosixPath'"):
        load_split("refcoco", "val", root)


def test_truncated_or_non_pickle_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.p"
    path.write_bytes(pickle.dumps([{"a": 1}])[:-3])
    with pytest.raises(DatasetError, match="not a readable refer pickle"):
        load_refer_pickle(path)
    path.write_text("{ not a pickle")
    with pytest.raises(DatasetError, match="not a readable refer pickle"):
        load_refer_pickle(path)


# --- malformed files: one DatasetError naming the file and the entry -----------------------------------


def _instances(root: Path) -> Path:
    return root / "refcoco" / "instances.json"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["images"][0].pop("id"), r"instances.json: images\[0\] has no 'id'"),
        (lambda d: d.update(images={"1": {}}), r"instances.json: 'images' must be a list, got dict"),
        (lambda d: d["annotations"][1].update(id="x7"), r"annotations\[1\].id is 'x7', not an integer id"),
    ],
)
def test_malformed_instances_name_the_entry(root: Path, edit: object, message: str) -> None:
    write_refer_dataset(root, "refcoco", "unc", SIZES, ANNS, refcoco_refs())
    data = json.loads(_instances(root).read_text())
    edit(data)  # type: ignore[operator]
    _instances(root).write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message):
        load_split("refcoco", "val", root)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sentences": 5}, r"ref 1: 'sentences' must be a list of sentence records, got 5"),
        ({"image_id": "one"}, r"ref 1: its image_id is 'one', not an integer id"),
        ({"ann_id": [101, None]}, r"ref 1's ann_id is None, not an integer id"),
    ],
)
def test_malformed_refs_name_the_ref(root: Path, extra: dict[str, object], message: str) -> None:
    refs = [Ref(1, 1, [101], "val", ["a"], extra=extra)]
    write_refer_dataset(root, "grefcoco", "unc", SIZES, ANNS, refs)
    with pytest.raises(DatasetError, match=message):
        load_split("grefcoco", "val", root)


def test_pickle_declaring_a_huge_string_is_refused_without_allocating_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.p"
    # BINBYTES8 (protocol 4+) declaring 2**40 bytes, followed by 3 bytes and STOP.
    path.write_bytes(b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"abc.")
    with pytest.raises(DatasetError, match="not a readable refer pickle"):
        load_refer_pickle(path)
