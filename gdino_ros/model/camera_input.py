"""Camera-input graphs: the image preprocessing moved into the exported ONNX (gdino-export --camera-input).

The float graph's image input (``inputs``, float32 [1, 3, H, W], normalised) becomes an internal tensor
computed from a new ``inputs``: the camera's uint8 RGB pixels, [1, h, w, 3] with a dynamic h and w. The
prepended nodes do what :func:`gdino_ros.core.preprocess.preprocess` does on the CPU: ``Cast`` to float,
``Transpose`` to NCHW, ``Resize`` to the network's H x W (bilinear, half-pixel centres, no antialiasing:
``F.interpolate(mode="bilinear", align_corners=False)``, and OpenCV's INTER_LINEAR geometry), then
``x * 1/(255 std) - mean/std`` per channel. Under TensorRT the GPU does this, so the node's CPU only copies
the camera's bytes. The nodes run in FP32 in every export: an FP16 export converts the network first and
adds these nodes afterwards, so its first FP16 layer gets the same FP32 tensor a float-input FP16 export
gets (a resize in FP16 would round values near 255 to 1/8 grey level before the network sees them).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gdino_ros import contract

SCOPE = "/camera_input"  # node-name prefix of the preprocessing nodes (bench_model.py --stages groups it)
_NORMALISED = f"{SCOPE}/normalised"  # the float graph's image tensor, now computed inside the graph


def add_camera_input(model: onnx.ModelProto, input_hw: tuple[int, int]) -> None:
    """Turn the float-input ``model`` (network size ``input_hw``) into a camera-input model, in place."""
    graph = model.graph
    image = next(value for value in graph.input if value.name == contract.INPUT_IMAGE)
    for node in graph.node:
        node.input[:] = [_NORMALISED if name == contract.INPUT_IMAGE else name for name in node.input]
    height, width = input_hw
    constants: dict[str, np.ndarray] = {
        f"{SCOPE}/sizes": np.array([contract.BATCH_SIZE, 3, height, width], np.int64),
        f"{SCOPE}/scale": np.array(contract.IMAGE_SCALE, np.float32).reshape(1, 3, 1, 1),
        f"{SCOPE}/offset": np.array(contract.IMAGE_OFFSET, np.float32).reshape(1, 3, 1, 1),
    }
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    nodes = [
        helper.make_node("Cast", [contract.INPUT_IMAGE], [f"{SCOPE}/float"], name=f"{SCOPE}/Cast",
                         to=TensorProto.FLOAT),
        helper.make_node("Transpose", [f"{SCOPE}/float"], [f"{SCOPE}/nchw"], name=f"{SCOPE}/Transpose",
                         perm=[0, 3, 1, 2]),
        helper.make_node("Resize", [f"{SCOPE}/nchw", "", "", f"{SCOPE}/sizes"], [f"{SCOPE}/resized"],
                         name=f"{SCOPE}/Resize", mode="linear", coordinate_transformation_mode="half_pixel"),
        helper.make_node("Mul", [f"{SCOPE}/resized", f"{SCOPE}/scale"], [f"{SCOPE}/scaled"],
                         name=f"{SCOPE}/Mul"),
        helper.make_node("Add", [f"{SCOPE}/scaled", f"{SCOPE}/offset"], [_NORMALISED], name=f"{SCOPE}/Add"),
    ]
    kept = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *kept])
    graph.value_info.append(helper.make_tensor_value_info(
        _NORMALISED, TensorProto.FLOAT, [contract.BATCH_SIZE, 3, height, width]))
    image.CopyFrom(helper.make_tensor_value_info(
        contract.INPUT_IMAGE, TensorProto.UINT8,
        [contract.BATCH_SIZE, contract.CAMERA_HEIGHT_AXIS, contract.CAMERA_WIDTH_AXIS, 3]))
