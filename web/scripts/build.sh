#!/usr/bin/env bash
# Builds the npm package: the wasm crate (release, wasm32 + SIMD128), wasm-bindgen's ESM glue
# into pkg/, optionally wasm-opt (npm binaryen, VT_WASM_OPT=1), then the TypeScript into dist/.
# Installs what it needs itself (the wasm32 target, the pinned wasm-bindgen-cli) through
# tests/scripts/tools.sh, the installer tests/run.sh uses too.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(cd .. && pwd)
# shellcheck source=../../tests/scripts/tools.sh
source "$root/tests/scripts/tools.sh"
ensure_wasm_target
ensure_wasm_bindgen
target="${CARGO_TARGET_DIR:-$root/target}"
profile="${VT_WASM_PROFILE:-release}"
cargo build -p visionthink-wasm --target wasm32-unknown-unknown --profile "$profile" --locked --manifest-path "$root/Cargo.toml"
wasm-bindgen --target web --out-dir pkg "$target/wasm32-unknown-unknown/$profile/visionthink_wasm.wasm"
if [ "${VT_WASM_OPT:-0}" = 1 ]; then
  npx --yes wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals pkg/visionthink_wasm_bg.wasm -o pkg/visionthink_wasm_bg.wasm
fi
npx tsc -p tsconfig.json
