#!/usr/bin/env python
"""Write a small deterministic Shakespeare-format sample (LEAF JSON).

Each role speaks lines built from a fixed word list with a role-specific word preference, so
next-character prediction is learnable and roles differ (non-IID), like LEAF's plays. As LEAF
does, a role's text is cut into every 80-character window ``x`` with the following character
``y``. Output: ``<out>/all_data/all_data_0.json`` (FS's layout ``data/shakespeare/raw``, where
real LEAF Shakespeare JSON is dropped too and read unchanged).

Usage::

    python scripts/tools/generate_shakespeare_sample.py --out data/shakespeare/raw \\
        --roles 8 --seed 0
"""
import argparse
import os
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # runnable from anywhere without installing
    sys.path.insert(0, _ROOT)

from federatedscope.cv.dataset.leaf_json import write_leaf_json  # noqa: E402
from federatedscope.nlp.dataset.shakespeare import SEQ_LEN  # noqa: E402

WORDS = ("thou art the king and i am thy servant my lord what say you to this good night "
         "sweet prince love hath no fear but death shall come upon us all if it be so then "
         "let me go hence").split()
PLAYS = ("THE_TEMPEST", "HAMLET", "MACBETH")
PUNCT = (",", ".", "!", "?", ";")


def role_text(rng: np.random.Generator, chars: int) -> str:
    pref = rng.dirichlet(np.full(len(WORDS), 0.3))
    out, n = [], 0
    while n < chars:
        words = rng.choice(WORDS, size=int(rng.integers(4, 10)), p=pref)
        line = " ".join(words).capitalize() + PUNCT[int(rng.integers(len(PUNCT)))] + "\n"
        out.append(line)
        n += len(line)
    return "".join(out)


def generate(roles: int, seed: int, mean_samples: int = 40):
    rng = np.random.default_rng(seed)
    users = []
    for r in range(roles):
        n = int(rng.integers(max(2, mean_samples // 2), mean_samples * 3 // 2 + 1))
        text = role_text(rng, n + SEQ_LEN)
        xs = [text[i:i + SEQ_LEN] for i in range(n)]
        ys = [text[i + SEQ_LEN] for i in range(n)]
        users.append((f"{PLAYS[r % len(PLAYS)]}_ROLE{r:03d}", xs, ys))
    return users


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder, e.g. data/shakespeare/raw")
    ap.add_argument("--roles", type=int, default=8)
    ap.add_argument("--samples-per-role-mean", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.roles < 1 or a.samples_per_role_mean < 2:
        ap.error("--roles must be >= 1 and --samples-per-role-mean >= 2")
    path = os.path.join(a.out, "all_data", "all_data_0.json")
    users = generate(a.roles, a.seed, a.samples_per_role_mean)
    write_leaf_json(path, users)
    print(f"wrote {path}: {len(users)} roles, {sum(len(y) for _, _, y in users)} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
