"""segment_node's own ``main()`` with an engine that takes seconds per frame, for the shutdown tests.

Run as ``python slow_segment_node.py SECONDS --ros-args ...``. The backend is the real one opened from
the model file; only its ``submit`` first prints ``frame in the engine`` (so a test knows a frame is in
flight) and sleeps SECONDS, as a full-size model on a CPU does inside ONNX Runtime.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import gdino_ros.core.segmenter as segmenter_module
from gdino_ros.node import main

_open_backend = segmenter_module.open_backend


def _slow_open_backend(*args: Any, **kwargs: Any) -> Any:
    backend = _open_backend(*args, **kwargs)
    submit = backend.submit

    def slow_submit(image: Any, text_inputs: Any) -> Any:
        print("frame in the engine", flush=True)
        time.sleep(FRAME_S)
        return submit(image, text_inputs)

    backend.submit = slow_submit
    return backend


if __name__ == "__main__":
    FRAME_S = float(sys.argv.pop(1))
    segmenter_module.open_backend = _slow_open_backend
    sys.exit(main())
