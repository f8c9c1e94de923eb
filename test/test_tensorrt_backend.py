"""The real TensorRT backend, run on a CPU through the test doubles in ``test/fakes``.

A fake engine runs the tiny network's ONNX graph with ONNX Runtime when the fake GPU's stream runs it,
and the fake GPU runs queued work only when the host waits for it. So the backend's results equal ONNX
Runtime's only if every upload, execution, download and wait is where it must be; two tests apply a
mutation (a removed wait, a skipped text upload) and check that the comparison then fails.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import skimage.data
from fakes import Fakes, install
from fakes.cuda_runtime import Properties, cudaError_t
from fakes.tensorrt_runtime import VERSION, write_engine
from model_fixtures import TinyModel, static_text_copy

from gdino_ros import contract
from gdino_ros.backends import BackendError, open_backend
from gdino_ros.backends.cuda import read_l4t_release, select_gpu
from gdino_ros.backends.engine_meta import BuildKey, BuildRecord, file_sha256, write_record
from gdino_ros.backends.tensorrt import TensorRTBackend
from gdino_ros.core.postprocess import PostprocessParams, postprocess
from gdino_ros.core.prompt import encode_prompt
from gdino_ros.core.result import Result
from gdino_ros.core.segmenter import Segmenter
from gdino_ros.core.tokenizer import load_tokenizer

# Random weights give low, close scores; thresholds low enough that detections survive to be compared.
PARAMS = PostprocessParams(box_threshold=0.05, text_threshold=0.05, max_detections=20)
IMAGES = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
PROMPTS = [("person . rocket . flag", "phrases"), ("the woman in the white space suit", "expression"),
           ("cat . cup", "phrases")]
# (prompt index, image index) per frame: the prompt changes mid-stream, also right after a frame started.
SCHEDULE = [(0, 0), (0, 1), (1, 0), (1, 2), (2, 2), (2, 1), (0, 0), (1, 1), (1, 0), (2, 0)]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    installed = install(monkeypatch)
    yield installed
    assert installed.gpu.violations == []


@pytest.fixture(scope="session")
def variants(tiny_model_files: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny network as exported (5 outputs), without the ReLA outputs, and with an FP16 image input."""
    folder = tmp_path_factory.mktemp("trt_variants")
    model = onnx.load(str(tiny_model_files.onnx))
    three = onnx.ModelProto()
    three.CopyFrom(model)
    for output in [o for o in three.graph.output if o.name not in contract.OUTPUT_NAMES]:
        three.graph.output.remove(output)
    onnx.save(three, folder / "three.onnx")
    half = onnx.ModelProto()
    half.CopyFrom(model)
    for node in half.graph.node:
        node.input[:] = ["image_f32" if name == contract.INPUT_IMAGE else name for name in node.input]
    half.graph.node.insert(0, onnx.helper.make_node("Cast", [contract.INPUT_IMAGE], ["image_f32"],
                                                    to=onnx.TensorProto.FLOAT))
    next(i for i in half.graph.input if i.name == contract.INPUT_IMAGE).type.tensor_type.elem_type = (
        onnx.TensorProto.FLOAT16)
    onnx.save(half, folder / "half.onnx")
    return {"rela": tiny_model_files.onnx, "three": folder / "three.onnx", "half": folder / "half.onnx"}


@pytest.fixture(scope="module")
def tokenizer(vocab_path: Path) -> Any:
    return load_tokenizer(vocab_path)


def digest(result: Result) -> tuple[Any, ...]:
    """Everything a result says, exactly (masks and label image by hash)."""
    detections = tuple((d.instance_id, d.label, d.phrase_index, d.score, d.box_xyxy,
                        hashlib.sha256(np.packbits(d.mask)).hexdigest()) for d in result.detections)
    return (result.prompt, result.mode, result.no_target, result.no_target_probability, detections,
            hashlib.sha256(result.label_image.tobytes()).hexdigest())


def prompt_changes(index: int) -> bool:
    """Whether frame ``index`` of :data:`SCHEDULE` has another prompt than the frame before."""
    return index == 0 or SCHEDULE[index][0] != SCHEDULE[index - 1][0]


def reference(onnx_path: Path, tokenizer: Any) -> list[tuple[Any, ...]]:
    """ONNX Runtime's results for :data:`SCHEDULE`, one frame at a time."""
    with Segmenter(open_backend(onnx_path, "cpu"), tokenizer, params=PARAMS) as segmenter:
        results = []
        for index, (prompt, image) in enumerate(SCHEDULE):
            if prompt_changes(index):
                segmenter.set_prompt(*PROMPTS[prompt])
            results.append(digest(segmenter(IMAGES[image])))
    assert any(r[4] for r in results), "nothing detected: nothing to compare"
    return results


def streamed(segmenter: Segmenter) -> list[tuple[Any, ...]]:
    """:data:`SCHEDULE` through :meth:`Segmenter.stream`: each prompt is set just before its frame starts,
    while the previous frame is still in flight."""
    def frames() -> Iterator[np.ndarray]:
        for index, (prompt, image) in enumerate(SCHEDULE):
            if prompt_changes(index):
                segmenter.set_prompt(*PROMPTS[prompt])
            yield IMAGES[image]
    return [digest(result) for result in segmenter.stream(frames())]


def open_engine(fakes: Fakes, onnx_path: Path, folder: Path, **options: bool) -> TensorRTBackend:
    engine = write_engine(onnx_path, folder / "model.engine", **options)
    backend = open_backend(engine, "cuda")
    assert isinstance(backend, TensorRTBackend)
    return backend


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "options"), [
    ("rela", {}),
    ("rela", {"dynamic_batch": True, "int32_ids": True}),
    ("three", {"dynamic_batch": True}),
    ("half", {"int32_ids": True}),
])
def test_results_equal_onnxruntime_with_prompt_switches(
    fakes: Fakes, variants: dict[str, Path], tokenizer: Any, tmp_path: Path, variant: str,
    options: dict[str, bool],
) -> None:
    expected = reference(variants[variant], tokenizer)
    with Segmenter(open_engine(fakes, variants[variant], tmp_path, **options), tokenizer,
                   params=PARAMS) as segmenter:
        assert streamed(segmenter) == expected
        serial = []
        for index, (prompt, image) in enumerate(SCHEDULE):
            if prompt_changes(index):
                segmenter.set_prompt(*PROMPTS[prompt])
            serial.append(digest(segmenter(IMAGES[image])))
        assert serial == expected
    assert fakes.gpu.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}
    assert fakes.gpu.pending() == 0


def test_infer_returns_every_output_like_onnxruntime(fakes: Fakes, variants: dict[str, Path],
                                                     tokenizer: Any, tmp_path: Path) -> None:
    text = tokenizer_inputs(tokenizer)
    with open_backend(variants["rela"], "cpu") as ort, open_engine(fakes, variants["rela"], tmp_path) as trt:
        image = np.random.default_rng(0).standard_normal((1, 3, *ort.input_hw)).astype(np.float32)
        expected, got = ort.infer(image, text), trt.infer(image, text)
    assert list(got) == list(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def tokenizer_inputs(tokenizer: Any) -> dict[str, np.ndarray]:
    return encode_prompt(*PROMPTS[0], tokenizer).text_inputs()


def mutated(function: Any, drop: str) -> Any:
    """``function`` recompiled from its source without the lines that contain ``drop`` (a mutation)."""
    source = textwrap.dedent(inspect.getsource(function))
    lines = source.splitlines(keepends=True)
    kept = [line for line in lines if drop not in line]
    assert len(kept) < len(lines), f"{drop!r} is not in {function.__qualname__}"
    namespace: dict[str, Any] = {}
    code = compile("".join(kept), inspect.getfile(function), "exec")
    exec(code, vars(inspect.getmodule(function)), namespace)
    return namespace[function.__name__]


def upload_first_prompt_only(backend: TensorRTBackend, text_inputs: dict[str, np.ndarray]) -> None:
    """``_set_text`` that, after the first prompt, rewrites the page-locked text but never uploads it."""
    if not hasattr(backend, "_first_prompt_sent"):
        backend._first_prompt_sent = True  # type: ignore[attr-defined]
        ORIGINAL_SET_TEXT(backend, text_inputs)
    else:
        mutated(ORIGINAL_SET_TEXT, "self._stream.upload(")(backend, text_inputs)


ORIGINAL_SET_TEXT = TensorRTBackend._set_text
MUTATIONS = {
    # Post-processing reads the small outputs without waiting for the engine and the downloads.
    "no wait for the engine": (
        "_read_outputs", mutated(TensorRTBackend._read_outputs, 'out.ready.synchronize("engine execution")')),
    # A prompt change after the first leaves the device with the old text.
    "no text upload after a prompt change": ("_set_text", upload_first_prompt_only),
    # A prompt change rewrites the page-locked text while the frame in flight has not uploaded its own.
    "no wait before a prompt change": (
        "_set_text", mutated(TensorRTBackend._set_text, "self._stream.synchronize(")),
}


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [True, False])
def test_each_prompt_runs_at_its_own_length_and_a_static_engine_at_256(
    fakes: Fakes, variants: dict[str, Path], tokenizer: Any, tmp_path: Path, dynamic: bool,
) -> None:
    """Prompts of three lengths, longer and shorter in turn: an engine with a dynamic token axis runs each
    at its own length (the real tokens and one padding token), one built from a static-256 ONNX at 256;
    both equal ONNX Runtime on the same ONNX bit for bit."""
    onnx_path = variants["rela"] if dynamic else static_text_copy(variants["rela"], tmp_path)
    image = np.random.default_rng(3).standard_normal((1, 3, 128, 224)).astype(np.float32)
    prompts = [encode_prompt(*PROMPTS[i], tokenizer) for i in (0, 1, 2, 0)]
    with open_backend(onnx_path, "cpu") as ort, open_engine(fakes, onnx_path, tmp_path) as trt:
        assert trt.dynamic_text is ort.dynamic_text is dynamic
        lengths = []
        for prompt in prompts:
            text = prompt.text_inputs()
            expected, got = ort.infer(image, text), trt.infer(image, text)
            for name, value in expected.items():
                np.testing.assert_array_equal(got[name], value, err_msg=name)
            lengths.append(trt._context.get_tensor_shape(contract.INPUT_IDS)[1])
            assert trt._context.get_tensor_shape(contract.TEXT_TOKEN_MASK)[1:] == (lengths[-1],) * 2
    wanted = [prompt.num_tokens + 1 for prompt in prompts] if dynamic else [contract.MAX_TEXT_LEN] * 4
    assert lengths == wanted and (len(set(lengths)) == 3 or not dynamic)


@pytest.mark.slow
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_missing_wait_or_upload_makes_the_results_differ(
    fakes: Fakes, variants: dict[str, Path], tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    mutation: str,
) -> None:
    method, replacement = MUTATIONS[mutation]
    monkeypatch.setattr(TensorRTBackend, method, replacement)
    expected = reference(variants["rela"], tokenizer)
    failure = None
    with Segmenter(open_engine(fakes, variants["rela"], tmp_path), tokenizer, params=PARAMS) as segmenter:
        try:
            got = streamed(segmenter)
        except BackendError as error:
            failure = str(error)
    if failure is None:
        assert got != expected
    elif "cudaErrorLaunchFailure" in failure:
        # A longer prompt read from never-written device memory: garbage token ids make the engine fail.
        # The context is then lost (a sticky error on a real GPU), so the frees after it are not checked.
        assert any("indices element out of data bounds" in f for f in fakes.gpu.launch_failures)
        fakes.gpu.violations.clear()
    else:
        assert "NaN" in failure  # unset memory may read as NaN, which the backend reports


def test_the_next_frame_is_queued_before_the_previous_one_is_post_processed(
    fakes: Fakes, variants: dict[str, Path], tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gdino_ros.core.segmenter as segmenter_module

    queued_at_postprocess: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Result:
        queued_at_postprocess.append(fakes.trt.enqueued)
        return postprocess(*args, **kwargs)

    monkeypatch.setattr(segmenter_module, "postprocess", counting)
    with Segmenter(open_engine(fakes, variants["rela"], tmp_path), tokenizer, params=PARAMS) as segmenter:
        segmenter.set_prompt(*PROMPTS[0])
        list(segmenter.stream(IMAGES))
        assert queued_at_postprocess == [2, 3, 3]  # frame N+1 queued before frame N is post-processed
        queued_at_postprocess.clear()
        for image in IMAGES:
            segmenter(image)
        assert queued_at_postprocess == [4, 5, 6]


def test_only_the_kept_mask_planes_are_copied_to_the_host(
    fakes: Fakes, variants: dict[str, Path], tokenizer: Any, tmp_path: Path
) -> None:
    params = PostprocessParams(box_threshold=0.05, text_threshold=0.05, max_detections=20, ioi_threshold=0)
    with Segmenter(open_engine(fakes, variants["rela"], tmp_path), tokenizer, params=params) as segmenter:
        segmenter.set_prompt(*PROMPTS[0])
        before = fakes.gpu.d2h_bytes
        result = segmenter(IMAGES[0])
        copied = fakes.gpu.d2h_bytes - before
        sets = segmenter.backend._sets  # type: ignore[attr-defined]
    small = sum(buffer.nbytes for buffer in sets[0].host.values())
    plane = int(np.prod(sets[0].mask_shape[3:])) * 4
    assert result.detections
    assert copied == small + len(result.detections) * plane
    assert copied < sets[0].device[contract.PRED_MASKS].nbytes


def test_nan_outputs_name_fp16_overflow_and_the_fix(fakes: Fakes, variants: dict[str, Path], tokenizer: Any,
                                                    tmp_path: Path) -> None:
    fakes.trt.nan_outputs = True
    with Segmenter(open_engine(fakes, variants["rela"], tmp_path, precision="fp16"), tokenizer) as segmenter:
        segmenter.set_prompt(*PROMPTS[0])
        with pytest.raises(BackendError, match=r"\(fp16\) output NaN in 'pred_logits': FP16 overflowed.*"
                                               r"gdino-export --precision fp16.*without --fp16"):
            segmenter(IMAGES[0])


def test_close_waits_for_a_frame_that_is_reading_its_outputs(
    fakes: Fakes, variants: dict[str, Path], tokenizer: Any, tmp_path: Path
) -> None:
    text = tokenizer_inputs(tokenizer)
    image = np.random.default_rng(0).standard_normal((1, 3, 128, 224)).astype(np.float32)
    with open_backend(variants["rela"], "cpu") as ort:
        expected = ort.infer(image, text)
    backend = open_engine(fakes, variants["rela"], tmp_path)
    frame = backend.submit(image, text)
    hold = fakes.gpu.hold_after_event_sync = threading.Event()
    read: dict[str, np.ndarray] = {}
    reader = threading.Thread(target=lambda: read.update(frame.outputs()))
    reader.start()
    fakes.gpu.holding.wait()  # the reader has waited for the GPU and is about to copy the page-locked outputs
    closer = threading.Thread(target=backend.close)
    closer.start()
    closer.join(0.5)
    still_waiting = closer.is_alive()
    hold.set()
    reader.join()
    closer.join()
    assert still_waiting, "close() freed the buffers while a frame was reading them"
    np.testing.assert_array_equal(read[contract.PRED_LOGITS], expected[contract.PRED_LOGITS])
    with pytest.raises(BackendError, match="has been closed"):
        frame.masks.planes(np.arange(3))
    frame.close()
    assert fakes.gpu.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}


@pytest.mark.parametrize("failure", ["execute", "download"])
def test_a_failed_frame_leaves_nothing_queued_and_the_next_frame_works(
    fakes: Fakes, variants: dict[str, Path], tokenizer: Any, tmp_path: Path, failure: str
) -> None:
    with Segmenter(open_backend(variants["rela"], "cpu"), tokenizer, params=PARAMS) as ort:
        ort.set_prompt(*PROMPTS[0])
        expected = digest(ort(IMAGES[0]))
    with Segmenter(open_engine(fakes, variants["rela"], tmp_path), tokenizer, params=PARAMS) as segmenter:
        segmenter.set_prompt(*PROMPTS[0])
        segmenter(IMAGES[1])
        if failure == "execute":
            fakes.trt.execute_fails = True
            message = "TensorRT could not enqueue the engine"
        else:
            fakes.gpu.fail("cudaMemcpyAsync", 2)  # 1: the image upload, 2: the first download after execute
            message = r"cudaMemcpyAsync \(download of pred_logits\) failed with cudaErrorInvalidValue"
        with pytest.raises(BackendError, match=message):
            segmenter(IMAGES[0])
        assert fakes.gpu.pending() == 0
        fakes.trt.execute_fails = False
        assert digest(segmenter(IMAGES[0])) == expected


@pytest.mark.slow
def test_a_failing_allocation_in_init_frees_everything_before(fakes: Fakes, variants: dict[str, Path],
                                                               tmp_path: Path) -> None:
    engine = write_engine(variants["rela"], tmp_path / "model.engine")
    open_backend(engine, "cuda").close()
    calls = dict(fakes.gpu._calls)
    functions = ["cudaMalloc", "cudaMallocHost", "cudaStreamCreateWithFlags", "cudaEventCreateWithFlags"]
    assert all(calls[f] > 0 for f in functions)
    for function in functions:
        for call in range(1, calls[function] + 1):
            fakes.gpu.fail(function, call, cudaError_t.cudaErrorMemoryAllocation)
            expected = f"CUDA {function}.* failed with cudaErrorMemoryAllocation"
            with pytest.raises(BackendError, match=expected):
                open_backend(engine, "cuda")
            assert fakes.gpu.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}, (function, call)


def test_out_of_memory_context_is_explained(fakes: Fakes, variants: dict[str, Path], tmp_path: Path) -> None:
    fakes.trt.out_of_memory = True
    with pytest.raises(BackendError, match="execution context .* out of memory .* Stop other GPU programs"):
        open_engine(fakes, variants["rela"], tmp_path)
    assert fakes.gpu.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}


@pytest.mark.parametrize("built_with", [{"tensorrt_version": "10.16.1.11"}, {"gpu_name": "NVIDIA H100 PCIe"}])
def test_engine_from_another_tensorrt_or_gpu_says_how_to_rebuild(
    fakes: Fakes, variants: dict[str, Path], tmp_path: Path, built_with: dict[str, str]
) -> None:
    engine = write_engine(variants["rela"], tmp_path / "model.engine", **built_with)  # type: ignore[arg-type]
    content = engine.read_bytes()
    expected = (r"TensorRT 10\.3\.0 could not deserialise .*model\.engine.*only loads on the TensorRT "
                r"version and GPU model it was built with.*gdino-build-engine --onnx .* --output .*engine")
    with pytest.raises(BackendError, match=expected):
        open_backend(engine, "cuda")
    assert engine.read_bytes() == content  # nothing rebuilt or overwritten


def test_old_tensorrt_and_missing_plugins_are_explained(
    fakes: Fakes, variants: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = write_engine(variants["rela"], tmp_path / "model.engine")
    fakes.trt.plugins_ok = False
    with pytest.raises(BackendError, match=r"plugin library \(libnvinfer_plugin\) is missing.*apt-get"):
        open_backend(engine, "cuda")
    fakes.trt.version = "8.6.1"
    fakes.reinstall(monkeypatch)
    with pytest.raises(BackendError, match="TensorRT 8.6.1 is too old: this backend needs TensorRT 10"):
        open_backend(engine, "cuda")


@pytest.mark.parametrize("hidden", [("tensorrt",), ("cuda", "cuda.bindings", "cuda.bindings.runtime")])
def test_missing_packages_give_one_clear_message(
    fakes: Fakes, variants: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    hidden: tuple[str, ...],
) -> None:
    engine = write_engine(variants["rela"], tmp_path / "model.engine")
    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)  # makes the import raise ModuleNotFoundError
    expected = ("TensorRT's Python package is not installed" if hidden == ("tensorrt",)
                else r"cuda-python is not installed.*cuda-python>=12\.6\.2\.post1")
    with pytest.raises(BackendError, match=expected):
        open_backend(engine, "cuda")


def test_select_gpu_names_the_cuda_error_and_identifies_jetsons(
    fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes.gpu.fail("cudaGetDeviceCount", 1, cudaError_t.cudaErrorNoDevice)
    with pytest.raises(BackendError, match="cudaGetDeviceCount failed with cudaErrorNoDevice"):
        select_gpu(0)
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    monkeypatch.setattr("gdino_ros.backends.cuda.L4T_RELEASE_FILE", release)
    identities = set()
    for sms, memory in ((8, 7620), (8, 15655), (16, 62841)):  # Orin Nano 8GB, Orin NX 16GB, AGX Orin 64GB
        fakes.gpu.properties = Properties(name=b"Orin", multiProcessorCount=sms, totalGlobalMem=memory << 20,
                                          integrated=1)
        gpu = select_gpu(0)
        assert (gpu.name, gpu.compute_capability, gpu.l4t_release) == ("Orin", (8, 7), "36.4.0")
        identities.add(gpu.identity())
    assert identities == {"Orin sm_87 8SM 7620MiB L4T 36.4.0", "Orin sm_87 8SM 15655MiB L4T 36.4.0",
                          "Orin sm_87 16SM 62841MiB L4T 36.4.0"}
    assert read_l4t_release(tmp_path / "absent") is None


def test_engine_recorded_for_another_jetson_is_refused_with_the_rebuild_command(
    fakes: Fakes, variants: dict[str, Path], tmp_path: Path
) -> None:
    engine = write_engine(variants["rela"], tmp_path / "model.engine", gpu_name="Orin")
    fakes.gpu.properties = Properties(name=b"Orin", multiProcessorCount=8, totalGlobalMem=7620 << 20,
                                      integrated=1)
    here = select_gpu(0).identity()
    nx = here.replace("7620MiB", "15655MiB")
    onnx_file = variants["rela"]
    key = BuildKey.create(file_sha256(onnx_file), VERSION, nx, "fp16", [])
    record = BuildRecord(key, str(onnx_file), onnx_file.stat().st_size, onnx_file.stat().st_mtime_ns,
                         file_sha256(engine), "fp16", 1.0)
    write_record(engine, record)
    with pytest.raises(BackendError, match=f"it was built on .*15655MiB.*this GPU.*7620MiB.*Rebuild it: "
                                           f"gdino-build-engine --onnx {onnx_file} --output {engine} --fp16"):
        open_backend(engine, "cuda")
    write_record(engine, dataclasses.replace(record, key=dataclasses.replace(key, gpu=here)))
    open_backend(engine, "cuda").close()  # the same record with this GPU's identity loads
