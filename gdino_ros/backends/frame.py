"""One image's trip through a backend: the :class:`Frame` a backend hands out and its mask planes.

A frame may still be computing when it is returned, so a GPU backend can run the next image while the
caller post-processes this one; ``pred_masks`` is read per query (:class:`MaskPlanes`), so a GPU backend
copies to the host only the planes post-processing keeps.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType

import numpy as np

from gdino_ros import contract


class MaskPlanes(ABC):
    """``pred_masks`` [1, Q, 1, h, w], read per query.

    A GPU backend then copies to the host only the planes post-processing reads, not all Q (117.5 MB per
    frame at 544x960 with 900 queries).
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    @abstractmethod
    def planes(self, queries: np.ndarray) -> np.ndarray:
        """Mask logits of ``queries`` (query indices, in that order) as a float array [len(queries), h, w]."""


class ArrayMasks(MaskPlanes):
    """:class:`MaskPlanes` of an array already in host memory."""

    def __init__(self, array: np.ndarray) -> None:
        super().__init__(tuple(array.shape))
        self.array = array

    def planes(self, queries: np.ndarray) -> np.ndarray:
        """Index the array (a copy of just those planes)."""
        planes: np.ndarray = self.array[0, np.asarray(queries, dtype=np.int64), 0]
        return planes


class Frame(ABC):
    """One image submitted to a backend (:meth:`Backend.submit`); close it when its outputs are read.

    The network may still be running when the frame is returned: :meth:`outputs` and ``masks.planes``
    wait for it. A backend keeps :attr:`Backend.FRAMES_IN_FLIGHT` frames open at most and reuses the
    buffers of a closed frame.
    """

    #: The outputs may still be computing after :meth:`Backend.submit` returned (a GPU backend), so a
    #: caller gains by submitting the next image before reading this one.
    asynchronous: bool = True

    def __init__(self, masks: MaskPlanes, release: Callable[[], None]) -> None:
        self.masks = masks
        self._release_slot: Callable[[], None] | None = release

    @abstractmethod
    def outputs(self) -> dict[str, np.ndarray]:
        """Every output except ``pred_masks`` (read those through :attr:`masks`), as arrays of their own."""

    def arrays(self) -> dict[str, np.ndarray]:
        """Every output as an array, ``pred_masks`` in full (what :meth:`Backend.infer` returns)."""
        arrays = self.outputs()
        every_query = np.arange(self.masks.shape[1])
        arrays[contract.PRED_MASKS] = self.masks.planes(every_query).reshape(self.masks.shape)
        return {name: arrays[name] for name in contract.RELA_OUTPUT_NAMES if name in arrays}

    def close(self) -> None:
        """Give the frame's buffers back to the backend. Safe to repeat."""
        release, self._release_slot = self._release_slot, None
        if release is not None:
            release()

    def __enter__(self) -> Frame:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EagerFrame(Frame):
    """A frame whose outputs were computed before it was returned (the CPU backends)."""

    asynchronous = False

    def __init__(self, arrays: dict[str, np.ndarray], release: Callable[[], None]) -> None:
        super().__init__(ArrayMasks(arrays[contract.PRED_MASKS]), release)
        self._arrays = arrays

    def outputs(self) -> dict[str, np.ndarray]:
        """Return the outputs that were computed at submission (``pred_masks`` excepted)."""
        return {name: value for name, value in self._arrays.items() if name != contract.PRED_MASKS}

    def arrays(self) -> dict[str, np.ndarray]:
        """Return the arrays as computed, without copying."""
        return self._arrays
