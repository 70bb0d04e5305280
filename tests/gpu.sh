#!/usr/bin/env bash
# The checks that need an NVIDIA GPU: CUDA fidelity against the HF goldens, CUDA vs PyTorch
# (the model benchmark, both sides on the GPU), and a few training steps on the GPU against the
# same steps on the CPU. Not part of CI (CI has no GPU). Two halves, because the GPU machine has
# no Rust toolchain and no network:
#
#   bash tests/gpu.sh prepare   here: builds the `cuda` feature (nvcc from NVIDIA's PyPI wheels,
#                               link stubs for the CUDA libraries: tests/scripts/cuda_toolkit.sh)
#                               and packs the binaries with the fixtures they read into
#                               .gpu/bundle.tar.xz (about 60 MB; .gpu/ is ignored by git)
#   bash tests/gpu.sh run       there, from a copy of the repository that holds .gpu/: unpacks,
#                               runs every stage under its own time limit, and writes the logs
#                               and metrics to $OUT (default /tmp/vt-gpu-out)
#
# The GPU machine needs the NVIDIA driver, CUDA 13 libraries (cuBLAS, cuRAND, NVRTC; PyTorch's
# wheels carry them) and python3 with torch and transformers for the PyTorch side.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

prepare() {
  set -e
  # shellcheck source=tests/scripts/cuda_toolkit.sh
  source tests/scripts/cuda_toolkit.sh
  cuda_link_stubs
  # One feature set for every target, so candle and its CUDA kernels are compiled once.
  local f=(-p visionthink-model -p visionthink -p visionthink-train --locked --release
    --features visionthink-model/cuda,visionthink/cuda,visionthink-train/cuda)
  cargo build "${f[@]}" --bin visionthink-train
  cargo test "${f[@]}" --no-run --test cuda --bench model
  local stage=.gpu/stage
  rm -rf .gpu && mkdir -p "$stage/bin"
  exe() { # the executable cargo reports for target $2 of kind $1
    python3 -c '
import json, sys
kind, name = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == name and kind in m["target"]["kind"] and m.get("executable"):
        print(m["executable"])' "$1" "$2"
  }
  cp "$(cargo build "${f[@]}" --bin visionthink-train --message-format=json | exe bin visionthink-train)" "$stage/bin/"
  local tests
  tests="$(cargo test "${f[@]}" --no-run --test cuda --bench model --message-format=json)"
  cp "$(exe test cuda <<<"$tests")" "$stage/bin/cuda-test"
  cp "$(exe bench model <<<"$tests")" "$stage/bin/model-bench"
  strip "$stage"/bin/*
  git rev-parse HEAD >"$stage/COMMIT"
  git diff --quiet HEAD || echo "(with uncommitted changes)" >>"$stage/COMMIT"
  tar -cf - tests/gpu.sh tests/bench/bench_model.py native-trainer/configs \
    tests/fixtures/models/golden.json tests/fixtures/models/tied_nested tests/fixtures/tokenizer \
    tests/fixtures/golden tests/fixtures/images |
    tar -xf - -C "$stage"
  tar -C "$stage" -cf - . | xz -T0 -6 >.gpu/bundle.tar.xz
  rm -rf "$stage"
  ls -la .gpu/bundle.tar.xz
}

# One stage: its name, a time limit in seconds, the command. Its output goes to the log; its
# status to the summary. Later stages run whatever an earlier one did.
SUMMARY=()
stage() {
  local name="$1" limit="$2" t rc
  shift 2
  echo "=== $name (limit ${limit}s) ==="
  t=$(date +%s%N)
  timeout "$limit" "$@"
  rc=$?
  SUMMARY+=("$(printf '%-14s rc=%-3s %8d ms' "$name" "$rc" "$((($(date +%s%N) - t) / 1000000))")")
  return $rc
}

run() {
  OUT="${OUT:-/tmp/vt-gpu-out}"
  mkdir -p "$OUT"
  exec > >(tee "$OUT/gpu.log") 2>&1
  local b=/tmp/vt-gpu
  rm -rf "$b" && mkdir -p "$b" && tar -xJf "$ROOT/.gpu/bundle.tar.xz" -C "$b" || exit 1
  echo "bundle of $(cat "$b/COMMIT")"
  # The test binary's fixtures (sdk/model/tests/common: VT_FIXTURES).
  export VT_FIXTURES="$b/tests/fixtures"
  # The binaries ask for unversioned library names (see cuda_toolkit.sh): point each at the
  # library this machine has (the driver's libcuda; cuBLAS & co. from PyTorch's wheels).
  local lib=/tmp/vt-gpu-lib name found dirs d
  mkdir -p "$lib"
  dirs="/usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
  for name in cuda cublas cublasLt curand nvrtc nccl; do
    found=""
    for d in $dirs; do # in that order: the driver's own libcuda before any toolkit copy
      found="$(find "$d" -name "lib$name.so*" -not -path '*/stubs/*' \( -type f -o -type l \) 2>/dev/null | sort | head -1)"
      [ -n "$found" ] && break
    done
    [ -n "$found" ] && ln -sf "$found" "$lib/lib$name.so"
    echo "lib$name.so -> ${found:-(not found)}"
  done
  # The CUDA runtime by its soname (candle's kernels link it as it is).
  found="$(find $dirs -name 'libcudart.so.13*' -not -path '*/stubs/*' 2>/dev/null | sort | head -1)"
  [ -n "$found" ] && ln -sf "$found" "$lib/libcudart.so.13"
  echo "libcudart.so.13 -> ${found:-(not found)}"
  export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "CUDA", torch.version.cuda, "transformers", transformers.__version__)'
  cd "$b" || exit 1
  local bin="$b/bin"

  # 1. Fidelity: the HF goldens on CUDA (f32), the KV-cache continuation, gradients vs the CPU.
  if ! stage fidelity 120 "$bin/cuda-test" --test-threads=1 --nocapture; then
    # Nothing below can work if the device did not open; say so early.
    "$bin/cuda-test" --list >/dev/null 2>&1 || { printf '%s\n' "${SUMMARY[@]}"; exit 1; }
  fi

  # 2. The model benchmark, both sides on the GPU (the checkpoint is built here by transformers).
  stage bench 200 env VT_BENCH_VENV=1 VT_CACHE=/tmp/vt-cache VT_BENCH_DEVICE=cuda \
    VT_BENCH_BIN="$bin/model-bench" PYTHONUNBUFFERED=1 python3 tests/bench/bench_model.py --json
  grep '^{' "$OUT/gpu.log" | tail -1 >"$OUT/bench.json"

  # 3. Training: SFT steps on the GPU and on the CPU (same data, seed and config: the losses
  # must agree to float reordering), then GRPO steps (rollouts and updates) on each.
  local t="$bin/visionthink-train" data=/tmp/vt-gpu-data/train
  stage synth 60 "$t" synth --seed 11 --count 64 --out "$data"
  local dev
  for dev in cuda cpu; do
    rm -rf "/tmp/vt-sft-$dev"
    VISIONTHINK_DEVICE=$dev stage "sft-$dev" 60 "$t" sft --config native-trainer/configs/synth-sft.toml \
      --set run.steps=6 --set run.save_every=6 --set "data.train=\"$data\"" --set "run.out=\"/tmp/vt-sft-$dev\""
    cp "/tmp/vt-sft-$dev/metrics.jsonl" "$OUT/sft-$dev.jsonl"
  done
  python3 - "$OUT/sft-cuda.jsonl" "$OUT/sft-cpu.jsonl" <<'EOF'
import json, sys
rows = [[json.loads(l) for l in open(p) if l.strip()] for p in sys.argv[1:]]
pairs = [(a["loss"], b["loss"]) for a, b in zip(*rows) if "loss" in a and "loss" in b]
worst = max((abs(a - b) / max(abs(b), 1e-9) for a, b in pairs), default=float("nan"))
print("sft losses cuda vs cpu:", [(round(a, 6), round(b, 6)) for a, b in pairs])
print(f"worst relative difference over {len(pairs)} steps: {worst:.2e}", "OK" if worst < 1e-3 else "DIFFERENT")
EOF
  # GRPO from the shipped model (a few SFT steps answer nothing right: every group would have
  # equal rewards and be dropped, and no update would run).
  rm -rf /tmp/vt-shipped
  stage export 60 "$t" export --out /tmp/vt-shipped --dtype f32
  grpo() { # NAME: 2 GRPO steps from the export into /tmp/vt-grpo-NAME, metrics to $OUT
    rm -rf "/tmp/vt-grpo-$1"
    stage "grpo-$1" 90 "$t" train --config native-trainer/configs/synth-grpo.toml \
      --set run.steps=2 --set run.save_every=2 --set 'model.init_from="/tmp/vt-shipped"' \
      --set "data.train=\"$data\"" --set "run.out=\"/tmp/vt-grpo-$1\""
    cp "/tmp/vt-grpo-$1/metrics.jsonl" "$OUT/grpo-$1.jsonl"
  }
  for dev in cuda cpu; do
    VISIONTHINK_DEVICE=$dev grpo "$dev"
  done
  # The NCCL path with one rank (one GPU here: NCCL refuses two ranks on one device): its
  # unique id through the file, the all-gather of rollouts and the all-reduce of gradients,
  # with the same numbers as the single-process run above.
  rm -f /tmp/vt-nccl-id
  RANK=0 WORLD_SIZE=1 VISIONTHINK_NCCL_ID_FILE=/tmp/vt-nccl-id VISIONTHINK_DEVICE=cuda grpo nccl
  python3 - "$OUT"/grpo-{cuda,nccl,cpu}.jsonl <<'EOF2'
import json, os, sys
keys = ("reward", "accuracy", "pg_loss", "kl", "entropy", "grad_norm", "rollout_tokens_per_s", "update_tokens_per_s")
for p in sys.argv[1:]:
    for m in (json.loads(l) for l in open(p) if l.strip()):
        print(os.path.basename(p), "step", m.get("step"), {k: m[k] for k in keys if k in m})
EOF2
  echo "=== summary ==="
  printf '%s\n' "${SUMMARY[@]}"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: bash tests/gpu.sh prepare|run" >&2; exit 2 ;;
esac
