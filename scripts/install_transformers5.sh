#!/usr/bin/env bash
# Install each transformers 5.x version of transformers5-versions.txt as an overlay folder on
# top of .venv: only the distributions that differ from .venv's are kept, so
#   PYTHONPATH=.venv/transformers-5.23.0 .venv/bin/python ...
# is the same environment as .venv with that transformers. make test runs the encoder tests
# under each. Idempotent (a stamp per overlay). Needs .venv (install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(pwd)/.venv"
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
versions=$(grep -v '^\s*#' transformers5-versions.txt | grep -v '^\s*$')
for version in $versions; do
  overlay="$VENV/transformers-$version"
  want=$(sha256sum scripts/install_transformers5.sh | cut -d' ' -f1)
  if [ -f "$overlay/.objembed-installed" ] && [ "$(cat "$overlay/.objembed-installed")" = "$want" ]; then
    continue
  fi
  start=$(date +%s)
  rm -rf "$overlay" "$overlay.new"
  # pip's find-links notes about absent local folders are noise here
  "$VENV/bin/python" -m pip install -q --target "$overlay.new" "transformers==$version" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  # Drop every distribution .venv already has at the same version (its RECORD lists the files).
  "$VENV/bin/python" - "$overlay.new" <<'PY'
import importlib.metadata as md
import shutil
import sys
from pathlib import Path

overlay = Path(sys.argv[1])
base = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in md.distributions()}
for dist in md.distributions(path=[str(overlay)]):
    name = dist.metadata["Name"].lower().replace("_", "-")
    if base.get(name) != dist.version:
        continue
    for rel in dist.files or []:
        path = overlay / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
    shutil.rmtree(overlay / Path(dist._path).name, ignore_errors=True)  # the dist-info itself
for folder in sorted((p for p in overlay.rglob("*") if p.is_dir()), reverse=True):
    if not any(folder.iterdir()):
        folder.rmdir()
PY
  rm -rf "$overlay.new/bin"
  mv "$overlay.new" "$overlay"
  PYTHONPATH="$overlay" "$VENV/bin/python" -c \
    "import sys, transformers, objembed_ros.encoder.model; sys.exit(transformers.__version__ != '$version')" \
    || { echo "install_transformers5.sh: $overlay does not import transformers $version" >&2; exit 1; }
  echo "$want" > "$overlay/.objembed-installed"
  echo "install_transformers5.sh: $overlay ready in $(( $(date +%s) - start )) s" \
    "($(du -sh "$overlay" | cut -f1), $(ls "$overlay" | grep -c dist-info) distributions)"
done
