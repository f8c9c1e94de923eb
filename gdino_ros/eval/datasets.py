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
drops them, and a target ref left with no instance at all is dropped whole, as the official loader
does (counted in :attr:`Split.dropped_refs`). A sample whose image is missing is skipped with a warning
and counted in :attr:`Split.skipped_samples`. Malformed files (wrong types, missing ids) raise
:class:`DatasetError` naming the file and the ref or entry.
"""
from __future__ import annotations

import builtins
import io
import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
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
    dropped_refs: int = 0


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
    # Read from memory through read/readline only: a pickle that declares a huge string then gets what
    # the file holds ("truncated") instead of the unpickler allocating the declared size up front.
    buffer = io.BytesIO(path.read_bytes())
    reader = SimpleNamespace(read=buffer.read, readline=buffer.readline)
    try:
        return _PlainDataUnpickler(reader, path).load()  # type: ignore[arg-type]
    except DatasetError:
        raise
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError, TypeError, IndexError,
            MemoryError) as exc:
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
    or malformed annotation files, or refs that point at annotations or images the instances file does
    not have.
    """
    root = Path(data_root)
    split_by = _split_scheme(dataset, split_by)
    refs_path = refs_file(root, dataset, split_by)
    instances_path = root / dataset / INSTANCES_FILE
    for path in (refs_path, instances_path):
        if not path.is_file():
            raise DatasetError(
                f"{path} not found: --data-root must hold {dataset}/{refs_path.name} and "
                f"{dataset}/{INSTANCES_FILE} as released, and the COCO train2014 images in {IMAGE_DIR}/"
            )
    refs = _read_refs(refs_path)
    splits = sorted({str(ref["split"]) for ref in refs})
    if split not in splits:
        raise DatasetError(
            f"unknown split '{split}' for {dataset} ({split_by}); valid splits in {refs_path.name}: "
            f"{', '.join(splits)}"
        )
    reader = _SplitReader(root, refs_path, instances_path, Split(dataset, split, split_by, samples=[]))
    for ref in refs:
        if ref["split"] == split:
            reader.add_ref(ref)
    result = reader.split
    if result.missing_images:
        LOG.warning(
            "%d image(s) of %s %s are missing from %s: %d expression(s) skipped",
            len(result.missing_images), dataset, split, root / IMAGE_DIR, result.skipped_samples,
        )
    return result


def _split_scheme(dataset: str, split_by: str | None) -> str:
    """Validate the dataset and scheme names; the default scheme is the first of :data:`SPLIT_BY`."""
    if dataset not in SPLIT_BY:
        raise DatasetError(f"unknown dataset '{dataset}'; valid datasets: {', '.join(DATASETS)}")
    split_by = split_by or SPLIT_BY[dataset][0]
    if split_by not in SPLIT_BY[dataset]:
        raise DatasetError(
            f"{dataset} has no '{split_by}' split scheme; valid: {', '.join(SPLIT_BY[dataset])}"
        )
    return split_by


class _SplitReader:
    """Turns the refs of one split into samples, caching instances and image existence checks."""

    def __init__(self, root: Path, refs_path: Path, instances_path: Path, split: Split) -> None:
        self.root, self.refs_path, self.instances_path, self.split = root, refs_path, instances_path, split
        self.images, self.annotations = _read_instances(instances_path)
        self._instances: dict[int, Instance | None] = {}
        self._image_exists: dict[Path, bool] = {}

    def add_ref(self, ref: dict) -> None:
        """Add the samples of one ref (one per sentence), or count why they are left out."""
        ref_id = _int(ref["ref_id"], f"{self.refs_path}: a ref_id")
        where = f"{self.refs_path}: ref {ref_id}"
        image_id = _int(ref["image_id"], f"{where}: its image_id")
        image = self.images.get(image_id)
        if image is None:
            raise DatasetError(f"{where} names image {image_id}, which {self.instances_path} lacks")
        ann_ids = _target_ann_ids(ref, self.refs_path, ref_id)
        no_target = ann_ids == [NO_TARGET_ANN_ID]
        instances = [] if no_target else [i for a in ann_ids if (i := self._instance(a, image, where))]
        sentences = _sentences(ref, where)
        if not no_target and not instances:
            self.split.dropped_refs += 1
            LOG.warning("%s has no valid ground-truth instance left; its %d sentence(s) are left out",
                        where, len(sentences))
            return
        image_path = self.root / IMAGE_DIR / str(image["file_name"])
        if not self._has_image(image_path):
            self.split.skipped_samples += len(sentences)
            return
        for sent_id, expression in sentences:
            self.split.samples.append(Sample(
                key=f"{ref_id}:{sent_id}", ref_id=ref_id, sent_id=sent_id, image_id=image_id,
                image_path=image_path, height=int(image["height"]), width=int(image["width"]),
                expression=expression, no_target=no_target, instances=tuple(instances),
            ))

    def _instance(self, ann_id: int, image: dict, where: str) -> Instance | None:
        if ann_id not in self._instances:
            ann = self.annotations.get(ann_id)
            if ann is None:
                raise DatasetError(f"{where} names annotation {ann_id}, which {self.instances_path} lacks")
            self._instances[ann_id] = _instance(ann, image, self.split)
        return self._instances[ann_id]

    def _has_image(self, image_path: Path) -> bool:
        if image_path not in self._image_exists:
            self._image_exists[image_path] = image_path.is_file()
            if not self._image_exists[image_path]:
                self.split.missing_images.append(str(image_path))
                if len(self.split.missing_images) <= _MISSING_IMAGES_LOGGED:
                    LOG.warning("image %s is missing; its expressions are skipped", image_path)
        return self._image_exists[image_path]


def _int(value: Any, what: str) -> int:
    """``int(value)`` for an id, or a :class:`DatasetError` naming ``what`` (file and field)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DatasetError(f"{what} is {value!r:.40}, not an integer id")
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{what} is {value!r:.40}, not an integer id") from None


def _sentences(ref: dict, where: str) -> list[tuple[int, str]]:
    """Return the ref's (sent_id, text) pairs; ``raw`` is preferred over the normalised ``sent``."""
    sentences = ref["sentences"]
    if not isinstance(sentences, list) or not all(isinstance(sent, dict) for sent in sentences):
        raise DatasetError(f"{where}: 'sentences' must be a list of sentence records, got {sentences!r:.60}")
    pairs = []
    for sent in sentences:
        text = sent.get("raw") or sent.get("sent")
        if "sent_id" not in sent or not isinstance(text, str):
            raise DatasetError(f"{where}: a sentence lacks sent_id or its text (raw/sent)")
        pairs.append((_int(sent["sent_id"], f"{where}: a sent_id"), text))
    return pairs


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
    return _by_id(data["images"], "images", path), _by_id(data["annotations"], "annotations", path)


def _by_id(entries: Any, key: str, path: Path) -> dict[int, dict]:
    """Index a COCO list (``images`` or ``annotations``) by its ``id``s, checking the layout."""
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: '{key}' must be a list, got {type(entries).__name__}")
    indexed = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "id" not in entry:
            raise DatasetError(f"{path}: {key}[{index}] has no 'id'")
        indexed[_int(entry["id"], f"{path}: {key}[{index}].id")] = entry
    return indexed


def _target_ann_ids(ref: dict, path: Path, ref_id: int) -> list[int]:
    """Return the ref's target annotation ids as a list; ``[-1]`` for a no-target ref."""
    raw = ref["ann_id"]
    what = f"{path}: ref {ref_id}'s ann_id"
    ann_ids = [_int(a, what) for a in raw] if isinstance(raw, list) else [_int(raw, what)]
    flagged = bool(ref.get("no_target", False))
    if NO_TARGET_ANN_ID in ann_ids and ann_ids != [NO_TARGET_ANN_ID]:
        raise DatasetError(f"{path}: ref {ref_id} mixes the no-target id -1 with targets {ann_ids}")
    if flagged != (ann_ids == [NO_TARGET_ANN_ID]):
        raise DatasetError(
            f"{path}: ref {ref_id} has no_target={flagged} but ann_id {raw}; "
            "a no-target ref must have ann_id [-1]"
        )
    if not ann_ids:
        raise DatasetError(f"{path}: ref {ref_id} has an empty ann_id list")
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
