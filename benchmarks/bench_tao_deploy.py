"""Post-processing speed against TAO Deploy's own code, on the same engine outputs, with an identity check.

TAO Deploy is not part of this repository: pass the path of a checkout you fetched
(``git clone https://github.com/NVIDIA/tao_deploy``). Its Mask Grounding DINO post-processing
(``nvidia_tao_deploy/cv/mask_grounding_dino/utils.py``: ``post_process_v2``, then
``threshold_predictions_numpy`` for the confidence threshold and NMS) is imported from there at run time and
run unmodified. That module imports TensorRT, omegaconf and pandas at the top for other functions; when they
are not installed, empty stand-in modules are registered under their names before the import (printed), as
none of them is used by the functions timed here.

The frames are those of ``bench_postprocess.py`` (synthetic outputs of a 544×960 engine, 900 queries):
"realistic" (20 objects) and "stress" (all 300 of ``num_select`` pass the threshold, masks covering about
half the image). The stress frame's token logits are scaled into [2, 6] here: its saturated logits give
thousands of scores of exactly 1.0 in float32, among which TAO (highest index first) and ours (lowest
first) pick different top-300 sets, so the detections could not be compared.

TAO's path is its object-detection task: top 300 (query, phrase) pairs, every one of the 300 masks resized
to the image and its sigmoid taken, then ``conf_threshold`` and NMS (``nms_threshold`` 0 = none, TAO's
default spec; 0.2 also shown); no IoI filter (TAO Deploy applies it only in its referring-expression task).
Ours runs with the same settings (``ioi_threshold`` 0). A TAO mask is ``sigmoid > 0.5`` of its float mask
(what its drawing code uses).

Identity: every detection of ours has one of TAO's with the same phrase, score and mask (boxes within
1e-3 px: TAO computes corners in float32), matched order-free; the comparison run uses OpenCV's generic resize
(IPP off), whose arithmetic ours reproduces; the timed TAO runs use OpenCV's defaults (IPP on), as TAO
runs. Our time includes the label image, not the per-instance full-size masks, which post-processing
computes only when read; the column "ours + all masks" reads them all.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_tao_deploy.py --tao-deploy /path/to/tao_deploy``
"""
from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import platform
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_postprocess import IMAGE_SIZES, PROMPT, make_outputs, timed_ms  # noqa: E402

from gdino_ros import contract  # noqa: E402
from gdino_ros.core.postprocess import PostprocessParams, postprocess  # noqa: E402
from gdino_ros.core.prompt import EncodedPrompt, encode_prompt  # noqa: E402
from gdino_ros.core.result import Result  # noqa: E402
from gdino_ros.core.tokenizer import load_tokenizer  # noqa: E402

TAO_MODULE = "nvidia_tao_deploy.cv.mask_grounding_dino.utils"


class _StandIn(types.ModuleType):
    """An empty module whose every attribute is another stand-in (never called by the timed code)."""

    __version__ = "10.0.0"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn(f"{self.__name__}.{name}")


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Provides stand-ins for TAO Deploy's top-level imports that are not installed (last on the path)."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.roots = roots
        self.used: set[str] = set()

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] not in self.roots:
            return None
        self.used.add(fullname.split(".")[0])
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _StandIn(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []


def import_tao(checkout: Path) -> types.ModuleType:
    """Import TAO Deploy's Mask Grounding DINO utils from ``checkout``, standing in for absent imports."""
    if not (checkout / "nvidia_tao_deploy" / "cv" / "mask_grounding_dino" / "utils.py").is_file():
        raise SystemExit(f"{checkout} is not a TAO Deploy checkout "
                         "(no nvidia_tao_deploy/cv/mask_grounding_dino/utils.py).")
    sys.path.insert(0, str(checkout))
    # Imported at the top of TAO's modules for functions not timed here (engines, logging, configs, tables).
    finder = _StandInFinder(("tensorrt", "pycuda", "nvidia_tao_core", "omegaconf", "pandas", "matplotlib"))
    sys.meta_path.append(finder)
    module = importlib.import_module(TAO_MODULE)
    for root in sorted(finder.used):
        print(f"# stand-in module for {root} (not installed; not used by the timed functions)")
    module.cv2 = _ContiguousResize()
    return module


class _ContiguousResize:
    """``cv2`` for TAO's module, except that ``resize`` is given a C-contiguous array.

    TAO resizes views of a transposed [h, w, 300] array split in two, i.e. images of 150 channels, which
    OpenCV 4's Python bindings accept; OpenCV 5's read more than 4 channels as a 3-D matrix and refuse it
    (``m->dims <= 2``). Here such an image is resized 4 channels at a time (the same arithmetic per channel)
    and stacked again; all of it is timed as TAO's.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(cv2, name)

    @staticmethod
    def resize(src: np.ndarray, dsize: tuple[int, int], **kwargs: Any) -> np.ndarray:
        if src.ndim < 3 or src.shape[2] <= 4:
            return cv2.resize(src, dsize, **kwargs)
        out = np.empty((dsize[1], dsize[0], src.shape[2]), dtype=src.dtype)
        for c in range(0, src.shape[2], 4):
            chunk = cv2.resize(np.ascontiguousarray(src[:, :, c : c + 4]), dsize, **kwargs)
            out[:, :, c : c + 4] = chunk.reshape(dsize[1], dsize[0], -1)
        return out


def tao_version(checkout: Path) -> str:
    """The checkout's commit and subject line, when it is a git work tree."""
    try:
        command = ["git", "-C", str(checkout), "log", "-1", "--format=%h %s"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git work tree)"


def tao_postprocess(tao: Any, outputs: dict[str, np.ndarray], prompt: EncodedPrompt,
                    image_hw: tuple[int, int], params: PostprocessParams) -> dict[str, np.ndarray]:
    """TAO Deploy's object-detection post-processing (the timed part): its kept detections.

    The candidates' indices go in as TAO's "text masks", so that ``text_mask`` names the kept ones.
    """
    height, width = image_hw
    assert prompt.positive_map is not None
    pos_map = prompt.positive_map.astype(np.float32).copy()
    _, scores, boxes, prob_masks = tao.post_process_v2(
        outputs[contract.PRED_LOGITS], outputs[contract.PRED_BOXES], outputs[contract.PRED_MASKS][:, :, 0],
        [[width, height, width, height]], pos_map, None, num_select=params.num_select, task="OD")
    kept: dict[str, np.ndarray] = tao.threshold_predictions_numpy(
        [np.arange(len(scores[0]))], scores, boxes, [prob_masks[0].transpose(2, 0, 1)],
        conf_threshold=params.box_threshold, nms_threshold=params.nms_threshold)[0]
    return kept


def same(result: Result, tao: dict[str, np.ndarray], prompt: EncodedPrompt,
         outputs: dict[str, np.ndarray]) -> tuple[bool, str]:
    """Order-free identity of our detections and TAO's: phrase, score and mask equal; boxes within 1e-3 px.

    TAO converts boxes to corners in float32, ours in float64, so box corners differ in the last bits.
    TAO's float32 sigmoid is exactly 0.5 for logits in (0, 6e-8], where ``sigmoid > 0.5`` is true: mask
    pixels that differ only there are counted, not failed.
    """
    assert prompt.positive_map is not None
    # TAO's candidate k is its k-th best (query, phrase) pair; its phrase comes from the same sort.
    pos_map = prompt.positive_map.astype(np.float32)
    pos_map = pos_map / pos_map.sum(axis=1, keepdims=True)  # as TAO normalises it, in float32
    flat = (1 / (1 + np.exp(-outputs[contract.PRED_LOGITS][0].astype(np.float32)))) @ pos_map.T
    order = np.argsort(flat.reshape(-1))[::-1]
    if len(result.detections) != len(tao["scores"]):
        return False, f"{len(result.detections)} vs {len(tao['scores'])} detections"
    remaining = list(result.detections)
    rounded = 0
    for j, candidate in enumerate(tao["text_mask"]):
        phrase, score, box = int(order[candidate] % flat.shape[1]), float(tao["scores"][j]), tao["boxes"][j]
        match = next((d for d in remaining if d.phrase_index == phrase and np.float32(d.score).item() == score
                      and np.allclose(d.box_xyxy, box, rtol=0, atol=1e-3)), None)
        if match is None:
            return False, f"none of ours has phrase {phrase}, score {score}, box {box.tolist()}"
        remaining.remove(match)
        differ = (tao["masks"][j] > 0.5) != match.mask
        if (differ & (tao["masks"][j] != 0.5)).any():
            return False, f"masks differ in {int((differ & (tao['masks'][j] != 0.5)).sum())} pixels"
        rounded += int(differ.sum())
    return True, f" ({rounded} pixels where TAO's float32 sigmoid is exactly 0.5)" if rounded else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tao-deploy", type=Path, required=True, help="path of a TAO Deploy checkout")
    parser.add_argument("--tokenizer", help="bert-base-uncased vocab.txt (default: found locally)")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls of ours (default 10)")
    parser.add_argument("--tao-repeat", type=int, default=1, help="timed calls of TAO's (default 1)")
    args = parser.parse_args()
    tao = import_tao(args.tao_deploy.resolve())
    prompt = encode_prompt(PROMPT, "phrases", load_tokenizer(args.tokenizer))  # None: the local search
    print(f"# TAO Deploy {tao_version(args.tao_deploy)}; {platform.machine()}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}, OpenCV {cv2.__version__}; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print("\n| case | image | NMS | detections | ours ms (CPU ms) | ours + all masks ms "
          "| TAO Deploy ms (CPU ms) | speed-up (by CPU time) | speed-up with all masks | identical |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = False
    for kind in ("realistic", "stress"):
        outputs = make_outputs(kind, prompt)
        if kind == "stress":  # distinct scores (see the module docstring): [8, 20] -> [2, 6]
            logits = outputs[contract.PRED_LOGITS]
            logits[np.isfinite(logits)] = 2.0 + (logits[np.isfinite(logits)] - 8.0) / 3.0
        for nms in (0.0, 0.2):
            params = PostprocessParams(nms_threshold=nms, ioi_threshold=0.0)
            for name, hw in IMAGE_SIZES.items():
                ipp = cv2.ipp.useIPP()
                cv2.ipp.setUseIPP(False)
                reference = tao_postprocess(tao, outputs, prompt, hw, params)
                cv2.ipp.setUseIPP(ipp)
                result = postprocess(outputs, prompt, hw, params)
                identical, why = same(result, reference, prompt, outputs)
                detections = len(result.detections)
                del reference, result
                ours, ours_cpu = timed_ms(lambda o=outputs, hw=hw, p=params: postprocess(o, prompt, hw, p),
                                          args.repeat)
                with_masks, _ = timed_ms(lambda o=outputs, hw=hw, p=params: [
                    d.mask for d in postprocess(o, prompt, hw, p).detections], max(1, args.repeat // 3),
                )
                theirs, theirs_cpu = timed_ms(
                    lambda o=outputs, hw=hw, p=params: tao_postprocess(tao, o, prompt, hw, p),
                    args.tao_repeat,
                )
                print(f"| {kind} | {name} | {nms or 'none'} | {detections} | {ours:.2f} "
                      f"({ours_cpu:.2f}) | {with_masks:.1f} | {theirs:.0f} ({theirs_cpu:.0f}) "
                      f"| {theirs / ours:.0f}× ({theirs_cpu / ours_cpu:.0f}×) | {theirs / with_masks:.0f}× "
                      f"| {'yes' + why if identical else 'NO: ' + why} |", flush=True)
                failed |= not identical
    print(f"\n# load average {os.getloadavg()[0]:.2f} at end")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
