"""Bilinear upsampling of the network's low-resolution maps, exactly as TAO's reference code computes it.

Two resamplers, each bit-exact with the implementation TAO's results come from: the ReLA union map is
upsampled with PyTorch's ``align_corners=False`` geometry (:func:`union_foreground`), instance masks with
OpenCV's generic ``INTER_LINEAR`` resize (:class:`MaskUpsampler`), computed only where a mask can be
above its threshold. The label image of many masks is decided per cell of the low-resolution grid and
interpolated exactly only in the cells where the deciding mask crosses its threshold
(:meth:`MaskUpsampler.paint_labels`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
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


def upsampled_mask(logits: np.ndarray, threshold: float, dst_hw: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(logits, dst) > threshold`` exactly (see :class:`MaskUpsampler`), as a new bool array.

    Uses its own upsampler, so any thread may call it.
    """
    mask = np.zeros(dst_hw, dtype=np.bool_)
    MaskUpsampler(logits.shape, dst_hw).paint(logits, threshold, mask)
    return mask


@dataclass(frozen=True, eq=False)
class _LinearAxis:
    """OpenCV ``INTER_LINEAR`` along one axis: per destination index, two source indices and weights."""

    i0: np.ndarray  # int64 [n_dst]
    i1: np.ndarray  # int64 [n_dst]
    w0: np.ndarray  # float32 [n_dst]
    w1: np.ndarray  # float32 [n_dst]
    paired: np.ndarray  # bool [n_dst]: False where OpenCV reads the one sample i0 with weight 1
    # Per source index s, the output indices that read it start at first_reader[s] and end before
    # end_reader[s] (as for a run of sources s..t: first_reader[s] .. end_reader[t]). Python ints, as
    # every mask plane looks up its window here and numpy's scalar searches cost microseconds each.
    first_reader: tuple[int, ...]
    end_reader: tuple[int, ...]


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
    outside = np.zeros(n_dst, dtype=np.bool_)
    if edge_weight_one:
        outside = (start < 0) | (start >= n_src - 1)
        fraction[outside] = 0
        start = np.clip(start, 0, n_src - 1)
    i0 = np.clip(start, 0, n_src - 1)
    i1 = np.clip(start + 1, 0, n_src - 1)
    sources = np.arange(n_src)
    first_reader = tuple(np.searchsorted(i1, sources, "left").tolist())
    end_reader = tuple(np.searchsorted(i0, sources, "right").tolist())
    return _LinearAxis(i0, i1, np.float32(1) - fraction, fraction, ~outside, first_reader, end_reader)


class MaskUpsampler:
    """Threshold the bilinear upsampling of low-resolution mask logit maps, computing as little as needed.

    :meth:`paint` gives exactly ``cv2.resize(logits, (W, H), interpolation=cv2.INTER_LINEAR) > threshold``
    as computed by OpenCV's own resize code, bit for bit (the Intel IPP resize that OpenCV's x86 wheels
    dispatch to by default rounds differently and is not used). An output pixel is a weighted mean of the
    2×2 source logits around it, so it can only be above the threshold next to a source logit that is; only
    the output rectangle that covers those source logits is computed. A small rectangle is interpolated
    here with OpenCV's float32 arithmetic (horizontal pass, then vertical); a large one comes from OpenCV's
    full-image resize, which is then the faster of the two.

    One instance serves one thread: it keeps a full-size scratch image between calls, so that a frame's
    large masks do not each pay for fresh memory.
    """

    #: Above this fraction of the output image, resize the whole map with OpenCV instead.
    OPENCV_FRACTION = 0.1

    def __init__(self, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> None:
        self.src_hw = (int(src_hw[0]), int(src_hw[1]))
        self.dst_hw = (int(dst_hw[0]), int(dst_hw[1]))
        self._rows = _opencv_linear_axis(self.src_hw[0], self.dst_hw[0], edge_weight_one=False)
        self._cols = _opencv_linear_axis(self.src_hw[1], self.dst_hw[1], edge_weight_one=True)
        self._scratch: np.ndarray | None = None  # float32 [H, W] for OpenCV's resize, allocated on first use
        # Cell r of an axis: the output indices whose first source index is r (they read samples r, r+1).
        self._row_cells = _cells(self.src_hw[0], self.dst_hw[0], edge_weight_one=False)
        self._col_cells = _cells(self.src_hw[1], self.dst_hw[1], edge_weight_one=True)

    def paint(
        self, logits: np.ndarray, threshold: float, out: np.ndarray
    ) -> tuple[int, int, int, int] | None:
        """Write ``upsampled logits > threshold`` into ``out`` and return the rectangle written.

        ``logits`` is one float [h, w] map; ``out`` is bool [H, W] and False everywhere (only the returned
        rectangle ``(y0, y1, x0, x1)`` is written; no output pixel outside it is above the threshold).
        Returns None when no pixel can be above the threshold (see :meth:`window`).
        """
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        window = self.window(logits, threshold)
        if window is None:
            return None
        y0, y1, x0, x1 = window
        np.greater(self._values(logits, window), threshold, out=out[y0:y1, x0:x1])
        return window

    def paint_window(self, logits: np.ndarray, threshold: float) -> tuple[int, int, np.ndarray] | None:
        """``(y0, x0, inside)``: :meth:`paint`'s pixels within its rectangle only, without a full-size image.

        ``inside`` is bool [y1 - y0, x1 - x0] with its top-left corner at output row ``y0``, column ``x0``;
        None when no pixel can be above the threshold (see :meth:`window`).
        """
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        window = self.window(logits, threshold)
        if window is None:
            return None
        inside: np.ndarray = self._values(logits, window) > threshold
        return window[0], window[2], inside

    def _values(self, logits: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
        """Return the upsampled float32 logits inside ``window``, valid until the next call here."""
        y0, y1, x0, x1 = window
        height, width = self.dst_hw
        if (y1 - y0) * (x1 - x0) <= self.OPENCV_FRACTION * height * width:
            return self._interpolate(logits, y0, y1, x0, x1)
        if self._scratch is None:
            self._scratch = np.empty((height, width), dtype=np.float32)
        previous = cv2.ipp.useIPP()  # a per-thread switch: other threads are not affected
        cv2.ipp.setUseIPP(False)
        try:
            full = cv2.resize(logits, (width, height), dst=self._scratch, interpolation=cv2.INTER_LINEAR)
        finally:
            cv2.ipp.setUseIPP(previous)
        return full[y0:y1, x0:x1]

    def window(self, logits: np.ndarray, threshold: float) -> tuple[int, int, int, int] | None:
        """Return the output rectangle ``(y0, y1, x0, x1)`` outside which ``logits`` upsample to <= threshold.

        None when the whole output is at or below the threshold.
        """
        # A weighted mean of samples that are all <= threshold is <= threshold: exactly so at threshold 0
        # (by sign); otherwise a margin far above float32 rounding keeps every candidate sample.
        margin = 0.0 if threshold == 0 else 1e-4 * (1.0 + abs(threshold))
        # Compared in float32, as the interpolated values are: in float16 the bound itself would be rounded,
        # by up to half a float16 step, which can be above the threshold and leave out samples above it.
        samples = np.asarray(logits, dtype=np.float32)
        c0, r0, n_cols, n_rows = cv2.boundingRect((samples > threshold - margin).view(np.uint8))
        if n_rows == 0:
            return None
        # Output pixels that read any of the source rows r0 .. r0+n_rows-1 (and likewise for columns).
        rows, cols = self._rows, self._cols
        y0, y1 = rows.first_reader[r0], rows.end_reader[r0 + n_rows - 1]
        x0, x1 = cols.first_reader[c0], cols.end_reader[c0 + n_cols - 1]
        if y1 <= y0 or x1 <= x0:
            return None
        return y0, y1, x0, x1

    def _interpolate(self, logits: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """OpenCV's float32 bilinear values in output rows y0:y1, columns x0:x1, float32 [y1-y0, x1-x0].

        A horizontal pass over the source rows involved, then a vertical pass, in OpenCV's order of
        operations. Columns where OpenCV reads one sample get that sample alone (an infinite logit there
        stays infinite instead of becoming inf * 0 = NaN).
        """
        # ndarray methods rather than np.take: a frame interpolates tens of windows, and the wrappers'
        # overhead is a fair part of a small window's time.
        rows, cols = self._rows, self._cols
        first = int(rows.i0[y0])
        source = logits[first : int(rows.i1[y1 - 1]) + 1]
        across = source.take(cols.i0[x0:x1], axis=1)
        across *= cols.w0[x0:x1]
        paired = cols.paired[x0:x1]
        if paired.all():
            across += source.take(cols.i1[x0:x1], axis=1) * cols.w1[x0:x1]
        else:
            across[:, paired] += source.take(cols.i1[x0:x1][paired], axis=1) * cols.w1[x0:x1][paired]
        top = across.take(rows.i0[y0:y1] - first, axis=0)
        top *= rows.w0[y0:y1, None]
        bottom = across.take(rows.i1[y0:y1] - first, axis=0)
        bottom *= rows.w1[y0:y1, None]
        top += bottom
        return top

    def paint_labels(
        self, planes: Sequence[np.ndarray], threshold: float, out: np.ndarray
    ) -> list[tuple[int, int, np.ndarray] | None] | None:
        """Write the label image of ``planes`` (float [h, w] maps, best first) into ``out`` (uint [H, W]).

        A pixel gets ``k + 1`` for the first plane k whose upsampled logit is above ``threshold`` (exactly
        as :meth:`paint` decides it); ``out`` must be zeros of a type that holds ``len(planes)`` (uint8 or
        uint16), and pixels of no plane are left 0.

        Returns, when it painted plane by plane within each plane's window (few, small masks: a typical
        scene), every plane's :meth:`paint_window` result, which callers reuse for the instances' own
        masks; None when it painted cell by cell.

        Why per cell: an output pixel is a weighted mean of the 2×2 samples of its cell, so when all four
        are above the threshold (by a margin far above float32 rounding) the whole cell is inside, and
        when none is, the whole cell is outside. Only a cell that a plane crosses needs that plane's exact
        values, and only until the first plane that surely covers the cell: with hundreds of overlapping
        masks that is a small part of the image, and no full-size mask is ever written.
        """
        painted = self._paint_windows(planes, threshold, out)
        if painted is not None:
            return painted
        h, w = self.src_hw
        margin = 1e-4 * (1.0 + abs(threshold))  # as in paint(): at threshold 0 "outside" is exact by sign
        outside_below = threshold if threshold == 0 else threshold - margin
        winner = np.zeros((h, w), dtype=out.dtype)  # per cell: 1 + the first plane that covers it all
        open_cells = np.ones((h, w), dtype=np.bool_)  # no plane has covered the cell yet
        crossed: list[tuple[int, np.ndarray, np.ndarray]] = []  # (plane, cell rows, cell columns)
        won: list[tuple[int, int, int, int]] = []  # cell rectangles holding the cells each plane won
        for k in range(len(planes)):
            plane = np.asarray(planes[k], dtype=np.float32)
            c0, r0, n_cols, n_rows = cv2.boundingRect((plane > outside_below).view(np.uint8))
            if n_rows == 0:
                continue
            # Cells r0-1 .. r0+n_rows-1 read a sample of the bounding rectangle; the rest are outside.
            ra, rb = max(r0 - 1, 0), min(r0 + n_rows, h)
            ca, cb = max(c0 - 1, 0), min(c0 + n_cols, w)
            samples = plane[ra : rb + 1, ca : cb + 1]  # the cells' samples, short of one at the far edges
            if not np.isfinite(samples).all():
                self._paint_labels_by_resize(planes, threshold, out)
                return None
            inside = _all_corners(_edge_extended(samples > threshold + margin, rb - ra + 1, cb - ca + 1))
            touched = _any_corner(_edge_extended(samples > outside_below, rb - ra + 1, cb - ca + 1))
            still_open = open_cells[ra:rb, ca:cb]
            mixed = touched & ~inside & still_open
            if mixed.any():
                rows, cols = np.nonzero(mixed)
                crossed.append((k, rows + ra, cols + ca))
            newly = inside & still_open
            if newly.any():
                winner[ra:rb, ca:cb][newly] = k + 1
                won_rows, won_cols = np.flatnonzero(newly.any(axis=1)), np.flatnonzero(newly.any(axis=0))
                won.append((ra + won_rows[0], ra + won_rows[-1] + 1, ca + won_cols[0], ca + won_cols[-1] + 1))
            still_open &= ~inside
            if not open_cells.any():
                break
        self._expand(winner, won, out)
        if crossed:
            self._paint_crossed_cells(planes, threshold, crossed, winner, out)
        return None

    def _paint_windows(
        self, planes: Sequence[np.ndarray], threshold: float, out: np.ndarray
    ) -> list[tuple[int, int, np.ndarray] | None] | None:
        """Paint each plane's window, the last plane first, when the windows add up to less than the image.

        Few, small masks (a typical scene) are cheaper to interpolate whole within their windows than
        cell by cell; returns None, having written nothing, as soon as the windows add up to the image,
        else each plane's ``(y0, x0, inside)`` as :meth:`paint_window` gives it.
        """
        height, width = self.dst_hw
        windows = []
        samples = []  # the planes in float32, converted once for both the windows and the values
        area = 0
        for plane in planes:
            samples.append(np.ascontiguousarray(plane, dtype=np.float32))
            window = self.window(samples[-1], threshold)
            if window is not None:
                area += (window[1] - window[0]) * (window[3] - window[2])
                if area > height * width:
                    return None
            windows.append(window)
        painted: list[tuple[int, int, np.ndarray] | None] = [None] * len(windows)
        for k in range(len(windows) - 1, -1, -1):
            window = windows[k]
            if window is not None:
                y0, y1, x0, x1 = window
                inside = self._values(samples[k], window) > threshold
                # OpenCV's masked copy writes into the view of ``out`` in place, 2.5x numpy's copyto(where=).
                cv2.copyTo(np.full(inside.shape, k + 1, out.dtype), inside.view(np.uint8), out[y0:y1, x0:x1])
                painted[k] = (y0, x0, inside)
        return painted

    def _expand(self, winner: np.ndarray, won: list[tuple[int, int, int, int]], out: np.ndarray) -> None:
        """Write the cells' labels to their output pixels, within the rectangles of cells that were won.

        Writing only there leaves the rest of a fresh zero image untouched (its pages are never written);
        when the rectangles add up to more than the image, the whole image is written at once.
        """
        rows, cols = self._rows.i0, self._cols.i0
        if sum((rb - ra) * (cb - ca) for ra, rb, ca, cb in won) >= winner.size:
            won = [(0, winner.shape[0], 0, winner.shape[1])]
        for ra, rb, ca, cb in won:
            y0, y1 = np.searchsorted(rows, ra, "left"), np.searchsorted(rows, rb - 1, "right")
            x0, x1 = np.searchsorted(cols, ca, "left"), np.searchsorted(cols, cb - 1, "right")
            out[y0:y1, x0:x1] = np.take(np.take(winner, rows[y0:y1], axis=0), cols[x0:x1], axis=1)

    def _paint_labels_by_resize(
        self, planes: Sequence[np.ndarray], threshold: float, out: np.ndarray
    ) -> None:
        """paint_labels() for planes with infinite or NaN logits: OpenCV's full resize of every plane.

        OpenCV reads a single sample at the image's left and right edges, where the per-cell arithmetic
        would multiply an infinite sample by a zero weight; engines do not normally output such values.
        """
        height, width = self.dst_hw
        out[...] = 0
        previous = cv2.ipp.useIPP()
        cv2.ipp.setUseIPP(False)
        try:
            with np.errstate(invalid="ignore"):
                for k in range(len(planes) - 1, -1, -1):
                    plane = np.asarray(planes[k], dtype=np.float32)
                    up = cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR)
                    np.copyto(out, out.dtype.type(k + 1), where=up > threshold)
        finally:
            cv2.ipp.setUseIPP(previous)

    def _paint_crossed_cells(
        self,
        planes: Sequence[np.ndarray],
        threshold: float,
        crossed: list[tuple[int, np.ndarray, np.ndarray]],
        winner: np.ndarray,
        out: np.ndarray,
    ) -> None:
        """Resolve the cells that planes cross, pixel by pixel, with the exact interpolated values.

        A cell's output pixels are cut into tiles of at most the usual cell size (edge cells are larger),
        and each (plane, tile) pair is evaluated on a padded block: the horizontal pass on the cell's two
        sample rows, then the vertical pass, in OpenCV's order of operations (as in :meth:`_interpolate`).
        Per tile, the planes are then applied from the last to the first, so that the first plane above
        the threshold at a pixel is written last and wins over the cell's covering plane.
        """
        h, w = self.src_hw
        k = np.concatenate([np.full(r.size, i, dtype=np.int64) for i, r, _ in crossed])
        cell_rows = np.concatenate([r for _, r, _ in crossed])
        cell_cols = np.concatenate([c for _, _, c in crossed])
        # One entry per (plane, row tile, column tile) of the crossed cells.
        row_tiles, col_tiles = self._row_cells, self._col_cells
        per_pair = row_tiles.tiles[cell_rows] * col_tiles.tiles[cell_cols]
        pair = np.repeat(np.arange(k.size), per_pair)
        if pair.size == 0:
            return
        within = np.arange(pair.size) - np.repeat(np.cumsum(per_pair) - per_pair, per_pair)
        n_col_tiles = col_tiles.tiles[cell_cols[pair]]
        k = k[pair]
        row_tile = row_tiles.first_tile[cell_rows[pair]] + within // n_col_tiles
        col_tile = col_tiles.first_tile[cell_cols[pair]] + within % n_col_tiles
        ys = row_tiles.indices(row_tile)  # [T, ny]
        xs = col_tiles.indices(col_tile)  # [T, nx]
        rows, cols = self._rows, self._cols
        flat = np.ascontiguousarray(planes, dtype=np.float32).reshape(-1)
        # The two sample rows of each tile's cell: its first source row and the next one (clamped).
        upper = (k * (h * w) + rows.i0[ys[:, 0]] * w)[:, None, None]
        lower = upper + (np.minimum(rows.i0[ys[:, 0]] + 1, h - 1) - rows.i0[ys[:, 0]])[:, None, None] * w
        j0, j1 = cols.i0[xs][:, None, :], cols.i1[xs][:, None, :]
        sample_rows = np.concatenate([upper, lower], axis=1)  # [T, 2, 1]
        across = flat[sample_rows + j0] * cols.w0[xs][:, None, :]
        across += flat[sample_rows + j1] * cols.w1[xs][:, None, :]  # [T, 2, nx]
        # Output row y reads sample rows i0[y] (the upper one) and i1[y] (upper or lower).
        second = rows.i1[ys] != rows.i0[ys]  # [T, ny]
        top = across[:, :1, :] * rows.w0[ys][:, :, None]
        bottom = np.where(second[:, :, None], across[:, 1:, :], across[:, :1, :])
        bottom *= rows.w1[ys][:, :, None]
        top += bottom
        above = top > threshold
        # Entries grouped by tile, planes in order within a tile; rank = position within the tile's group.
        tile = row_tile * col_tiles.start.size + col_tile
        order = np.lexsort((k, tile))
        tiles, first, group = np.unique(tile[order], return_index=True, return_inverse=True)
        rank = np.arange(order.size) - first[group]
        first_entry = order[first]
        cells = rows.i0[ys[first_entry, 0]] * w + cols.i0[xs[first_entry, 0]]
        blocks = np.empty((tiles.size, *above.shape[1:]), dtype=out.dtype)
        blocks[...] = winner.reshape(-1)[cells][:, None, None]
        for position in range(int(rank.max()), -1, -1):
            at = rank == position
            entries, targets = order[at], group[at]
            blocks[targets] = np.where(above[entries], (k[entries] + 1).astype(out.dtype)[:, None, None],
                                       blocks[targets])
        # Padding repeats a tile's last pixel with its own value, so the block is written whole.
        out[ys[first_entry][:, :, None], xs[first_entry][:, None, :]] = blocks


@dataclass(frozen=True, eq=False)
class _Cells:
    """The output indices of each source cell along one axis, cut into tiles of at most ``size``.

    Cell r holds the output indices whose first source index is r, a contiguous run; most cells hold
    about dst/src of them, the edge cells more. Tile t covers ``start[t]`` .. ``start[t] + count[t] - 1``;
    cell r's tiles are ``first_tile[r]`` .. ``first_tile[r] + tiles[r] - 1``.
    """

    start: np.ndarray  # int64 [n_tiles]
    count: np.ndarray  # int64 [n_tiles]
    first_tile: np.ndarray  # int64 [n_src]
    tiles: np.ndarray  # int64 [n_src]
    size: int

    @staticmethod
    def of(first_source: np.ndarray, n_src: int) -> _Cells:
        cell_count = np.bincount(first_source, minlength=n_src)
        cell_start = np.cumsum(cell_count) - cell_count
        size = max(1, math.ceil(first_source.size / n_src))
        tiles = -(-cell_count // size)  # none for a cell without output indices (downscaling)
        first_tile = np.cumsum(tiles) - tiles
        cell = np.repeat(np.arange(n_src), tiles)
        offset = (np.arange(cell.size) - first_tile[cell]) * size
        count = np.clip(cell_count[cell] - offset, 0, size)
        return _Cells(cell_start[cell] + offset, count, first_tile, tiles, size)

    def indices(self, tiles: np.ndarray) -> np.ndarray:
        """Output indices of ``tiles`` [T], int64 [T, size]: a shorter tile repeats its last index."""
        steps = np.minimum(np.arange(self.size), self.count[tiles][:, None] - 1)
        indices: np.ndarray = self.start[tiles][:, None] + steps
        return indices


@lru_cache(maxsize=16)
def _cells(n_src: int, n_dst: int, edge_weight_one: bool) -> _Cells:
    """Return the cells of one axis (cached: every deferred mask makes its own upsampler)."""
    return _Cells.of(_opencv_linear_axis(n_src, n_dst, edge_weight_one).i0, n_src)


def _edge_extended(samples: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Repeat the last row and column of ``samples`` up to ``rows`` × ``cols`` (cells at the far edge).

    The last cell of an axis reads its last sample twice (OpenCV clamps the index).
    """
    if samples.shape[0] < rows:
        samples = np.concatenate([samples, samples[-1:]], axis=0)
    if samples.shape[1] < cols:
        samples = np.concatenate([samples, samples[:, -1:]], axis=1)
    return samples


def _all_corners(samples: np.ndarray) -> np.ndarray:
    """Per cell, all four corner samples true: bool [n+1, m+1] -> [n, m]."""
    vertical = samples[:-1] & samples[1:]
    cells: np.ndarray = vertical[:, :-1] & vertical[:, 1:]
    return cells


def _any_corner(samples: np.ndarray) -> np.ndarray:
    """Per cell, any of the four corner samples true: bool [n+1, m+1] -> [n, m]."""
    vertical = samples[:-1] | samples[1:]
    cells: np.ndarray = vertical[:, :-1] | vertical[:, 1:]
    return cells
