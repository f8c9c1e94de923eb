"""PyTorch backend: runs a ``.pth`` checkpoint through ``gdino_ros.model`` (no export step needed).

On a GPU it runs under FP16 autocast (matmuls and convolutions in half precision, reductions such as
LayerNorm and softmax kept in FP32 by autocast); on the CPU in FP32. The image tensor is FP32 either way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gdino_ros import contract
from gdino_ros.backends.base import Backend, BackendError, parse_device
from gdino_ros.model.checkpoint import build_model_from_checkpoint


class TorchBackend(Backend):
    """Runs a TAO (or gdino_ros) checkpoint with PyTorch in inference mode.

    ``input_hw`` is the image tensor size (multiples of 32); by default the size stored in a gdino_ros
    checkpoint, or TAO's 544x960 for TAO's own files, which do not record one.
    """

    name = "torch"

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        input_hw: tuple[int, int] | None = None,
        trust_checkpoint: bool = False,
    ) -> None:
        kind, index = parse_device(device)
        if kind == "cuda" and not torch.cuda.is_available():
            raise BackendError(
                f"device {device!r} needs a CUDA build of PyTorch and a GPU; this PyTorch "
                f"({torch.__version__}) sees none. Use device='cpu'"
            )
        use_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
        self._device = torch.device("cuda", index) if use_cuda else torch.device("cpu")
        try:
            model, checkpoint = build_model_from_checkpoint(
                path, trust_checkpoint=trust_checkpoint, input_size=input_hw
            )
        except ValueError as error:  # CheckpointError, or an input size the network cannot take
            raise BackendError(str(error)) from None
        config = checkpoint.config
        self._model = model.to(self._device).eval()
        input_dtypes = dict(contract.INPUT_DTYPES)
        super().__init__(
            device=str(self._device),
            precision="fp16 autocast" if use_cuda else "fp32",
            input_hw=(config.input_height, config.input_width),
            input_dtypes=input_dtypes,
            output_names=config.output_names,
            dynamic_text=True,  # the PyTorch network takes any text length
        )
        self._text: dict[str, torch.Tensor] = {}

    def _set_text(self, text_inputs: dict[str, np.ndarray]) -> None:
        self._text = {name: torch.from_numpy(value).to(self._device) for name, value in text_inputs.items()}

    def _run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode(), torch.autocast(
            self._device.type, dtype=torch.float16, enabled=self._device.type == "cuda"
        ):
            outputs = self._model(
                torch.from_numpy(image).to(self._device),
                self._text[contract.INPUT_IDS],
                self._text[contract.ATTENTION_MASK],
                self._text[contract.POSITION_IDS],
                self._text[contract.TOKEN_TYPE_IDS],
                self._text[contract.TEXT_TOKEN_MASK],
            )
        if len(outputs) != len(self.output_names):
            raise BackendError(
                f"the network returned {len(outputs)} outputs, its config says {len(self.output_names)}"
            )
        pairs = zip(self.output_names, outputs, strict=True)
        return {name: tensor.float().cpu().numpy() for name, tensor in pairs}

    def _release(self) -> None:
        """Drop the network; on a GPU also return its cached memory to the driver."""
        del self._model
        self._text = {}
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
