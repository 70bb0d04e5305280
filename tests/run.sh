#!/usr/bin/env bash
# The project's test command (README: "run the tests"). Installs what it needs on a fresh
# machine, then runs, cheapest first: fmt, then builds linted by clippy (-D warnings): native tests
# (unit, integration, doc, CLI; the WebGPU executor on Mesa's lavapipe), the tokenizer tests again
# on the Oniguruma regex engine, the core test suite compiled to wasm32 and run under Node, the
# browser tests in headless Chromium (kernels and model on WebGPU/SwiftShader, CPU fallback), the
# npm package build, its Playwright end-to-end tests of the demo page and `npm pack`, the
# examples, and every README command as a reader would run it (tests/scripts/readme_commands.sh).
# Prints each step's duration at the end.
#
# Caches (override with VT_CACHE): cargo target dir and the wasm-bindgen CLI (installed by
# tests/scripts/tools.sh, shared with web/scripts/build.sh) live outside the clone, so repeated
# runs are incremental and a cold machine still works.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/tools.sh
source tests/scripts/tools.sh
export VT_CACHE
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$VT_CACHE/target}"
mkdir -p "$VT_CACHE"

# Each step's duration, printed at the end (and when a step fails).
step_names=()
step_secs=()
step_start=$SECONDS
step() {
  step_close
  step_names+=("$*")
  step_start=$SECONDS
  printf '\n==> %s\n' "$*"
}
step_close() {
  if [ ${#step_names[@]} -gt ${#step_secs[@]} ]; then step_secs+=($((SECONDS - step_start))); fi
}
step_report() {
  step_close
  echo
  echo "step durations (s):"
  for i in "${!step_secs[@]}"; do printf '  %5d  %s\n' "${step_secs[$i]}" "${step_names[$i]}"; done
  printf '  %5d  total\n' "$SECONDS"
}
trap step_report EXIT

step "toolchain"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
ensure_wasm_target
# Node (wasm32 tests, npm package), Mesa's lavapipe (wgpu on the CPU), Debian's Chromium and
# chromedriver (browser tests; WebGPU through SwiftShader).
need=()
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers libvulkan1)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v curl >/dev/null 2>&1 || need+=(curl)
# OpenMPI (data-parallel training under mpirun; the `mpi` crate's bindings need libclang).
command -v mpicc >/dev/null 2>&1 || need+=(libopenmpi-dev openmpi-bin)
# (libclang itself, the C library bindgen loads: `libclang-cpp*`, which other packages pull in,
# is the C++ one and does not count.)
has_libclang() {
  local p
  for p in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
    /usr/lib/*-linux-gnu/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so*; do
    [ -e "$p" ] && return 0
  done
  return 1
}
has_libclang || need+=(libclang-dev)
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
export WGPU_BACKEND=vulkan
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$VT_CACHE/xdg}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
step "wasm-bindgen-cli (the version in Cargo.lock)"
ensure_wasm_bindgen

# Tests find their fixtures through paths compiled in (env!("CARGO_MANIFEST_DIR"), file!()),
# and cargo does not rebuild when the same sources move to another folder: when the cache was
# last built from another checkout, the workspace's own crates are rebuilt (dependencies stay).
stamp="$CARGO_TARGET_DIR/.visionthink-checkout"
here=$(pwd -P)
if [ -d "$CARGO_TARGET_DIR" ] && [ "$(cat "$stamp" 2>/dev/null)" != "$here" ]; then
  step "cache last built from $(cat "$stamp" 2>/dev/null || echo 'an unknown checkout'): rebuilding the workspace crates"
  cargo clean -p visionthink-core -p visionthink-model -p visionthink -p visionthink-wasm -p visionthink-train
  cargo clean -p visionthink-core -p visionthink-model -p visionthink-wasm --target wasm32-unknown-unknown
  cargo clean -p visionthink-core -p visionthink-model -p visionthink-wasm --target wasm32-unknown-unknown --release
fi
mkdir -p "$CARGO_TARGET_DIR" && echo "$here" > "$stamp"

step "fixture provenance"
want=$(sed -n 's/.*"tokenizer_json_sha256": "\(.*\)".*/\1/p' tests/fixtures/tokenizer/PROVENANCE.json)
got=$(sha256sum tests/fixtures/tokenizer/tokenizer.json | cut -d' ' -f1)
[ "$want" = "$got" ] || { echo "tokenizer.json does not match PROVENANCE.json" >&2; exit 1; }

step "cargo fmt --check"
cargo fmt --all -- --check

# Clippy runs inside the builds below instead of beside them: clippy-driver wraps rustc for the
# workspace's own crates (RUSTC_WORKSPACE_WRAPPER; dependencies are compiled by rustc as usual), so
# every build compiles them with clippy's lints, warnings denied (`cargo clippy -- -D warnings`),
# and no separate `cargo clippy` type-checks every dependency again in check mode (natively and
# for wasm32, that pass cost about 19 of a cold run's minutes). Each target is linted where it
# is built: libraries, binaries, tests and examples by `cargo test`, benches by the
# `--benches --no-run` build, wasm32 code by the wasm32 builds. Exported, so the npm build
# and the README's commands below compile with the same settings and reuse these artifacts.
clippy_driver=$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)
export RUSTC_WORKSPACE_WRAPPER="$clippy_driver"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

# Every wasm32 build below uses the release profile, the one the npm package ships: the
# dependencies are compiled for wasm32 once and shared by the tests and the package build.
step "build visionthink-core for wasm32"
cargo build -p visionthink-core --target wasm32-unknown-unknown --release --locked

# The wasm crate's tests run in the browser below (its code is linted there, for the target it
# is built for). The optional Hugging Face Hub feature is compiled (and linted) here too.
step "tests (native, linted; the WebGPU executor on lavapipe; data-parallel GRPO under mpirun)"
native=(--workspace --exclude visionthink-wasm --features visionthink/hub,visionthink-train/mpi --locked)
cargo test "${native[@]}" --benches --no-run
cargo test "${native[@]}"

step "tokenizer tests on the Oniguruma regex engine (the one Python tokenizers uses)"
cargo test -p visionthink-core --no-default-features --features onig --test tokenizer --locked

step "core tests on wasm32 (Node), and the wasm crate's tests linted for wasm32"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p visionthink-core --target wasm32-unknown-unknown --tests --release --locked
cargo test -p visionthink-wasm --target wasm32-unknown-unknown --tests --release --locked --no-run

step "browser tests in headless Chromium (wasm-bindgen-test + chromedriver, WebGPU on SwiftShader)"
(cd wasm && CHROMEDRIVER=$(command -v chromedriver) WASM_BINDGEN_TEST_TIMEOUT=900 \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test -p visionthink-wasm --target wasm32-unknown-unknown --test browser --release --locked)

step "npm package: build (wasm32 release + wasm-bindgen + tsc), Playwright e2e of the demo, npm pack"
(
  cd web
  npm ci --no-audit --no-fund --loglevel=error
  bash scripts/build.sh
  node --test --test-concurrency=1 test/e2e.test.mjs
  rm -f visionthink-*.tgz
  npm pack --silent >/dev/null
  tar -tzf visionthink-*.tgz > "$VT_CACHE/npm-pack.txt"
  for f in pkg/visionthink_wasm_bg.wasm pkg/visionthink_wasm.js dist/index.js dist/index.d.ts dist/worker.js; do
    grep -qx "package/$f" "$VT_CACHE/npm-pack.txt" || { echo "npm pack lacks $f" >&2; exit 1; }
  done
  # The tarball installs into a fresh project and its exports resolve.
  consumer=$(mktemp -d)
  tgz=$(ls "$PWD"/visionthink-*.tgz)
  (cd "$consumer" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error "$tgz" >/dev/null \
    && node --input-type=module -e 'const m = await import("visionthink"); const w = await import("visionthink/worker");
       for (const f of ["createEngine", "clearModelCache", "lowResPreview"]) if (typeof m[f] !== "function") throw new Error(f);
       if (typeof w.createWorkerEngine !== "function") throw new Error("createWorkerEngine");')
  rm -rf "$consumer" visionthink-*.tgz
)

step "examples"
cargo run -q -p visionthink --locked --example protocol
cargo run -q -p visionthink --locked --example ask >/dev/null

step "the README's commands, as written, without the tools this script installed on PATH"
bash tests/scripts/readme_commands.sh

echo
echo "all checks passed"
