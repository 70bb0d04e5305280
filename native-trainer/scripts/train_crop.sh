#!/usr/bin/env bash
# The crop tool's recipe on the v2 synthetic task (issue 16), on the CPU:
# data (synth --task v2) → pointing phase (SFT on the local-fine questions, every trace a crop
# with one fixed thought) → SFT warm start whose tool choice (direct / resize / crop) ignores the
# question → multi-turn GRPO with the extended tool set and the image cost, in two stages
# (local-fine questions only, then every kind) → checkpoint
# selection on a validation seed → evaluation on the held-out seed with --tools resize,crop →
# export to sdk/visionthink/model-crop (EXPORT=1).
# The fair full-resolution baseline (BASELINE=1): from the same pointing-phase model, the same
# SFT and GRPO on the full image in turn 1 with direct answers only (the paper's vanilla RL at
# full resolution), evaluated on the same held-out set with --image-path full.
# The resize-only comparison (RESIZE_ONLY=1): the same SFT and GRPO with the official tool set
# only (resize traces where the crop recipe has crop traces), evaluated the same way.
# CROP=0 skips the crop model's SFT, GRPO and evaluation (to run only the comparisons).
# SIZE (default 224, so that it fits the 2-core budget) is the image side; OUT the run folder;
# ROWS_EVAL (default: all) how many held-out rows the evaluations read; ADV_NORM (default std,
# the official recipe) the GRPO advantage of the crop and resize-only stages: `none` divides
# by nothing (Dr. GRPO, r - mean; see grpo.advantage_norm).
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT="${OUT_CROP:-runs/synth2}"
SIZE="${SIZE:-224}"
POINT_STEPS="${POINT_STEPS:-900}"
SFT_STEPS="${SFT_STEPS:-600}"
GRPO_LOCAL_STEPS="${GRPO_LOCAL_STEPS:-20}"
GRPO_STEPS="${GRPO_STEPS:-30}"
BASELINE_GRPO_STEPS="${BASELINE_GRPO_STEPS:-40}"
ADV=(--set "grpo.advantage_norm=\"${ADV_NORM:-std}\"")
ROWS=(); [ -n "${ROWS_EVAL:-}" ] && ROWS=(--rows "$ROWS_EVAL")
$T synth --task v2 --seed 1 --count 6000 --fine-fraction 0.66 --size "$SIZE" --out "$OUT/data/train"
$T synth --task v2 --seed 2 --count 300 --fine-fraction 0.4 --size "$SIZE" --out "$OUT/data/eval"
$T synth --task v2 --seed 3 --count 120 --fine-fraction 0.66 --size "$SIZE" --out "$OUT/data/diag"
DATA=(--set "data.train=\"$OUT/data/train\"")
$T sft --config native-trainer/configs/synth2-point.toml --set "run.out=\"$OUT/point\"" "${DATA[@]}" \
  --set "run.steps=$POINT_STEPS"
FROM=(--set "model.init_from=\"$OUT/point\"")
# GRPO in two stages: `grpo_two_stages NAME FROM [--set ...]` trains $OUT/NAME-local from the
# model FROM names, then $OUT/NAME from that. Stage 1, local-fine questions only: the SFT model
# crops in ~10 % of sampled episodes, too few for the crop's advantage to raise it while crops
# on the other kinds (which cannot answer them) push it down; here only crops, resizes and
# guesses on local questions compete. Stage 2, every kind: crops on coarse and global questions
# fall to ~0 while those on local questions come back above 0.8.
grpo_two_stages() {
  local name="$1" from="$2"; shift 2
  $T train --config native-trainer/configs/synth2-grpo.toml --set "run.out=\"$OUT/$name-local\"" "${DATA[@]}" \
    --set "model.init_from=\"$from\"" --set "run.steps=$GRPO_LOCAL_STEPS" --set run.keep_checkpoints=0 \
    --set 'data.kinds=["local_fine"]' --set optim.lr=3e-4 "${ADV[@]}" "$@"
  $T train --config native-trainer/configs/synth2-grpo.toml --set "run.out=\"$OUT/$name\"" "${DATA[@]}" \
    --set "model.init_from=\"$OUT/$name-local\"" --set "run.steps=$GRPO_STEPS" --set run.keep_checkpoints=0 "${ADV[@]}" "$@"
}
if [ "${CROP:-1}" = 1 ]; then
  $T sft --config native-trainer/configs/synth2-sft.toml --set "run.out=\"$OUT/sft\"" "${DATA[@]}" \
    "${FROM[@]}" --set "run.steps=$SFT_STEPS"
  grpo_two_stages grpo "$OUT/sft"
  EVAL=(--tools resize,crop --max-new-tokens 96)
  BEST=$($T select --run "$OUT/grpo" --data "$OUT/data/diag" "${EVAL[@]}")
  $T eval --model-dir "$BEST" --data "$OUT/data/eval" "${EVAL[@]}" "${ROWS[@]}" --json --out "$OUT/report"
  if [ "${EXPORT:-0}" = 1 ]; then
    $T export --from "$BEST" --out sdk/visionthink/model-crop
  fi
fi
if [ "${BASELINE:-1}" = 1 ]; then
  # From the same pointing-phase model, the same SFT steps and 40 GRPO steps on every kind (the
  # crop model's 20 + 30 less the local-only stage, which is there for a tool decision this
  # baseline does not have), every image full size in turn 1 and no tool: GRPO episodes have one
  # round, so a tool call scores 0.
  FULL=(--set 'data.image_path="full"' --set 'rollout.tools="resize"' --set rollout.max_rounds=1 \
    --set rollout.max_images=1)
  $T sft --config native-trainer/configs/synth2-sft.toml --set "run.out=\"$OUT/full-sft\"" "${DATA[@]}" \
    "${FROM[@]}" --set "run.steps=$SFT_STEPS" "${FULL[@]}" --set sft.tool_fraction=0 --set sft.crop_fraction=0
  $T train --config native-trainer/configs/synth2-grpo.toml --set "run.out=\"$OUT/full-grpo\"" "${DATA[@]}" \
    --set "model.init_from=\"$OUT/full-sft\"" --set "run.steps=$BASELINE_GRPO_STEPS" --set run.keep_checkpoints=0 \
    "${FULL[@]}"
  FBEST=$($T select --run "$OUT/full-grpo" --data "$OUT/data/diag" --image-path full --max-new-tokens 96)
  $T eval --model-dir "$FBEST" --data "$OUT/data/eval" --image-path full --max-new-tokens 96 \
    "${ROWS[@]}" --json --out "$OUT/report-full"
fi
if [ "${RESIZE_ONLY:-1}" = 1 ]; then
  RESIZE=(--set 'rollout.tools="resize"' --set rollout.max_rounds=2 --set rollout.max_images=2)
  $T sft --config native-trainer/configs/synth2-sft.toml --set "run.out=\"$OUT/resize-sft\"" "${DATA[@]}" \
    "${FROM[@]}" --set "run.steps=$SFT_STEPS" "${RESIZE[@]}" --set sft.tool_fraction=0.7 --set sft.crop_fraction=0
  # The same two GRPO stages as the crop model (this one has a tool decision to learn too).
  grpo_two_stages resize-grpo "$OUT/resize-sft" "${RESIZE[@]}"
  RBEST=$($T select --run "$OUT/resize-grpo" --data "$OUT/data/diag" --max-new-tokens 96)
  $T eval --model-dir "$RBEST" --data "$OUT/data/eval" --max-new-tokens 96 "${ROWS[@]}" \
    --json --out "$OUT/report-resize"
fi
