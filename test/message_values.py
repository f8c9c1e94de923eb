"""Messages of any framework (rclpy, rosbags, mcap_ros2's decoder) as plain nested values, to compare them."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


def plain(msg: Any) -> Any:
    """Nested dicts/lists of Python values; NaN becomes 'nan' so that equal messages compare equal."""
    if hasattr(msg, "get_fields_and_field_types"):  # rclpy
        names = list(msg.get_fields_and_field_types())
    elif dataclasses.is_dataclass(msg):  # rosbags (constants and __msgtype__ are ClassVars)
        names = [f.name for f in dataclasses.fields(msg) if not str(f.type).startswith("ClassVar")]
    elif hasattr(type(msg), "__slots__") and not isinstance(msg, (str, bytes)):  # mcap_ros2 decoder
        names = list(type(msg).__slots__)
    elif isinstance(msg, float) and math.isnan(msg):
        return "nan"
    elif isinstance(msg, (list, tuple)):
        return [plain(m) for m in msg]
    elif isinstance(msg, np.ndarray) or type(msg).__name__ == "array":
        return plain(np.asarray(msg).tolist())
    elif isinstance(msg, (bytes, bytearray, memoryview)):
        return list(bytes(msg))
    else:
        return msg
    return {name: plain(getattr(msg, name)) for name in names}
