"""Start gdino_ros's segment_node, and RViz with the overlay and the mask if asked.

    ros2 launch gdino_ros segment.launch.py model:=/path/to/model.onnx \
        image_topic:=/camera/color/image_raw prompt:="cup . bottle ."
    # Isaac Sim (ROS2 Camera Helper defaults: topic /rgb, simulation clock on /clock):
    ros2 launch gdino_ros segment.launch.py model:=/path/to/model.onnx image_topic:=/rgb use_sim_time:=true
    # 3-D from a RealSense's aligned depth (Isaac Sim: depth_topic:=/depth camera_info_topic:=/camera_info):
    ros2 launch gdino_ros segment.launch.py model:=/path/to/model.onnx depth:=true \
        image_topic:=/camera/camera/color/image_raw camera_info_topic:=/camera/camera/color/camera_info \
        depth_topic:=/camera/camera/aligned_depth_to_color/image_raw
    ros2 launch gdino_ros segment.launch.py --show-args      # every argument, its default and choices

Parameters come from params_file (default: this package's config/params.yaml); an argument left empty
keeps params_file's value, one that is given overrides it. `prompt` sets the parameter initial_prompt
and `enable` the parameter enabled.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "gdino_ros"
EXECUTABLE = "segment_node"

# name -> (default, description, choices). Empty choices: any value.
ARGUMENTS = {
    "model": ("", "Model file: .onnx (gdino-export), .engine (gdino-build-engine) or TAO .pth", ()),
    "tokenizer": ("", "bert-base-uncased vocab.txt or tokenizer folder (empty: params_file's value)", ()),
    "device": ("", "auto, cpu, cuda or cuda:N (empty: params_file's value)", ()),
    "image_topic": (
        "image", "Camera topic: sensor_msgs/Image, or <topic>/compressed with compressed_input", ()
    ),
    "compressed_input": (
        "", "true: subscribe to <image_topic>/compressed (empty: params_file's value)", ("", "true", "false")
    ),
    "input_qos": (
        "", "Image subscription QoS (empty: params_file's value)", ("", "sensor_data", "reliable")
    ),
    "prompt": (
        "", "Streaming prompt at start-up, e.g. 'cup . bottle .' (parameter initial_prompt); change it "
        "later on gdino/prompt", ()
    ),
    "prompt_mode": (
        "", "How prompts are read (empty: params_file's value)", ("", "auto", "phrases", "expression")
    ),
    "enable": (
        "", "false: start without processing frames (parameter enabled; empty: params_file's value)",
        ("", "true", "false"),
    ),
    "depth": (
        "", "true: 3-D from registered depth, gdino/detections_3d and gdino/points (parameter depth; empty: "
        "params_file's value)", ("", "true", "false"),
    ),
    "depth_topic": ("depth", "Depth image registered to the colour camera (16UC1 mm or 32FC1 m)", ()),
    "camera_info_topic": ("camera_info", "The colour camera's sensor_msgs/CameraInfo", ()),
    "tracking": (
        "", "false: no track ids (Detection2D.id stays empty; empty: params_file's value)",
        ("", "true", "false"),
    ),
    "params_file": ("", "Parameter YAML (empty: the package's config/params.yaml)", ()),
    "namespace": ("", "Namespace of the node and its gdino/* topics (one per camera)", ()),
    "use_sim_time": (
        "false", "Use the /clock topic (true for Isaac Sim and bag playback)", ("true", "false")
    ),
    "rviz": (
        "false", "Also open RViz with config/gdino.rviz (camera image, overlay, mask)", ("true", "false")
    ),
    "fixed_frame": (
        "camera_link", "RViz fixed frame: a TF frame your camera publishes (the images need none)", ()
    ),
}
# Launch argument -> node parameter, for the arguments that override params_file when given.
PARAMETER_OF = {
    "model": "model",
    "tokenizer": "tokenizer",
    "device": "device",
    "compressed_input": "compressed_input",
    "input_qos": "input_qos",
    "prompt": "initial_prompt",
    "prompt_mode": "prompt_mode",
    "enable": "enabled",
    "depth": "depth",
    "tracking": "tracking",
}
BOOLEANS = {"compressed_input", "enable", "depth", "tracking", "use_sim_time", "rviz"}


def _value(name: str, text: str):
    return text == "true" if name in BOOLEANS else text


def _actions(context, *_):
    args = {name: context.launch_configurations[name] for name in ARGUMENTS}
    share = FindPackageShare(PACKAGE).perform(context)
    overrides = {
        parameter: _value(name, args[name]) for name, parameter in PARAMETER_OF.items() if args[name]
    }
    overrides["use_sim_time"] = _value("use_sim_time", args["use_sim_time"])
    namespace = args["namespace"].strip("/")
    image_topic = args["image_topic"]
    actions = [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            namespace=namespace,
            parameters=[args["params_file"] or f"{share}/config/params.yaml", overrides],
            remappings=[("image", image_topic), ("image/compressed", f"{image_topic}/compressed"),
                        ("depth", args["depth_topic"]), ("camera_info", args["camera_info_topic"])],
            output="screen",
            emulate_tty=True,
        )
    ]
    if _value("rviz", args["rviz"]):
        prefix = f"/{namespace}" if namespace else ""
        absolute_image = image_topic if image_topic.startswith("/") else f"{prefix}/{image_topic}"
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="gdino_rviz",
                arguments=["-d", f"{share}/config/gdino.rviz", "-f", args["fixed_frame"]],
                parameters=[{"use_sim_time": overrides["use_sim_time"]}],
                # config/gdino.rviz names /gdino/overlay, /gdino/mask and /image.
                remappings=[
                    ("/gdino/overlay", f"{prefix}/gdino/overlay"),
                    ("/gdino/mask", f"{prefix}/gdino/mask"),
                    ("/image", absolute_image),
                ],
            )
        )
    return actions


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments; the nodes are built once their values are known."""
    declared = [
        DeclareLaunchArgument(
            name, default_value=default, description=text, **({"choices": list(choices)} if choices else {})
        )
        for name, (default, text, choices) in ARGUMENTS.items()
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_actions)])
