"""How far a reduced-precision model is from its FP32 reference: raw outputs and post-processed results.

Both backends run the same images and prompts; the comparison reports, per output, the largest and the
mean absolute difference, and on the post-processed :class:`~gdino_ros.core.result.Result`: how many
detections agree, how far matched boxes move (pixels), how much matched masks overlap, and how often the
no-target decision agrees. ``gdino-compare-precision`` prints it; ``gdino-build-engine`` runs it on
:func:`calibration_image` after building an FP16 engine and warns with :meth:`PrecisionReport.problems`.

Raw values are compared after clipping both sides to the FP16 range (±65504): the FP32 graph masks padded
text tokens with ``-inf`` and the FP16 graph with the most negative half, -65504, and both mean "exactly
zero probability". NaN is never clipped away: it is counted per output and always reported as a problem.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from gdino_ros.backends.base import Backend, BackendError
from gdino_ros.core.postprocess import PostprocessParams, box_iou, postprocess
from gdino_ros.core.preprocess import image_input
from gdino_ros.core.prompt import encode_prompt
from gdino_ros.core.result import Detection, Result

FP16_MAX = 65504.0
#: Prompts the build-time check runs: a phrase list and a referring expression.
CALIBRATION_PROMPTS: tuple[str, ...] = ("person . rocket . cup", "the person on the left")
#: A detection matches one of the other side's when it has the same class and its box overlaps this much.
MATCH_IOU = 0.5


@dataclass(frozen=True)
class PrecisionTolerance:
    """Largest acceptable distance of a candidate (e.g. an FP16 engine) from the FP32 reference.

    Post-processed quantities only: raw logit differences depend on the weights' scale, what a user sees
    does not. The defaults separate the two FP16 graphs measured in BENCHMARKS.md ("FP16 accuracy",
    full-size network, ONNX Runtime, 8 image-prompt runs): with the default FP32 keep-list, matched
    masks overlapped with IoU 0.96 and 95 % of the detections agreed; with everything in FP16, 0.89 and
    81 %. Matched boxes moved by a median 0.02-0.03 px in both, so the box limit (1 px) only catches gross
    drift. Untrained weights were scored at a lowered threshold where their scores crowd and FP16
    rounding flips near-ties; a trained network's scores are expected to stand clear of the threshold
    (not measured: no trained checkpoint here). A NaN output is a problem whatever the tolerance.
    """

    max_box_l1_px: float = 1.0
    min_mask_iou: float = 0.9
    min_detection_agreement: float = 0.9
    min_no_target_agreement: float = 1.0


@dataclass(frozen=True)
class PrecisionReport:
    """The comparison of a candidate backend with a reference over ``runs`` (image, prompt) pairs.

    ``per_output`` maps output name -> (max, mean) absolute difference over every value of every run
    (after clipping both to ±65504; NaN positions left out and counted in ``nan_counts``);
    ``reference_max`` the largest magnitude of each reference output (masked values left out), the
    scale to read the differences by.
    ``box_l1_px`` is the median over matched detections of the mean absolute difference of their
    (x0, y0, x1, y1), in original-image pixels: the median, because a near-tie can pair a detection with
    a neighbouring query's (IoU >= 0.5, boxes many pixels apart) that is no drift of either;
    ``mask_iou`` is the mean IoU of matched masks (both NaN when nothing matched).
    ``detection_agreement`` is 2 * matched / (reference detections + candidate detections), 1.0 when
    neither side detected anything. ``no_target_agreement`` is the fraction of runs whose no-target
    decisions agree.
    """

    per_output: dict[str, tuple[float, float]]
    box_l1_px: float
    mask_iou: float
    detection_agreement: float
    no_target_agreement: float
    nan_counts: dict[str, int] = field(default_factory=dict)
    reference_max: dict[str, float] = field(default_factory=dict)
    runs: int = 0
    matched: int = 0
    reference_detections: int = 0
    candidate_detections: int = 0

    def problems(self, tolerance: PrecisionTolerance | None = None) -> list[str]:
        """Human-readable lines, one per limit exceeded; empty when the candidate is within ``tolerance``."""
        tolerance = tolerance or PrecisionTolerance()
        lines = [
            f"{name}: {count} NaN value(s) in the candidate's output (FP16 overflow; keep the layers that "
            "produce it in FP32 with --fp32-layers)"
            for name, count in self.nan_counts.items()
            if count
        ]
        if not math.isnan(self.box_l1_px) and self.box_l1_px > tolerance.max_box_l1_px:
            lines.append(f"matched boxes differ by {self.box_l1_px:.2f} px (median) "
                         f"(tolerance {tolerance.max_box_l1_px:.2f} px)")
        if not math.isnan(self.mask_iou) and self.mask_iou < tolerance.min_mask_iou:
            lines.append(f"matched masks overlap with IoU {self.mask_iou:.3f} on average "
                         f"(tolerance {tolerance.min_mask_iou:.3f})")
        if self.detection_agreement < tolerance.min_detection_agreement:
            lines.append(
                f"detections agree {self.detection_agreement:.3f} ({self.matched} matched of "
                f"{self.reference_detections} reference / {self.candidate_detections} candidate; "
                f"tolerance {tolerance.min_detection_agreement:.3f})"
            )
        if self.no_target_agreement < tolerance.min_no_target_agreement:
            lines.append(f"no-target decisions agree in {self.no_target_agreement:.3f} of {self.runs} runs "
                         f"(tolerance {tolerance.min_no_target_agreement:.3f})")
        return lines

    def table(self) -> str:
        """Return every number of the report as a Markdown table."""
        rows = ["| quantity | value |", "|---|---|"]
        for name, (max_diff, mean_diff) in self.per_output.items():
            nan = self.nan_counts.get(name, 0)
            scale = self.reference_max.get(name, math.nan)
            rows.append(f"| `{name}` max / mean abs diff (reference max abs) | {max_diff:.4g} / "
                        f"{mean_diff:.4g} ({scale:.4g})" + (f", **{nan} NaN**" if nan else "") + " |")
        rows += [
            f"| box L1, matched detections, median (px) | {self.box_l1_px:.3f} |",
            f"| mask IoU, matched detections | {self.mask_iou:.4f} |",
            f"| detection agreement | {self.detection_agreement:.3f} ({self.matched} matched; "
            f"{self.reference_detections} reference, {self.candidate_detections} candidate) |",
            f"| no-target agreement | {self.no_target_agreement:.3f} ({self.runs} runs) |",
        ]
        return "\n".join(rows)


def compare_backends(
    reference: Backend,
    candidate: Backend,
    images: Sequence[np.ndarray],
    prompts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    params: PostprocessParams | None = None,
) -> PrecisionReport:
    """Run every (image, prompt) pair through both backends and compare outputs and post-processed results.

    ``images`` are uint8 RGB H×W×3; ``prompts`` are encoded in ``auto`` mode (phrases or expression) with
    ``tokenizer``. Both backends must take the same input size and have the same outputs.
    """
    if reference.input_hw != candidate.input_hw or reference.output_names != candidate.output_names:
        raise BackendError(
            f"cannot compare {reference!r} with {candidate!r}: input sizes or outputs differ; export both "
            "from the same network at the same size"
        )
    if not images or not prompts:
        raise ValueError("compare_backends needs at least one image and one prompt")
    diffs = _Differences()
    counts = _Matches()
    no_target_equal = 0
    for prompt in prompts:
        encoded = encode_prompt(prompt, "auto", tokenizer)
        text = encoded.text_inputs()
        for image in images:
            hw = (image.shape[0], image.shape[1])
            results = []
            outputs = []
            for backend in (reference, candidate):
                tensor = image_input(image, backend)
                out = {name: np.array(value) for name, value in backend.infer(tensor, text).items()}
                outputs.append(out)
                results.append(postprocess(out, encoded, hw, params))
            diffs.add(outputs[0], outputs[1])
            counts.add(results[0], results[1])
            no_target_equal += results[0].no_target == results[1].no_target
    runs = len(images) * len(prompts)
    return PrecisionReport(
        per_output=diffs.summary(),
        box_l1_px=float(np.median(counts.box_l1)) if counts.box_l1 else math.nan,
        mask_iou=counts.mean(counts.mask_iou),
        detection_agreement=counts.agreement(),
        no_target_agreement=no_target_equal / runs,
        nan_counts=dict(diffs.nans),
        reference_max=dict(diffs.scale),
        runs=runs,
        matched=counts.matched,
        reference_detections=counts.reference,
        candidate_detections=counts.candidate,
    )


def calibration_image() -> np.ndarray:
    """Return a real photo for the build-time check: scikit-image's astronaut (512×512 RGB, no download).

    scikit-image is a test dependency only; without it the image is a deterministic synthetic scene
    (smooth gradients, discs and bars), which still exercises every layer but is no photograph.
    """
    try:
        from skimage import data
    except ImportError:
        return _synthetic_scene()
    return np.ascontiguousarray(data.astronaut())  # type: ignore[no-untyped-call]


def sample_photos() -> list[np.ndarray]:
    """Return scikit-image's astronaut, chelsea, coffee and rocket photos; the synthetic scene without it."""
    try:
        from skimage import data
    except ImportError:
        return [_synthetic_scene()]
    loaders = (data.astronaut, data.chelsea, data.coffee, data.rocket)
    return [np.ascontiguousarray(load()) for load in loaders]  # type: ignore[no-untyped-call]


def match_detections(reference: Sequence[Detection], candidate: Sequence[Detection]) -> list[tuple[int, int]]:
    """Pair detections greedily, reference by descending score, with the same-class candidate of highest IoU.

    Same class: the same phrase (phrases mode); in expression mode every detection is of the one
    expression, whatever words its label lists. A pair needs box IoU >= :data:`MATCH_IOU`; each candidate
    is used once. Returns (reference index, candidate index) pairs.
    """
    if not reference or not candidate:
        return []
    boxes = np.array([d.box_xyxy for d in candidate], dtype=np.float64)
    free = np.ones(len(candidate), dtype=bool)
    pairs = []
    for r in sorted(range(len(reference)), key=lambda i: -reference[i].score):
        det = reference[r]
        iou = box_iou(np.array(det.box_xyxy, dtype=np.float64), boxes)
        same = np.array([c.phrase_index == det.phrase_index for c in candidate])
        iou = np.where(free & same, iou, -1.0)
        best = int(np.argmax(iou))
        if iou[best] >= MATCH_IOU:
            free[best] = False
            pairs.append((r, best))
    return pairs


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks agree perfectly (1.0)."""
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


class _Differences:
    """Running max/mean absolute difference and NaN count per output."""

    def __init__(self) -> None:
        self.max: dict[str, float] = {}
        self.sum: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.nans: dict[str, int] = {}
        self.scale: dict[str, float] = {}

    def add(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> None:
        for name, want in reference.items():
            a = np.clip(want.astype(np.float64), -FP16_MAX, FP16_MAX)
            b = np.clip(candidate[name].astype(np.float64), -FP16_MAX, FP16_MAX)
            nan = np.isnan(a) | np.isnan(b)
            self.nans[name] = self.nans.get(name, 0) + int(np.count_nonzero(np.isnan(b)))
            diff = np.abs(a[~nan] - b[~nan])
            real = np.abs(a[np.abs(a) < FP16_MAX])  # masked (±inf, ±65504) values are no scale
            self.scale[name] = max(self.scale.get(name, 0.0), float(real.max(initial=0.0)))
            self.max[name] = max(self.max.get(name, 0.0), float(diff.max(initial=0.0)))
            self.sum[name] = self.sum.get(name, 0.0) + float(diff.sum())
            self.count[name] = self.count.get(name, 0) + diff.size

    def summary(self) -> dict[str, tuple[float, float]]:
        return {
            name: (self.max[name], self.sum[name] / self.count[name] if self.count[name] else math.nan)
            for name in self.max
        }


class _Matches:
    """Matched-detection statistics accumulated over runs."""

    def __init__(self) -> None:
        self.box_l1: list[float] = []
        self.mask_iou: list[float] = []
        self.matched = self.reference = self.candidate = 0

    def add(self, reference: Result, candidate: Result) -> None:
        pairs = match_detections(reference.detections, candidate.detections)
        for r, c in pairs:
            ref, cand = reference.detections[r], candidate.detections[c]
            self.box_l1.append(float(np.abs(np.subtract(ref.box_xyxy, cand.box_xyxy)).mean()))
            self.mask_iou.append(mask_iou(ref.mask, cand.mask))
        self.matched += len(pairs)
        self.reference += len(reference.detections)
        self.candidate += len(candidate.detections)

    @staticmethod
    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else math.nan

    def agreement(self) -> float:
        total = self.reference + self.candidate
        return 1.0 if total == 0 else 2 * self.matched / total


def _synthetic_scene(height: int = 480, width: int = 640) -> np.ndarray:
    """Deterministic RGB test scene: colour gradients with three discs and two bars."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / width, y / height, 1.0 - x / width], axis=-1) * 180.0 + 40.0
    for cy, cx, r, colour in ((0.3, 0.25, 0.12, (230, 40, 40)), (0.6, 0.6, 0.18, (40, 200, 60)),
                              (0.35, 0.8, 0.08, (250, 230, 30))):
        disc = (y - cy * height) ** 2 + (x - cx * width) ** 2 < (r * min(height, width)) ** 2
        image[disc] = colour
    image[int(0.8 * height):int(0.9 * height), int(0.1 * width):int(0.5 * width)] = (20, 20, 120)
    image[int(0.1 * height):int(0.7 * height), int(0.45 * width):int(0.5 * width)] = (200, 200, 200)
    return image.astype(np.uint8)
