# Sourced by tests/check_cuda.sh and tests/gpu.sh: a CUDA toolkit for building the `cuda`
# feature on a machine without one, from NVIDIA's PyPI wheels (nvcc, headers) in a venv under
# $VT_CACHE, and link stubs for the libraries cudarc links (libcuda, cuBLAS, cuBLASLt, cuRAND,
# NVRTC, NCCL; the CUDA runtime is the wheel's own): each exports the functions cudarc declares, so the binaries link here and bind
# to the real libraries of the GPU machine when they start. Sets CUDA_HOME, PATH and
# CARGO_TARGET_DIR ($VT_CACHE/target-cuda unless set).
VT_CACHE="${VT_CACHE:-$HOME/.cache/visionthink}"
CUDA_VENV="$VT_CACHE/cuda-venv"
if [ ! -x "$CUDA_VENV/bin/python" ]; then
  python3 -m venv "$CUDA_VENV"
  "$CUDA_VENV/bin/pip" install -q "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"
fi
NV="$("$CUDA_VENV/bin/python" -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))')/nvidia"
CUDA_HOME="$NV/cu13"
[ -d "$CUDA_HOME" ] || CUDA_HOME="$(dirname "$(dirname "$(find "$NV" -name nvcc -type f | head -1)")")"
export CUDA_HOME CUDA_PATH="$CUDA_HOME" PATH="$CUDA_HOME/bin:$PATH"
# CUDA 13 bindings; kernels for compute capability 9.0 (H100/H200) unless told otherwise.
export CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$VT_CACHE/target-cuda}"

# cudarc's build script searches $CUDA_HOME/lib/stubs. The stubs' sonames are unversioned:
# tests/gpu.sh links each name to the library the GPU machine has.
cuda_link_stubs() {
  local stubs="$CUDA_HOME/lib/stubs" src lib dir
  src="$(cargo metadata --format-version 1 --locked --features visionthink-train/cuda |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')"
  src="$(dirname "$src")/src"
  [ -f "$src/driver/sys/mod.rs" ] || { echo "cudarc's sources not found ($src)" >&2; return 1; }
  mkdir -p "$stubs"
  for pair in driver:cuda cublas:cublas cublaslt:cublasLt curand:curand nvrtc:nvrtc nccl:nccl; do
    dir="${pair%%:*}" lib="${pair##*:}"
    [ -s "$stubs/$lib.c" ] && [ -f "$stubs/lib$lib.so" ] && continue
    grep -oE '^\s+(pub )?fn (cu|nvrtc|nccl|curand|cublas)[A-Za-z0-9_]*\(' "$src/$dir/sys/mod.rs" |
      sed -E 's/.*fn ([A-Za-z0-9_]+)\(/void \1(void) {}/' | sort -u > "$stubs/$lib.c"
    cc -shared -fPIC -Wl,-soname,"lib$lib.so" -o "$stubs/lib$lib.so" "$stubs/$lib.c"
  done
  # candle's kernels also link the CUDA runtime: the wheel's own (soname libcudart.so.13).
  ln -sf "$CUDA_HOME/lib/libcudart.so.13" "$stubs/libcudart.so"
}
