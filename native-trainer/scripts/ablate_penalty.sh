#!/usr/bin/env bash
# The penalty ablation of the shipped model's recipe: GRPO from the same SFT start
# ($OUT/sft, made by train_shipped.sh) for 12 steps under each reward penalty. The "none" run
# is train_shipped.sh's stage 1 ($OUT/grpo-explore); this adds the official rewards ("code")
# and a penalty on every resize ("always_penalize_tool"), each in $OUT/ablate-<penalty>.
# Compare the runs' metrics.jsonl (sampled resize ratio per kind: by."kind/fine".resize_ratio).
set -euo pipefail
source "$(dirname "$0")/common.sh"
for penalty in code always_penalize_tool; do
  $T train --config native-trainer/configs/synth-grpo.toml --set "run.out=\"$OUT/ablate-$penalty\"" \
    --set "data.train=\"$OUT/data/train\"" --set "model.init_from=\"$OUT/sft\"" \
    --set run.steps=12 --set "reward.penalty=\"$penalty\""
done
