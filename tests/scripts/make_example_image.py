#!/usr/bin/env python3
"""The example image built into `visionthink demo`: a large red circle (answerable at half size)
over a small printed serial code (not readable at half size). Deterministic; needs Pillow.

Usage: python3 tests/scripts/make_example_image.py  → sdk/visionthink/assets/example.png
"""
import os

from PIL import Image, ImageDraw, ImageFont

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
