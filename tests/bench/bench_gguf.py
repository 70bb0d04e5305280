#!/usr/bin/env python3
"""GGUF benchmark (issue 14): visionthink (candle's quantized CPU kernels) vs llama.cpp on the same
files, same machine, same run, 2 threads; plus compatibility both ways.

Builds once into $VT_CACHE (default ~/.cache/visionthink):
  - llama.cpp from the llama-cpp-python sdist's vendored sources (cmake/ninja from PyPI; targets
    llama-bench, llama-simple, llama-quantize, llama-mtmd-cli; CPU, native);
  - a random checkpoint of the 0.5B benchmark shape (`visionthink-train random-checkpoint --shape
    0.5b`: Qwen2.5-0.5B's text decoder + 4 vision blocks of the real width), converted by
    llama.cpp's own convert_hf_to_gguf.py to F16 (+ F16 mmproj) and by llama-quantize to Q8_0,
    Q4_0 and Q4_K_M.

Measures, per type: prompt processing of 512 tokens and generation of 64 tokens (tokens/s, as
llama-bench defines them) for llama.cpp and for us (`cargo bench -p visionthink-model --bench
gguf`), our load time and peak RSS against the file sizes; fidelity of each quantized file against
the same checkpoint in f32 (argmax and top-5 of `visionthink logits`); and llama.cpp reading our
`visionthink convert` output (llama-bench and llama-simple on it: same greedy text as ours).

Usage: python3 tests/bench/bench_gguf.py [--json]   (the last line with --json: one JSON object)
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("VT_CACHE", os.path.expanduser("~/.cache/visionthink"))
PY = os.path.join(CACHE, "pyenv", "bin", "python")
B = os.path.join(CACHE, "bench-gguf")
THREADS = os.environ.get("VT_BENCH_THREADS", "2")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(CACHE, "target"))
os.environ["CARGO_TARGET_DIR"] = TARGET  # every cargo call below builds into the shared cache


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stderr[-3000:]}")
    return r.stdout


def cpu_flags():
    return next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])


def llama_cpp():
    """llama.cpp built for this CPU's vector instructions, AMX left out: `-march=native` turns on
    AMX where the CPU has it, and a kernel or VM that does not grant AMX state (this project's
    Xeon machines) kills llama-bench with SIGILL at the first tile instruction. With
    VT_BENCH_AVX2=1, an AVX2-only build (AVX-512 off) in build-avx2, for the AVX2 column."""
    sys.path.insert(0, os.path.join(ROOT, "tests/scripts"))
    from gen_gguf_fixtures import llama_cpp_dir
    src = llama_cpp_dir(None)
    avx2_only = os.environ.get("VT_BENCH_AVX2") == "1"
    build = "build-avx2" if avx2_only else "build-noamx"
    binp = os.path.join(src, build, "bin")
    if not os.path.exists(os.path.join(binp, "llama-bench")):
        run([PY, "-m", "pip", "install", "-q", "cmake", "ninja"])
        env = dict(os.environ, PATH=os.path.dirname(PY) + ":" + os.environ["PATH"])
        flags = set(cpu_flags())
        isa = {"GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c",
               "GGML_BMI2": "bmi2"}
        if not avx2_only:
            isa.update({"GGML_AVX512": "avx512f", "GGML_AVX512_VBMI": "avx512vbmi",
                        "GGML_AVX512_VNNI": "avx512_vnni", "GGML_AVX512_BF16": "avx512_bf16"})
        opts = [f"-D{k}={'ON' if v in flags else 'OFF'}" for k, v in isa.items()]
        run(["cmake", "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF",
             *opts, "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF"],
            cwd=src, env=env)
        run(["cmake", "--build", build, "--target", "llama-bench", "llama-simple", "llama-quantize",
             "llama-mtmd-cli", "-j", "2"], cwd=src, env=env)
    return src, binp


def files(src, binp):
    os.makedirs(B, exist_ok=True)
    hf = os.path.join(B, "hf-0.5b")
    if not os.path.exists(os.path.join(hf, "config.json")):
        run(["cargo", "run", "--release", "-q", "-p", "visionthink-train", "--", "random-checkpoint",
             "--shape", "0.5b", "--out", hf], cwd=ROOT)
    env = dict(os.environ, PYTHONPATH=os.path.join(src, "gguf-py"))
    conv = os.path.join(src, "convert_hf_to_gguf.py")
    f16, mm = os.path.join(B, "vt05-f16.gguf"), os.path.join(B, "mmproj-vt05-f16.gguf")
    if not os.path.exists(f16):
        run([PY, conv, hf, "--outtype", "f16", "--outfile", f16], env=env)
    if not os.path.exists(mm):
        run([PY, conv, hf, "--mmproj", "--outtype", "f16", "--outfile", mm], env=env)
    out = {}
    for q in ["Q8_0", "Q4_0", "Q4_K_M"]:
        p = os.path.join(B, f"vt05-{q}.gguf")
        if not os.path.exists(p):
            run([os.path.join(binp, "llama-quantize"), f16, p, q, THREADS])
        out[q] = p
    return hf, mm, out


def llama_bench(binp, path):
    o = json.loads(run([os.path.join(binp, "llama-bench"), "-m", path, "-t", THREADS, "-p", "512",
                        "-n", "64", "-r", "2", "-o", "json"]))
    pp = next(r["avg_ts"] for r in o if r["n_prompt"] == 512)
    tg = next(r["avg_ts"] for r in o if r["n_gen"] == 64)
    return pp, tg


def ours_bench(path, mm):
    out = run(["cargo", "bench", "-q", "-p", "visionthink-model", "--bench", "gguf", "--", path, mm, "2"],
              cwd=ROOT, env=dict(os.environ, RAYON_NUM_THREADS=THREADS))
    return json.loads(out.strip().splitlines()[-1])


def vt():
    exe = os.path.join(TARGET, "release", "visionthink")
    if not os.path.exists(exe):
        run(["cargo", "build", "--release", "-q", "-p", "visionthink"], cwd=ROOT)
    return exe


def logits(exe, model_args):
    prompt = os.path.join(ROOT, "tests/fixtures/golden/prompt_one_image_lowres.txt")
    img = os.path.join(ROOT, "tests/fixtures/images/photo_640x480.png")
    return json.loads(run([exe, "logits", *model_args, "--prompt-file", prompt, "--image", img, "--json"]))


def main():
    as_json = "--json" in sys.argv
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    avx512 = " avx512f" in open("/proc/cpuinfo").read()
    src, binp = llama_cpp()
    hf, mm, quants = files(src, binp)
    exe = vt()
    ref = logits(exe, ["--model-dir", hf])
    rows, result = [], {"cpu": cpu, "avx512": avx512, "threads": int(THREADS)}
    for q, path in quants.items():
        print(f"measuring {q}", file=sys.stderr, flush=True)
        lpp, ltg = llama_bench(binp, path)
        o = ours_bench(path, mm)
        got = logits(exe, ["--model", path, "--mmproj", mm])
        top = lambda v: [p[0] for p in v["top5"]]
        size = os.path.getsize(path) + os.path.getsize(mm)
        r = {
            "pp512_llama": lpp, "tg64_llama": ltg, "pp512_ours": o["pp512_tps"], "tg64_ours": o["tg64_tps"],
            "pp512_ratio": o["pp512_tps"] / lpp, "tg64_ratio": o["tg64_tps"] / ltg,
            "load_s": o["load_s"], "peak_rss_gb": o["peak_rss_bytes"] / 1e9, "files_gb": size / 1e9,
            "rss_over_files": o["peak_rss_bytes"] / size,
            "argmax_equal": got["argmax"] == ref["argmax"],
            "top5_overlap": len(set(top(got)) & set(top(ref))),
        }
        result[q] = r
        rows.append((q, r))
    # llama.cpp reads our converter's output: bench it and compare greedy text.
    ours_dir = os.path.join(B, "ours-q4_k")
    if not os.path.exists(os.path.join(ours_dir, "visionthink-manifest.json")):
        run([exe, "convert", "--from", hf, "--out", ours_dir, "--quant", "q4_k"])
    man = json.load(open(os.path.join(ours_dir, "visionthink-manifest.json")))
    text, mmp = (os.path.join(ours_dir, man["gguf"][k]) for k in ("model", "mmproj"))
    lpp, ltg = llama_bench(binp, text)
    prompt = "The capital of France is"
    simple = run([os.path.join(binp, "llama-simple"), "-m", text, "-n", "16", prompt])
    with open(os.path.join(B, "prompt.txt"), "w") as f:
        f.write(prompt)
    gen = json.loads(run([exe, "generate", "--model", text, "--mmproj", mmp, "--prompt-file",
                          os.path.join(B, "prompt.txt"), "--max-new-tokens", "16", "--greedy", "--ignore-eos", "--json"]))
    # How much of the greedy continuation llama.cpp and we share, in characters (random weights
    # make near-ties, which the two engines' float orders can break differently after a while).
    theirs = simple[simple.find(prompt) + len(prompt):] if prompt in simple else ""
    ours_text = gen["text"]
    common = next((i for i, (a, b) in enumerate(zip(theirs, ours_text)) if a != b), min(len(theirs), len(ours_text)))
    result["our_q4_k_in_llama_cpp"] = {"pp512": lpp, "tg64": ltg,
                                       "same_greedy_text": ours_text.strip() != "" and theirs.startswith(ours_text),
                                       "greedy_common_chars": common, "greedy_chars": len(ours_text),
                                       "llama_text": theirs[:200], "our_text": ours_text}
    print(f"CPU: {cpu} (AVX-512: {avx512}), {THREADS} threads")
    print(f"{'type':8} {'pp512 ours':>11} {'llama.cpp':>10} {'ratio':>6} {'tg64 ours':>10} {'llama.cpp':>10} {'ratio':>6} "
          f"{'load s':>7} {'RSS/file':>8} {'argmax':>6} {'top5':>4}")
    for q, r in rows:
        print(f"{q:8} {r['pp512_ours']:11.1f} {r['pp512_llama']:10.1f} {r['pp512_ratio']:6.2f} {r['tg64_ours']:10.1f} "
              f"{r['tg64_llama']:10.1f} {r['tg64_ratio']:6.2f} {r['load_s']:7.2f} {r['rss_over_files']:8.2f} "
              f"{str(r['argmax_equal']):>6} {r['top5_overlap']:4}")
    g = result["our_q4_k_in_llama_cpp"]
    print(f"our q4_k file in llama.cpp: pp512 {lpp:.1f} t/s, tg64 {ltg:.1f} t/s, same greedy text: "
          f"{g['same_greedy_text']} (the first {g['greedy_common_chars']} of {g['greedy_chars']} characters shared)")
    if as_json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
