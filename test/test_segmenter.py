"""Segmenter on ONNX Runtime with a small contract-I/O graph: prompts, thresholds, timings, thread safety.

The graph puts the box centre at x = input_ids[0, 1] / 10000 of the image width (see
``model_fixtures.make_contract_onnx``), so every Result shows which prompt the model really ran with.
"""
from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import make_contract_onnx

from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.core.prompt import PromptError
from gdino_ros.core.result import Result
from gdino_ros.core.segmenter import Segmenter

IMAGE = np.random.default_rng(7).integers(0, 256, (48, 80, 3), dtype=np.uint8)


@pytest.fixture
def segmenter(tmp_path: Path, vocab_path: Path) -> Segmenter:
    model = make_contract_onnx(tmp_path / "model.onnx", input_hw=(64, 96), rela=False)
    return Segmenter.from_model(model, tokenizer_path=vocab_path, device="cpu", prompt="cat")


def first_token_seen(result: Result, width: int) -> int:
    """The input_ids[0, 1] the model saw, read back from the (only) detection's box centre."""
    x0, _, x1, _ = result.detections[0].box_xyxy
    return round((x0 + x1) / 2 / width * 10000)


def test_segment_with_a_phrase_prompt(segmenter: Segmenter) -> None:
    cat = segmenter.tokenizer.convert_tokens_to_ids("cat")
    result = segmenter(IMAGE)
    assert result.prompt == "cat" and result.mode == "phrases"
    assert [d.label for d in result.detections] == ["cat"]  # 5 identical boxes, NMS keeps one
    assert first_token_seen(result, IMAGE.shape[1]) == cat
    assert result.label_image.shape == IMAGE.shape[:2] and result.label_image.dtype == np.uint8
    assert set(result.timings_ms) == {"preprocess", "inference", "postprocess"}
    assert all(value >= 0 for value in result.timings_ms.values())
    assert segmenter.backend.name == "onnxruntime" and segmenter.prompt_text == "cat"


def test_prompt_change_takes_effect_and_bad_prompt_keeps_the_old_one(segmenter: Segmenter) -> None:
    dog = segmenter.tokenizer.convert_tokens_to_ids("dog")
    encoded = segmenter.set_prompt("dog . car")
    assert encoded.phrases == ("dog", "car")
    result = segmenter(IMAGE)
    assert result.prompt == "dog . car" and first_token_seen(result, IMAGE.shape[1]) == dog
    with pytest.raises(PromptError):
        segmenter.set_prompt("   ")
    assert segmenter.prompt_text == "dog . car"
    assert segmenter(IMAGE).prompt == "dog . car"


def test_thresholds_change_at_runtime(segmenter: Segmenter) -> None:
    assert len(segmenter(IMAGE).detections) == 1
    params = PostprocessParams(nms_threshold=0.0)  # TAO skips NMS at 0: all 5 queries stay
    segmenter.set_params(params)
    assert segmenter.params is params
    assert len(segmenter(IMAGE).detections) == 5
    segmenter.set_params(PostprocessParams(nms_threshold=0.0, max_detections=2))
    assert len(segmenter(IMAGE).detections) == 2
    with pytest.raises(ValueError, match="box_threshold must be within"):
        segmenter.set_params(PostprocessParams(box_threshold=2.0))
    assert segmenter.params.max_detections == 2  # a rejected change leaves the thresholds as they were


def test_no_prompt_yet(tmp_path: Path, vocab_path: Path) -> None:
    model = make_contract_onnx(tmp_path / "model.onnx", rela=False)
    with Segmenter.from_model(model, tokenizer_path=vocab_path) as segmenter:
        assert segmenter.prompt is None and segmenter.prompt_text is None
        with pytest.raises(PromptError, match="No prompt is set"):
            segmenter(IMAGE)


def test_bad_image_is_explained(segmenter: Segmenter) -> None:
    with pytest.raises(ValueError, match="at least 32"):
        segmenter(np.zeros((16, 16, 3), np.uint8))


def test_each_frame_runs_with_one_prompt_while_another_thread_switches(segmenter: Segmenter) -> None:
    ids = {text: segmenter.tokenizer.convert_tokens_to_ids(text) for text in ("cat", "dog")}
    stop = threading.Event()
    switches = 0

    def switch() -> None:
        nonlocal switches
        pauses = random.Random(0)
        while not stop.is_set():
            segmenter.set_prompt("dog" if switches % 2 else "cat")
            switches += 1
            time.sleep(pauses.uniform(0.0, 0.002))  # vary the phase against the frames

    def both_prompts_seen_often() -> bool:
        # Under load the switcher thread may get few turns: keep segmenting until it has switched often.
        return switches > 10 and all(sum(prompt == text for prompt, _, _ in seen) >= 10 for text in ids)

    switcher = threading.Thread(target=switch)
    switcher.start()
    seen: list[tuple[str, str, int]] = []
    try:
        while len(seen) < 150 or (not both_prompts_seen_often() and len(seen) < 3000):
            result = segmenter(IMAGE)
            seen.append((result.prompt, result.detections[0].label, first_token_seen(result, IMAGE.shape[1])))
    finally:
        stop.set()
        switcher.join()
    assert switches > 10
    assert {prompt for prompt, _, _ in seen} == {"cat", "dog"}  # the switching really interleaved
    inconsistent = [s for s in seen if not (s[0] == s[1] and s[2] == ids[s[0]])]
    assert inconsistent == []
