"""Per-stage CPU times of the numpy stages: preprocessing and post-processing, against TAO's approach.

Engine outputs are synthetic, at the shapes of a 544×960 engine (900 queries, 136×240 masks, 68×120 union
map), built from a seed:

* ``realistic``: a 5-phrase prompt; 20 objects, one per cell of a 5×4 grid, with boxes of 4-19 % of the
  image width and 5-24 % of its height, each found by
  3 queries (the best one plus two near-duplicates with shifted boxes and lower scores that NMS must
  remove); the other 840 queries have token logits around -7 (sigmoid < 0.01) and boxes anywhere. Every
  query's mask logits are a smooth field, about +8 inside the ellipse inscribed in its box and falling to
  about -15 outside, plus low-frequency noise. The union map covers the objects; no-target logits say
  "target present".
* ``stress``: what an untrained model gives: saturated token logits (every candidate passes the
  confidence threshold), 900 small random boxes (so NMS removes few), and mask logits that are
  low-frequency noise of ±10 across the whole image; the union map is all foreground, so hundreds of
  detections survive with masks that cover about half of the image each.

The baseline is the straightforward approach of TAO Deploy: every one of the top-``num_select`` masks is
resized to the full image with ``cv2.resize(INTER_LINEAR)``, then sigmoid and ``> 0.5``; the filters run
afterwards. It is run in the same process on the same outputs and must give identical detections, masks
and label image when its sigmoid is exact (float64) and OpenCV's IPP resize is off (see BENCHMARKS.md); it is
timed as TAO runs it (float32 sigmoid, IPP on).

Run: ``.venv/bin/python benchmarks/bench_postprocess.py`` (``--quick`` for a short smoke run).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np

from gdino_ros import contract
from gdino_ros.core.mask_resampling import MaskUpsampler, union_foreground
from gdino_ros.core.postprocess import PostprocessParams, boxes_to_pixels, postprocess, sigmoid
from gdino_ros.core.preprocess import preprocess
from gdino_ros.core.prompt import EncodedPrompt, encode_prompt
from gdino_ros.core.result import Detection, Result
from gdino_ros.core.tokenizer import load_tokenizer

ENGINE_HW = (contract.DEFAULT_INPUT_HEIGHT, contract.DEFAULT_INPUT_WIDTH)
MASK_HW = (ENGINE_HW[0] // contract.MASK_STRIDE, ENGINE_HW[1] // contract.MASK_STRIDE)
UNION_HW = (ENGINE_HW[0] // contract.UNION_MASK_STRIDE, ENGINE_HW[1] // contract.UNION_MASK_STRIDE)
IMAGE_SIZES = {"720p": (720, 1280), "1080p": (1080, 1920)}
PROMPT = "person . car . traffic light . dog . bicycle"


def _smooth_noise(
    rng: np.random.Generator, n: int, hw: tuple[int, int], cells: tuple[int, int]
) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid bilinearly enlarged, float32 [n, h, w]."""
    coarse = rng.uniform(-1, 1, (n, cells[0], cells[1])).astype(np.float32)
    return np.stack([cv2.resize(c, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR) for c in coarse])


def _ellipse_logits(boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Mask logits [n, h, w]: about +8 at the centre of each box's inscribed ellipse, -15 far outside."""
    ys = (np.arange(hw[0], dtype=np.float32) + 0.5) / hw[0]
    xs = (np.arange(hw[1], dtype=np.float32) + 0.5) / hw[1]
    cx, cy, w, h = (boxes[:, i, None, None] for i in range(4))
    r2 = ((xs[None, None, :] - cx) / (w / 2)) ** 2 + ((ys[None, :, None] - cy) / (h / 2)) ** 2
    return np.maximum(8.0 * (1.0 - r2), -15.0).astype(np.float32)


def make_outputs(kind: str, prompt: EncodedPrompt, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic engine outputs (see the module docstring) for ``kind`` "realistic" or "stress"."""
    rng = np.random.default_rng(seed)
    q, n_tok = contract.NUM_QUERIES, prompt.num_tokens
    logits = np.full((q, contract.MAX_TEXT_LEN), -np.inf, dtype=np.float32)
    if kind == "realistic":
        logits[:, :n_tok] = rng.normal(-7.0, 1.0, (q, n_tok))
        boxes = np.column_stack([rng.uniform(0.1, 0.9, (q, 2)), rng.uniform(0.04, 0.35, (q, 2))])
        n_obj = 20  # one per cell of a 5×4 grid, so that NMS keeps all of them
        centres = np.array([[(k % 5 + 0.5) / 5, (k // 5 + 0.5) / 4] for k in range(n_obj)])
        centres += rng.uniform(-0.02, 0.02, (n_obj, 2))
        sizes = np.column_stack([rng.uniform(0.04, 0.19, n_obj), rng.uniform(0.05, 0.24, n_obj)])
        for k in range(n_obj):
            start, end = prompt.phrase_token_spans[k % len(prompt.phrases)]
            for dup in range(3):
                query = 3 * k + dup
                logits[query, start:end] = rng.normal(2.5 - 1.2 * dup, 0.3, end - start)
                shift = rng.normal(0, 0.01 * dup, 2)
                boxes[query] = [*(centres[k] + shift), *(sizes[k] * (1 + 0.05 * dup))]
        masks = _ellipse_logits(boxes.astype(np.float32), MASK_HW)
        masks += 2.0 * _smooth_noise(rng, q, MASK_HW, (9, 16))
        union = np.stack([np.zeros(UNION_HW, np.float32), _ellipse_logits(
            np.array([[*centres[k], *sizes[k]] for k in range(n_obj)], np.float32), UNION_HW).max(0)])
    else:
        logits[:, :n_tok] = rng.uniform(8.0, 20.0, (q, n_tok))
        boxes = np.column_stack([rng.uniform(0.02, 0.98, (q, 2)), rng.uniform(0.005, 0.03, (q, 2))])
        masks = 10.0 * _smooth_noise(rng, q, MASK_HW, (17, 30))
        union = np.stack([np.zeros(UNION_HW, np.float32), np.ones(UNION_HW, np.float32)])
    return {
        contract.PRED_LOGITS: logits[None],
        contract.PRED_BOXES: boxes.astype(np.float32)[None],
        contract.PRED_MASKS: masks[None, :, None],
        contract.NO_TARGETS: np.array([[2.0, -2.0]], np.float32),
        contract.UNION_MASK_LOGITS: union[None],
    }


def baseline(outputs: dict[str, np.ndarray], prompt: EncodedPrompt, image_hw: tuple[int, int],
             params: PostprocessParams, sigmoid_dtype: type = np.float32) -> Result:
    """TAO Deploy's order of work: every top-k mask resized to full size and thresholded, then filtered.

    TAO takes the sigmoid in float32, which rounds it to exactly 0.5 for logits in (0, 6e-8]; with
    ``sigmoid_dtype=np.float64`` the threshold decides as the exact sigmoid (and ``logit > 0``) does.
    """
    height, width = image_hw
    token_probs = sigmoid(outputs[contract.PRED_LOGITS][0])
    assert prompt.positive_map is not None
    probs = token_probs @ prompt.positive_map.T
    flat = probs.reshape(-1)
    order = np.lexsort((np.arange(flat.size), -flat))[: params.num_select]
    scores, queries, classes = flat[order], order // probs.shape[1], order % probs.shape[1]
    low_res = outputs[contract.PRED_MASKS][0, queries, 0]
    full = []
    np.seterr(over="ignore")  # exp overflow gives sigmoid 0, as intended
    for logit_map in low_res:
        up = cv2.resize(logit_map, (width, height), interpolation=cv2.INTER_LINEAR).astype(sigmoid_dtype)
        full.append(1.0 / (1.0 + np.exp(-up)) > params.mask_threshold)
    foreground = union_foreground(outputs[contract.UNION_MASK_LOGITS][0], MASK_HW)
    binary = 1.0 / (1.0 + np.exp(-low_res.astype(sigmoid_dtype))) > params.mask_threshold
    ioi = np.count_nonzero(binary & foreground, axis=(1, 2)) / (np.count_nonzero(binary, axis=(1, 2)) + 1e-6)
    keep = np.flatnonzero((ioi > params.ioi_threshold) & (scores >= params.box_threshold))
    boxes = boxes_to_pixels(outputs[contract.PRED_BOXES][0, queries[keep]], height, width)
    xywh = [(b[0], b[1], b[2] - b[0], b[3] - b[1]) for b in boxes.tolist()]
    nms_kept = np.array(cv2.dnn.NMSBoxes(xywh, scores[keep].tolist(), 0.0, params.nms_threshold), np.int64)
    kept = keep[nms_kept.reshape(-1)][: params.max_detections]
    boxes = boxes_to_pixels(outputs[contract.PRED_BOXES][0, queries[kept]], height, width)
    label_image = np.zeros(image_hw, np.uint16)
    for k in range(len(kept) - 1, -1, -1):
        label_image[full[kept[k]]] = k + 1
    detections = [Detection(k + 1, prompt.phrases[classes[i]], int(classes[i]), float(scores[i]),
                            tuple(float(v) for v in boxes[k]), full[i]) for k, i in enumerate(kept)]
    return Result(prompt.text, prompt.mode, detections, label_image, False, float("nan"))


def same_result(a: Result, b: Result) -> bool:
    """Identical detections (label, score, box, mask) and label image."""
    return (
        len(a.detections) == len(b.detections)
        and all(
            x.label == y.label and x.score == y.score and x.box_xyxy == y.box_xyxy
            and np.array_equal(x.mask, y.mask)
            for x, y in zip(a.detections, b.detections, strict=True)
        )
        and np.array_equal(a.label_image, b.label_image)
    )


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` in milliseconds over ``repeat`` calls, after one warm-up call."""
    return timed_ms(fn, repeat)[0]


def timed_ms(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median wall and median CPU (this process, all threads) milliseconds of ``fn``, after a warm-up.

    The CPU time is what the call costs when other processes compete for the cores; the wall time is
    what a caller waits on an idle machine only.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def mask_stage_ms(outputs: dict[str, np.ndarray], result: Result, image_hw: tuple[int, int],
                  params: PostprocessParams, repeat: int) -> float:
    """Time of the label-image stage alone (the survivors' masks painted from their logits)."""
    masks = outputs[contract.PRED_MASKS][0, :, 0]
    # The survivors' queries, found again from their boxes (the Result does not carry query indices).
    boxes = boxes_to_pixels(outputs[contract.PRED_BOXES][0], *image_hw)
    queries = [int(np.flatnonzero((boxes == np.array(d.box_xyxy)).all(axis=1))[0]) for d in result.detections]

    planes = masks[queries]

    def run() -> None:
        label_image = np.zeros(image_hw, np.uint16)
        MaskUpsampler(MASK_HW, image_hw).paint_labels(planes, params.mask_logit_threshold, label_image)

    return median_ms(run, repeat)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", help="bert-base-uncased vocab.txt (default: found locally)")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per measurement (default 30)")
    parser.add_argument("--baseline-repeat", type=int, default=3, help="timed baseline calls (default 3)")
    parser.add_argument("--quick", action="store_true", help="few repeats, 720p baseline only")
    args = parser.parse_args()
    repeat, baseline_repeat = (3, 1) if args.quick else (args.repeat, args.baseline_repeat)
    prompt = encode_prompt(PROMPT, "phrases", load_tokenizer(args.tokenizer))  # None: the local search
    params = PostprocessParams()
    print(f"# {platform.machine()}, numpy {np.__version__}, OpenCV {cv2.__version__}, "
          f"OpenCV threads {cv2.getNumThreads()}, IPP available {cv2.ipp.useIPP()}, "
          f"load average {os.getloadavg()[0]:.1f} (at start)")

    rng = np.random.default_rng(0)
    print("\n| stage | image | median ms (CPU ms) |\n|---|---|---|")
    for name, hw in IMAGE_SIZES.items():
        image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
        wall, cpu = timed_ms(lambda i=image: preprocess(i, ENGINE_HW), repeat * 3)
        print(f"| preprocess (to {ENGINE_HW[0]}×{ENGINE_HW[1]}) | {name} | {wall:.2f} ({cpu:.2f}) |")

    print("\n| case | image | survivors | postprocess ms (CPU ms) | of which label image ms "
          "| baseline ms (IPP on) | speed-up | identical to baseline (IPP off) |")
    print("|---|---|---|---|---|---|---|---|")
    failed = False
    for kind in ("realistic", "stress"):
        outputs = make_outputs(kind, prompt)
        for name, hw in IMAGE_SIZES.items():
            result = postprocess(outputs, prompt, hw, params)
            ours, ours_cpu = timed_ms(lambda o=outputs, hw=hw: postprocess(o, prompt, hw, params), repeat)
            masks_ms = mask_stage_ms(outputs, result, hw, params, repeat)
            row = (f"| {kind} | {name} | {len(result.detections)} | {ours:.2f} ({ours_cpu:.2f}) "
                   f"| {masks_ms:.2f} |")
            if args.quick and name != "720p":
                print(row + " – | – | – |")
                continue
            cv2.ipp.setUseIPP(False)
            identical = same_result(result, baseline(outputs, prompt, hw, params, np.float64))
            cv2.ipp.setUseIPP(True)
            base = median_ms(lambda o=outputs, hw=hw: baseline(o, prompt, hw, params), baseline_repeat)
            print(row + f" {base:.0f} | {base / ours:.0f}× | {'yes' if identical else 'NO'} |")
            failed |= not identical
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
