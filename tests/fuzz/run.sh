#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser (libFuzzer through cargo fuzz, nightly), outside CI:
#
#   bash tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# VT_FUZZ_JOBS (default: the number of cores) targets run at once, one core each. Each target
# runs for the given time on its corpus (tests/fuzz/corpus/<target>, grown in place and then
# minimised with `cargo fuzz cmin`; the seeds always stay), with libFuzzer's hang (30 s) and
# memory (2 GB RSS) limits and the harness's own heap limits (tests/fuzz/src/heap.rs). Prints,
# per target: executions, executions/s, coverage (edges), corpus size before and after cmin,
# and findings (crash/timeout/oom inputs left in tests/fuzz/artifacts/<target>/). A finding is
# fixed in the code and its input moved to tests/fuzz/regressions/<target>/, which CI replays
# with the corpora (`cargo test -p visionthink-fuzz`). The seed corpora come from the fixtures:
# `cargo run -p visionthink-fuzz --example seeds`.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../scripts/tools.sh
source tests/scripts/tools.sh
ensure_cargo_fuzz

secs="${1:-60}"
shift || true
all=(tool_call model_output safetensors configs chat_template tokenizer_text tokenizer_json image dataset_jsonl dataset_parquet judge_reply serve_request gguf)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
jobs="${VT_FUZZ_JOBS:-$(nproc)}"

max_len() {
  case "$1" in
    model_output) echo 512 ;;
    tokenizer_text | judge_reply | dataset_jsonl | chat_template) echo 4096 ;;
    *) echo 16384 ;;
  esac
}

fuzz=(cargo +nightly fuzz)
common=(--fuzz-dir tests/fuzz --features libfuzzer --sanitizer none --target-dir "$VT_CACHE/fuzz-target")

# One target: fuzz, minimise the corpus, write its table row to $VT_CACHE/fuzz-<target>.row.
one() {
  local t=$1 corpus="tests/fuzz/corpus/$1" art="tests/fuzz/artifacts/$1" log="$VT_CACHE/fuzz-$1.log"
  mkdir -p "$corpus" "$art"
  echo "==> $t: ${secs}s" >&2
  # The seeds (taken from the fixtures) always stay: libFuzzer deletes inputs it reduces, and
  # cmin drops the ones that add no coverage, so they are set aside before either runs.
  local seeds
  seeds=$(mktemp -d)
  cp "$corpus"/seed-* "$seeds"/ 2>/dev/null || true
  local rc=0
  "${fuzz[@]}" run "${common[@]}" "$t" "$corpus" -- \
    -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -max_len="$(max_len "$t")" \
    -print_final_stats=1 -artifact_prefix="$art/" >"$log" 2>&1 || rc=$?
  local execs rate cov before after findings
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  before=$(find "$corpus" -type f | wc -l)
  "${fuzz[@]}" cmin "${common[@]}" "$t" "$corpus" -- -max_len="$(max_len "$t")" >>"$log" 2>&1 || true
  cp "$seeds"/seed-* "$corpus"/ 2>/dev/null || true
  rm -rf "$seeds"
  after=$(find "$corpus" -type f | wc -l)
  findings=$(find "$art" -type f | wc -l)
  [ "$findings" -eq 0 ] || echo "   $t: findings in $art (log: $log)" >&2
  printf '%-16s %12s %9s %7s %6s→%-6s %4s %4s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" \
    "$before" "$after" "$findings" "$rc" >"$VT_CACHE/fuzz-$t.row"
}

# Build every target once, so parallel runs do not wait on each other's builds.
"${fuzz[@]}" build "${common[@]}" >"$VT_CACHE/fuzz-build.log" 2>&1 \
  || { tail -30 "$VT_CACHE/fuzz-build.log" >&2; exit 1; }
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  one "$t" &
done
wait
echo
printf '%-16s %12s %9s %7s %13s %5s %4s\n' target executions exec/s edges corpus finds rc
for t in "${targets[@]}"; do cat "$VT_CACHE/fuzz-$t.row"; done
echo "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $jobs of $(nproc) cores, ${secs}s per target)"
