#!/usr/bin/env bash
# The main job in one command, on a machine without ROS: set everything up, run segment_node for real
# (real rclpy, real DDS confined to 127.0.0.1), feed it a photo and a prompt from a second node, receive
# every output topic, write the overlay PNG and print the detections.
#   tools/demo.sh                              # no model: builds and uses an UNTRAINED full-size model
#   tools/demo.sh --model model.onnx --prompt "cup . bottle" --image photo.jpg
# Options are those of tools/demo.py (--help). Needs what tools/setup_env.sh needs.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

untrained=1
for arg in "$@"; do
  case "$arg" in --model|--model=*) untrained=0 ;; -h|--help) untrained=0 ;; esac
done
note="NOTE: no --model given: this demo builds and uses an UNTRAINED full-size model (random weights); the node, DDS and every topic are real, the detections are meaningless."
if ((untrained)); then
  echo "gdino_ros demo: $note"
  trap 'echo "$note"' EXIT  # the last line too, should the setup fail (demo.py prints it otherwise)
else
  echo "gdino_ros demo: using the model you gave."
fi

"$ROOT/tools/setup_env.sh"
trap - EXIT

# demo.py keeps DDS on the loopback interface itself (gdino_ros/loopback_dds.py).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$ROOT/.venv/bin/python" "$ROOT/tools/demo.py" "$@"
