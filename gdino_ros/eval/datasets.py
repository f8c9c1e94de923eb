"""Readers for the released RefCOCO, RefCOCO+, RefCOCOg and gRefCOCO annotation files.

``--data-root`` is laid out like ReLA's ``datasets/`` folder (the files exactly as released; only the
datasets you evaluate need to be there)::

    DATA_ROOT/
      refcoco/    instances.json  refs(unc).p   [refs(google).p]
      refcoco+/   instances.json  refs(unc).p
      refcocog/   instances.json  refs(umd).p   [refs(google).p]
      grefcoco/   instances.json  grefs(unc).json
      images/train2014/COCO_train2014_000000000009.jpg ...   (MS COCO train2014)

RefCOCO-family ``refs(*).p`` files are Python 2 pickles of plain lists and dicts (the ``refer`` API):
one ref per referred object with ``ref_id``, ``ann_id`` (int), ``image_id``, ``split``, ``sentences``
and a ``file_name`` that appends the ann id to the COCO name. Pickles can run code when loaded, so
they are read with an unpickler that only admits builtin containers, numbers and strings. The image
file is the COCO one named in ``instances.json`` (``COCO_train2014_<12-digit image id>.jpg``).

gRefCOCO's ``grefs(unc).json`` has the same ref layout, but ``ann_id`` is a list of targets (a scalar
is read as a one-element list), and a no-target expression has ``ann_id == [-1]`` and
``no_target: true``.

Each sentence of a ref becomes one :class:`Sample` (ReLA's unit of evaluation). Its ground truth is
the ref's non-crowd instances; polygons with fewer than 3 points are dropped with a warning, as ReLA
drops them. A sample whose image is missing is skipped with a warning and counted in
:attr:`Split.skipped_samples`.
"""
from __future__ import annotations

import builtins
import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gdino_ros.errors import InputError
from gdino_ros.eval.metrics import rle_to_mask

LOG = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("grefcoco", "refcoco", "refcoco+", "refcocog")
# The split schemes released for each dataset; the first is the default (the one ReLA and the
# GRES / LAVT-style papers report).
SPLIT_BY: dict[str, tuple[str, ...]] = {
    "grefcoco": ("unc",),
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
}
IMAGE_DIR = Path("images") / "train2014"
INSTANCES_FILE = "instances.json"
NO_TARGET_ANN_ID = -1
_MISSING_IMAGES_LOGGED = 5  # name this many missing images one by one, then give a total


class DatasetError(InputError, ValueError):
    """The annotation files cannot be read as the released format; the message says what to fix."""


@dataclass(frozen=True)
class Instance:
    """One ground-truth object: COCO annotation id, xywh box in pixels, compressed RLE (str counts)."""

    ann_id: int
    bbox_xywh: tuple[float, float, float, float]
    rle: dict[str, Any]


@dataclass(frozen=True)
class Sample:
    """One (image, expression) pair. ``key`` (``"<ref_id>:<sent_id>"``) is unique within a split."""

    key: str
    ref_id: int
    sent_id: int
    image_id: int
    image_path: Path
    height: int
    width: int
    expression: str
    no_target: bool
    instances: tuple[Instance, ...]

    def gt_mask(self) -> np.ndarray:
        """Union of the target instances: bool [height, width]; all False for a no-target sample."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        for inst in self.instances:
            mask |= rle_to_mask(inst.rle)
        return mask


@dataclass
class Split:
    """The samples of one split, and what had to be left out while reading it."""

    dataset: str
    split: str
    split_by: str
    samples: list[Sample]
    missing_images: list[str] = field(default_factory=list)
    skipped_samples: int = 0
    invalid_polygons: int = 0


# --- Restricted unpickling ----------------------------------------------------------------------------

# Everything a refer ``.p`` file may reference by name: builtin containers, numbers and strings.
# (Python 2 pickles of dicts, lists, str and unicode need no names at all; sets and tuples might.)
_PLAIN_DATA_TYPES = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes"}
)


class _PlainDataUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="utf-8")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 pickles name the builtins module "__builtin__".
        if module in ("builtins", "__builtin__") and name in _PLAIN_DATA_TYPES:
            return getattr(builtins, name)
        raise DatasetError(
            f"{self._path}: refusing to load '{module}.{name}': a RefCOCO refs file holds only lists, dicts, "
            "strings and numbers, so this is not one (or it has been altered); download it again"
        )


def load_refer_pickle(path: Path) -> object:
    """Load a refer ``refs(*).p`` file without running any code it might contain.

    Raises :class:`DatasetError` naming the offending class when the pickle references anything but
    builtin containers, numbers and strings, or when it is not a readable pickle.
    """
    try:
        with open(path, "rb") as f:
            return _PlainDataUnpickler(f, path).load()
    except DatasetError:
        raise
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError, TypeError, IndexError) as exc:
        raise DatasetError(f"{path}: not a readable refer pickle ({type(exc).__name__}: {exc})") from exc


# --- Split reading ------------------------------------------------------------------------------------


def refs_file(data_root: Path, dataset: str, split_by: str) -> Path:
    """Path of the refs file that the release names for ``dataset`` split by ``split_by``."""
    if dataset == "grefcoco":
        return data_root / dataset / f"grefs({split_by}).json"
    return data_root / dataset / f"refs({split_by}).p"


def load_split(dataset: str, split: str, data_root: Path | str, split_by: str | None = None) -> Split:
    """Read one split of a released dataset under ``data_root`` (layout in the module docstring).

    ``split_by`` defaults to the first scheme of :data:`SPLIT_BY` (unc, or umd for RefCOCOg). Raises
    :class:`DatasetError` for an unknown dataset, scheme or split name (listing the valid ones), missing
    annotation files, or refs that point at annotations or images the instances file does not have.
    """
    root = Path(data_root)
    if dataset not in SPLIT_BY:
        raise DatasetError(f"unknown dataset '{dataset}'; valid datasets: {', '.join(DATASETS)}")
    split_by = split_by or SPLIT_BY[dataset][0]
    if split_by not in SPLIT_BY[dataset]:
        raise DatasetError(
            f"{dataset} has no '{split_by}' split scheme; valid: {', '.join(SPLIT_BY[dataset])}"
        )
    refs_path = refs_file(root, dataset, split_by)
    instances_path = root / dataset / INSTANCES_FILE
    for path in (refs_path, instances_path):
        if not path.is_file():
            raise DatasetError(
                f"{path} not found: --data-root must hold {dataset}/{refs_path.name} and "
                f"{dataset}/{INSTANCES_FILE} as released, and the COCO train2014 images in {IMAGE_DIR}/"
            )
    refs = _read_refs(refs_path)
    images, annotations = _read_instances(instances_path)

    splits = sorted({str(ref["split"]) for ref in refs})
    if split not in splits:
        raise DatasetError(
            f"unknown split '{split}' for {dataset} ({split_by}); valid splits in {refs_path.name}: "
            f"{', '.join(splits)}"
        )

    result = Split(dataset=dataset, split=split, split_by=split_by, samples=[])
    instance_cache: dict[int, Instance | None] = {}
    image_exists: dict[Path, bool] = {}
    for ref in refs:
        if ref["split"] != split:
            continue
        ref_id = int(ref["ref_id"])
        image_id = int(ref["image_id"])
        ann_ids = _target_ann_ids(ref, refs_path)
        no_target = ann_ids == [NO_TARGET_ANN_ID]
        image = images.get(image_id)
        if image is None:
            raise DatasetError(
                f"{refs_path}: ref {ref_id} names image {image_id}, which {instances_path} lacks"
            )
        instances: list[Instance] = []
        for ann_id in [] if no_target else ann_ids:
            if ann_id not in instance_cache:
                ann = annotations.get(ann_id)
                if ann is None:
                    raise DatasetError(
                        f"{refs_path}: ref {ref_id} names annotation {ann_id}, which {instances_path} lacks"
                    )
                instance_cache[ann_id] = _instance(ann, image, result)
            inst = instance_cache[ann_id]
            if inst is not None:
                instances.append(inst)

        image_path = root / IMAGE_DIR / str(image["file_name"])
        if image_path not in image_exists:
            image_exists[image_path] = image_path.is_file()
            if not image_exists[image_path]:
                result.missing_images.append(str(image_path))
                if len(result.missing_images) <= _MISSING_IMAGES_LOGGED:
                    LOG.warning("image %s is missing; its expressions are skipped", image_path)
        sentences = ref["sentences"]
        if not image_exists[image_path]:
            result.skipped_samples += len(sentences)
            continue
        for sent in sentences:
            if "sent_id" not in sent or not (sent.get("raw") or sent.get("sent")):
                raise DatasetError(
                    f"{refs_path}: a sentence of ref {ref_id} lacks sent_id or its text (raw/sent)"
                )
            sent_id = int(sent["sent_id"])
            result.samples.append(
                Sample(
                    key=f"{ref_id}:{sent_id}",
                    ref_id=ref_id,
                    sent_id=sent_id,
                    image_id=image_id,
                    image_path=image_path,
                    height=int(image["height"]),
                    width=int(image["width"]),
                    expression=str(sent.get("raw") or sent["sent"]),
                    no_target=no_target,
                    instances=tuple(instances),
                )
            )
    if result.missing_images:
        LOG.warning(
            "%d image(s) of %s %s are missing from %s: %d expression(s) skipped",
            len(result.missing_images), dataset, split, root / IMAGE_DIR, result.skipped_samples,
        )
    return result


def _read_refs(path: Path) -> list[dict]:
    if path.suffix == ".json":
        try:
            refs = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    else:
        refs = load_refer_pickle(path)
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DatasetError(f"{path}: expected a list of refs (dicts), got {type(refs).__name__}")
    required = ("ref_id", "ann_id", "image_id", "split", "sentences")
    for index, ref in enumerate(refs):
        missing = [k for k in required if k not in ref]
        if missing:
            raise DatasetError(
                f"{path}: ref #{index} lacks {', '.join(missing)}; is this a refer/grefer file?"
            )
    return refs


def _read_instances(path: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DatasetError(f"{path}: not a COCO instances file (needs 'images' and 'annotations')")
    images = {int(img["id"]): img for img in data["images"]}
    annotations = {int(ann["id"]): ann for ann in data["annotations"]}
    return images, annotations


def _target_ann_ids(ref: dict, path: Path) -> list[int]:
    """Return the ref's target annotation ids as a list; ``[-1]`` for a no-target ref."""
    raw = ref["ann_id"]
    ann_ids = [int(a) for a in raw] if isinstance(raw, list) else [int(raw)]
    flagged = bool(ref.get("no_target", False))
    if NO_TARGET_ANN_ID in ann_ids and ann_ids != [NO_TARGET_ANN_ID]:
        raise DatasetError(f"{path}: ref {ref['ref_id']} mixes the no-target id -1 with targets {ann_ids}")
    if flagged != (ann_ids == [NO_TARGET_ANN_ID]):
        raise DatasetError(
            f"{path}: ref {ref['ref_id']} has no_target={flagged} but ann_id {raw}; "
            "a no-target ref must have ann_id [-1]"
        )
    if not ann_ids:
        raise DatasetError(f"{path}: ref {ref['ref_id']} has an empty ann_id list")
    return ann_ids


def _instance(ann: dict, image: dict, split: Split) -> Instance | None:
    """One COCO annotation as an :class:`Instance`; ``None`` for a crowd or a polygon-less annotation."""
    from pycocotools import mask as mask_utils

    if ann.get("iscrowd", 0):
        return None
    height, width = int(image["height"]), int(image["width"])
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, dict):
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": segmentation["size"], "counts": counts}
    elif isinstance(segmentation, list):
        polygons = []
        for k, poly in enumerate(segmentation):
            if len(poly) < 6 or len(poly) % 2:
                split.invalid_polygons += 1
                LOG.warning(
                    "annotation %s (image %s): polygon %d has %d coordinates, fewer than 3 points; "
                    "it is left out of the ground truth",
                    ann["id"], ann["image_id"], k, len(poly),
                )
                continue
            polygons.append([float(v) for v in poly])
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    else:
        raise DatasetError(f"annotation {ann['id']}: segmentation is neither polygons nor RLE")
    bbox = ann.get("bbox") or mask_utils.toBbox({"size": rle["size"], "counts": _counts_bytes(rle["counts"])})
    return Instance(
        ann_id=int(ann["id"]),
        bbox_xywh=(float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])),
        rle={"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": _counts_str(rle["counts"])},
    )


def _counts_str(counts: str | bytes) -> str:
    return counts if isinstance(counts, str) else counts.decode("ascii")


def _counts_bytes(counts: str | bytes) -> bytes:
    return counts.encode("ascii") if isinstance(counts, str) else counts
