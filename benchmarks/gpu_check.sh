#!/usr/bin/env bash
# The GPU check of issue 13: click latency (384², 400²; float32, TF32, fp16 and bf16 autocast),
# the autocast error against float32, peak GPU memory, STCN propagation of 160x384x384 from
# 5 slices, device and versions. Meant for a fresh CUDA machine with this repository copied to
# it and `pip install -e .` done; about 1-3 minutes there, and never more than 8 (each step has
# its own time limit). Run from anywhere:
#
#     bash benchmarks/gpu_check.sh             # on the GPU machine; prints everything
#     bash benchmarks/gpu_check.sh --dry-run   # on any CPU: tiny model, small sizes (a test of
#                                              # the script itself; its figures mean nothing)
#
# Golden fixtures are optional: set ISEGFORMER_GOLDEN=/path/to/golden to measure the autocast
# error on the golden forward inputs (otherwise it says it used random inputs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
DRY=()
CLICK_LIMIT=300
PROP_LIMIT=150
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY=(--dry-run)
    CLICK_LIMIT=900   # a shared CPU is slow; this is a test of the script, not a measurement
    PROP_LIMIT=600
fi
export PYTHONPATH="$PWD/Logic${PYTHONPATH:+:$PYTHONPATH}"

echo "== gpu_check.sh $(date -u +%Y-%m-%dT%H:%M:%SZ), repository $(git rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)')"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
else
    echo "nvidia-smi: not found"
fi
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"

start=$(date +%s)
timeout "$CLICK_LIMIT" "$PYTHON" benchmarks/gpu_check.py "${DRY[@]}" --skip-propagation
# Propagation: benchmarks/propagation.py (owned by the propagation work) when it can run on a
# GPU (--device); until then gpu_check.py times the same work through the public STCN API.
if "$PYTHON" benchmarks/propagation.py --help 2>/dev/null | grep -q -- "--device" && [[ ${#DRY[@]} -eq 0 ]]; then
    timeout "$PROP_LIMIT" "$PYTHON" benchmarks/propagation.py --device cuda --modes batch --slices 160
else
    timeout "$PROP_LIMIT" "$PYTHON" benchmarks/gpu_check.py "${DRY[@]}" --propagation-only
fi
echo "== done in $(( $(date +%s) - start )) s"
