#!/usr/bin/env bash
# Reproduces the shipped model (sdk/visionthink/model) from nothing, on the CPU:
# synthetic data → SFT warm start (three phases, resumed exactly from checkpoints) → multi-turn
# GRPO → evaluation on a held-out seed → export (bf16) into the SDK.
# Resume is exact (tested under SIGKILL), so the phases below equal one run with this schedule.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -p visionthink-train --locked
T="$CARGO_TARGET_DIR/release/visionthink-train"
$T synth --seed 1 --count 2000 --fine-fraction 0.5 --out runs/synth/data/train
$T synth --seed 2 --count 300 --fine-fraction 0.15 --out runs/synth/data/eval
# SFT: 500 steps of 8 (cosine 3e-3 → 3e-4), 150 steps of 8 at 7e-4 and 150 of 16 at 1e-3 with
# short fixed thoughts; then steps of 8 at 1e-3 whose thoughts describe what the model can see
# (colour and shape at half size; the texture too after the resize), so every example trains
# perception. The resize decision stays a coin flip (sft.tool_fraction = 0.5) for every question.
$T sft --config native-trainer/configs/synth-sft.toml
$T sft --config native-trainer/configs/synth-sft.toml --resume --set run.steps=650 \
  --set 'optim.schedule="constant"' --set optim.lr=7e-4 --set optim.warmup_steps=0
$T sft --config native-trainer/configs/synth-sft.toml --resume --set run.steps=800 \
  --set sft.batch=16 --set 'optim.schedule="constant"' --set optim.lr=1e-3 --set optim.warmup_steps=0 \
  --set run.save_every=100
$T sft --config native-trainer/configs/synth-sft.toml --resume --set run.steps="${SFT_STEPS:-2000}" \
  --set sft.batch=8 --set 'optim.schedule="constant"' --set optim.lr=1e-3 --set optim.warmup_steps=0 \
  --set run.save_every=100 \
  --set 'sft.think_direct="I see a {color} {shape}."' \
  --set 'sft.think_tool="I see a {color} {shape}. The fine details need a closer look."' \
  --set 'sft.think_after="Now I see a {color} {shape} on a {texture} background."'
$T train --config native-trainer/configs/synth-grpo.toml --set run.steps=30 --set "model.init_from=\"runs/synth/sft/$(cat runs/synth/sft/latest)\""
$T eval --model-dir "runs/synth/grpo/$(cat runs/synth/grpo/latest)" --data runs/synth/data/eval --json --out runs/synth/report
$T export --from "runs/synth/grpo/$(cat runs/synth/grpo/latest)" --out sdk/visionthink/model
