#!/usr/bin/env python3
"""Preprocessing benchmark: ours (Rust, release) vs the reference (HF Qwen2VLImageProcessorPil +
Pillow) on the same 2048x1536 photo-like PNG, same machine, same session. Prints a table.

Usage: python3 tests/bench/bench_preprocess.py [--reps N] [--json]
With --json the last line is one JSON object of ratios (> 1 = we are faster): full_res_ratio and
low_res_ratio (HF ÷ ours on each path), low_vs_full_ratio (our full-res ÷ our low-res time).
Ours are timed image after image into the previous image's buffers, as the SDK's engine runs
(the "fresh buffers" rows: every buffer allocated anew, as a one-off `preprocess` call).
Needs the fixture venv (created by tests/scripts/gen_fixtures.py) and cargo.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(os.environ.get("VT_CACHE", os.path.expanduser("~/.cache/visionthink")), "pyenv", "bin", "python")
if os.environ.get("VT_BENCH_VENV") != "1":
    if not os.path.exists(VENV):
        sys.exit("run tests/scripts/gen_fixtures.py first (it creates the reference venv)")
    os.execve(VENV, [VENV, os.path.abspath(__file__), *sys.argv[1:]], dict(os.environ, VT_BENCH_VENV="1"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests", "scripts"))
reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 15


def photo_like(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / w * 6.3), 128 + 100 * np.cos(y / h * 4.1), 128 + 80 * np.sin((x + y) / (w + h) * 9)], -1)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def low_res(img):
    w, h = img.size
    img = img.resize((w // 2, h // 2), Image.Resampling.LANCZOS)
    return img


def median_ms(f):
    f()
    ts = []
    for _ in range(reps):
        s = time.perf_counter()
        f()
        ts.append((time.perf_counter() - s) * 1e3)
    return sorted(ts)[len(ts) // 2]


with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "photo_2048x1536.png")
    Image.fromarray(photo_like(2048, 1536, 7)).save(path)
    proc = Qwen2VLImageProcessorPil()

    def py(low):
        img = Image.open(path).convert("RGB")
        if low:
            img = low_res(img)
        proc(images=[img], return_tensors="np")

    py_decode = median_ms(lambda: Image.open(path).convert("RGB").load())
    py_full = median_ms(lambda: py(False))
    py_low = median_ms(lambda: py(True))
    out = subprocess.run(["cargo", "bench", "-q", "-p", "visionthink-core", "--bench", "preprocess", "--", path, str(reps)],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    rs = json.loads(out.strip().splitlines()[-1])

rows = [("decode PNG", py_decode, rs["decode_ms"]), ("full-res path", py_full, rs["full_res_ms"]),
        ("low-res path", py_low, rs["low_res_ms"]),
        ("full-res path, fresh buffers", py_full, rs["full_res_fresh_ms"]),
        ("low-res path, fresh buffers", py_low, rs["low_res_fresh_ms"])]
print(f"2048x1536 photo-like PNG, median of {reps} runs, 1 process each (torch/numpy threads as default)")
print(f"| path | HF Pillow processor (ms) | visionthink-core (ms) | speed-up |")
print(f"|---|---:|---:|---:|")
for name, a, b in rows:
    print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
print(f"| ours: full-res / low-res | | {rs['full_res_ms'] / rs['low_res_ms']:.2f}x | |")
after = (rs['full_res_ms'] - rs['decode_ms']) / max(rs['low_res_ms'] - rs['decode_ms'], 1e-9)
print(f"| ours: the same after the shared decode | | {after:.2f}x | |")
if "--json" in sys.argv:
    print(json.dumps({
        "full_res_ratio": py_full / rs["full_res_ms"],
        "low_res_ratio": py_low / rs["low_res_ms"],
        "low_vs_full_ratio": rs["full_res_ms"] / rs["low_res_ms"],
    }))
