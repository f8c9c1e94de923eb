"""Backend selection, contract validation and text uploads, on small ONNX graphs with the contract's I/O."""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from model_fixtures import make_contract_onnx

from gdino_ros import contract
from gdino_ros.backends import BackendError, open_backend

HW = (64, 96)


def text_inputs(ids: list[int]) -> dict[str, np.ndarray]:
    """Contract-shaped text tensors whose input_ids start with ``ids``."""
    values = {
        contract.INPUT_IDS: np.zeros((1, 256), np.int64),
        contract.ATTENTION_MASK: np.zeros((1, 256), bool),
        contract.POSITION_IDS: np.zeros((1, 256), np.int64),
        contract.TOKEN_TYPE_IDS: np.zeros((1, 256), np.int64),
        contract.TEXT_TOKEN_MASK: np.eye(256, dtype=bool)[None],
    }
    values[contract.INPUT_IDS][0, : len(ids)] = ids
    values[contract.ATTENTION_MASK][0, : len(ids)] = True
    return values


def image(value: float = 0.0) -> np.ndarray:
    return np.full((1, 3, *HW), value, np.float32)


@pytest.fixture
def onnx_model(tmp_path: Path) -> Path:
    return make_contract_onnx(tmp_path / "model.onnx", input_hw=HW)


def test_onnx_backend_discovers_contract_io(onnx_model: Path) -> None:
    with open_backend(onnx_model, device="cpu") as backend:
        assert backend.name == "onnxruntime"
        assert backend.device == "cpu"
        assert backend.precision == "fp32"
        assert backend.input_hw == HW
        assert backend.input_dtype == np.float32
        assert backend.has_no_target_head
        assert backend.output_names == contract.RELA_OUTPUT_NAMES
        outputs = backend.infer(image(2.0), text_inputs([101, 7, 102]))
    assert set(outputs) == set(contract.RELA_OUTPUT_NAMES)
    assert outputs[contract.PRED_MASKS].shape == (1, 5, 1, HW[0] // 4, HW[1] // 4)
    assert outputs[contract.UNION_MASK_LOGITS].shape == (1, 2, HW[0] // 8, HW[1] // 8)
    np.testing.assert_array_equal(outputs[contract.PRED_LOGITS][0, 0, :4], [103.0, 9.0, 104.0, 2.0])


def test_three_output_model_has_no_no_target_head(tmp_path: Path) -> None:
    with open_backend(make_contract_onnx(tmp_path / "m.onnx", input_hw=HW, rela=False)) as backend:
        assert not backend.has_no_target_head
        assert backend.output_names == contract.OUTPUT_NAMES
        assert set(backend.infer(image(), text_inputs([101, 102]))) == set(contract.OUTPUT_NAMES)


def test_symbolic_batch_dimension_is_accepted(tmp_path: Path) -> None:
    shapes = {name: ["batch_size", *shape[1:]] for name, shape in
              {contract.INPUT_IMAGE: [1, 3, *HW], contract.INPUT_IDS: [1, 256]}.items()}
    with open_backend(make_contract_onnx(tmp_path / "m.onnx", input_hw=HW, shapes=shapes)) as backend:
        assert backend.input_hw == HW


def test_text_tensors_are_sent_only_when_the_object_changes(onnx_model: Path) -> None:
    with open_backend(onnx_model) as backend:
        first = text_inputs([101, 5, 102])
        assert backend.infer(image(), first)[contract.PRED_LOGITS][0, 0, 1] == 5.0
        # The same object again: the model keeps the tensors it already has, even if the caller
        # (wrongly) changed the array in place.
        first[contract.INPUT_IDS][0, 1] = 9
        assert backend.infer(image(), first)[contract.PRED_LOGITS][0, 0, 1] == 5.0
        # A new object is a new prompt.
        assert backend.infer(image(), text_inputs([101, 9, 102]))[contract.PRED_LOGITS][0, 0, 1] == 9.0


def test_concurrent_calls_each_run_with_their_own_prompt(onnx_model: Path) -> None:
    with open_backend(onnx_model) as backend:
        prompts = {token: text_inputs([101, token, 102]) for token in (11, 22, 33, 44)}
        wrong: list[tuple[int, float]] = []

        def worker(token: int) -> None:
            for _ in range(25):
                got = float(backend.infer(image(), prompts[token])[contract.PRED_LOGITS][0, 3, 1])
                if got != token:
                    wrong.append((token, got))

        threads = [threading.Thread(target=worker, args=(token,)) for token in prompts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert wrong == []


def test_wrong_input_and_output_names_are_named(tmp_path: Path) -> None:
    path = make_contract_onnx(
        tmp_path / "m.onnx", input_hw=HW, rename={contract.INPUT_IDS: "ids", contract.PRED_BOXES: "boxes"}
    )
    with pytest.raises(BackendError) as error:
        open_backend(path)
    message = str(error.value)
    assert "missing input(s) input_ids" in message
    assert "unexpected input(s) ids" in message
    assert "missing output(s) pred_boxes" in message
    assert "unexpected output(s) boxes" in message
    assert str(path) in message


def test_missing_output_is_named(tmp_path: Path) -> None:
    path = make_contract_onnx(tmp_path / "m.onnx", input_hw=HW, drop=(contract.UNION_MASK_LOGITS,))
    with pytest.raises(BackendError, match="missing output\\(s\\) union_mask_logits"):
        open_backend(path)


def test_wrong_dtype_is_named(tmp_path: Path) -> None:
    path = make_contract_onnx(tmp_path / "m.onnx", input_hw=HW,
                              dtypes={contract.ATTENTION_MASK: np.int64})
    with pytest.raises(BackendError, match="input 'attention_mask' is int64, the contract has bool"):
        open_backend(path)


def test_compatible_dtypes_are_cast(tmp_path: Path) -> None:
    path = make_contract_onnx(tmp_path / "m.onnx", input_hw=HW,
                              dtypes={contract.INPUT_IDS: np.int32, contract.INPUT_IMAGE: np.float16})
    with open_backend(path) as backend:
        assert backend.input_dtype == np.float16
        assert backend.precision == "fp16"
        logits = backend.infer(image().astype(np.float16), text_inputs([101, 3, 102]))[contract.PRED_LOGITS]
    assert logits[0, 0, 1] == 3.0


def test_batch_two_is_refused(tmp_path: Path) -> None:
    path = make_contract_onnx(tmp_path / "m.onnx", input_hw=HW, shapes={contract.INPUT_IDS: [2, 256]})
    with pytest.raises(BackendError, match="input 'input_ids' has shape 2x256.*batch size 1"):
        open_backend(path)


def test_dynamic_image_size_is_refused(tmp_path: Path) -> None:
    path = make_contract_onnx(tmp_path / "m.onnx", input_hw=HW,
                              shapes={contract.INPUT_IMAGE: [1, 3, "h", "w"]})
    with pytest.raises(BackendError, match="dynamic height or width.*fixed input size"):
        open_backend(path)


def test_wrong_mask_resolution_is_refused(tmp_path: Path) -> None:
    path = make_contract_onnx(tmp_path / "m.onnx", input_hw=HW,
                              shapes={contract.PRED_MASKS: [1, 5, 1, 8, 12]})
    expected = "output 'pred_masks' has shape 1x5x1x8x12, the contract has 1x\\?x1x16x24"
    with pytest.raises(BackendError, match=expected):
        open_backend(path)


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"x")
    with pytest.raises(BackendError, match="model.tflite.*\\.onnx.*\\.pth.*\\.engine"):
        open_backend(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="does not exist"):
        open_backend(tmp_path / "absent.onnx")


def test_corrupt_onnx(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"definitely not protobuf" * 10)
    with pytest.raises(BackendError, match="ONNX Runtime cannot load .*broken.onnx"):
        open_backend(path)


def test_bad_device_string(onnx_model: Path) -> None:
    with pytest.raises(BackendError, match="device 'gpu0'"):
        open_backend(onnx_model, device="gpu0")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has the CUDA provider; the test checks the message without it")
def test_cuda_without_cuda_provider(onnx_model: Path) -> None:
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        open_backend(onnx_model, device="cuda")


def test_input_size_cannot_be_changed_for_onnx(onnx_model: Path) -> None:
    with pytest.raises(BackendError, match="built for 64x96 images and cannot run at 128x224"):
        open_backend(onnx_model, input_hw=(128, 224))


def test_wrong_image_tensor_is_explained(onnx_model: Path) -> None:
    with open_backend(onnx_model) as backend:
        with pytest.raises(BackendError, match="preprocess with input_hw=\\(64, 96\\)"):
            backend.infer(np.zeros((1, 3, 32, 32), np.float32), text_inputs([101, 102]))


def test_incomplete_text_inputs_are_explained(onnx_model: Path) -> None:
    text = text_inputs([101, 102])
    del text[contract.TEXT_TOKEN_MASK]
    with open_backend(onnx_model) as backend:
        with pytest.raises(BackendError, match="text inputs lack text_token_mask"):
            backend.infer(image(), text)


def _real_tensorrt() -> bool:
    spec = importlib.util.find_spec("tensorrt")
    return spec is not None and spec.origin not in (None, "namespace")


@pytest.mark.skipif(_real_tensorrt(), reason="TensorRT is installed here; this checks the message without it")
def test_engine_without_tensorrt_says_how_to_get_it(tmp_path: Path) -> None:
    path = tmp_path / "model.engine"
    path.write_bytes(b"\0" * 64)
    expected = "TensorRT's Python package is not installed.*pip install \"tensorrt-cu12"
    with pytest.raises(BackendError, match=expected):
        open_backend(path)


def test_closed_backend_says_so(onnx_model: Path) -> None:
    backend = open_backend(onnx_model)
    backend.close()
    backend.close()  # repeated close is harmless
    with pytest.raises(BackendError, match="has been closed"):
        backend.infer(image(), text_inputs([101, 102]))

