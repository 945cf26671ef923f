#!/usr/bin/env bash
# GPU proof of life: parity + latency on an NVIDIA GPU in one command, offline.
#
#   bash scripts/gpu_check.sh                 # GPU machine with a preinstalled CUDA torch
#   bash scripts/gpu_check.sh --dry-run       # same steps on the CPU, tiny shapes (CI)
#   bash scripts/gpu_check.sh --out DIR --only parity_fp32 latency_2b
#
# Needs: python3 with a CUDA torch (never installed here), numpy, pillow, scikit-image,
# transformers 4.57.x or 5.x (a CUDA image's own 5.x works as it is), safetensors, tokenizers.
# Missing Python packages are installed, without the
# network, from a wheel folder (at most 60 MiB): $OBJEMBED_WHEELS, default ./wheels, into
# ./.gpu_check/site (first on PYTHONPATH; nothing system-wide changes). Fill it on a
# networked machine with the GPU machine's Python version, e.g.
#   pip download --no-deps -d wheels onnx==1.23.2 scikit-image==0.25.2
# Writes DIR/gpu_check.json (every step with a status) and DIR/gpu_check.md
# (default DIR: ./gpu_check_out). Exit status 1 when a step failed (skips are fine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
WHEELS="${OBJEMBED_WHEELS:-wheels}"
if [ -d "$WHEELS" ] && compgen -G "$WHEELS/*.whl" > /dev/null; then
    size_mib=$(du -sm "$WHEELS" | cut -f1)
    if [ "$size_mib" -gt 60 ]; then
        echo "[gpu_check] warning: $WHEELS is ${size_mib} MiB (limit 60 MiB)" >&2
    fi
    echo "[gpu_check] installing wheels from $WHEELS into .gpu_check/site (no network)"
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target .gpu_check/site \
        --upgrade "$WHEELS"/*.whl
    export PYTHONPATH=".gpu_check/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout --signal=INT --kill-after=20 480 "$PYTHON" bench/gpu_check.py "$@"
