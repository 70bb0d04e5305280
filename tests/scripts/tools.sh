# Sourced (never run) by every script that needs a tool the machine may lack: tests/run.sh,
# web/scripts/build.sh and tests/scripts/readme_commands.sh. One copy of the install logic.
#
#   VT_CACHE   cache folder outside the clone (default ~/.cache/visionthink): cargo target dir
#              of the test run, and tools/ with the pinned wasm-bindgen-cli.
#
# ensure_wasm_target   adds rustup's wasm32-unknown-unknown target when it is missing.
# ensure_wasm_bindgen  puts the wasm-bindgen-cli whose version equals the wasm-bindgen crate in
#                      Cargo.lock on PATH, installing it into $VT_CACHE/tools once (~3–8 min).

VT_CACHE="${VT_CACHE:-$HOME/.cache/visionthink}"
VT_TOOLS="$VT_CACHE/tools"
vt_repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

ensure_wasm_target() {
  if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    echo "adding the rustup target wasm32-unknown-unknown" >&2
    rustup target add wasm32-unknown-unknown >/dev/null
  fi
}

# The wasm-bindgen crate version in Cargo.lock: the CLI must match it exactly.
wasm_bindgen_version() {
  grep -A1 '^name = "wasm-bindgen"$' "$vt_repo_root/Cargo.lock" | sed -n 's/^version = "\(.*\)"$/\1/p'
}

ensure_wasm_bindgen() {
  local version
  version="$(wasm_bindgen_version)"
  if [ -z "$version" ]; then
    echo "Cargo.lock names no wasm-bindgen version" >&2
    return 1
  fi
  case ":$PATH:" in *":$VT_TOOLS/bin:"*) ;; *) export PATH="$VT_TOOLS/bin:$PATH" ;; esac
  if wasm-bindgen --version 2>/dev/null | grep -q " $version\$" \
    && wasm-bindgen-test-runner --version 2>/dev/null | grep -q " $version\$"; then
    return 0
  fi
  echo "installing wasm-bindgen-cli $version into $VT_TOOLS (once, ~3–8 min)" >&2
  mkdir -p "$VT_TOOLS"
  cargo install wasm-bindgen-cli --version "$version" --root "$VT_TOOLS" --quiet
}

# ensure_cargo_fuzz    puts cargo-fuzz on PATH (installed into $VT_CACHE/tools once, ~3 min) and
#                      the nightly toolchain libFuzzer's instrumentation needs (rustup, once).
ensure_cargo_fuzz() {
  case ":$PATH:" in *":$VT_TOOLS/bin:"*) ;; *) export PATH="$VT_TOOLS/bin:$PATH" ;; esac
  if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "installing the nightly toolchain (cargo fuzz instruments with it)" >&2
    rustup toolchain install nightly --profile minimal >/dev/null
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz into $VT_TOOLS (once, ~3 min)" >&2
    mkdir -p "$VT_TOOLS"
    cargo install cargo-fuzz --root "$VT_TOOLS" --quiet
  fi
}
