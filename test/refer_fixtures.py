"""Writers for tiny datasets in the real release formats (refer ``refs(*).p``, ``grefs(unc).json``,
COCO ``instances.json``, ``images/train2014/COCO_train2014_<id>.jpg``), used by the eval tests.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np


def coco_image_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    """Axis-aligned rectangle polygon; pycocotools rasterises it to exactly [y0:y1, x0:x1]."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


@dataclass
class Ann:
    id: int
    image_id: int
    category_id: int
    polygons: list[list[float]]
    iscrowd: int = 0


@dataclass
class Ref:
    ref_id: int
    image_id: int
    ann_id: int | list[int]
    split: str
    sentences: list[str]
    no_target: bool = False
    first_sent_id: int = 0
    extra: dict = field(default_factory=dict)


def write_images(root: Path, images: dict[int, np.ndarray]) -> None:
    """RGB arrays to ``root/images/train2014`` as COCO-named JPEGs."""
    folder = root / "images" / "train2014"
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, rgb in images.items():
        assert cv2.imwrite(str(folder / coco_image_name(image_id)), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def instances_json(sizes: dict[int, tuple[int, int]], anns: list[Ann]) -> dict:
    return {
        "info": {"description": "test"},
        "images": [
            {"id": i, "file_name": coco_image_name(i), "height": h, "width": w} for i, (h, w) in sizes.items()
        ],
        "annotations": [
            {
                "id": a.id,
                "image_id": a.image_id,
                "category_id": a.category_id,
                "segmentation": a.polygons,
                "area": 0.0,
                "bbox": _poly_bbox(a.polygons),
                "iscrowd": a.iscrowd,
            }
            for a in anns
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }


def _poly_bbox(polygons: list[list[float]]) -> list[float]:
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)] if xs else [0.0, 0.0, 0.0, 0.0]


def _sentences(ref: Ref) -> list[dict]:
    start = ref.first_sent_id or ref.ref_id * 10
    return [
        {"tokens": s.lower().split(), "raw": s, "sent_id": start + k, "sent": s.lower()}
        for k, s in enumerate(ref.sentences)
    ]


def refer_refs(refs: list[Ref]) -> list[dict]:
    """refs in the layout of refer's ``refs(*).p`` (one int ann_id per ref)."""
    out = []
    for r in refs:
        assert isinstance(r.ann_id, int)
        sents = _sentences(r)
        out.append({
            "sent_ids": [s["sent_id"] for s in sents],
            "file_name": f"COCO_train2014_{r.image_id:012d}_{r.ann_id}.jpg",
            "ann_id": r.ann_id,
            "ref_id": r.ref_id,
            "image_id": r.image_id,
            "split": r.split,
            "sentences": sents,
            "category_id": 1,
            **r.extra,
        })
    return out


def grefer_refs(refs: list[Ref]) -> list[dict]:
    """refs in the layout of gRefCOCO's ``grefs(unc).json`` (ann_id list, [-1] and no_target)."""
    out = []
    for r in refs:
        sents = _sentences(r)
        ids = r.ann_id if isinstance(r.ann_id, list) else [r.ann_id]
        out.append({
            "sent_ids": [s["sent_id"] for s in sents],
            "file_name": f"COCO_train2014_{r.image_id:012d}.jpg",
            "ann_id": r.ann_id,
            "ref_id": r.ref_id,
            "image_id": r.image_id,
            "split": r.split,
            "sentences": sents,
            "category_id": [] if ids == [-1] else [1] * len(ids),
            "no_target": r.no_target,
            **r.extra,
        })
    return out


def write_refer_dataset(
    root: Path,
    dataset: str,
    split_by: str,
    sizes: dict[int, tuple[int, int]],
    anns: list[Ann],
    refs: list[Ref],
    *,
    pickle_protocol: int = 0,
) -> Path:
    """Write ``root/<dataset>/instances.json`` and the refs file; returns the refs file path.

    refer's pickles were written by Python 2 with the default protocol 0; protocol 0 keeps that shape.
    """
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps(instances_json(sizes, anns)))
    if dataset == "grefcoco":
        path = folder / f"grefs({split_by}).json"
        path.write_text(json.dumps(grefer_refs(refs)))
    else:
        path = folder / f"refs({split_by}).p"
        path.write_bytes(pickle.dumps(refer_refs(refs), protocol=pickle_protocol))
    return path


# --- The photo datasets for the end-to-end test: scikit-image photos, hand-drawn polygons --------------

ASTRONAUT, COFFEE, CHELSEA = 9001, 9002, 9003

PHOTO_ANNS = [
    # astronaut.png (512 x 512)
    Ann(11, ASTRONAUT, 1, [[160, 30, 300, 30, 300, 150, 360, 300, 360, 512, 20, 512, 30, 280, 110, 200]]),
    Ann(12, ASTRONAUT, 1, [[280, 380, 340, 345, 450, 345, 500, 400, 510, 512, 280, 512]]),
    Ann(13, ASTRONAUT, 1, [[0, 0, 70, 0, 95, 210, 60, 290, 20, 512, 0, 512]]),
    # coffee.png (400 x 600)
    Ann(21, COFFEE, 1, [[175, 30, 405, 30, 400, 200, 340, 270, 260, 280, 200, 300, 195, 250, 180, 150]]),
    Ann(22, COFFEE, 1, [[395, 70, 420, 70, 395, 200, 405, 260, 390, 320, 340, 320, 330, 270, 370, 230]]),
    # chelsea.png (300 x 451): the face, and the eyes as two polygons of one annotation
    Ann(31, CHELSEA, 1, [[30, 0, 390, 0, 360, 200, 300, 290, 150, 290, 30, 200]]),
    Ann(32, CHELSEA, 1, [[135, 90, 205, 85, 205, 140, 140, 140], [295, 110, 340, 110, 340, 160, 295, 160]]),
]


def photo_images() -> dict[int, np.ndarray]:
    import skimage.data

    data = skimage.data
    return {ASTRONAUT: data.astronaut(), COFFEE: data.coffee(), CHELSEA: data.chelsea()}


def photo_refs(dataset: str) -> list[Ref]:
    """Expressions for each format; gRefCOCO adds a multi-target and a no-target one."""
    if dataset == "grefcoco":
        return [
            Ref(1, ASTRONAUT, [11, 13], "val", ["the woman and the flag"]),
            Ref(2, COFFEE, [21], "val", ["white cup of coffee", "the cup"]),
            Ref(3, COFFEE, [-1], "val", ["the dog on the left"], no_target=True),
            Ref(4, CHELSEA, 32, "val", ["the cat's eyes"]),
            Ref(5, ASTRONAUT, [12], "train", ["black helmet"]),
        ]
    split = "val"
    return [
        Ref(1, ASTRONAUT, 11, split, ["woman in the orange suit", "smiling astronaut"]),
        Ref(2, ASTRONAUT, 12, split, ["black helmet on the right"]),
        Ref(3, COFFEE, 21, split, ["white cup of coffee"]),
        Ref(4, COFFEE, 22, "train", ["silver spoon"]),
        Ref(5, CHELSEA, 31, split, ["the cat"]),
    ]


PHOTO_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "grefcoco": "unc"}


def write_photo_datasets(root: Path) -> None:
    """All four datasets on the three photos, under one data root, as the release lays them out."""
    images = photo_images()
    write_images(root, images)
    sizes = {i: (a.shape[0], a.shape[1]) for i, a in images.items()}
    for dataset, split_by in PHOTO_SPLIT_BY.items():
        write_refer_dataset(root, dataset, split_by, sizes, PHOTO_ANNS, photo_refs(dataset))
