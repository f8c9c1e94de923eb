"""Bilinear upsampling of the network's low-resolution maps, exactly as TAO's reference code computes it.

Two resamplers, each bit-exact with the implementation TAO's results come from: the ReLA union map is
upsampled with PyTorch's ``align_corners=False`` geometry (:func:`union_foreground`), instance masks with
OpenCV's generic ``INTER_LINEAR`` resize (:class:`MaskUpsampler`), computed only where a mask can be
above its threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np


def union_foreground(union_logits: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """TAO's union map at ``out_hw``: argmax over the 2 channels, bilinearly upsampled, > 0. Bool [h, w].

    A bilinear sample of a 0/1 map is > 0 exactly when one of the source pixels with a non-zero weight is
    1, so the upsampling is an OR over those pixels (PyTorch ``align_corners=False`` geometry).
    """
    foreground = union_logits[1] > union_logits[0]  # argmax; a tie is background (index 0)
    for axis, size in ((0, out_hw[0]), (1, out_hw[1])):
        i0, i1, w0, w1 = _torch_bilinear_axis(foreground.shape[axis], size)
        a = np.take(foreground, i0, axis=axis)
        b = np.take(foreground, i1, axis=axis)
        shape = (-1, 1) if axis == 0 else (1, -1)
        foreground = (a & (w0 > 0).reshape(shape)) | (b & (w1 > 0).reshape(shape))
    return foreground


def _torch_bilinear_axis(n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    scale = np.float32(n_src / n_dst)
    src = np.maximum((np.arange(n_dst, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    i0 = np.minimum(src.astype(np.int64), n_src - 1)
    i1 = np.minimum(i0 + 1, n_src - 1)
    w1 = src - i0.astype(np.float32)
    return i0, i1, np.float32(1) - w1, w1


@dataclass(frozen=True, eq=False)
class _LinearAxis:
    """OpenCV ``INTER_LINEAR`` along one axis: per destination index, two source indices and weights."""

    i0: np.ndarray  # int64 [n_dst]
    i1: np.ndarray  # int64 [n_dst]
    w0: np.ndarray  # float32 [n_dst]
    w1: np.ndarray  # float32 [n_dst]


@lru_cache(maxsize=16)
def _opencv_linear_axis(n_src: int, n_dst: int, edge_weight_one: bool) -> _LinearAxis:
    """Coefficients exactly as OpenCV's generic resize computes them (float32 fractions of a double map).

    OpenCV's horizontal pass gives an edge sample weight 1 outside the source (``edge_weight_one``); its
    vertical pass keeps the fraction and clamps the row indices instead.
    """
    scale = 1.0 / (n_dst / n_src)
    position = ((np.arange(n_dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(position).astype(np.int64)
    fraction = position - start.astype(np.float32)
    if edge_weight_one:
        outside = (start < 0) | (start >= n_src - 1)
        fraction[outside] = 0
        start = np.clip(start, 0, n_src - 1)
    i0 = np.clip(start, 0, n_src - 1)
    i1 = np.clip(start + 1, 0, n_src - 1)
    return _LinearAxis(i0, i1, np.float32(1) - fraction, fraction)


class MaskUpsampler:
    """Threshold the bilinear upsampling of low-resolution mask logit maps, computing as little as needed.

    :meth:`paint` gives exactly ``cv2.resize(logits, (W, H), interpolation=cv2.INTER_LINEAR) > threshold``
    as computed by OpenCV's own resize code, bit for bit (the Intel IPP resize that OpenCV's x86 wheels
    dispatch to by default rounds differently and is not used). An output pixel is a weighted mean of the
    2×2 source logits around it, so it can only be above the threshold next to a source logit that is; only
    the output rectangle that covers those source logits is computed. A small rectangle is interpolated
    here with OpenCV's float32 arithmetic (horizontal pass, then vertical); a large one comes from OpenCV's
    full-image resize, which is then the faster of the two.

    One instance serves one thread: it keeps scratch buffers between calls, so that a frame's masks do not
    each pay for fresh memory.
    """

    #: Above this fraction of the output image, resize the whole map with OpenCV instead.
    OPENCV_FRACTION = 0.1

    def __init__(self, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> None:
        self.src_hw = (int(src_hw[0]), int(src_hw[1]))
        self.dst_hw = (int(dst_hw[0]), int(dst_hw[1]))
        self._rows = _opencv_linear_axis(self.src_hw[0], self.dst_hw[0], edge_weight_one=False)
        self._cols = _opencv_linear_axis(self.src_hw[1], self.dst_hw[1], edge_weight_one=True)
        self._scratch: np.ndarray | None = None  # float32 [3, H * W], allocated on first use

    def paint(
        self, logits: np.ndarray, threshold: float, out: np.ndarray
    ) -> tuple[int, int, int, int] | None:
        """Write ``upsampled logits > threshold`` into ``out`` and return the rectangle written.

        ``logits`` is one float [h, w] map; ``out`` is bool [H, W] and False everywhere (only the returned
        rectangle ``(y0, y1, x0, x1)`` is written; no output pixel outside it is above the threshold).
        Returns None when no pixel is above the threshold.
        """
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        # A weighted mean of samples that are all <= threshold is <= threshold: exactly so at threshold 0
        # (by sign); otherwise a margin far above float32 rounding keeps every candidate sample.
        margin = 0.0 if threshold == 0 else 1e-4 * (1.0 + abs(threshold))
        c0, r0, n_cols, n_rows = cv2.boundingRect((logits > threshold - margin).view(np.uint8))
        if n_rows == 0:
            return None
        # Output pixels that read any of the source rows r0 .. r0+n_rows-1 (and likewise for columns).
        rows, cols = self._rows, self._cols
        y0 = int(np.searchsorted(rows.i1, r0, "left"))
        y1 = int(np.searchsorted(rows.i0, r0 + n_rows - 1, "right"))
        x0 = int(np.searchsorted(cols.i1, c0, "left"))
        x1 = int(np.searchsorted(cols.i0, c0 + n_cols - 1, "right"))
        if y1 <= y0 or x1 <= x0:
            return None
        height, width = self.dst_hw
        if self._scratch is None:
            self._scratch = np.empty((3, height * width), dtype=np.float32)
        target = out[y0:y1, x0:x1]
        if (y1 - y0) * (x1 - x0) > self.OPENCV_FRACTION * height * width:
            full = self._scratch[0].reshape(height, width)
            previous = cv2.ipp.useIPP()  # a per-thread switch: other threads are not affected
            cv2.ipp.setUseIPP(False)
            try:
                full = cv2.resize(logits, (width, height), dst=full, interpolation=cv2.INTER_LINEAR)
            finally:
                cv2.ipp.setUseIPP(previous)
            np.greater(full[y0:y1, x0:x1], threshold, out=target)
        else:
            np.greater(self._interpolate(logits, y0, y1, x0, x1), threshold, out=target)
        return y0, y1, x0, x1

    def _interpolate(self, logits: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """OpenCV's float32 bilinear values in output rows y0:y1, columns x0:x1, float32 [y1-y0, x1-x0].

        A horizontal pass over the source rows involved, then a vertical pass, in OpenCV's order of
        operations; the results live in the scratch buffer until the next call.
        """
        assert self._scratch is not None
        rows, cols = self._rows, self._cols
        i0, i1 = rows.i0[y0:y1], rows.i1[y0:y1]
        first = int(i0[0])
        source = logits[first : int(i1[-1]) + 1]
        shape = (y1 - y0, x1 - x0)
        size = shape[0] * shape[1]
        across = np.take(source, cols.i0[x0:x1], axis=1)
        across *= cols.w0[x0:x1]
        across += np.take(source, cols.i1[x0:x1], axis=1) * cols.w1[x0:x1]
        top = np.take(across, i0 - first, axis=0, out=self._scratch[1, :size].reshape(shape))
        top *= rows.w0[y0:y1, None]
        bottom = np.take(across, i1 - first, axis=0, out=self._scratch[2, :size].reshape(shape))
        bottom *= rows.w1[y0:y1, None]
        top += bottom
        return top
