#!/usr/bin/env bash
# GPU check without Ray (benchmarks/gpu_check.py): S3D clips/s and TFLOP/s fp32 vs bf16 with
# the features' difference, decord frames/s per core, CRIF training steps/s, GPU utilisation.
#
#   benchmarks/gpu_check.sh                  # on a GPU machine: under 5 minutes
#   benchmarks/gpu_check.sh --dry            # anywhere, CPU, seconds: checks that it runs
#   DECORD_WHEEL=wheels/decord-0.6.0-py3-none-manylinux2010_x86_64.whl benchmarks/gpu_check.sh
#
# Needs python with torch and torchvision. decord is optional: when it is missing and a wheel
# is at $DECORD_WHEEL (or wheels/decord-*.whl), it is installed offline (--no-index --no-deps);
# otherwise the decode phase says it was skipped. Output: outputs/benchmarks/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then  # the project's environment when there is one
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if ! "$PYTHON" -c "import decord" 2>/dev/null; then
    for wheel in ${DECORD_WHEEL:-} wheels/decord-*.whl; do
        if [ -f "$wheel" ]; then
            "$PYTHON" -m pip install --quiet --no-index --no-deps "$wheel" && break
        fi
    done
fi

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
exec timeout 290 "$PYTHON" benchmarks/gpu_check.py "$@"
