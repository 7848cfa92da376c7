#!/usr/bin/env bash
# The ALIGN claims study on one machine with one NVIDIA GPU (configs/experiments/align-claims-gpu.yaml):
# checks the GPU, sets up .venv, runs every trial under one MLflow parent run, then writes the HTML report.
#
#   bash scripts/gpu_claims_study.sh [key=value ...]   # overrides for every trial, e.g. train.decode_threads=6
#
# Needs Python 3.11, an NVIDIA driver, ~16 cores and ~20 GB of disk. State goes to $ALIGN_HOME
# (default ./.align-gpu-study); re-running after an interruption resumes the same parent run and
# skips the trials that finished.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_claims_study: no NVIDIA GPU visible (nvidia-smi -L failed); the CPU study is configs/experiments/align-claims-cpu.yaml" >&2
  exit 1
fi
make setup
.venv/bin/python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_claims_study: torch {torch.__version__} sees no CUDA device (a CPU-only torch build, or a driver too old for it)")
print(f"gpu_claims_study: torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
PY

export ALIGN_HOME="${ALIGN_HOME:-$PWD/.align-gpu-study}"
mkdir -p "$ALIGN_HOME"
summary="$ALIGN_HOME/claims-study.md"
.venv/bin/align experiment configs/experiments/align-claims-gpu.yaml "$@" | tee "$summary"
parent=$(sed -n 's/^parent run: //p' "$summary")
.venv/bin/align report --parent "$parent" --out "$ALIGN_HOME/claims-study.html"
.venv/bin/align down
echo "gpu_claims_study: table $summary, report $ALIGN_HOME/claims-study.html, runs: ALIGN_HOME=$ALIGN_HOME .venv/bin/align ui"
