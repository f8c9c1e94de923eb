"""Segmenter: the one entry point that turns an image and a prompt into a :class:`Result`.

It owns a backend, a tokenizer, the current encoded prompt and the post-processing thresholds. Prompts
are encoded once, when they are set; each frame takes a snapshot of (prompt, thresholds) when it starts
and is processed entirely with it, so prompt and threshold changes from other threads never mix within
a frame.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import numpy as np
from transformers import PreTrainedTokenizerBase

from gdino_ros.backends import Backend, BackendError, open_backend
from gdino_ros.backends.frame import Frame
from gdino_ros.core.postprocess import PostprocessParams, postprocess
from gdino_ros.core.preprocess import image_input
from gdino_ros.core.prompt import EncodedPrompt, PromptError, encode_prompt
from gdino_ros.core.result import Result
from gdino_ros.core.tokenizer import load_tokenizer

K = TypeVar("K")  # what a caller of Segmenter.finish_queued keys its frames with


@dataclass(frozen=True)
class _ActivePrompt:
    """An encoded prompt and the one text-input dict that goes with it (the backend keys uploads on it)."""

    encoded: EncodedPrompt
    text_inputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class Submitted:
    """A frame whose inference is queued (:meth:`Segmenter.submit`), with its prompt and thresholds.

    Give it to :meth:`Segmenter.finish`, or :meth:`close` it to abandon it.
    """

    frame: Frame
    active: _ActivePrompt
    params: PostprocessParams
    image_hw: tuple[int, int]
    started: float
    submit_started: float
    submitted: float

    @property
    def computing(self) -> bool:
        """True when the backend may still be computing it (a GPU backend), False when it is done."""
        return self.frame.asynchronous

    def close(self) -> None:
        """Abandon the frame and give its buffers back to the backend. Safe to repeat."""
        self.frame.close()



class ModelAccessError(BackendError):
    """The model file exists but cannot be read (permissions); re-exporting would not help."""


def check_model_file(path: Path) -> None:
    """Raise BackendError for a missing model file, ModelAccessError for one this user cannot read."""
    if not path.is_file():
        raise BackendError(f"model file {path} does not exist (or is not a file)")
    try:
        with path.open("rb"):
            pass
    except PermissionError:
        raise ModelAccessError(
            f"cannot read model file {path}: permission denied; give the user running this read access "
            f"(chmod a+r {path}) or copy the model somewhere readable"
        ) from None
    except OSError as error:
        raise ModelAccessError(f"cannot read model file {path}: {error.strerror or error}") from None


class Segmenter:
    """Image + prompt -> :class:`Result`, on any backend.

    Thread-safe: :meth:`set_prompt` and :meth:`set_params` may be called from any
    thread while frames are processed; a frame uses the prompt and thresholds current when it started.
    Frames overlap: while one frame is post-processed the next one's inference can run, either from
    another thread or within :meth:`stream`; the backend bounds how many frames are in flight.
    """

    def __init__(
        self,
        backend: Backend,
        tokenizer: PreTrainedTokenizerBase,
        *,
        params: PostprocessParams | None = None,
    ) -> None:
        self._backend = backend
        self._tokenizer = tokenizer
        self._params = params or PostprocessParams()
        self._active: _ActivePrompt | None = None
        self._state_lock = threading.Lock()  # guards swaps of _active and _params

    @classmethod
    def from_model(
        cls,
        model_path: str | Path,
        *,
        tokenizer_path: str | Path | None = None,
        device: str = "auto",
        prompt: str | None = None,
        mode: str = "auto",
        params: PostprocessParams | None = None,
        input_hw: tuple[int, int] | None = None,
        trust_checkpoint: bool = False,
    ) -> Segmenter:
        """Open ``model_path`` (``.onnx``, ``.pth``, ``.engine``/``.plan``) and its tokenizer.

        The tokenizer comes from ``tokenizer_path``, else a ``vocab.txt`` next to the model, else the
        local Hugging Face cache (never the network). ``prompt``, if given, is set with ``mode``.
        ``device``, ``input_hw`` and ``trust_checkpoint`` go to :func:`gdino_ros.backends.open_backend`.
        """
        check_model_file(Path(model_path))  # before the tokenizer: a missing model is reported as such
        tokenizer = load_tokenizer(tokenizer_path, model_path)
        backend = open_backend(model_path, device, input_hw=input_hw, trust_checkpoint=trust_checkpoint)
        segmenter = cls(backend, tokenizer, params=params)
        if prompt is not None:
            try:
                segmenter.set_prompt(prompt, mode)
            except Exception:
                backend.close()
                raise
        return segmenter

    @property
    def backend(self) -> Backend:
        """The backend that runs the network (its name, device, precision, input size)."""
        return self._backend

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The bert-base-uncased tokenizer prompts are encoded with."""
        return self._tokenizer

    @property
    def prompt(self) -> EncodedPrompt | None:
        """The current encoded prompt, or ``None`` before the first :meth:`set_prompt`."""
        active = self._active
        return None if active is None else active.encoded

    @property
    def prompt_text(self) -> str | None:
        """The current prompt as the user gave it, or ``None`` before the first :meth:`set_prompt`."""
        active = self._active
        return None if active is None else active.encoded.text

    @property
    def params(self) -> PostprocessParams:
        """The current post-processing thresholds."""
        return self._params

    def set_prompt(self, text: str, mode: str = "auto") -> EncodedPrompt:
        """Encode ``text`` in ``mode`` (``"auto"``, ``"phrases"``, ``"expression"``) and make it current.

        The prompt is encoded before anything changes, so an invalid prompt raises
        :class:`~gdino_ros.core.prompt.PromptError` and leaves the previous one in place. Frames already
        running finish with the previous prompt.
        """
        encoded = encode_prompt(text, mode, self._tokenizer)
        active = _ActivePrompt(encoded, encoded.text_inputs())
        with self._state_lock:
            self._active = active
        return encoded

    def set_params(self, params: PostprocessParams) -> None:
        """Replace the post-processing thresholds; frames that start afterwards use them."""
        with self._state_lock:
            self._params = params

    def __call__(self, image: np.ndarray, *, bgr: bool = False) -> Result:
        """Segment one uint8 H×W×3 image (RGB, or BGR if ``bgr``) with the current prompt.

        ``Result.timings_ms`` has ``preprocess``, ``inference`` and ``postprocess`` in milliseconds.
        Raises :class:`~gdino_ros.core.prompt.PromptError` when no prompt has been set and
        ``ValueError`` for an unusable image.
        """
        return self.finish(self.submit(image, bgr=bgr))

    def stream(self, images: Iterable[np.ndarray], *, bgr: bool = False) -> Iterator[Result]:
        """Segment ``images`` in order, one :class:`Result` each, as calling the segmenter on each would.

        Each image's inference is queued before the previous image is post-processed, so that a GPU
        backend computes frame N+1 while the CPU post-processes frame N. A prompt set meanwhile applies
        from the next image taken from ``images``.
        """
        with closing(self.finish_queued((None, self.submit(image, bgr=bgr)) for image in images)) as finished:
            for _, result in finished:
                assert result is not None  # every item has a job
                yield result

    def finish_queued(
        self, queued: Iterable[tuple[K, Submitted | None]]
    ) -> Generator[tuple[K, Result | None], None, None]:
        """Finish the frames ``queued`` hands out, in order, each only once the next one is queued.

        ``queued`` yields ``(key, job)``: ``job`` from :meth:`submit`, queued as the item is produced, or
        None for an item without a frame, which comes back as ``(key, None)`` in its place. A GPU backend
        thus computes one frame while the one before is post-processed; a job still queued when the
        iteration stops (an error, an interrupt, the caller closing the iterator) is closed.
        """
        pending: tuple[K, Submitted] | None = None
        try:
            for key, job in queued:
                previous, pending = pending, (None if job is None else (key, job))
                if previous is not None:
                    yield previous[0], self.finish(previous[1])
                if job is None:
                    yield key, None
            last, pending = pending, None
            if last is not None:
                yield last[0], self.finish(last[1])
        finally:
            if pending is not None:
                pending[1].close()

    def submit(self, image: np.ndarray, *, bgr: bool = False) -> Submitted:
        """Preprocess ``image`` and queue its inference with a snapshot of the prompt and thresholds.

        A camera-input model gets the RGB pixels as they are and preprocesses them in its graph.

        The first half of :meth:`__call__`, for callers that overlap frames themselves (the node): the
        backend keeps at most ``FRAMES_IN_FLIGHT`` frames; :meth:`finish` or close each one.
        """
        with self._state_lock:
            active, params = self._active, self._params
        if active is None:
            raise PromptError("No prompt is set; call set_prompt('cup . bottle') (or pass prompt=) first.")
        started = time.perf_counter()
        tensor = image_input(image, self._backend, bgr=bgr)
        submit_started = time.perf_counter()
        frame = self._backend.submit(tensor, active.text_inputs)
        submitted = time.perf_counter()
        image_hw = (image.shape[0], image.shape[1])
        return Submitted(frame, active, params, image_hw, started, submit_started, submitted)

    def finish(self, job: Submitted) -> Result:
        """Wait for ``job``'s outputs and post-process them (reading only the mask planes it keeps)."""
        with job.frame as frame:
            waited = time.perf_counter()
            outputs = frame.outputs()
            inferred = time.perf_counter()
            result = postprocess(outputs, job.active.encoded, job.image_hw, job.params, masks=frame.masks)
            finished = time.perf_counter()
        result.timings_ms = {
            "preprocess": (job.submit_started - job.started) * 1e3,
            # Queueing plus waiting (GPU time overlapped with the previous frame is not counted).
            "inference": ((job.submitted - job.submit_started) + (inferred - waited)) * 1e3,
            "postprocess": (finished - inferred) * 1e3,
        }
        return result

    def close(self) -> None:
        """Release the backend."""
        self._backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
