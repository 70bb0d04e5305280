#!/usr/bin/env bash
# Records the CLI's model outputs that a refactor must leave unchanged (timings removed):
# `ask --json` (generated, teacher-forced resize call, malformed tool call, token-budget cut) on
# the test checkpoints and the shipped model, `generate --json` and `logits --json` on candle and
# on wgpu (lavapipe). Usage: pin_outputs.sh OUT_DIR [VISIONTHINK_BINARY]; compare two runs with
# `diff -r`.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$1
vt=${2:-${CARGO_TARGET_DIR:-target}/debug/visionthink}
mkdir -p "$out"
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
strip() { python3 -c 'import json,sys
v=json.load(sys.stdin)
def drop(x):
    if isinstance(x, dict): return {k: drop(w) for k, w in x.items() if k != "timings"}
    if isinstance(x, list): return [drop(w) for w in x]
    return x
print(json.dumps(drop(v), indent=1, sort_keys=True))'; }
img=tests/fixtures/images/photo_300x200.jpg
resize='<think>small</think><tool_call>{"name": "resize_image", "arguments": {"action": "resize"}}</tool_call>'
broken='<think>x</think><tool_call>{"name": "resize_image", "arguments": {"act": 1}}</tool_call>'
printf '<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n<|im_start|>assistant\n' > "$out/prompt.txt"
for m in tied_nested untied_flat; do
  md=tests/fixtures/models/$m
  for be in candle wgpu; do
    "$vt" ask --model-dir "$md" --image "$img" --question "What is shown?" --max-new-tokens 12 --backend $be --json | strip > "$out/ask-$m-$be.json"
    "$vt" ask --model-dir "$md" --image "$img" --question "What is shown?" --max-new-tokens 12 --backend $be --force-turn "$resize" --json | strip > "$out/ask-resize-$m-$be.json"
    "$vt" ask --model-dir "$md" --image "$img" --question "q" --max-new-tokens 6 --backend $be --force-turn "$broken" --json | strip > "$out/ask-malformed-$m-$be.json"
    "$vt" ask --model-dir "$md" --image "$img" --question "q" --max-new-tokens 3 --backend $be --json | strip > "$out/ask-budget-$m-$be.json"
    "$vt" generate --model-dir "$md" --prompt-file "$out/prompt.txt" --image "$img" --max-new-tokens 8 --backend $be --json | strip > "$out/generate-$m-$be.json"
    "$vt" generate --model-dir "$md" --prompt-file "$out/prompt.txt" --image "$img" --max-new-tokens 8 --temperature 0.8 --top-k 20 --seed 7 --backend $be --json | strip > "$out/sample-$m-$be.json"
    "$vt" logits --model-dir "$md" --prompt-file "$out/prompt.txt" --image "$img" --backend $be --json | strip > "$out/logits-$m-$be.json"
  done
done
"$vt" demo --json | strip > "$out/demo-shipped.json"
img2=sdk/visionthink/model/example.png
for q in "What color is the large shape?" "Are the fine stripes of the texture vertical or horizontal?"; do
  n=$(printf '%s' "$q" | cut -c1-8 | tr ' ?' '__')
  "$vt" ask --image "$img2" --question "$q" --max-new-tokens 64 --json | strip > "$out/ask-shipped-$n.json"
  "$vt" ask --image "$img2" --question "$q" --max-new-tokens 64 --temperature 1 --top-k 5 --seed 3 --json | strip > "$out/ask-shipped-sampled-$n.json"
done
ls "$out" | wc -l
