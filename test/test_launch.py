"""launch/segment.launch.py and config/gdino.rviz: static checks always, a real launch run when ROS's
``launch``/``launch_ros`` are importable (they are not on PyPI, so CI machines run only the static part).
"""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from rosharness import REPO_ROOT

LAUNCH_FILE = REPO_ROOT / "launch" / "segment.launch.py"
RVIZ_FILE = REPO_ROOT / "config" / "gdino.rviz"
EXPECTED_ARGUMENTS = {
    "model", "tokenizer", "device", "image_topic", "compressed_input", "input_qos", "prompt", "prompt_mode",
    "enable", "params_file", "namespace", "use_sim_time", "rviz", "fixed_frame",
    "depth", "depth_topic", "camera_info_topic", "tracking",
}


def _module_constants(path: Path) -> dict[str, Any]:
    """Top-level ``NAME = <literal>`` assignments of a Python file, read without importing it."""
    constants = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return constants


def _string_pairs(path: Path) -> set[tuple[str, str]]:
    """Every two-element tuple of string constants or f-strings in the file (remapping rules)."""
    pairs = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Tuple) and len(node.elts) == 2:
            if isinstance(node.elts[0], ast.Constant) and isinstance(node.elts[0].value, str):
                second = node.elts[1]
                pairs.add((node.elts[0].value, ast.unparse(second)))
    return pairs


def _rviz_image_topics() -> dict[str, str]:
    config = yaml.safe_load(RVIZ_FILE.read_text())
    displays = config["Visualization Manager"]["Displays"]
    return {d["Name"]: d["Topic"]["Value"] for d in displays if d["Class"] == "rviz_default_plugins/Image"}


def test_launch_file_declares_the_documented_arguments() -> None:
    constants = _module_constants(LAUNCH_FILE)
    assert set(constants["ARGUMENTS"]) == EXPECTED_ARGUMENTS
    for name, (default, description, choices) in constants["ARGUMENTS"].items():
        assert isinstance(default, str) and description, name
        assert not choices or default in choices, name
    assert constants["ARGUMENTS"]["use_sim_time"][0] == "false"
    assert constants["ARGUMENTS"]["rviz"][0] == "false"


def test_launch_arguments_set_real_parameters_with_their_declared_choices() -> None:
    """An argument that overrides a parameter names it and offers its choices ("" keeps params_file's)."""
    from gdino_ros.node.parameters import PARAMETERS

    constants = _module_constants(LAUNCH_FILE)
    arguments = constants["ARGUMENTS"]
    for argument, parameter in constants["PARAMETER_OF"].items():
        setting = PARAMETERS[parameter]
        default, _, choices = arguments[argument]
        assert default == "", f"{argument} must leave params_file's value unless given"
        if setting.choices:
            assert choices == ("", *setting.choices), argument
        elif setting.kind is bool:
            assert choices == ("", "true", "false") and argument in constants["BOOLEANS"], argument
    start_up_only = {name for name, setting in PARAMETERS.items() if setting.read_only}
    assert start_up_only <= set(constants["PARAMETER_OF"].values()), "a start-up setting has no argument"


def test_rviz_fixed_frame_is_not_a_map_frame_and_the_launch_can_change_it() -> None:
    config = yaml.safe_load(RVIZ_FILE.read_text())
    fixed = config["Visualization Manager"]["Global Options"]["Fixed Frame"]
    constants = _module_constants(LAUNCH_FILE)
    assert fixed == constants["ARGUMENTS"]["fixed_frame"][0] and fixed not in ("map", "odom", "world")
    assert '"-f", args["fixed_frame"]' in LAUNCH_FILE.read_text()


def test_launch_file_starts_the_installed_executable_of_this_package() -> None:
    constants = _module_constants(LAUNCH_FILE)
    package_name = re.search(r"<name>(\w+)</name>", (REPO_ROOT / "package.xml").read_text()).group(1)
    assert constants["PACKAGE"] == package_name
    cmake = (REPO_ROOT / "CMakeLists.txt").read_text()
    assert f'"{constants["EXECUTABLE"]}:gdino_ros.node"' in cmake
    assert re.search(r"install\(DIRECTORY launch config DESTINATION share/\$\{PROJECT_NAME\}\)", cmake)


def test_launch_file_uses_files_that_exist_in_config() -> None:
    text = LAUNCH_FILE.read_text()
    for name in re.findall(r"/config/([\w.]+)", text):
        assert (REPO_ROOT / "config" / name).is_file(), name
    assert "params.yaml" in text and "gdino.rviz" in text


def test_rviz_config_shows_overlay_mask_and_camera_and_launch_remaps_each() -> None:
    topics = set(_rviz_image_topics().values())
    assert topics == {"/gdino/overlay", "/gdino/mask", "/image"}
    remapped = {source for source, _ in _string_pairs(LAUNCH_FILE)}
    assert topics <= remapped, "every RViz topic must follow the launch's namespace and image_topic"


def test_node_subscribes_to_the_names_the_launch_remaps() -> None:
    node_source = (REPO_ROOT / "gdino_ros" / "node" / "segment_node.py").read_text()
    remapped = {source for source, _ in _string_pairs(LAUNCH_FILE)}
    assert {"image", "image/compressed"} <= remapped
    assert '"image"' in node_source and '"image/compressed"' in node_source


def _import_launch_file() -> Any:
    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _installed(name: str) -> bool:
    """A regular package of that name is importable (the repository's launch/ folder does not count)."""
    spec = importlib.util.find_spec(name)
    return spec is not None and spec.origin is not None


@pytest.mark.skipif(
    not (_installed("launch") and _installed("launch_ros")),
    reason="ROS 2 'launch'/'launch_ros' are not installed (no PyPI wheels); the static checks cover the file",
)
@pytest.mark.parametrize("rviz", ["false", "true"])
def test_launch_description_builds_the_nodes(rviz: str) -> None:
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import Node

    description = _import_launch_file().generate_launch_description()
    declared = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    assert {a.name for a in declared} == EXPECTED_ARGUMENTS
    context = LaunchContext()
    for argument in declared:
        context.launch_configurations[argument.name] = argument.default_value[0].perform(context)
    context.launch_configurations.update(
        model="/m.onnx", image_topic="/rgb", namespace="cam1", rviz=rviz, prompt="cup", enable="false"
    )
    (opaque,) = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    nodes = [a for a in opaque.execute(context) if isinstance(a, Node)]
    assert [n.node_executable for n in nodes] == ["segment_node"] + (["rviz2"] if rviz == "true" else [])
    assert nodes[0].node_package == "gdino_ros"
    prompt_mode = next(a for a in declared if a.name == "prompt_mode")
    assert prompt_mode.choices == ["", "auto", "phrases", "expression"]
