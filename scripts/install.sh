#!/usr/bin/env bash
# Create .venv at the repository root and install everything objembed_ros needs, from nothing:
# Python dependencies, ROS 2 Kilted wheels, the objembed_msgs interfaces (built from msg/ with
# CMake through pip) and objembed_ros itself (editable). Idempotent: a stamp file records the
# inputs, so a second run with nothing changed returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}

stamp_inputs() {
  cat requirements.txt requirements-ros.txt objembed_ros/setup.py objembed_ros/package.xml scripts/install.sh
  find msg -type f -not -path '*/build/*' | sort | xargs cat
}
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)
if [ -f "$VENV/.objembed-installed" ] && [ "$(cat "$VENV/.objembed-installed")" = "$want" ]; then
  exit 0
fi

start=$(date +%s)
# The ros-wheels-bootstrapper .pth re-execs Python with LD_LIBRARY_PATH set and a guard variable;
# a guard inherited from another interpreter would skip that step for the venv's Python.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q -r requirements.txt -r requirements-ros.txt

# objembed_msgs: an ament_cmake package; CMake must find the ROS packages in the venv prefix.
export AMENT_PREFIX_PATH="$VENV"
export CMAKE_PREFIX_PATH="$VENV"
rm -rf msg/objembed_msgs/build
"$VENV/bin/python" -m pip install -q --no-build-isolation --force-reinstall --no-deps ./msg/objembed_msgs
rm -rf msg/objembed_msgs/build
# compat mode: a plain path entry, so a checkout-root sys.path entry (python -m pytest) cannot
# shadow the package with the objembed_ros/ package folder as a namespace package.
"$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps \
  --config-settings editable_mode=compat -e ./objembed_ros

"$VENV/bin/python" -c "import objembed_msgs.msg, rclpy, torch, transformers" \
  || { echo "install.sh: the installed environment does not import" >&2; exit 1; }
echo "$want" > "$VENV/.objembed-installed"
echo "install.sh: .venv ready in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
