#!/usr/bin/env python3
"""Tiny random Qwen2.5-VL checkpoints and their reference outputs (HF transformers, f32, CPU).

Writes tests/fixtures/models/<variant>/ (HF layout: config.json, safetensors, tokenizer files,
preprocessor_config.json, generation_config.json) and tests/fixtures/models/golden.json with, per
variant and prompt: the vision tower output (merged image features) of each image, last-position
logits (first 16, top 5, argmax, and the values at a fixed set of 384 ids), and 8 greedy tokens
computed without a KV cache (full re-forward each step) with their top-1/top-2 margins.

Variants (weights stored bf16, so the f32 reference runs on exactly the weights we load):
  tied_nested    tie_word_embeddings, nested config (text_config/vision_config/rope_parameters),
                 one safetensors file, vision blocks 0 and 2 windowed, block 1 full attention
  untied_flat    separate lm_head, flat config (rope_scaling, in_chans), two shards + index,
                 vision blocks 0 and 1 full attention, block 2 windowed

Usage: python3 tests/scripts/gen_model_fixtures.py   (reuses the venv of gen_fixtures.py)
"""
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.environ.get("VT_FIXTURE_VENV") != "1":
    venv = os.path.join(os.environ.get("VT_CACHE", os.path.expanduser("~/.cache/visionthink")), "pyenv", "bin", "python")
    if not os.path.exists(venv):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen_fixtures.py")], check=True)
    os.execve(venv, [venv, os.path.abspath(__file__)], dict(os.environ, VT_FIXTURE_VENV="1"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2TokenizerFast  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_fixtures import low_res  # noqa: E402  (the official evaluation downscale, shared)

torch.set_num_threads(1)
OUT = os.path.join(ROOT, "fixtures", "models")
GOLDEN = os.path.join(ROOT, "fixtures", "golden")
TOKENIZER = os.path.join(ROOT, "fixtures", "tokenizer")
IMAGES = os.path.join(ROOT, "fixtures", "images")

TEXT = dict(vocab_size=151936, hidden_size=16, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, rms_norm_eps=1e-6, max_position_embeddings=4096, hidden_act="silu")
VISION = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=16, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, window_size=112, hidden_act="silu", tokens_per_second=2)
VARIANTS = {
    "tied_nested": dict(tie=True, fullatt=[1], seed=1, shards=1, flat=False),
    "untied_flat": dict(tie=False, fullatt=[0, 1], seed=2, shards=2, flat=True),
}


def build(name, v):
    torch.manual_seed(v["seed"])
    cfg = Qwen2_5_VLConfig(
        text_config=dict(TEXT, tie_word_embeddings=v["tie"],
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]}),
        vision_config=dict(VISION, fullatt_block_indexes=v["fullatt"]),
        tie_word_embeddings=v["tie"], image_token_id=151655, video_token_id=151656,
        vision_start_token_id=151652, vision_end_token_id=151653,
    )
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        # Larger-than-default weights so logits are well separated (greedy ties are meaningless).
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5 if ("embed" in n or "lm_head" in n) else 0.08)
            elif "norm" in n or "ln_q" in n:
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0.0, 0.05)
        # Round every weight to bf16, then compute the reference in f32 on those exact values.
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    state = {k: t.detach().to(torch.bfloat16).contiguous() for k, t in model.state_dict().items()}
    if v["tie"]:
        state.pop("lm_head.weight", None)
    if v["shards"] == 1:
        save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    else:
        keys = sorted(state)
        half = len(keys) // 2
        weight_map = {}
        for i, part in enumerate([keys[:half], keys[half:]]):
            fname = f"model-{i + 1:05d}-of-00002.safetensors"
            save_file({k: state[k] for k in part}, os.path.join(d, fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        total = sum(t.numel() * t.element_size() for t in state.values())
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
                  open(os.path.join(d, "model.safetensors.index.json"), "w"), indent=1)
    conf = json.loads(cfg.to_json_string())
    if v["flat"]:
        t, vis = conf.pop("text_config"), conf.pop("vision_config")
        rope = t.pop("rope_parameters")
        flat = {**t, **conf, "rope_theta": rope["rope_theta"],
                "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]}}
        vis["in_chans"] = vis.pop("in_channels", 3)
        flat["vision_config"] = vis
        flat["model_type"] = "qwen2_5_vl"
        conf = flat
    json.dump(conf, open(os.path.join(d, "config.json"), "w"), indent=1)
    for f in ("tokenizer_config.json", "chat_template.json"):
        shutil.copy(os.path.join(TOKENIZER, f), d)
    # The 5 MB tokenizer is shared, not copied: a relative symlink keeps each directory complete.
    os.symlink(os.path.join("..", "..", "tokenizer", "tokenizer.json"), os.path.join(d, "tokenizer.json"))
    json.dump({"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
               "temporal_patch_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
               "image_std": [0.26862954, 0.26130258, 0.27577711], "image_processor_type": "Qwen2VLImageProcessor"},
              open(os.path.join(d, "preprocessor_config.json"), "w"), indent=1)
    json.dump({"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
               "do_sample": False, "temperature": 0.0}, open(os.path.join(d, "generation_config.json"), "w"), indent=1)
    return model


PROBE_IDS = sorted(set(list(range(0, 64)) + list(range(151600, 151936, 7)) + [int(x) for x in np.random.default_rng(0).integers(64, 151600, 280)]))


def run_case(model, proc, prompt_file, images, lows):
    text = open(os.path.join(GOLDEN, prompt_file), encoding="utf-8").read()
    tok = Qwen2TokenizerFast.from_pretrained(TOKENIZER)
    pil = []
    for f, lo in zip(images, lows):
        im = Image.open(os.path.join(IMAGES, f)).convert("RGB")
        pil.append(low_res(im) if lo else im)
    px = proc(images=pil, return_tensors="pt")
    grids = px["image_grid_thw"]
    parts = text.split("<|image_pad|>")
    expanded = parts[0]
    for g, rest in zip(grids.tolist(), parts[1:]):
        expanded += "<|image_pad|>" * (g[0] * g[1] * g[2] // 4) + rest
    ids = tok.encode(expanded, add_special_tokens=False)
    with torch.no_grad():
        feats = model.model.get_image_features(px["pixel_values"], grids, return_dict=True).pooler_output
        vision = [f.float().tolist() for f in feats]

        def forward(seq):
            t = torch.tensor([seq])
            pos, _ = model.model.get_rope_index(t, (t == 151655).to(torch.int32), image_grid_thw=grids)
            out = model(input_ids=t, pixel_values=px["pixel_values"], image_grid_thw=grids, position_ids=pos,
                        mm_token_type_ids=(t == 151655).to(torch.int32), use_cache=False)
            return out.logits[0, -1].float()

        logits = forward(ids)
        seq, greedy, margins = list(ids), [], []
        step_logits = logits
        for _ in range(8):
            top2 = torch.topk(step_logits, 2)
            greedy.append(int(top2.indices[0]))
            margins.append(float(top2.values[0] - top2.values[1]))
            seq.append(greedy[-1])
            step_logits = forward(seq)
    top5 = torch.topk(logits, 5)
    return {
        "prompt_file": prompt_file, "images": images, "low_res": lows, "num_tokens": len(ids),
        "image_grid_thw": grids.tolist(), "vision_features": vision,
        "logits_first16": logits[:16].tolist(), "argmax": int(logits.argmax()),
        "top5": [[int(i), float(v)] for i, v in zip(top5.indices, top5.values)],
        "logits_probe": [float(logits[i]) for i in PROBE_IDS], "logit_scale": float(logits.abs().max()),
        "greedy_tokens": greedy, "greedy_margins": margins,
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    proc = Qwen2VLImageProcessorPil()
    golden = {"probe_ids": PROBE_IDS, "variants": {}}
    cases = [("prompt_one_image_lowres.txt", ["photo_640x480.png"], [True]),
             ("prompt_one_image_full.txt", ["odd_333x517.png"], [False]),
             ("prompt_two_images_visionthink.txt", ["photo_640x480.png", "photo_640x480.png"], [True, False])]
    for name, v in VARIANTS.items():
        model = build(name, v)
        golden["variants"][name] = [run_case(model, proc, *c) for c in cases]
        for c in golden["variants"][name]:
            print(name, c["prompt_file"], c["num_tokens"], "argmax", c["argmax"], "scale", round(c["logit_scale"], 3),
                  "min greedy margin", round(min(c["greedy_margins"]), 5))
    json.dump(golden, open(os.path.join(OUT, "golden.json"), "w"))


if __name__ == "__main__":
    main()
