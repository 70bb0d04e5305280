#!/usr/bin/env python3
"""GGUF fixtures made by llama.cpp's own converter (issue 14: compatibility is proven on files we
did not write).

The converter is `convert_hf_to_gguf.py` from the llama.cpp sources that the `llama-cpp-python`
sdist on PyPI vendors (downloaded, never built). It reads the hub's checkpoint layout
(`visual.*`, `model.*` names, `architectures` in config.json), so each tiny test checkpoint is
first copied into that layout, unchanged in values (bf16 as committed). Output, per model and
type: `<model>-<type>.gguf` (text) and `<model>-mmproj-<type>.gguf` (vision tower + merger).

Usage: python3 tests/scripts/gen_gguf_fixtures.py OUT_DIR [--types f32,f16,q8_0] [--models tied_nested]
       [--llama-cpp DIR]   (DIR holds convert_hf_to_gguf.py and gguf-py/; default: fetched into
                            ~/.cache/visionthink/llamacpp)
Needs: torch, safetensors, transformers, numpy, sentencepiece (the reference venv has them).
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERSION = "0.3.36"


def llama_cpp_dir(arg):
    if arg:
        return pathlib.Path(arg)
    cache = pathlib.Path.home() / ".cache/visionthink/llamacpp"
    src = cache / f"llama_cpp_python-{VERSION}/vendor/llama.cpp"
    if (src / "convert_hf_to_gguf.py").exists():
        return src
    cache.mkdir(parents=True, exist_ok=True)
    # The simple index's JSON form (PEP 691): some mirrors of PyPI serve it but not the
    # per-release JSON API.
    req = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    meta = json.load(urllib.request.urlopen(req))
    name = f"llama_cpp_python-{VERSION}.tar.gz"
    url = next(f["url"] for f in meta["files"] if f["filename"] == name)
    if not url.startswith("http"):  # an index answering with relative links
        url = urllib.parse.urljoin("https://pypi.org/simple/llama-cpp-python/", url)
    tgz = cache / f"llama_cpp_python-{VERSION}.tar.gz"
    urllib.request.urlretrieve(url, tgz)
    with tarfile.open(tgz) as t:
        t.extractall(cache, filter="data")
    return src


def hub_layout(model, dst):
    """Copies a fixture model into the hub's layout: transformers-4 tensor names, architectures."""
    import torch  # noqa: F401  (safetensors' torch API)
    from safetensors.torch import load_file, save_file

    src = ROOT / "tests/fixtures/models" / model
    dst.mkdir(parents=True)
    tensors = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(f))
    renamed = {}
    for k, v in tensors.items():
        k = k.replace("model.visual.", "visual.", 1) if k.startswith("model.visual.") else k
        k = k.replace("model.language_model.", "model.", 1)
        renamed[k] = v.contiguous()
    save_file(renamed, dst / "model.safetensors", metadata={"format": "pt"})
    for f in src.iterdir():
        if f.suffix == ".safetensors" or f.name.endswith(".index.json"):
            continue
        shutil.copyfile(f.resolve(), dst / f.name)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--types", default="f32,f16,q8_0")
    ap.add_argument("--models", default="tied_nested")
    ap.add_argument("--llama-cpp")
    a = ap.parse_args()
    src = llama_cpp_dir(a.llama_cpp)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models.split(","):
            hub = pathlib.Path(tmp) / model
            hub_layout(model, hub)
            for t in a.types.split(","):
                for mm, name in ((False, f"{model}-{t}.gguf"), (True, f"{model}-mmproj-{t}.gguf")):
                    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(hub),
                           "--outtype", t, "--outfile", str(out / name)]
                    if mm:
                        cmd.insert(3, "--mmproj")
                    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    if r.returncode != 0:
                        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
                    print(name, (out / name).stat().st_size)


if __name__ == "__main__":
    main()
