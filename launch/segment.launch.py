"""Start gdino_ros's segment_node, and RViz with the overlay and the mask if asked.

    ros2 launch gdino_ros segment.launch.py model:=/path/to/model.onnx \
        image_topic:=/camera/color/image_raw prompt:="cup . bottle ."
    # Isaac Sim (ROS2 Camera Helper defaults: topic /rgb, simulation clock on /clock):
    ros2 launch gdino_ros segment.launch.py model:=/path/to/model.onnx image_topic:=/rgb use_sim_time:=true

Every other parameter comes from params_file (default: this package's config/params.yaml); model, prompt
and prompt_mode override it only when given.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "gdino_ros"
EXECUTABLE = "segment_node"

# name -> (default, description). An empty model/prompt/prompt_mode leaves params_file's value in place.
ARGUMENTS = {
    "model": ("", "Model file: .onnx (gdino-export), .engine (gdino-build-engine) or TAO .pth"),
    "image_topic": ("image", "Camera topic: sensor_msgs/Image, or <topic>/compressed with compressed_input"),
    "prompt": ("", "Prompt for the first frame, e.g. 'cup . bottle .'; change it later on gdino/prompt"),
    "prompt_mode": ("", "auto, phrases or expression (empty: params_file's value)"),
    "params_file": ("", "Parameter YAML (empty: the package's config/params.yaml)"),
    "namespace": ("", "Namespace of the node and its gdino/* topics (one per camera)"),
    "use_sim_time": ("false", "Use the /clock topic (true for Isaac Sim and bag playback)"),
    "rviz": ("false", "Also open RViz with config/gdino.rviz (camera image, overlay, mask)"),
}


def _is_true(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


def _actions(context, *_):
    args = {name: context.launch_configurations[name] for name in ARGUMENTS}
    share = FindPackageShare(PACKAGE).perform(context)
    overrides = {name: args[name] for name in ("model", "prompt", "prompt_mode") if args[name]}
    overrides["use_sim_time"] = _is_true(args["use_sim_time"])
    namespace = args["namespace"].strip("/")
    image_topic = args["image_topic"]
    actions = [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            namespace=namespace,
            parameters=[args["params_file"] or f"{share}/config/params.yaml", overrides],
            remappings=[("image", image_topic), ("image/compressed", f"{image_topic}/compressed")],
            output="screen",
            emulate_tty=True,
        )
    ]
    if _is_true(args["rviz"]):
        prefix = f"/{namespace}" if namespace else ""
        absolute_image = image_topic if image_topic.startswith("/") else f"{prefix}/{image_topic}"
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                name="gdino_rviz",
                arguments=["-d", f"{share}/config/gdino.rviz"],
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
        DeclareLaunchArgument(name, default_value=default, description=text)
        for name, (default, text) in ARGUMENTS.items()
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_actions)])
