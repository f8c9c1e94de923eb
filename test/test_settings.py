"""One declaration per setting: the node's parameters, config/params.yaml and every tool's flags agree.

Each setting's name, type, range, default and help are declared once (gdino_ros.settings); these tests
check that the generated forms (ROS descriptors, argparse flags) and the hand-written params.yaml hold
exactly the declared values, and that the flags reach the Segmenter.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import pytest
import skimage.data
import yaml
from model_fixtures import make_contract_onnx
from rosharness import REPO_ROOT

from gdino_ros.core.postprocess import PostprocessParams
from gdino_ros.errors import UsageError
from gdino_ros.settings import DEVICE, Setting, settings_of
from gdino_ros.tools import evaluate, segment
from gdino_ros.tools.arguments import postprocess_params
from gdino_ros.tools.bag import cli as bag_cli

THRESHOLD_FLAGS = ["--box-threshold", "--nms-threshold", "--text-threshold", "--max-detections",
                   "--mask-threshold"]
PARSERS = {"gdino-segment": segment.build_parser, "gdino-eval": evaluate.build_parser,
           "gdino-bag": bag_cli.build_parser}


def test_params_yaml_holds_exactly_the_declared_parameters() -> None:
    from gdino_ros.node.parameters import PARAMETERS

    config = yaml.safe_load((REPO_ROOT / "config" / "params.yaml").read_text())
    declared = config["/**"]["ros__parameters"]
    assert declared == {name: setting.default for name, setting in PARAMETERS.items()}
    for name, value in declared.items():
        assert type(value) is PARAMETERS[name].kind, name  # 1 is not 1.0 to rclpy
        assert PARAMETERS[name].problem(value) is None, name
        assert PARAMETERS[name].help, name


def test_thresholds_have_the_user_facing_names_and_tao_defaults() -> None:
    from gdino_ros import contract

    thresholds = {s.name: s for s in settings_of(PostprocessParams)}
    assert set(thresholds) == {"box_threshold", "text_threshold", "nms_threshold", "mask_threshold",
                               "max_detections"}
    params = PostprocessParams()
    assert params.box_threshold == contract.CONF_THRESHOLD == thresholds["box_threshold"].default
    assert all(getattr(params, name) == s.default for name, s in thresholds.items())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"box_threshold": 1.5}, "box_threshold must be within [0, 1], got 1.5."),
        ({"mask_threshold": 1.0}, "mask_threshold must be within (0, 1), got 1.0."),
        ({"max_detections": 0}, "max_detections must be within [1, 65535], got 0."),
        ({"nms_threshold": "0.2"}, "nms_threshold must be a number, got '0.2'."),
        ({"max_detections": 2.5}, "max_detections must be an integer, got 2.5."),
    ],
)
def test_postprocess_params_refuse_bad_values_naming_the_setting(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as error:
        PostprocessParams(**changes)
    assert str(error.value) == message


def test_setting_problem_covers_type_choices_and_both_range_kinds() -> None:
    closed = Setting("x", 0.5, "x.", low=0.0, high=1.0)
    opened = Setting("y", 0.5, "y.", low=0.0, high=1.0, open_range=True)
    choice = Setting("z", "a", "z.", choices=("a", "b"))
    flag = Setting("w", True, "w.")
    assert closed.problem(0.0) is None and closed.problem(1) is None and closed.problem(1.01)
    assert opened.problem(0.0) and opened.problem(1.0) and opened.problem(0.01) is None
    assert choice.problem("b") is None and choice.problem("c") == "z must be one of a, b, got 'c'"
    assert flag.problem(False) is None and flag.problem(1) and closed.problem(True)
    assert closed.describe() == "x. Range [0, 1]." and choice.describe() == "z. One of: a, b."


def test_node_descriptors_carry_help_ranges_and_read_only() -> None:
    from gdino_ros.node.parameters import PARAMETERS, descriptor

    box = descriptor(PARAMETERS["box_threshold"])
    assert [(r.from_value, r.to_value) for r in box.floating_point_range] == [(0.0, 1.0)]
    assert "Range [0, 1]" in box.description and not box.read_only
    detections = descriptor(PARAMETERS["max_detections"])
    assert [(r.from_value, r.to_value, r.step) for r in detections.integer_range] == [(1, 65535, 1)]
    assert not detections.floating_point_range
    encoding = descriptor(PARAMETERS["mask_encoding"])
    assert "One of: auto, mono8, mono16" in encoding.description
    assert not encoding.floating_point_range and not encoding.integer_range
    assert descriptor(PARAMETERS["model"]).read_only and descriptor(PARAMETERS["device"]).read_only


@pytest.mark.parametrize("tool", PARSERS)
def test_every_tool_has_the_same_device_and_threshold_flags(tool: str) -> None:
    parser = PARSERS[tool]()
    options = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    for declared in (DEVICE, *settings_of(PostprocessParams)):
        action = options[declared.flag]
        assert action.dest == declared.name and action.default == declared.default, declared.flag
        assert declared.help in action.help
    required = [a for a in parser._actions if a.required]
    argv = [arg for a in required for arg in (a.option_strings[0], a.choices[0] if a.choices else "x")]
    args = parser.parse_args([*argv, "--box-threshold", "0.45", "--max-detections", "7", "--device", "cpu"])
    assert postprocess_params(args) == PostprocessParams(box_threshold=0.45, max_detections=7)
    assert args.device == "cpu"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--box-threshold", "1.5", "box_threshold must be within [0, 1], got 1.5"),
        ("--mask-threshold", "0", "mask_threshold must be within (0, 1), got 0.0"),
        ("--max-detections", "many", "max_detections must be an integer, got 'many'"),
    ],
)
def test_out_of_range_flag_is_refused_by_argparse_naming_the_setting(
    capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        segment.main(["--model", "m.onnx", "--prompt", "cup", "--image", "a.png", flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"gdino-segment: error: argument {flag}: {message}"


def test_gdino_segment_applies_the_threshold_flags(
    tmp_path: Path, vocab_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The small graph gives every query the same box: NMS keeps one, without NMS max_detections caps."""
    model = make_contract_onnx(tmp_path / "model.onnx", input_hw=(64, 96), rela=False)
    photo = tmp_path / "coffee.png"
    assert cv2.imwrite(str(photo), cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR))

    def detections(*flags: str) -> int:
        out = tmp_path / "-".join(flags or ("defaults",))
        argv = ["--model", str(model), "--prompt", "cup . cat", "--tokenizer", str(vocab_path), "--image",
                str(photo), "--out", str(out), "--device", "cpu", *flags]
        assert segment.main(argv) == 0, capsys.readouterr().err
        (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        return len(record["detections"])

    assert detections() == 1
    assert detections("--nms-threshold", "0") > 2
    assert detections("--nms-threshold", "0", "--max-detections", "2") == 2


def test_gdino_eval_hands_device_and_thresholds_to_the_segmenter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from refer_fixtures import write_photo_datasets

    from gdino_ros.core.segmenter import Segmenter

    root = tmp_path / "data"
    write_photo_datasets(root)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"never loaded")
    seen: dict[str, Any] = {}

    def from_model(path: Path, **kwargs: Any) -> Segmenter:
        seen.update(kwargs, path=path)
        raise UsageError("stopped by the test")

    monkeypatch.setattr(Segmenter, "from_model", staticmethod(from_model))
    argv = ["--model", str(model), "--dataset", "refcoco", "--data-root", str(root), "--out",
            str(tmp_path / "r.json"), "--device", "cuda:1", "--box-threshold", "0.6", "--nms-threshold", "0"]
    assert evaluate.main(argv) == 2
    assert "stopped by the test" in capsys.readouterr().err
    assert seen["device"] == "cuda:1"
    assert seen["params"] == PostprocessParams(box_threshold=0.6, nms_threshold=0.0)


def test_argparse_group_is_shared_not_copied() -> None:
    """No tool declares a threshold or --device flag of its own: the sources name none."""
    for module in ("segment.py", "evaluate.py", "bag/cli.py"):
        source = (REPO_ROOT / "gdino_ros" / "tools" / module).read_text()
        for flag in [*THRESHOLD_FLAGS, "--device"]:
            assert f'"{flag}"' not in source, (module, flag)
