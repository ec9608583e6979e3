#!/usr/bin/env python
"""Write a small deterministic CIFAR-10-format sample in both public layouts.

Every class has a fixed colour pattern (two colours, a stripe orientation and frequency); each
image adds random brightness, shift and noise, so the 10-way task is learnable. The same images
are written as

* ``<out>/cifar-10-batches-py/``: ``data_batch_1..5``, ``test_batch`` and ``batches.meta``,
  pickled the way the Python release was (Python 2 protocol 2: byte-string keys ``data``
  (uint8 [n, 3072]), ``labels``, ``batch_label``, ``filenames``), and
* ``<out>/cifar-10-batches-bin/``: ``data_batch_1..5.bin``, ``test_batch.bin`` (1 label byte +
  3072 pixel bytes per record) and ``batches.meta.txt``.

``--out`` is FS's ``data.root`` (``data/``), where torchvision and the tarballs put real CIFAR-10,
which is read unchanged.

Usage::

    python scripts/tools/generate_cifar10_sample.py --out data --per-file 100 --seed 0
"""
import argparse
import io
import os
import pickle
import struct
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # runnable from anywhere without installing
    sys.path.insert(0, _ROOT)

from federatedscope.core.auxiliaries.utils import atomic_write_bytes  # noqa: E402
from federatedscope.cv.dataset.cifar10 import (  # noqa: E402
    BIN_DIR, NUM_CLASSES, PY_DIR, ROW, SIDE, TEST_FILES, TRAIN_FILES)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
PATTERN_SEED = 10  # class patterns do not depend on --seed: every sample is the same task


class Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote the release: byte strings as ``str`` opcodes (no
    ``_codecs.encode`` call) and numpy's pre-2.0 module name."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else \
            pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)
    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None) -> None:
        if getattr(obj, "__module__", "") == "numpy._core.multiarray":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n" + obj.__name__.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def class_patterns() -> np.ndarray:
    rng = np.random.default_rng(PATTERN_SEED)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    out = np.empty((NUM_CLASSES, 3, SIDE, SIDE), dtype=np.float64)
    for c in range(NUM_CLASSES):
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        theta, freq = rng.uniform(0, np.pi), rng.uniform(1.5, 4.0)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy))
        out[c] = a[:, None, None] * wave + b[:, None, None] * (1 - wave)
    return out


def make_batch(rng: np.random.Generator, patterns: np.ndarray, n: int):
    y = rng.integers(0, NUM_CLASSES, n)
    x = patterns[y] * rng.uniform(0.7, 1.3, (n, 1, 1, 1))
    shifts = rng.integers(-3, 4, (n, 2))
    for i in range(n):
        x[i] = np.roll(x[i], tuple(shifts[i]), axis=(1, 2))
    x += rng.normal(0, 20, x.shape)
    return np.clip(x, 0, 255).astype(np.uint8).reshape(n, ROW), y.astype(np.int64)


def write_sample(out: str, per_file: int, seed: int, layouts=("py", "bin")):
    rng = np.random.default_rng(seed)
    patterns = class_patterns()
    names = [(n, f"training batch {i + 1} of 5") for i, n in enumerate(TRAIN_FILES)] + \
            [(TEST_FILES[0], "testing batch 1 of 1")]
    written = []
    for name, label in names:
        x, y = make_batch(rng, patterns, per_file)
        if "py" in layouts:
            batch = {b"batch_label": label.encode(), b"labels": [int(v) for v in y], b"data": x,
                     b"filenames": [f"{name}_{i:05d}.png".encode() for i in range(per_file)]}
            path = os.path.join(out, PY_DIR, name)
            atomic_write_bytes(path, py2_pickle(batch))
            written.append(path)
        if "bin" in layouts:
            rec = np.concatenate([y.astype(np.uint8)[:, None], x], axis=1)
            path = os.path.join(out, BIN_DIR, name + ".bin")
            atomic_write_bytes(path, rec.tobytes())
            written.append(path)
    if "py" in layouts:
        meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": per_file,
                b"num_vis": ROW}
        atomic_write_bytes(os.path.join(out, PY_DIR, "batches.meta"), py2_pickle(meta))
    if "bin" in layouts:
        atomic_write_bytes(os.path.join(out, BIN_DIR, "batches.meta.txt"),
                           ("\n".join(CLASSES) + "\n").encode())
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="FS's data.root, e.g. data")
    ap.add_argument("--per-file", type=int, default=100, help="images per batch file "
                    "(the release has 10000)")
    ap.add_argument("--layout", choices=("py", "bin", "both"), default="both")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.per_file < 1:
        ap.error("--per-file must be >= 1")
    layouts = ("py", "bin") if a.layout == "both" else (a.layout,)
    written = write_sample(a.out, a.per_file, a.seed, layouts)
    print(f"wrote {len(written)} batch files ({a.per_file} images each) under {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
