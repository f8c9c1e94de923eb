"""Camera-input models (gdino-export --camera-input): the preprocessing inside the graph.

What is compared with what, and why:

* The exported camera-input graph against PyTorch running the float network on the same stretch-resize
  done in torch (``F.interpolate(mode="bilinear", align_corners=False)``, then /255 and mean/std), at
  several camera sizes, within test_export's ORT-vs-PyTorch tolerance: the graph's Resize (linear,
  half_pixel) is that resize.
* The in-graph preprocessing against the CPU path (:func:`gdino_ros.core.preprocess.preprocess`, OpenCV's
  fixed-point uint8 resize) on real photos: within one grey level. The network outputs of the two paths
  are not compared with each other: on the tiny random-weight network, 0.76 grey level of input
  difference already changes which proposals the top-k query selection keeps (measured 0.5-1.1 of each
  query output's scale on scikit-image's photos), so no tolerance there would mean anything. A Segmenter
  on the camera-input ONNX is compared instead with the float-input ONNX of the same weights fed the
  torch resize, within the ORT-vs-PyTorch tolerance.
* The TensorRT backend (test doubles in ``test/fakes``) against ONNX Runtime on the same camera-input
  ONNX, bit for bit, with the camera size and the prompt changing between frames.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skimage.data
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention
from fakes import Fakes, cuda_modules, install
from fakes.cuda_runtime import FakeGpu
from fakes.tensorrt_runtime import write_engine
from fakes.trt_builder import make_tensorrt
from model_fixtures import TinyModel, make_contract_onnx
from onnx import TensorProto, helper
from test_export import _assert_outputs_close
from test_tensorrt_backend import PARAMS, digest

from gdino_ros import contract
from gdino_ros.backends import BackendError, open_backend
from gdino_ros.backends.cuda import GpuInfo
from gdino_ros.backends.tensorrt import TensorRTBackend
from gdino_ros.core.model_metadata import read_onnx_metadata
from gdino_ros.core.precision_check import compare_backends
from gdino_ros.core.preprocess import preprocess
from gdino_ros.core.prompt import encode_prompt
from gdino_ros.core.segmenter import Segmenter
from gdino_ros.core.tokenizer import load_tokenizer
from gdino_ros.model.camera_input import SCOPE, add_camera_input
from gdino_ros.model.checkpoint import build_model
from gdino_ros.model.config import MaskGDINOConfig
from gdino_ros.model.export import MSDA_GRID_SAMPLE, MSDA_PLUGIN, export_onnx
from gdino_ros.tools import build_engine
from gdino_ros.tools import export as export_cli

PHOTOS = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
PROMPT = ("person . cup . cat", "phrases")
GPU = GpuInfo(index=0, name="Orin", compute_capability=(8, 7), sm_count=8, total_memory=7620 << 20,
              integrated=True, l4t_release="36.4.3")


@pytest.fixture(scope="module")
def tokenizer(vocab_path: Path) -> Any:
    return load_tokenizer(vocab_path)


@pytest.fixture(scope="module")
def camera_onnx(tiny_model_files: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny network's float export with the camera input added (what --camera-input writes)."""
    model = onnx.load(str(tiny_model_files.onnx))
    metadata = read_onnx_metadata(tiny_model_files.onnx)
    height, width = int(metadata[contract.META_INPUT_HEIGHT]), int(metadata[contract.META_INPUT_WIDTH])
    add_camera_input(model, (height, width))
    path = tmp_path_factory.mktemp("camera") / "camera.onnx"
    onnx.save(model, path)
    return path


def torch_preprocess(image: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """The stretch-resize and normalisation done in torch: the reference for the graph's."""
    mean = torch.tensor(contract.IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(contract.IMAGE_STD).view(1, 3, 1, 1)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    resized = F.interpolate(pixels, size=input_hw, mode="bilinear", align_corners=False)
    return ((resized / 255 - mean) / std).numpy()


def camera_image(height: int, width: int, seed: int) -> np.ndarray:
    """A photo stretched to the camera size, with noise so that every pixel matters."""
    photo = cv2.resize(PHOTOS[seed % len(PHOTOS)], (width, height), interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(seed).integers(-20, 21, photo.shape)
    return np.clip(photo.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def preprocessing_graph(input_hw: tuple[int, int]) -> ort.InferenceSession:
    """The camera-input nodes alone: a float-input graph that returns its image, then converted."""
    image = helper.make_tensor_value_info(contract.INPUT_IMAGE, TensorProto.FLOAT, [1, 3, *input_hw])
    output = helper.make_tensor_value_info("normalised", TensorProto.FLOAT, [1, 3, *input_hw])
    graph = helper.make_graph([helper.make_node("Identity", [contract.INPUT_IMAGE], ["normalised"])],
                              "preprocess", [image], [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", contract.ONNX_OPSET)])
    add_camera_input(model, input_hw)
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("input_hw", [(128, 224), (544, 960)])
def test_in_graph_preprocessing_is_torchs_resize_and_within_a_grey_level_of_opencv(
    input_hw: tuple[int, int],
) -> None:
    session = preprocessing_graph(input_hw)
    grey = 255 * np.array(contract.IMAGE_STD, np.float32).reshape(1, 3, 1, 1)  # one grey level, normalised
    for photo in [*PHOTOS, camera_image(61, 83, 0), camera_image(1080, 1920, 1)]:
        (graph,) = session.run(None, {contract.INPUT_IMAGE: photo[None]})
        assert graph.shape == (1, 3, *input_hw) and graph.dtype == np.float32
        # Float rounding of the sampling positions (float32 scales) moves values by up to 0.02 grey level.
        assert np.abs(graph - torch_preprocess(photo, input_hw)).max() * grey.max() < 0.05
        levels = np.abs(graph - preprocess(photo, input_hw)) * grey
        assert levels.max() < 1.0 and levels.mean() < 0.3, (levels.max(), levels.mean())


@pytest.mark.slow
def test_exported_camera_graph_equals_pytorch_on_the_torch_resize(tmp_path: Path, tokenizer: Any) -> None:
    path = tmp_path / "camera.onnx"
    code = export_cli.main(["--random-init", "--config", "tiny", "--msda", "grid-sample", "--camera-input",
                            "--output", str(path)])
    assert code == 0
    torch.manual_seed(0)  # the weights gdino-export --random-init builds
    config = MaskGDINOConfig.tiny()
    model = build_model(config).eval()
    assert read_onnx_metadata(path)[contract.META_IMAGE_INPUT] == contract.IMAGE_INPUT_CAMERA
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image_input = session.get_inputs()[0]
    assert (image_input.name, image_input.type) == (contract.INPUT_IMAGE, "tensor(uint8)")
    assert image_input.shape == [1, contract.CAMERA_HEIGHT_AXIS, contract.CAMERA_WIDTH_AXIS, 3]
    text = encode_prompt(*PROMPT, tokenizer).text_inputs()
    short = {name: value[:, :8, :8] if name == contract.TEXT_TOKEN_MASK else value[:, :8]
             for name, value in text.items()}  # the dynamic text axis still works
    names = config.output_names
    for seed, (height, width) in enumerate([(61, 83), (480, 640), (720, 1280)]):
        image = camera_image(height, width, seed)
        got = session.run(None, {contract.INPUT_IMAGE: image[None], **short})
        tensor = torch.from_numpy(torch_preprocess(image, (config.input_height, config.input_width)))
        with torch.no_grad():
            want = model(tensor, *(torch.from_numpy(short[name]) for name in contract.TEXT_INPUT_NAMES))
        _assert_outputs_close(names, got, [output.numpy() for output in want])


@pytest.mark.slow
def test_fp16_and_plugin_exports_keep_the_preprocessing_in_fp32(tmp_path: Path, tokenizer: Any) -> None:
    torch.manual_seed(0)
    config = MaskGDINOConfig.tiny()
    model = build_model(config).eval()
    paths = {}
    for name, msda, camera in [("camera", MSDA_GRID_SAMPLE, True), ("float", MSDA_GRID_SAMPLE, False),
                               ("plugin", MSDA_PLUGIN, True)]:
        paths[name] = tmp_path / f"{name}.onnx"
        export_onnx(model, config, paths[name], source=contract.RANDOM_INIT_SOURCE, msda=msda,
                    precision="fp16", camera_input=camera)
    for name in ("camera", "plugin"):
        graph = onnx.load(str(paths[name])).graph
        scope = [node for node in graph.node if node.name.startswith(SCOPE)]
        assert [node.op_type for node in scope] == ["Cast", "Transpose", "Resize", "Mul", "Add"]
        assert next(a.i for a in scope[0].attribute if a.name == "to") == TensorProto.FLOAT
        typed = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
        assert all(typed.get(node.output[0], TensorProto.FLOAT) == TensorProto.FLOAT for node in scope)
        assert graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    plugin_ops = {node.op_type for node in onnx.load(str(paths["plugin"])).graph.node}
    assert contract.MSDA_PLUGIN_OP in plugin_ops
    # The FP16 network gets the same FP32 tensor whether the graph or the caller preprocessed it.
    text = encode_prompt(*PROMPT, tokenizer).text_inputs()
    input_hw = (config.input_height, config.input_width)
    (tensor,) = preprocessing_graph(input_hw).run(None, {contract.INPUT_IMAGE: PHOTOS[1][None]})
    with open_backend(paths["camera"], "cpu") as camera, open_backend(paths["float"], "cpu") as flat:
        got, want = camera.infer(PHOTOS[1][None], text), flat.infer(tensor, text)
        _assert_outputs_close(camera.output_names, [got[n] for n in camera.output_names],
                              [want[n] for n in camera.output_names])


def raw_outputs(segmenter: Segmenter, image: np.ndarray, bgr: bool = False) -> dict[str, np.ndarray]:
    """The network outputs of one Segmenter frame (what post-processing gets)."""
    with segmenter.submit(image, bgr=bgr).frame as frame:
        return {name: value.copy() for name, value in frame.arrays().items()}


def test_segmenter_on_a_camera_input_onnx(
    camera_onnx: Path, tiny_model_files: TinyModel, tokenizer: Any
) -> None:
    camera = Segmenter(open_backend(camera_onnx, "cpu"), tokenizer, params=PARAMS)
    camera.set_prompt(*PROMPT)
    text = camera.prompt.text_inputs() if camera.prompt else {}
    assert camera.backend.camera_input and camera.backend.input_hw == (128, 224)
    assert camera.backend.input_dtype == np.uint8
    with camera, open_backend(tiny_model_files.onnx, "cpu") as flat:
        assert not flat.camera_input
        names = flat.output_names
        for photo in PHOTOS:
            got = raw_outputs(camera, photo)
            want = flat.infer(torch_preprocess(photo, flat.input_hw), text)
            _assert_outputs_close(names, [got[n] for n in names], [want[n] for n in names])
            # BGR, and the strided views a camera message gives, are the same pixels.
            bgr = np.ascontiguousarray(photo[..., ::-1])
            rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
            padded = np.zeros((photo.shape[0], photo.shape[1] + 7, 3), np.uint8)
            padded[:, : photo.shape[1]] = photo
            for variant, is_bgr in [(bgr, True), (rgba[..., :3], False), (padded[:, : photo.shape[1]], False),
                                    (rgba[..., 2::-1], True), (padded[:, : photo.shape[1], ::-1], True)]:
                same = raw_outputs(camera, variant, bgr=is_bgr)
                assert all(np.array_equal(same[n], got[n]) for n in names)
            # mono8 as the image conversion gives it: the grey channel repeated by a stride-0 view.
            grey = np.ascontiguousarray(photo[..., 1])
            repeated = raw_outputs(camera, np.broadcast_to(grey[..., None], photo.shape), bgr=True)
            want_grey = raw_outputs(camera, np.repeat(grey[..., None], 3, axis=2))
            assert all(np.array_equal(repeated[n], want_grey[n]) for n in names)
        result = camera(PHOTOS[0])
        assert result.label_image.shape == PHOTOS[0].shape[:2] and "preprocess" in result.timings_ms


def test_camera_input_images_that_are_refused(camera_onnx: Path, tokenizer: Any) -> None:
    with Segmenter(open_backend(camera_onnx, "cpu"), tokenizer) as segmenter:
        segmenter.set_prompt(*PROMPT)
        with pytest.raises(ValueError, match="at least 32"):
            segmenter(np.zeros((31, 64, 3), np.uint8))
        text = segmenter.prompt.text_inputs() if segmenter.prompt else {}
        with pytest.raises(BackendError, match=r"uint8 RGB pixels as \[1, height, width, 3\]"):
            segmenter.backend.infer(preprocess(PHOTOS[0], (128, 224)), text)
        with pytest.raises(BackendError, match="at least 32x32"):
            segmenter.backend.infer(np.zeros((1, 20, 64, 3), np.uint8), text)


def test_precision_check_feeds_a_camera_input_model_its_pixels(
    fakes: Fakes, camera_onnx: Path, tokenizer: Any, tmp_path: Path
) -> None:
    """gdino-build-engine --fp16's check compares a camera-input engine with its ONNX on the camera image."""
    engine = open_backend(write_engine(camera_onnx, tmp_path / "camera.engine"), "cuda")
    with open_backend(camera_onnx, "cpu") as reference, engine:
        report = compare_backends(reference, engine, PHOTOS[:2], [PROMPT[0]], tokenizer, params=PARAMS)
    assert report.detection_agreement == 1.0 and not any(report.nan_counts.values())
    assert all(largest == 0.0 for largest, _ in report.per_output.values())


# Frames of the TensorRT comparison: (prompt, camera height, width); size and prompt change mid-stream.
TRT_PROMPTS = [PROMPT, ("the woman in the white space suit", "expression")]
TRT_SCHEDULE = [(0, 512, 512), (0, 61, 83), (1, 720, 1280), (1, 720, 1280), (0, 400, 600), (1, 61, 83)]


def trt_frames(segmenter: Segmenter) -> Iterator[np.ndarray]:
    for index, (prompt, height, width) in enumerate(TRT_SCHEDULE):
        if index == 0 or prompt != TRT_SCHEDULE[index - 1][0]:
            segmenter.set_prompt(*TRT_PROMPTS[prompt])
        yield camera_image(height, width, index)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    installed = install(monkeypatch)
    yield installed
    assert installed.gpu.violations == []


def test_tensorrt_runs_camera_sizes_and_prompts_like_onnxruntime(
    fakes: Fakes, camera_onnx: Path, tokenizer: Any, tmp_path: Path
) -> None:
    with Segmenter(open_backend(camera_onnx, "cpu"), tokenizer, params=PARAMS) as reference:
        expected = [digest(reference(image)) for image in trt_frames(reference)]
    assert any(frame[4] for frame in expected), "nothing detected: nothing to compare"
    backend = open_backend(write_engine(camera_onnx, tmp_path / "camera.engine"), "cuda")
    assert isinstance(backend, TensorRTBackend) and backend.camera_input
    largest = contract.MAX_CAMERA_SIDE
    assert backend.max_camera_hw == (largest, largest)
    with Segmenter(backend, tokenizer, params=PARAMS) as segmenter:
        assert [digest(result) for result in segmenter.stream(trt_frames(segmenter))] == expected
        assert [digest(segmenter(image)) for image in trt_frames(segmenter)] == expected
        # Above the profile's largest image: one line naming the limit and what to do, nothing queued.
        queued = fakes.trt.enqueued
        with pytest.raises(ValueError, match=f"at most {largest}×{largest}.*downscale"):
            segmenter(np.zeros((40, largest + 1, 3), np.uint8))
        text = segmenter.prompt.text_inputs() if segmenter.prompt else {}
        with pytest.raises(BackendError, match=f"at most {largest}x{largest} .*resize the images to fit"):
            backend.infer(np.zeros((1, largest + 1, 40, 3), np.uint8), text)
        assert fakes.trt.enqueued == queued
        assert digest(segmenter(camera_image(61, 83, 5))) == expected[5]  # and it goes on
    assert fakes.gpu.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}


@pytest.mark.parametrize("camera", [True, False])
def test_build_profile_of_camera_input_and_float_input_onnx(
    camera: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_contract_onnx(tmp_path / "m.onnx", input_hw=(64, 96))
    if camera:
        model = onnx.load(str(path))
        add_camera_input(model, (64, 96))
        onnx.save(model, path)
    module, state = make_tensorrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    for name, fake_cuda in cuda_modules(FakeGpu()).items():
        monkeypatch.setitem(sys.modules, name, fake_cuda)
    monkeypatch.setattr(build_engine, "select_gpu", lambda index: GPU)
    code = build_engine.main(["--onnx", str(path), "--output", str(tmp_path / "m.engine")])
    assert code == 0, capsys.readouterr()
    side, largest = contract.MIN_IMAGE_SIDE, contract.MAX_CAMERA_SIDE
    want = ((1, side, side, 3), (1, 1080, 1920, 3), (1, largest, largest, 3)) if camera else (
        ((1, 3, 64, 96),) * 3)
    assert state.profile_ranges[contract.INPUT_IMAGE] == want
    assert ("camera images up to 4096x4096" in capsys.readouterr().err) is camera


def test_gdino_bag_counts_frames_outside_the_engine_sizes_by_kind() -> None:
    """gdino-bag skips (and counts) a frame a camera-input engine cannot take instead of failing the run."""
    from gdino_ros.core.preprocess import check_image
    from gdino_ros.tools.bag.job import _skip_kind

    kinds = []
    for image in (np.zeros((80, 90, 3), np.uint8), np.zeros((16, 90, 3), np.uint8)):
        with pytest.raises(ValueError) as error:
            check_image(image, max_hw=(64, 64))
        kinds.append(_skip_kind(error.value))
    assert kinds == ["too large", "too small"]
