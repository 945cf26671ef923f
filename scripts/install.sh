#!/usr/bin/env bash
# Create .venv at the repository root and install everything objembed_ros needs, from nothing:
# Python dependencies, ROS 2 Kilted wheels, colcon, the objembed_msgs interfaces (built from
# msg/ with CMake through pip), the upstream vision_msgs and tf2_msgs interfaces when their
# sources are present (unmodified, from ../shared/third_party or $OBJEMBED_THIRD_PARTY), and
# objembed_ros itself (editable).
# Idempotent: a stamp file records the inputs, so a second run with nothing changed returns at
# once; each CMake package has its own stamp, so only the packages whose inputs changed rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
STAMPS="$VENV/.objembed-stamps"
# Upstream ROS interface packages that ROS installs get from apt and PyPI does not have.
THIRD_PARTY=${OBJEMBED_THIRD_PARTY:-$ROOT/../shared/third_party}
UPSTREAM_PKGS=(vision_msgs tf2_msgs)

hash_files() {  # sha256 of the named files/folders' contents (build trees excluded)
  find "$@" -type f -not -path '*/build/*' 2>/dev/null | sort | xargs -r cat | sha256sum | cut -d' ' -f1
}
pkg_inputs() {  # what a CMake package's build depends on: its sources, the ROS wheels, the fix
  hash_files "$1" requirements-ros.txt msg/objembed_msgs/cmake scripts/cmake scripts/install.sh
}
stamp_inputs() {
  cat requirements.txt requirements-ros.txt objembed_ros/setup.py objembed_ros/package.xml
  pkg_inputs msg/objembed_msgs
  for name in "${UPSTREAM_PKGS[@]}"; do
    if [ -d "$THIRD_PARTY/$name" ]; then pkg_inputs "$THIRD_PARTY/$name"; else echo "no $name"; fi
  done
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
# setuptools: colcon-core (requirements-ros.txt) requires < 80
"$VENV/bin/python" -m pip install -q --upgrade pip wheel "setuptools<80"
"$VENV/bin/python" -m pip install -q -r requirements.txt -r requirements-ros.txt
mkdir -p "$STAMPS"

# CMake interface packages: CMake must find the ROS packages in the venv prefix.
export AMENT_PREFIX_PATH="$VENV"
export CMAKE_PREFIX_PATH="$VENV"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Upstream packages have no pyproject.toml and stay unmodified: a generated one in $WORK points
# scikit-build-core at their folder, with tests off and the wheels' include-path fix injected.
upstream_project() {  # NAME SRC -> a pip project dir that builds SRC
  local name=$1 src version dir
  src=$(cd "$2" && pwd)
  version=$(sed -n 's:.*<version>\(.*\)</version>.*:\1:p' "$src/package.xml" | head -n1)
  dir="$WORK/project-$name"
  mkdir -p "$dir"
  cat > "$dir/pyproject.toml" <<EOF
[build-system]
requires = ["scikit-build-core>=0.10"]
build-backend = "scikit_build_core.build"

[project]
name = "ros-${name//_/-}"
version = "$version"
description = "ROS 2 interface package $name, built by objembed_ros' install.sh from $src"

[tool.scikit-build]
experimental = true
wheel.install-dir = "/data"
wheel.packages = []
cmake.build-type = "Release"
cmake.source-dir = "$src"
build-dir = "build"

[tool.scikit-build.cmake.define]
BUILD_TESTING = "OFF"
CMAKE_PROJECT_INCLUDE = "$ROOT/scripts/cmake/pip_wheel_compat_inject.cmake"
EOF
  echo "$dir"
}

# Build the wheels of every CMake package whose inputs changed, in parallel (they do not depend
# on each other), then install them in one pip call.
declare -A pids=() stamp_of=()
queue_build() {  # NAME SRC PROJECT_DIR
  local name=$1 stamp
  stamp=$(pkg_inputs "$2")
  if [ -f "$STAMPS/$name" ] && [ "$(cat "$STAMPS/$name")" = "$stamp" ]; then
    return 0
  fi
  stamp_of[$name]=$stamp
  mkdir -p "$WORK/wheels-$name"
  ( t0=$(date +%s)
    "$VENV/bin/python" -m pip wheel -q --no-build-isolation --no-deps \
      -w "$WORK/wheels-$name" "$3" > "$WORK/$name.log" 2>&1 \
      || { cat "$WORK/$name.log" >&2; exit 1; }
    echo "install.sh: built $name in $(( $(date +%s) - t0 )) s" ) &
  pids[$name]=$!
}

queue_build objembed_msgs msg/objembed_msgs "$ROOT/msg/objembed_msgs"
for name in "${UPSTREAM_PKGS[@]}"; do
  if [ -f "$THIRD_PARTY/$name/package.xml" ]; then
    queue_build "$name" "$THIRD_PARTY/$name" "$(upstream_project "$name" "$THIRD_PARTY/$name")"
  else
    echo "install.sh: $name not built: no upstream source at $THIRD_PARTY/$name" \
      "(set OBJEMBED_THIRD_PARTY to the folder holding it); features that need it stay off"
  fi
done
failed=0
for name in "${!pids[@]}"; do
  wait "${pids[$name]}" || { echo "install.sh: building $name failed" >&2; failed=1; }
done
rm -rf msg/objembed_msgs/build
[ "$failed" = 0 ] || exit 1
if [ "${#pids[@]}" -gt 0 ]; then
  "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$WORK"/wheels-*/*.whl
  for name in "${!pids[@]}"; do echo "${stamp_of[$name]}" > "$STAMPS/$name"; done
fi

# compat mode: a plain path entry, so a checkout-root sys.path entry (python -m pytest) cannot
# shadow the package with the objembed_ros/ package folder as a namespace package.
"$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps \
  --config-settings editable_mode=compat -e ./objembed_ros

"$VENV/bin/python" -c "import objembed_msgs.msg, rclpy, torch, transformers" \
  || { echo "install.sh: the installed environment does not import" >&2; exit 1; }
echo "$want" > "$VENV/.objembed-installed"
echo "install.sh: .venv ready in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
