"""gdino_ros: TAO Mask Grounding DINO for ROS 2.

The ROS-free core (``gdino_ros.core``, ``gdino_ros.backends``, ``gdino_ros.model``, the tools) imports
without rclpy. ``gdino_ros.node`` is the rclpy adapter.
"""
from pkgutil import extend_path

# rosidl generates ``gdino_ros.msg`` into the install prefix, not into this source tree; joining the
# package path lets a source checkout that comes first on sys.path still import the built messages.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
