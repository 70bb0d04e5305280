#!/usr/bin/env bash
# Runs the shell commands of README.md as a reader would: each line of its ```bash blocks,
# exactly as written, from the repository root, with a PATH that holds none of the tools that
# tests/run.sh installs into its cache (so a command that relies on an install step the reader
# was never told about fails here, not for the reader). Long-running commands (the demo server)
# are started, probed over HTTP and stopped.
#
# Every command must be classified below; a README command this script does not know fails the
# check, so the README and this check cannot drift apart.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/scripts/tools.sh

# The PATH a reader has: without the cache's tools.
clean_path=$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$VT_TOOLS/bin" | paste -sd: -)

# How each README command is checked: run | serve URL... | skip REASON.
classify() {
  case "$1" in
    "cargo run -p visionthink -- demo") echo "run" ;;
    "bash tests/run.sh") echo "skip: the command that runs this check" ;;
    "(cd web && npm ci && bash scripts/build.sh && node scripts/serve.mjs)")
      echo "serve http://127.0.0.1:8080/ http://127.0.0.1:8080/model/config.json http://127.0.0.1:8080/dist/index.js" ;;
    "VT_UPDATE_SNAPSHOTS=1 cargo test -p visionthink-core")
      echo "skip: the test step runs the same snapshot tests, which fail when a snapshot differs; alone, -p visionthink-core resolves its dependencies' features apart from the workspace's and recompiles them (~2.5 min)" ;;
    "bash native-trainer/scripts/train_shipped.sh")
      echo "skip: retrains the shipped model (~26 min on 2 cores); its stages are covered by native-trainer's tests" ;;
    "python3 tests/scripts/gen_fixtures.py")
      echo "skip: installs torch + transformers (~5 min, 5.6 GB) to regenerate goldens; tests check the committed goldens" ;;
    "python3 tests/scripts/reduce_qwen_tokenizer.py") echo "run-unchanged" ;;
    "python3 tests/scripts/make_example_image.py") echo "run-unchanged" ;;
    "bash tests/fuzz/run.sh 600")
      echo "skip: open-ended fuzzing (nightly, cargo-fuzz, an instrumented build, 2 h); the test step replays its corpora and regressions" ;;
    "vllm serve Senqiao/VisionThink-Efficient --limit-mm-per-prompt '{\"image\": 2}'")
      echo "skip: needs a GPU and the official 7B checkpoint from the Hub; the remote engine is tested against visionthink serve and a vLLM-like server (sdk/visionthink/tests/remote.rs)" ;;
    "visionthink ask --endpoint http://GPU_HOST:8000/v1 "*)
      echo "skip: talks to the vLLM server above; the same command runs against visionthink serve in sdk/visionthink/tests/remote.rs" ;;
    "visionthink-train eval --endpoint http://GPU_HOST:8000/v1 "*)
      echo "skip: talks to the vLLM server above; eval --endpoint runs against visionthink serve in native-trainer/tests/train_cli.rs" ;;
    "cargo build --release -p visionthink-train --features mpi")
      echo "skip: a release build of the trainer (~10 min); the test step builds the same feature and runs mpirun (native-trainer/tests/data_parallel.rs)" ;;
    "mpirun -np 2 -x RAYON_NUM_THREADS=1 target/release/visionthink-train train "*)
      echo "skip: 30 GRPO steps on two ranks; native-trainer/tests/data_parallel.rs runs 3 under mpirun and compares them with one process" ;;
    "torchrun --standalone --nproc-per-node 2 --no-python "*)
      echo "skip: needs two GPUs, NCCL and a CUDA build; tests/check_cuda.sh compiles the NCCL path" ;;
    "bash tests/gpu.sh prepare")
      echo "skip: builds the cuda feature (~11 min cold, nvcc wheels ~300 MB) for a GPU machine; tests/check_cuda.sh is the cheaper compile check" ;;
    "bash tests/gpu.sh run")
      echo "skip: needs an NVIDIA GPU and the bundle that prepare writes" ;;
    "cargo run -p visionthink -- convert --from sdk/visionthink/model --out /tmp/vt-gguf --quant q8_0") echo "run" ;;
    "cargo run -p visionthink -- ask --model /tmp/vt-gguf "*) echo "run" ;;
    "python3 tests/bench/bench_gguf.py")
      echo "skip: builds llama.cpp from the llama-cpp-python sdist and runs llama-bench beside ours (~15 min, needs the reference venv); the tests check GGUF compatibility on committed converter files" ;;
    "(cd web && node scripts/bench_wllama.mjs)")
      echo "skip: a benchmark on the 0.5B-shape files bench_gguf.py builds (~10 min, wllama from npm); the e2e tests stream a GGUF set in Chromium" ;;
    "python3 tests/scripts/gen_gguf_fixtures.py tests/fixtures/gguf --types f16")
      echo "skip: runs llama.cpp's converter (torch, the reference venv) to regenerate committed fixtures; tests check the committed files" ;;
    *) echo "unknown" ;;
  esac
}

mapfile -t commands < <(awk '/^```(bash|sh)$/{f=1;next} /^```/{f=0} f' README.md \
  | sed -e 's/[[:space:]]\{2,\}#.*$//' -e 's/[[:space:]]*$//' | grep -v '^$' | awk '!seen[$0]++')

probe() { # URL: waits until it answers 200 (bounded), prints the status line
  local url=$1 i
  for i in $(seq 1 900); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then echo "    200 $url"; return 0; fi
    sleep 1
  done
  echo "    $url never answered" >&2
  return 1
}

failed=0
for cmd in "${commands[@]}"; do
  how=$(classify "$cmd")
  echo "--> $cmd"
  start=$SECONDS
  case "$how" in
    run)
      env PATH="$clean_path" bash -c "$cmd" >/dev/null || { echo "    FAILED" >&2; failed=1; } ;;
    run-unchanged)
      env PATH="$clean_path" bash -c "$cmd" >/dev/null 2>&1 || { echo "    FAILED" >&2; failed=1; }
      if ! git diff --quiet; then echo "    changed committed files:" >&2; git diff --stat >&2; failed=1; fi ;;
    serve\ *)
      log=$(mktemp)
      setsid env PATH="$clean_path" bash -c "$cmd" >"$log" 2>&1 &
      pid=$!
      ok=1
      for url in ${how#serve }; do
        probe "$url" || { ok=0; break; }
        kill -0 "$pid" 2>/dev/null || { ok=0; break; }
      done
      kill -- -"$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      if [ $ok = 0 ]; then echo "    FAILED; its output:" >&2; tail -20 "$log" >&2; failed=1; fi
      rm -f "$log" ;;
    skip:*) echo "    ${how}" ;;
    *) echo "    this check does not know the command: classify it in $0" >&2; failed=1 ;;
  esac
  echo "    ($((SECONDS - start)) s)"
done
exit $failed
