#!/usr/bin/env python3
"""Model benchmark: visionthink (candle, CPU, f32) vs PyTorch transformers (f32, CPU, same thread
count) on the same mid-size random Qwen2.5-VL checkpoint, same machine, same session.

The checkpoint has a 0.5B-scale text model (Qwen2.5-0.5B shapes: hidden 896, 24 layers, 14 heads,
2 KV heads, MLP 4864, vocab 151936) and a 4-block vision tower of the 7B's width (1280, 16 heads),
saved in bf16 under $VT_CACHE/bench-model (built once). Measures: vision tower on 448x448 and
896x896 images, prefill tokens/s (512 text tokens), decode tokens/s (32 greedy tokens with the KV
cache), peak RSS, and (ours) a VisionThink episode answered at low resolution vs the same answer
with the full image in turn 1.

Also: a long prefill (5,678 text tokens, once each), and decode as a fraction of the
memory-bandwidth bound (this machine's read bandwidth, measured by the Rust bench with the same
thread count, against the f32 weight bytes one decode step reads).

Both sides do the same work: a prefill computes the next token's logits only (PyTorch with
`logits_to_keep=1`, as its `generate` does), and decode is timed over 32 steps that each run the
model once (PyTorch: generating 33 tokens minus generating 1).

`VT_BENCH_AVX2=1` holds both sides to AVX2 on a CPU that has AVX-512: PyTorch with
`ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2`, ours built without the `avx512` feature (into
$VT_CACHE/target-avx2, so the usual build is left as it is).

`VT_BENCH_DEVICE=cuda` runs both sides on the first NVIDIA GPU (PyTorch on `cuda`, ours built
with `--features cuda`; each timing ends with a device synchronisation), with PyTorch's bf16
decode beside ours; the host-bandwidth rows are then left out. `VT_BENCH_BIN=PATH` runs that
prebuilt bench binary instead of `cargo bench` (tests/gpu.sh does both on a GPU machine, where no
Rust toolchain is installed).

Usage: python3 tests/bench/bench_model.py [--json]   (needs the venv from tests/scripts/gen_fixtures.py)
With --json the last line is one JSON object of ratios (ours / peer for speeds, > 1 = we are
faster): prefill_512_ratio, prefill_long_ratio, vision_448_ratio, vision_896_ratio, decode_ratio,
decode_bandwidth_fraction (f32 weights), and decode_bf16_bandwidth_fraction (the weights kept in bf16).
"""
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("VT_CACHE", os.path.expanduser("~/.cache/visionthink"))
VENV = os.path.join(CACHE, "pyenv", "bin", "python")
if os.environ.get("VT_BENCH_VENV") != "1":
    if not os.path.exists(VENV):
        sys.exit("run tests/scripts/gen_fixtures.py first (it creates the reference venv)")
    env = dict(os.environ, VT_BENCH_VENV="1")
    if os.environ.get("VT_BENCH_AVX2") == "1":
        # Read when torch is imported: ATen's own kernels, MKL's GEMMs and oneDNN's (each has
        # its own switch; ATEN_CPU_CAPABILITY alone leaves PyTorch's f32 GEMMs on AVX-512:
        # 352-418 GFLOP/s on the Intel Xeon with it, 220-244 with all three).
        env.update(ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2")
    os.execve(VENV, [VENV, os.path.abspath(__file__), *sys.argv[1:]], env)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

THREADS = int(os.environ.get("VT_BENCH_THREADS", os.cpu_count() or 1))
torch.set_num_threads(THREADS)
MODEL = os.path.join(CACHE, "bench-model")
AVX2 = os.environ.get("VT_BENCH_AVX2") == "1"
DEVICE = os.environ.get("VT_BENCH_DEVICE", "cpu")
if DEVICE not in ("cpu", "cuda"):
    sys.exit(f"VT_BENCH_DEVICE={DEVICE}: expected cpu or cuda")


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def build():
    from safetensors.torch import save_file
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    import shutil
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=32768,
                         tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 8, 8]}),
        vision_config=dict(depth=4, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=896,
                           fullatt_block_indexes=[3], window_size=112),
        tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    os.makedirs(MODEL, exist_ok=True)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, os.path.join(MODEL, "model.safetensors"), metadata={"format": "pt"})
    json.dump(json.loads(cfg.to_json_string()), open(os.path.join(MODEL, "config.json"), "w"), indent=1)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.json"):
        shutil.copy(os.path.join(ROOT, "tests", "fixtures", "tokenizer", f), MODEL)


def photo(size, path):
    rng = np.random.default_rng(size)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / size * 6.3), 128 + 100 * np.cos(y / size * 4.1), 128 + 60 * np.sin((x + y) / size * 9)], -1)
    img += rng.normal(0, 8, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)


def torch_side(img448, img896):
    from transformers import Qwen2_5_VLForConditionalGeneration
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    except ImportError:  # an older transformers (a GPU machine's own install): the default processor
        from transformers import Qwen2VLImageProcessor as Qwen2VLImageProcessorPil
    t = time.perf_counter()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32).eval().to(DEVICE)
    sync()
    load_s = time.perf_counter() - t
    proc = Qwen2VLImageProcessorPil()
    out = {"load_s": load_s}
    with torch.inference_mode():
        for name, path in (("vision_448_ms", img448), ("vision_896_ms", img896)):
            px = proc(images=[Image.open(path).convert("RGB")], return_tensors="pt").to(DEVICE)
            model.model.get_image_features(px["pixel_values"], px["image_grid_thw"])
            best = 1e9
            for _ in range(3):
                sync()
                s = time.perf_counter()
                model.model.get_image_features(px["pixel_values"], px["image_grid_thw"])
                sync()
                best = min(best, time.perf_counter() - s)
            out[name] = best * 1e3
        ids = torch.tensor([[1000 + (i * 37) % 5000 for i in range(512)]], device=DEVICE)
        # The same work as ours: a prefill yields the next token's logits only
        # (`logits_to_keep=1`, as `generate` asks for; the default computes all 512 rows of the
        # 151,936-wide output head, 139 GFLOP more). Decode is the difference between
        # generating 33 tokens and generating 1, over 32 steps (subtracting the all-rows
        # prefill instead would credit PyTorch's decode with that head).
        def timed(f):
            sync()
            s = time.perf_counter()
            f()
            sync()
            return time.perf_counter() - s

        def gen(n):
            return lambda: model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

        prefill = g1 = g33 = 1e9
        for _ in range(3):
            prefill = min(prefill, timed(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1)))
            g1 = min(g1, timed(gen(1)))
            g33 = min(g33, timed(gen(33)))
        out["prefill_tok_s"] = 512 / prefill
        out["decode_tok_s"] = 32 / (g33 - g1)
        long = torch.tensor([[1000 + (i * 37) % 5000 for i in range(5678)]], device=DEVICE)
        if DEVICE == "cuda":
            timed(lambda: model(input_ids=long, use_cache=False, logits_to_keep=1))  # warm-up
        out["prefill_long_tok_s"] = 5678 / timed(lambda: model(input_ids=long, use_cache=False, logits_to_keep=1))
        if DEVICE == "cuda":
            # bf16 decode beside ours (on a CPU PyTorch's bf16 is not the peer; ours is read
            # against the bandwidth bound instead).
            model.to(torch.bfloat16)
            g1 = g33 = 1e9
            for _ in range(2):
                g1 = min(g1, timed(gen(1)))
                g33 = min(g33, timed(gen(33)))
            out["decode_bf16_tok_s"] = 32 / (g33 - g1)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main():
    if not os.path.exists(os.path.join(MODEL, "model.safetensors")):
        print("building the benchmark checkpoint (once) ...", flush=True)
        build()
    img448, img896 = os.path.join(CACHE, "bench-448.png"), os.path.join(CACHE, "bench-896.png")
    photo(448, img448)
    photo(896, img896)
    weights_mb = os.path.getsize(os.path.join(MODEL, "model.safetensors")) * 2 / 2**20  # f32 size
    # The same build folder as the rest of the project's tooling (CI, the README's commands).
    env = dict(os.environ)
    cmd = ["cargo", "bench", "-q", "-p", "visionthink", "--bench", "model"]
    if os.environ.get("VT_BENCH_BIN"):
        cmd = [os.environ["VT_BENCH_BIN"], "--bench"]
    elif AVX2:
        env["CARGO_TARGET_DIR"] = os.path.join(CACHE, "target-avx2")
        cmd += ["--no-default-features", "--features", "serve,embedded-model"]
    env.setdefault("CARGO_TARGET_DIR", os.path.join(CACHE, "target"))
    ours = json.loads(subprocess.run(
        cmd + ["--", MODEL, img448, img896],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    ref = torch_side(img448, img896)
    if DEVICE == "cuda":
        print(f"mid-size random Qwen2.5-VL (0.5B-scale text, 4-block vision), f32 on {torch.cuda.get_device_name()}; "
              f"torch {torch.__version__} (CUDA {torch.version.cuda}); ours: candle's CUDA backend")
    else:
        print(f"mid-size random Qwen2.5-VL (0.5B-scale text, 4-block vision), f32 on CPU, {THREADS} threads; "
              f"torch {torch.__version__}; kernels: {torch.backends.cpu.get_cpu_capability()} (PyTorch), "
              f"{'AVX2 (built without avx512)' if AVX2 else 'best available'} (ours)")
    print("| measure | PyTorch transformers | visionthink (candle) | ratio |")
    print("|---|---:|---:|---:|")
    rows = [("vision tower 448x448 (ms)", "vision_448_ms", False), ("vision tower 896x896 (ms)", "vision_896_ms", False),
            ("prefill, 512 tokens (tok/s)", "prefill_tok_s", True),
            ("prefill, 5678 tokens (tok/s)", "prefill_long_tok_s", True),
            ("decode with KV cache (tok/s)", "decode_tok_s", True),
            ("peak RSS (MB)", "peak_rss_mb", False)]
    ratios = {}
    for label, key, higher_better in rows:
        a, b = ref[key], ours[key]
        ratio = b / a if higher_better else a / b
        ratios[key] = ratio
        print(f"| {label} | {a:.1f} | {b:.1f} | {ratio:.2f}x |")
    if DEVICE == "cuda":
        a, b = ref["decode_bf16_tok_s"], ours["decode_bf16_tok_s"]
        ratios["decode_bf16_tok_s"] = b / a
        print(f"| decode, bf16 weights (tok/s) | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    else:
        print(f"| ours: read bandwidth, {THREADS} threads (GB/s) | | {ours['read_bandwidth_gb_s']:.1f} | |")
        print(f"| ours: decode / bandwidth bound ({ours['decode_weight_bytes'] / 1e6:.0f} MB per token) | | "
              f"{100 * ours['decode_bandwidth_fraction']:.0f} % | |")
        print(f"| ours: decode, weights kept in bf16 (tok/s) | | {ours['decode_bf16_tok_s']:.1f} | |")
        print(f"| ours: bf16 decode / bandwidth bound ({ours['decode_weight_bytes'] / 2e6:.0f} MB per token) | | "
              f"{100 * ours['decode_bf16_bandwidth_fraction']:.0f} % | |")
    print(f"| f32 weights (MB) | {weights_mb:.0f} | {weights_mb:.0f} | |")
    print(f"| ours: peak RSS / f32 weights | | {ours['peak_rss_mb'] / weights_mb:.2f} | |")
    print(f"| ours: VisionThink episode, low-res answer (s) | | {ours['episode_low_res_s']:.2f} "
          f"({ours['episode_low_res_visual_tokens']} visual tokens) | |")
    print(f"| ours: same answer at full resolution (s) | | {ours['episode_full_res_s']:.2f} "
          f"({ours['episode_full_res_visual_tokens']} visual tokens) | {ours['episode_full_res_s'] / ours['episode_low_res_s']:.2f}x |")
    if "--json" in sys.argv:
        summary = {
            "prefill_512_ratio": ratios["prefill_tok_s"],
            "prefill_long_ratio": ratios["prefill_long_tok_s"],
            "vision_448_ratio": ratios["vision_448_ms"],
            "vision_896_ratio": ratios["vision_896_ms"],
            "decode_ratio": ratios["decode_tok_s"],
        }
        if DEVICE == "cuda":
            summary.update(device="cuda", decode_bf16_ratio=ratios["decode_bf16_tok_s"])
        else:
            summary.update(decode_bandwidth_fraction=ours["decode_bandwidth_fraction"],
                           decode_bf16_bandwidth_fraction=ours["decode_bf16_bandwidth_fraction"])
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
