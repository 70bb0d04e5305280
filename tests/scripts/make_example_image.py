#!/usr/bin/env python3
"""The example image built into `visionthink demo`: a large red circle (answerable at half size)
over a small printed serial code (not readable at half size). Deterministic: Pillow 13.0.0 (the
reference version of the fixtures), installed into a venv under $VT_CACHE (default
~/.cache/visionthink) when this Python lacks it.

Usage: python3 tests/scripts/make_example_image.py  → sdk/visionthink/assets/example.png
"""
import os
import subprocess
import sys

PILLOW = "pillow==13.0.0"


def ensure_pillow() -> None:
    try:
        import PIL

        if PIL.__version__ == PILLOW.split("==")[1]:
            return
    except ImportError:
        pass
    if os.environ.get("VT_PILLOW_VENV") == "1":
        sys.exit(f"{PILLOW} is not importable in {sys.executable}")
    cache = os.environ.get("VT_CACHE", os.path.expanduser("~/.cache/visionthink"))
    venv = os.path.join(cache, "pyenv-pillow")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", PILLOW], check=True)
    os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], dict(os.environ, VT_PILLOW_VENV="1"))


ensure_pillow()

from PIL import Image, ImageDraw, ImageFont  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "sdk", "visionthink", "assets", "example.png")

img = Image.new("RGB", (896, 672), (236, 232, 220))
d = ImageDraw.Draw(img)
for y in range(0, 672, 4):
    d.line([(0, y), (896, y)], fill=(236 - y // 24, 232 - y // 30, 220 - y // 20))
d.ellipse([268, 120, 628, 480], fill=(200, 30, 40), outline=(120, 10, 20), width=6)
d.rectangle([330, 530, 566, 566], fill=(250, 250, 245), outline=(60, 60, 60))
font = ImageFont.load_default(size=11)
d.text((342, 540), "SERIAL  K7Q-4829-ZX", fill=(20, 20, 20), font=font)
img.save(OUT, optimize=True)
print(OUT, os.path.getsize(OUT), "bytes")
