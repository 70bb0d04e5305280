"""GRPO step time: visionthink-train vs TRL's GRPOTrainer, same model, same data, same shapes.

Both train the same HF-format Qwen2.5-VL checkpoint (default: the shipped synthetic model) on
the same synthetic questions, on the CPU, with the same group size, prompts per step, token
budget, temperature, KL coefficient (so both keep a frozen reference) and learning rate. TRL
runs single-turn (it has no resize tool), so ours runs with `rollout.max_rounds = 1` too: a
step is rollouts + rewards + one optimizer update in both. Prints a Markdown table of the mean
step time (first step excluded as warm-up), rollout and update tokens/s where measured, and
peak RSS.

    ~/.cache/visionthink/pyenv/bin/python tests/scripts/bench_grpo_vs_trl.py \\
        --model sdk/visionthink/model --data runs/bench/data --steps 4
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def vt_prompt_text(problem: str) -> str:
    # The VisionThink user template (SPEC §2) around the question; the image is a separate
    # content part for TRL, placed first like the `<image>` line.
    q = problem.split("\n", 1)[1] if problem.startswith("<image>\n") else problem
    return rust_const("USER_TEMPLATE").split("{Question}")[0] + q


def rust_const(name: str) -> str:
    """A string constant of sdk/core/src/strings.rs (the protocol strings, byte-exact)."""
    import re

    src = (ROOT / "sdk" / "core" / "src" / "strings.rs").read_text()
    m = re.search(r"pub const " + name + r': &str = "((?:[^"\\]|\\.)*)";', src, re.S)
    if not m:
        sys.exit(f"{name} not found in strings.rs")
    return m.group(1).encode().decode("unicode_escape")


def run_ours(args, out: Path) -> dict:
    cmd = [
        str(args.trainer), "train", "--config", "native-trainer/configs/synth-grpo.toml",
        "--set", f'run.out="{out}"', "--set", f"run.steps={args.steps}", "--set", f"run.save_every={args.steps + 1}",
        "--set", f'model.init_from="{args.model}"', "--set", f'data.train="{args.data}"',
        "--set", f"rollout.n={args.group}", "--set", f"rollout.max_new_tokens={args.max_new_tokens}",
        "--set", "rollout.max_rounds=1", "--set", f"grpo.prompts_per_step={args.prompts}",
        "--set", f"grpo.mini_batch_prompts={args.prompts}", "--set", "grpo.dynamic_sampling=false",
        "--set", f"grpo.kl_coef={args.beta}", "--set", f"optim.lr={args.lr}",
    ]
    t = time.time()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t
    if p.returncode != 0:
        sys.exit(f"visionthink-train failed:\n{p.stderr[-3000:]}")
    rss = next(int(l.split()[-1]) for l in p.stderr.splitlines() if "Maximum resident set size" in l)
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m["rollout_s"] + m["update_s"] for m in lines]
    return {
        "steps": steps,
        "step_s": sum(steps[1:]) / max(1, len(steps) - 1),
        "rollout_tok_s": sum(m["rollout_tokens_per_s"] for m in lines[1:]) / max(1, len(lines) - 1),
        "update_tok_s": sum(m["update_tokens_per_s"] for m in lines[1:]) / max(1, len(lines) - 1),
        "peak_rss_mb": rss / 1024,
        "wall_s": wall,
    }


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    rows = [json.loads(l) for l in (Path(args.data) / "data.jsonl").read_text().splitlines()]
    rows = rows[: args.prompts * (args.steps + 1)]
    system_prompt = rust_const("SYSTEM_PROMPT")

    def half(path):
        im = Image.open(Path(args.data) / path).convert("RGB")
        return im.resize((im.width // 2, im.height // 2), Image.LANCZOS)

    data = Dataset.from_list([
        {
            "prompt": [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}]
            + [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": vt_prompt_text(r["problem"])}]}],
            "image": half(r["image"]),
            "answer": r["answer"],
        }
        for r in rows
    ])

    def reward(completions, answer, **_):
        out = []
        for c, a in zip(completions, answer):
            text = c[0]["content"] if isinstance(c, list) else c
            pred = text.split("<answer>")[-1].split("</answer>")[0].strip().lower()
            fmt = 0.5 if ("<think>" in text and "</answer>" in text) else 0.0
            out.append(float(pred == a.lower()) + fmt)
        return out

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.model, torch_dtype=torch.float32)
    # Built by hand: AutoProcessor would also build the video processor, which needs torchvision.
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    # (and skip the class check that looks the video processor up, for the same reason).
    Qwen2_5_VLProcessor.check_argument_for_proper_class = lambda *a, **k: None
    tok = AutoTokenizer.from_pretrained(args.model)
    template = json.loads((Path(args.model) / "chat_template.json").read_text())["chat_template"]
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(args.model), tokenizer=tok, chat_template=template
    )
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.time()

        def on_step_end(self, *a, **k):
            times.append(time.time() - self.t)

    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=args.group * args.prompts,
        num_generations=args.group,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        beta=args.beta,
        learning_rate=args.lr,
        max_steps=args.steps,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=processor, callbacks=[Timer()])
    t = time.time()
    trainer.train()
    wall = time.time() - t
    return {
        "steps": times,
        "step_s": sum(times[1:]) / max(1, len(times) - 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "sdk" / "visionthink" / "model"))
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--beta", type=float, default=0.001)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--trainer", default=str(ROOT / "target" / "release" / "visionthink-train"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        ours = run_ours(args, Path(d) / "ours")
    trl = run_trl(args)
    if args.json:
        print(json.dumps({"ours": ours, "trl": trl}))
        return
    print(f"GRPO step (group {args.group}, {args.prompts} prompts, {args.max_new_tokens} new tokens, CPU, {args.threads} threads)\n")
    print("| trainer | mean step (s) | rollout tok/s | update tok/s | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    print(f"| visionthink-train | {ours['step_s']:.2f} | {ours['rollout_tok_s']:.0f} | {ours['update_tok_s']:.0f} | {ours['peak_rss_mb']:.0f} |")
    print(f"| TRL GRPOTrainer | {trl['step_s']:.2f} | – | – | {trl['peak_rss_mb']:.0f} |")
    print(f"\nspeed-up: {trl['step_s'] / ours['step_s']:.2f}x  (per-step seconds: ours {['%.2f' % s for s in ours['steps']]}, TRL {['%.2f' % s for s in trl['steps']]})")


if __name__ == "__main__":
    main()
