#!/usr/bin/env bash
# Optional: checks that the `cuda` feature (candle's CUDA backend through cudarc) compiles,
# without a GPU or a system CUDA toolkit: nvcc and headers come from NVIDIA's PyPI wheels in a
# venv under $VT_CACHE (tests/scripts/cuda_toolkit.sh). Running needs a GPU machine
# (tests/gpu.sh builds the binaries here and runs them there); not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/scripts/cuda_toolkit.sh
source tests/scripts/cuda_toolkit.sh
nvcc --version | tail -1
cargo check -p visionthink-model -p visionthink -p visionthink-train \
  --features visionthink/cuda,visionthink-train/cuda --locked
echo "cuda feature: cargo check passed"
