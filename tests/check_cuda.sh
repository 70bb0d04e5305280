#!/usr/bin/env bash
# Optional: checks that the `cuda` feature (candle's CUDA backend through cudarc) compiles,
# without a GPU or a system CUDA toolkit: nvcc and headers come from NVIDIA's PyPI wheels in a
# venv under $VT_CACHE. Running needs a GPU machine (libcuda, cuBLAS); not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
VT_CACHE="${VT_CACHE:-$HOME/.cache/visionthink}"
VENV="$VT_CACHE/cuda-venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"
fi
NV="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))')/nvidia"
CUDA_HOME="$NV/cu13"
[ -d "$CUDA_HOME" ] || CUDA_HOME="$(dirname "$(dirname "$(find "$NV" -name nvcc -type f | head -1)")")"
export CUDA_HOME CUDA_PATH="$CUDA_HOME" PATH="$CUDA_HOME/bin:$PATH"
export CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP=80
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$VT_CACHE/target-cuda}"
nvcc --version | tail -1
cargo check -p visionthink-model -p visionthink -p visionthink-train \
  --features visionthink/cuda,visionthink-train/cuda --locked
echo "cuda feature: cargo check passed"
