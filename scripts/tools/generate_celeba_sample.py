#!/usr/bin/env python
"""Write a small deterministic CelebA-format sample: LEAF JSON plus JPEG files.

Each celebrity (writer) has its own background, skin tone and face geometry; each image is a
178x218 JPEG (CelebA's aligned size) of a drawn face whose mouth is a wide open arc when the
label (LEAF's 'Smiling' attribute) is 1 and a flat line when 0, so the task is learnable; each
writer has its own smiling rate (non-IID). Output, FS's layout ``data/celeba/raw`` where real
LEAF CelebA is dropped too and read unchanged::

    <out>/all_data/all_data_0.json     {"users", "num_samples", "user_data": {id: {"x": [file
                                        names], "y": [0.0/1.0, as LEAF's script writes]}}}
    <out>/img_align_celeba/000001.jpg ...

Usage::

    python scripts/tools/generate_celeba_sample.py --out data/celeba/raw --writers 8 --seed 0
"""
import argparse
import io
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # runnable from anywhere without installing
    sys.path.insert(0, _ROOT)

from federatedscope.core.auxiliaries.utils import atomic_write_bytes  # noqa: E402
from federatedscope.cv.dataset.celeba import IMAGE_DIR  # noqa: E402
from federatedscope.cv.dataset.leaf_json import write_leaf_json  # noqa: E402

W, H = 178, 218


def draw_face(rng: np.random.Generator, style: dict, smiling: int) -> bytes:
    img = Image.new("RGB", (W, H), style["bg"])
    d = ImageDraw.Draw(img)
    cx, cy = W / 2 + rng.normal(0, 4), H / 2 + rng.normal(0, 4)
    rx, ry = style["rx"], style["ry"]
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=style["skin"])
    for ex in (-0.4, 0.4):
        ex = cx + ex * rx
        d.ellipse([ex - 7, cy - 0.3 * ry - 5, ex + 7, cy - 0.3 * ry + 5], fill=(30, 30, 30))
    my, mw = cy + 0.45 * ry, 0.45 * rx
    if smiling:
        d.chord([cx - mw, my - 18, cx + mw, my + 18], 0, 180, fill=(240, 240, 240),
                outline=(120, 20, 20), width=3)
    else:
        d.line([cx - mw, my, cx + mw, my], fill=(120, 20, 20), width=4)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(H, W, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_sample(out: str, writers: int, seed: int, mean_samples: int = 12):
    rng = np.random.default_rng(seed)
    users, k = [], 0
    for w in range(writers):
        style = {"bg": tuple(int(v) for v in rng.integers(0, 256, 3)),
                 "skin": tuple(int(v) for v in rng.integers(140, 240, 3)),
                 "rx": float(rng.uniform(50, 70)), "ry": float(rng.uniform(70, 90))}
        rate = float(rng.uniform(0.15, 0.85))
        n = int(rng.integers(max(2, mean_samples // 2), mean_samples * 3 // 2 + 1))
        names, ys = [], []
        for _ in range(n):
            k += 1
            y = int(rng.random() < rate)
            name = f"{k:06d}.jpg"
            atomic_write_bytes(os.path.join(out, IMAGE_DIR, name), draw_face(rng, style, y))
            names.append(name)
            ys.append(float(y))  # LEAF writes (attr + 1) / 2 of the +-1 attribute: 0.0 / 1.0
        users.append((str(1000 + 7 * w), names, ys))
    path = os.path.join(out, "all_data", "all_data_0.json")
    write_leaf_json(path, users)
    return path, users


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder, e.g. data/celeba/raw")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--samples-per-writer-mean", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.writers < 1 or a.samples_per_writer_mean < 2:
        ap.error("--writers must be >= 1 and --samples-per-writer-mean >= 2")
    path, users = write_sample(a.out, a.writers, a.seed, a.samples_per_writer_mean)
    print(f"wrote {path} and {sum(len(y) for _, _, y in users)} images in "
          f"{os.path.join(a.out, IMAGE_DIR)}: {len(users)} celebrities")
    return 0


if __name__ == "__main__":
    sys.exit(main())
