#!/usr/bin/env bash
# The main job on its built-in default: ground language queries in a bundled photo with a tiny,
# randomly initialised (untrained) checkpoint in the official format. Outputs land in out/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
exec .venv/bin/python -m objembed_ros.demo --out-dir out "$@"
