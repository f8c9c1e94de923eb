"""gdino-export: write TAO's Mask Grounding DINO ONNX from a TAO checkpoint, without the TAO container.

Examples::

    gdino-export --checkpoint mask_gdino.pth --output mask_gdino.onnx
    gdino-export --checkpoint mask_gdino.pth --output mask_gdino_trt.onnx --msda plugin
    gdino-export --checkpoint mask_gdino.pth --output mask_gdino_fp16.onnx --msda plugin --precision fp16
    gdino-export --checkpoint mask_gdino.pth --output mask_gdino_camera.onnx --camera-input
    gdino-export --random-init --config tiny --output tiny.onnx      # untrained, for demos/tests
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gdino_ros import contract
from gdino_ros.errors import GdinoError, InputError, OutputError, UsageError
from gdino_ros.tools import cli
from gdino_ros.tools.output_files import write_failure

if TYPE_CHECKING:
    from gdino_ros.model.config import MaskGDINOConfig

PROG = "gdino-export"


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``gdino-export``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export Mask Grounding DINO to ONNX with TAO's engine interface (opset 17, batch 1).",
    )
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path, help="TAO .pth (Lightning), a bare state dict, or ours")
    weights.add_argument(
        "--random-init",
        action="store_true",
        help="untrained random weights (demos and tests only; recorded in the ONNX metadata)",
    )
    parser.add_argument("--output", type=Path, required=True, help="ONNX file to write")
    parser.add_argument(
        "--config",
        choices=("full", "tiny"),
        default="full",
        help="network size for --random-init: TAO's full model or the small test network (default: full)",
    )
    parser.add_argument("--height", type=int, help="input height, multiple of 32 (default: 544; tiny: 128)")
    parser.add_argument("--width", type=int, help="input width, multiple of 32 (default: 960; tiny: 224)")
    parser.add_argument(
        "--msda",
        choices=("grid-sample", "plugin"),
        help="deformable attention as ONNX GridSample (runs in ONNX Runtime) or as TensorRT's "
        "MultiscaleDeformableAttnPlugin_TRT node like TAO (TensorRT only). "
        "Default: plugin on a CUDA machine, grid-sample otherwise",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        default="fp32",
        help="fp16: mixed precision decided in the graph, for TensorRT's strongly typed engines: FP16 where "
        "it is safe, FP32 for BERT, LayerNorm, softmax and the deformable-attention sampling; inputs and "
        "outputs keep their types (default: fp32)",
    )
    parser.add_argument(
        "--fp32-layers",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="with --precision fp16: also keep the ONNX nodes whose names match these shell patterns in "
        "FP32, e.g. '/transformer/decoder/*'",
    )
    parser.add_argument(
        "--camera-input",
        action="store_true",
        help="the image input takes the camera's uint8 RGB pixels, [1, h, w, 3] of any size, and the graph "
        "resizes and normalises them (on the GPU under TensorRT). Not TAO's interface: TAO Deploy and "
        "Triton setups need the default float [1, 3, H, W] input",
    )
    parser.add_argument(
        "--log-scale",
        metavar="auto|none|FLOAT",
        help="the class head's log_scale. Default: read from the checkpoint (a learnable log_scale key), "
        "else 'auto' when it has class-embedding bias keys (the model card's spec), else none",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="bert-base-uncased vocab.txt or tokenizer directory to store in the model (default: found "
        "locally as every tool finds it; the stored copy lets the model run without this flag)",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a checkpoint that needs unrestricted unpickling (can run code from the file)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export; a user error prints one line and exits with its kind's code (gdino_ros.errors)."""
    args = build_parser().parse_args(argv)
    return cli.run(PROG, lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    if args.checkpoint is not None and args.config != "full":
        raise UsageError("--config only applies to --random-init")
    if args.random_init and args.log_scale is not None:
        raise UsageError("--log-scale only applies to --checkpoint (--random-init builds the model card's "
                         "spec, log_scale=auto)")
    if args.fp32_layers and args.precision != "fp16":
        raise UsageError("--fp32-layers only applies to --precision fp16")
    _check_output(args.output, args.checkpoint)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {message}", flush=True)

    try:
        return _export(args, say)
    except KeyboardInterrupt:
        return cli.interrupted(PROG, f"nothing was written ({args.output} is written only when complete)")
    except OSError as error:
        if error.filename is not None and Path(error.filename).resolve() != args.output.resolve():
            raise InputError(f"cannot read {error.filename}: {error.strerror or error}") from None
        raise write_failure(args.output, error, "nothing was written") from None
    except GdinoError:
        raise
    except ValueError as error:  # a setting out of range (--height, --width, ...), said by the config
        raise UsageError(str(error)) from None


def _check_output(output: Path, checkpoint: Path | None) -> None:
    """Refuse an output that is the checkpoint, or an existing file gdino-export did not write."""
    from gdino_ros.core.model_metadata import ModelMetadataError, read_onnx_metadata

    if checkpoint is not None and output.resolve() == checkpoint.resolve():
        raise OutputError(f"--output {output} is the checkpoint; choose another --output")
    if not output.exists() and not output.is_symlink():
        return
    try:
        ours = output.is_file() and contract.META_SOURCE in read_onnx_metadata(output)
    except (OSError, ModelMetadataError):
        ours = False
    if not ours:
        raise OutputError(f"{output} exists and is not an ONNX file gdino-export wrote; it is left as it is: "
                          "choose another --output")


def _export(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    import torch

    from gdino_ros.model.checkpoint import build_model, load_tao_checkpoint
    from gdino_ros.model.config import MaskGDINOConfig
    from gdino_ros.model.export import MSDA_PLUGIN, default_msda_mode, export_onnx

    output: Path = args.output
    if not output.parent.is_dir():
        raise OutputError(
            f"output folder {output.parent} does not exist; create it or choose another --output"
        )
    preset = MaskGDINOConfig.tiny() if args.config == "tiny" else MaskGDINOConfig.full()
    # Validate the size before any slow step; a checkpoint's own default comes from its inferred config.
    preset = _with_size(preset, args.height, args.width)
    msda = args.msda or default_msda_mode()
    if args.random_init:
        say(f"building an UNTRAINED {args.config} network with random weights (for demos and tests only)")
        torch.manual_seed(0)
        config = preset
        model = build_model(config)
        source = contract.RANDOM_INIT_SOURCE
    else:
        trust = args.trust_checkpoint
        checkpoint = load_tao_checkpoint(
            args.checkpoint, trust_checkpoint=trust, log_scale=args.log_scale, progress=say
        )
        config = _with_size(checkpoint.config, args.height, args.width)
        say(f"{checkpoint.metadata['format']} checkpoint, num_region_queries={config.num_region_queries}")
        say("building the network and loading the weights")
        model = build_model(config)
        model.load_state_dict(checkpoint.state_dict, strict=True)
        source = f"checkpoint {checkpoint.metadata['path']} sha256 {checkpoint.metadata['sha256']}"
    height, width = config.input_height, config.input_width
    outputs = ", ".join(config.output_names)
    image = "camera uint8 image in" if args.camera_input else "float image tensor in"
    say(f"exporting {height}x{width}, msda={msda}, {args.precision}, {image}, {config.head_spec}, "
        f"outputs: {outputs}")
    vocab = _vocabulary(args.tokenizer, say)
    export_onnx(model, config, output, source=source, msda=msda, precision=args.precision,
                fp32_layers=tuple(args.fp32_layers), vocab=vocab, camera_input=args.camera_input,
                progress=say)
    say(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB)")
    if args.random_init:
        print("NOTE: this ONNX has random, untrained weights; its detections are meaningless.")
    if msda == MSDA_PLUGIN:
        print(f"NOTE: this ONNX needs TensorRT's {contract.MSDA_PLUGIN_OP}; ONNX Runtime cannot run it.")
    return 0


def _vocabulary(tokenizer_path: Path | None, say: Callable[[str], None]) -> str | None:
    """Return the vocabulary to store with the model; without one found, the model needs --tokenizer."""
    from gdino_ros.core.tokenizer import TokenizerNotFoundError, load_tokenizer, vocabulary_text

    try:
        tokenizer = load_tokenizer(tokenizer_path)
    except TokenizerNotFoundError:
        if tokenizer_path is not None:
            raise
        print("NOTE: no bert-base-uncased vocabulary found on this machine, so none is stored in the model; "
              "the tools will need --tokenizer PATH (or pass --tokenizer here)")
        return None
    say("storing the bert-base-uncased vocabulary in the model")
    return vocabulary_text(tokenizer)


def _with_size(config: MaskGDINOConfig, height: int | None, width: int | None) -> MaskGDINOConfig:
    """Apply ``--height``/``--width`` where given (the config validates them)."""
    return config.replace(
        input_height=config.input_height if height is None else height,
        input_width=config.input_width if width is None else width,
    )


if __name__ == "__main__":
    sys.exit(main())
