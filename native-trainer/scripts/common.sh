# Sourced by the scripts in this folder: works from the repository root, builds the release
# trainer, and sets T (its path) and OUT (the run folder: $OUT, default runs/synth).
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -p visionthink-train --locked
T="$CARGO_TARGET_DIR/release/visionthink-train"
OUT="${OUT:-runs/synth}"
