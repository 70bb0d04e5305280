#!/usr/bin/env bash
# Records the trainer outputs a refactor must leave unchanged: the shipped model's
# `eval --json` (free, always-high and always-low policies: the steering) on a fixed seed, and
# the per-step rewards, resize ratios and losses of 3 GRPO steps from the shipped model.
# Usage: pin_trainer.sh OUT_DIR [VISIONTHINK_TRAIN_BINARY]; compare two runs with `diff -r`.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$1
t=${2:-${CARGO_TARGET_DIR:-target}/debug/visionthink-train}
rm -rf "$out" && mkdir -p "$out"
"$t" synth --seed 2 --count 40 --fine-fraction 0.3 --out "$out/eval-data" >/dev/null
"$t" synth --seed 9 --count 16 --fine-fraction 0.5 --out "$out/train-data" >/dev/null
"$t" eval --data "$out/eval-data" --json > "$out/eval.json"
"$t" train --config native-trainer/configs/synth-grpo.toml \
  --set "run.out=\"$out/run\"" --set "data.train=\"$out/train-data\"" \
  --set 'model.init_from="sdk/visionthink/model"' --set run.steps=3 >/dev/null 2>&1
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
keep = ("reward", "accuracy", "resize_ratio", "response_length", "visual_tokens", "kl", "entropy",
        "clip_frac", "grad_norm", "groups_kept", "pg_loss", "loss")
rows = [json.loads(l) for l in open(f"{out}/run/metrics.jsonl")]
json.dump([{k: r.get(k) for k in keep} for r in rows], open(f"{out}/grpo.json", "w"), indent=1)
PY
rm -rf "$out/run" "$out/eval-data" "$out/train-data"
cat "$out/eval.json"; echo; cat "$out/grpo.json"
