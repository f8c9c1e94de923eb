"""The one interface every inference backend implements, and the contract check they share.

A backend runs the exported network (``gdino_ros.contract``'s I/O) on one image and one encoded prompt.
The rest of the package only sees :class:`Backend`; :func:`gdino_ros.backends.open_backend` picks the
implementation from the model file.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Protocol

import numpy as np

from gdino_ros import contract
from gdino_ros.backends.frame import EagerFrame, Frame
from gdino_ros.errors import ModelError

# Input dtypes a model may declare besides the contract's own; values are cast to the model's dtype
# (an FP16-I/O export takes a float16 image; some converters turn int64 ids into int32).
_COMPATIBLE_INPUT_DTYPES: dict[np.dtype, frozenset[np.dtype]] = {
    np.dtype(np.float32): frozenset({np.dtype(np.float32), np.dtype(np.float16)}),
    np.dtype(np.int64): frozenset({np.dtype(np.int64), np.dtype(np.int32)}),
    np.dtype(np.bool_): frozenset({np.dtype(np.bool_)}),
}
_OUTPUT_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float16)})
_OUTPUT_RANKS = {
    contract.PRED_LOGITS: 3,
    contract.PRED_BOXES: 3,
    contract.PRED_MASKS: 5,
    contract.NO_TARGETS: 2,
    contract.UNION_MASK_LOGITS: 4,
}


class Dims(Protocol):
    """A tensor shape as runtimes report it (TensorRT's ``Dims``, a tuple): sized and indexable."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> int: ...


class BackendError(ModelError, RuntimeError):
    """A model that cannot be opened or run; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the model declares it: ``None`` marks a dynamic dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    @classmethod
    def from_dims(cls, name: str, dtype: np.dtype, dims: Dims) -> TensorSpec:
        """Build the spec from a runtime's dims, where a negative size (TensorRT's -1) is dynamic."""
        sizes = (int(dims[i]) for i in range(len(dims)))
        return cls(name, dtype, tuple(size if size >= 0 else None for size in sizes))


@dataclass(frozen=True)
class ModelIO:
    """The result of :func:`check_io`: what the rest of the backend needs to know about the model."""

    input_hw: tuple[int, int]
    input_dtypes: dict[str, np.dtype]
    output_names: tuple[str, ...]
    dynamic_text: bool  # the text inputs' token axis takes any length (our exports), not only 256 (TAO's)
    camera_input: bool = False  # the image input takes the camera's uint8 pixels (:func:`is_camera_input`)


def is_camera_input(image: TensorSpec) -> bool:
    """Tell a camera-input export's image input: uint8, it takes the camera's RGB pixels.

    Such a model (``gdino-export --camera-input``) resizes and normalises inside the graph; its input is
    [1, h, w, 3] with a dynamic h and w (docs/engine_contract.md#camera-input).
    """
    return image.dtype == np.uint8


def parse_device(device: str) -> tuple[str, int]:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> (kind, index)."""
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise BackendError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    return kind, int(index or 0)


def expected_input_shape(
    name: str, input_hw: tuple[int, int], text_length: int = contract.MAX_TEXT_LEN
) -> tuple[int, ...]:
    """Return the contract's batch-1 shape of input ``name`` for an ``input_hw`` image tensor.

    ``text_length`` is the text inputs' token axis: the contract's 256, or a shorter length that a model
    with a dynamic token axis takes.
    """
    if name == contract.INPUT_IMAGE:
        return (contract.BATCH_SIZE, 3, *input_hw)
    if name == contract.TEXT_TOKEN_MASK:
        return (contract.BATCH_SIZE, text_length, text_length)
    return (contract.BATCH_SIZE, text_length)


def text_length(attention_mask: np.ndarray) -> int:
    """Return how many tokens a length-generic model needs: up to the last real one, plus one padding token.

    ``attention_mask`` is the prompt's contract array (True at real tokens, ``[CLS]`` and ``[SEP]``
    included). The padding token stays (when there is room) because ReLA attends to padding as TAO's
    network does: the graph counts the padding tokens it gets as the 256 - n of a 256-long input
    (``gdino_ros.model.rela.padding_weights``), so the outputs are those of the 256-long run. No rounding
    up to a few bucket lengths: the text is set once per prompt, ONNX Runtime and a TensorRT profile take
    any length, and every extra token would be computed against every image token in each fusion layer.
    """
    real = np.flatnonzero(np.asarray(attention_mask).reshape(-1))
    used = int(real[-1]) + 1 if real.size else 0
    return min(used + 1, contract.MAX_TEXT_LEN)


def model_text(text_inputs: Mapping[str, np.ndarray], dynamic: bool) -> dict[str, np.ndarray]:
    """Return the contract's 256-long text tensors as the model takes them: cut to :func:`text_length`.

    Only a ``dynamic`` model's (a dynamic token axis); a static model (TAO's ONNX, older exports, engines
    built from them) gets the 256 tokens unchanged.
    """
    if not dynamic:
        return dict(text_inputs)
    length = text_length(text_inputs[contract.ATTENTION_MASK])
    return {
        name: value[:, :length, :length] if name == contract.TEXT_TOKEN_MASK else value[:, :length]
        for name, value in text_inputs.items()
    }


def _expected_output_shape(name: str, input_hw: tuple[int, int]) -> tuple[int | None, ...]:
    height, width = input_hw
    queries = None  # the number of queries is a model choice (900 in TAO's, fewer in small test models)
    return {
        contract.PRED_LOGITS: (contract.BATCH_SIZE, queries, contract.MAX_TEXT_LEN),
        contract.PRED_BOXES: (contract.BATCH_SIZE, queries, 4),
        contract.PRED_MASKS: (
            contract.BATCH_SIZE, queries, 1, height // contract.MASK_STRIDE, width // contract.MASK_STRIDE
        ),
        contract.NO_TARGETS: (contract.BATCH_SIZE, 2),
        contract.UNION_MASK_LOGITS: (
            contract.BATCH_SIZE, 2, height // contract.UNION_MASK_STRIDE, width // contract.UNION_MASK_STRIDE
        ),
    }[name]


def _shape_problem(spec: TensorSpec, expected: tuple[int | None, ...], kind: str) -> str | None:
    """Describe how ``spec.shape`` differs from ``expected`` (``None`` on either side matches anything)."""
    shown = "x".join("?" if d is None else str(d) for d in spec.shape)
    wanted = "x".join("?" if d is None else str(d) for d in expected)
    if len(spec.shape) != len(expected):
        return f"{kind} '{spec.name}' has shape {shown}, the contract has {wanted}"
    for index, (have, want) in enumerate(zip(spec.shape, expected, strict=True)):
        if have is not None and want is not None and have != want:
            hint = " (the network only runs at batch size 1)" if index == 0 else ""
            return f"{kind} '{spec.name}' has shape {shown}, the contract has {wanted}{hint}"
    return None


def check_io(inputs: Mapping[str, TensorSpec], outputs: Mapping[str, TensorSpec], source: str) -> ModelIO:
    """Compare a model's declared I/O with the contract; raise :class:`BackendError` naming every difference.

    Accepts 3-output models and 5-output (ReLA) models. The image input must have a static H and W,
    because preprocessing resizes to it, unless it is a camera input (:func:`is_camera_input`), whose
    network size is then the one its static ``pred_masks`` output is computed at; a dynamic token axis of
    all five text inputs makes the model take shorter text (:func:`model_text`); every other dynamic
    dimension is taken to be the contract's.
    """
    problems: list[str] = []
    missing = [name for name in contract.INPUT_NAMES if name not in inputs]
    extra = [name for name in inputs if name not in contract.INPUT_NAMES]
    if missing:
        problems.append(f"missing input(s) {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected input(s) {', '.join(extra)}")
    rela = contract.NO_TARGETS in outputs or contract.UNION_MASK_LOGITS in outputs
    wanted_outputs = contract.RELA_OUTPUT_NAMES if rela else contract.OUTPUT_NAMES
    missing = [name for name in wanted_outputs if name not in outputs]
    extra = [name for name in outputs if name not in wanted_outputs]
    if missing:
        problems.append(f"missing output(s) {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected output(s) {', '.join(extra)}")

    input_hw = (0, 0)
    image = inputs.get(contract.INPUT_IMAGE)
    camera = image is not None and is_camera_input(image)
    if image is not None and camera:
        masks = outputs.get(contract.PRED_MASKS)
        if len(image.shape) != 4 or image.shape[3] not in (3, None):
            problems.append(f"input '{image.name}' is uint8 with shape {image.shape}; a camera-input "
                            "model's is 1xHxWx3 (gdino-export --camera-input)")
        else:
            mask_hw = masks.shape[3:] if masks is not None and len(masks.shape) == 5 else (None, None)
            if mask_hw[0] is None or mask_hw[1] is None:
                problems.append(f"camera-input model: output '{contract.PRED_MASKS}' has no static height "
                                "and width to give the network's input size")
            else:
                input_hw = (mask_hw[0] * contract.MASK_STRIDE, mask_hw[1] * contract.MASK_STRIDE)
    elif image is not None:
        if len(image.shape) != 4 or image.shape[1] not in (3, None):
            problems.append(f"input '{image.name}' has shape {image.shape}, the contract has 1x3xHxW")
        elif image.shape[2] is None or image.shape[3] is None:
            problems.append(
                f"input '{image.name}' has a dynamic height or width {image.shape}; export the model "
                "with a fixed input size (e.g. 544x960)"
            )
        else:
            input_hw = (image.shape[2], image.shape[3])
    input_dtypes: dict[str, np.dtype] = {}
    for name, spec in inputs.items():
        if name not in contract.INPUT_DTYPES:
            continue
        want = contract.INPUT_DTYPES[name]
        if not (name == contract.INPUT_IMAGE and camera) and spec.dtype not in _COMPATIBLE_INPUT_DTYPES[want]:
            problems.append(f"input '{name}' is {spec.dtype}, the contract has {want}")
        input_dtypes[name] = spec.dtype
        if name != contract.INPUT_IMAGE:
            problem = _shape_problem(spec, expected_input_shape(name, input_hw), "input")
            if problem:
                problems.append(problem)
        elif image is not None and image.shape[0] not in (None, contract.BATCH_SIZE):
            problems.append(f"input '{name}' has batch size {image.shape[0]}; the network only runs at 1")
    for name, spec in outputs.items():
        if name not in _OUTPUT_RANKS:
            continue
        if spec.dtype not in _OUTPUT_DTYPES:
            problems.append(f"output '{name}' is {spec.dtype}, the contract has float32")
        expected = _expected_output_shape(name, input_hw)
        if input_hw == (0, 0):
            expected = tuple(None if i >= 3 else d for i, d in enumerate(expected))
        problem = _shape_problem(spec, expected, "output")
        if problem:
            problems.append(problem)
    if problems:
        raise BackendError(
            f"{source} does not have the Mask Grounding DINO I/O of gdino_ros/contract.py: "
            + "; ".join(problems)
            + ". Export the model with gdino-export (or TAO's mask_grounding_dino export) and use that file."
        )
    dynamic_text = all(None in inputs[name].shape[1:] for name in contract.TEXT_INPUT_NAMES)
    names = tuple(n for n in wanted_outputs if n in outputs)
    return ModelIO(input_hw, input_dtypes, names, dynamic_text, camera)


class _Slots:
    """The numbers of the frames a backend may have open at once; :meth:`take` waits for a free one."""

    def __init__(self, count: int) -> None:
        self._free = list(range(count))
        self._condition = threading.Condition()
        self._shut = False

    def take(self, backend_name: str) -> int:
        with self._condition:
            self._condition.wait_for(lambda: self._free or self._shut)
            if self._shut:
                raise BackendError(f"the {backend_name} backend has been closed; open the model again")
            return self._free.pop(0)

    def give(self, slot: int) -> None:
        with self._condition:
            self._free.append(slot)
            self._condition.notify()

    def shut(self) -> None:
        with self._condition:
            self._shut = True
            self._condition.notify_all()


class Backend(ABC):
    """Runs the network on one preprocessed image and one encoded prompt.

    Attributes every implementation sets: ``name`` (``"onnxruntime"``, ``"torch"``, ``"tensorrt"``),
    ``device`` (``"cpu"``, ``"cuda:0"``), ``precision`` (what really runs: ``"fp32"``, ``"fp16"``, or a
    mixed description), ``input_hw`` (the image tensor's H, W), ``input_dtype`` (the image tensor's dtype,
    to pass to preprocessing), ``output_names`` (3 names, or 5 with the no-target head),
    ``dynamic_text`` (True: the model runs on a prompt's own tokens, :func:`model_text`) and
    ``camera_input`` (True: the model takes the camera's uint8 RGB pixels as [1, h, w, 3] and preprocesses
    them itself, up to ``max_camera_hw`` when the runtime has a limit).

    :meth:`infer` and :meth:`submit` are thread-safe. The text tensors are sent to the model only when
    ``text_inputs`` is a different object from the previous call's, so a caller encodes a prompt once,
    keeps its dict, and every frame runs with exactly the prompt it was given.
    """

    name: ClassVar[str]
    #: Frames that may be open at once: the one being post-processed and the one being computed.
    FRAMES_IN_FLIGHT: ClassVar[int] = 2

    def __init__(
        self,
        *,
        device: str,
        precision: str,
        input_hw: tuple[int, int],
        input_dtypes: Mapping[str, np.dtype],
        output_names: tuple[str, ...],
        dynamic_text: bool = False,
        camera_input: bool = False,
        max_camera_hw: tuple[int, int] | None = None,
    ) -> None:
        self.device = device
        self.precision = precision
        self.input_hw = input_hw
        self.input_dtype = np.dtype(input_dtypes[contract.INPUT_IMAGE])
        self.output_names = output_names
        self.dynamic_text = dynamic_text
        self.camera_input = camera_input
        self.max_camera_hw = max_camera_hw
        self._input_dtypes = dict(input_dtypes)
        self._lock = threading.Lock()
        self._text_inputs: Mapping[str, np.ndarray] | None = None
        self._closed = False
        self._slots = _Slots(self.FRAMES_IN_FLIGHT)

    @property
    def has_no_target_head(self) -> bool:
        """True for 5-output (ReLA) models, which decide "no target" per image."""
        return contract.NO_TARGETS in self.output_names

    def infer(self, image: np.ndarray, text_inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the network on one image with one prompt and return every output in full.

        ``image`` is ``input_dtype`` [1, 3, H, W] with (H, W) = ``input_hw`` (a camera-input model's:
        uint8 RGB [1, h, w, 3] of the camera's size); ``text_inputs`` maps the
        contract's five text input names to their batch-1 arrays (``EncodedPrompt.text_inputs()``).
        Returns ``output_names`` -> float arrays with the contract's shapes. The arrays may be reused by
        later calls and are invalid after :meth:`close`; copy anything that must outlive them.
        """
        with self.submit(image, text_inputs) as frame:
            return frame.arrays()

    def submit(self, image: np.ndarray, text_inputs: Mapping[str, np.ndarray]) -> Frame:
        """Start the network on one image with one prompt (arguments as :meth:`infer`); return its frame.

        A GPU backend returns as soon as the work is queued, so the caller can post-process the previous
        frame meanwhile. Waits while :attr:`FRAMES_IN_FLIGHT` frames are open; close each frame.
        """
        self._check_image(image)
        slot = self._slots.take(self.name)
        try:
            with self._lock:
                if self._closed:
                    raise BackendError(f"the {self.name} backend has been closed; open the model again")
                if text_inputs is not self._text_inputs:
                    self._set_text(self._checked_text(text_inputs))
                    self._text_inputs = text_inputs
                return self._submit(np.ascontiguousarray(image), slot, lambda: self._slots.give(slot))
        except BaseException:
            self._slots.give(slot)
            raise

    def _check_image(self, image: np.ndarray) -> None:
        """Raise :class:`BackendError` unless ``image`` is what the model's image input takes."""
        if not self.camera_input:
            expected = expected_input_shape(contract.INPUT_IMAGE, self.input_hw)
            if image.shape != expected or image.dtype != self.input_dtype:
                raise BackendError(
                    f"image tensor is {image.dtype} {image.shape}, the model needs {self.input_dtype} "
                    f"{expected}; preprocess with input_hw={self.input_hw} and dtype={self.input_dtype}"
                )
            return
        if image.dtype != np.uint8 or image.ndim != 4 or image.shape[0] != 1 or image.shape[3] != 3:
            raise BackendError(
                f"image is {image.dtype} {image.shape}; this camera-input model takes the camera's uint8 RGB "
                "pixels as [1, height, width, 3] (Segmenter does that)"
            )
        height, width = image.shape[1:3]
        limit = self.max_camera_hw
        too_large = limit is not None and (height > limit[0] or width > limit[1])
        if min(height, width) < contract.MIN_IMAGE_SIDE or too_large:
            side = contract.MIN_IMAGE_SIDE
            largest = f" and at most {limit[1]}x{limit[0]}" if limit else ""
            raise BackendError(f"the camera image is {width}x{height}; this model takes at least "
                               f"{side}x{side}{largest} (width x height): resize the images to fit")

    def _checked_text(self, text_inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check names and shapes of the text tensors; return them as the model takes them, copied.

        Copies in the model's dtypes, cut to the prompt's length for a model with a dynamic token axis.
        """
        missing = [name for name in contract.TEXT_INPUT_NAMES if name not in text_inputs]
        if missing:
            raise BackendError(f"text inputs lack {', '.join(missing)}; pass EncodedPrompt.text_inputs()")
        values = {}
        for name in contract.TEXT_INPUT_NAMES:
            values[name] = np.asarray(text_inputs[name])
            expected = expected_input_shape(name, self.input_hw)
            if values[name].shape != expected:
                raise BackendError(
                    f"text input '{name}' has shape {values[name].shape}, the model needs {expected}"
                )
        # Copies: the model keeps exactly the prompt it was given, whatever the caller does later.
        return {
            name: np.array(value, dtype=self._input_dtypes[name], order="C", copy=True)
            for name, value in model_text(values, self.dynamic_text).items()
        }

    @abstractmethod
    def _set_text(self, text_inputs: dict[str, np.ndarray]) -> None:
        """Make these (checked, model-dtype) text tensors the ones the next runs use."""

    def _submit(self, image: np.ndarray, slot: int, release: Callable[[], None]) -> Frame:
        """Start ``image`` with the current text tensors in buffer set ``slot``; ``release`` frees the slot.

        Called with the backend's lock held. The CPU backends compute the outputs right here (:meth:`_run`).
        """
        return EagerFrame(self._run(image), release)

    def _run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Compute every output on ``image`` with the current text tensors (used by the default _submit)."""
        raise NotImplementedError(f"{type(self).__name__} overrides neither _submit nor _run")

    def close(self) -> None:
        """Release the model and its buffers; the backend cannot be used afterwards. Safe to repeat.

        Waits for a frame that is being read at this moment; open frames raise :class:`BackendError` after.
        """
        self._slots.shut()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    @abstractmethod
    def _release(self) -> None:
        """Free what the backend holds (called once, by :meth:`close`)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(device={self.device!r}, precision={self.precision!r}, "
            f"input_hw={self.input_hw}, outputs={len(self.output_names)})"
        )
