#!/usr/bin/env python
"""Write a deterministic, synthetic FEMNIST-format sample as LEAF JSON files.

Real FEMNIST cannot be downloaded here and no fonts are available, so every one of the 62
classes (10 digits, 26 upper, 26 lower case) gets a procedural glyph template: 2-4 strokes
(lines, arcs, bezier curves) drawn from a shared stroke pool, so classes are distinct but share
parts (and each lower-case letter is a shrunken, slightly altered copy of its upper-case one,
like c/C or o/O in real handwriting). Each writer has a style (shift, slant, scale, stroke width,
ink darkness, noise) and a non-IID label mix; each sample adds its own jitter and a smooth warp.

Output follows LEAF exactly: ``all_data_<i>.json`` with ``users``, ``num_samples`` and
``user_data[uid] = {"x": [[784 floats]], "y": [ints]}``; grey values are exactly ``k/255``
(background 1.0 = white, ink dark), so readers can convert to uint8 losslessly.

``--leaf-size`` writes a data set of real FEMNIST's size and layout: 3,550 writers, 805,263
samples, 100 writers per ``all_data_<k>.json`` (36 files), per-writer counts drawn from a
lognormal with LEAF's mean 226.83 and standard deviation 88.94 (LEAF paper, Table 1) and scaled
to the exact total (``--writers N`` with it: the same distribution, total scaled to N writers).
It is streamed: each file is generated from its own seed and written writer by writer, so
memory is bounded by one file's writers, not by the writer count (the default mode generates
everything at once and keeps its bytes from earlier versions).

Usage::

    python scripts/tools/generate_femnist_sample.py --out data/femnist/raw --writers 60 --seed 0
    python scripts/tools/generate_femnist_sample.py --out data/femnist/raw --leaf-size
"""
import argparse
import os
import sys
import time
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # allow running the script from anywhere without installing
    sys.path.insert(0, _ROOT)

from federatedscope.core.auxiliaries.utils import atomic_write  # noqa: E402

NUM_CLASSES = 62
SIDE = 28
# Templates do not depend on --seed: every sample, whatever its seed, describes the same task.
TEMPLATE_SEED = 20240521
POOL_SIZE = 44
# Glyph units [-1, 1] map to pixels around the canvas centre; real FEMNIST glyphs span ~18 px.
GLYPH_HALF_PX = 9.0
CENTRE_PX = (SIDE - 1) / 2.0
# repr(k/255) is what json.dumps writes for these floats; precomputing the 256 byte strings
# makes writing ~30M pixels a C-level join instead of json.dump over huge float lists.
FLOAT_BYTES: Tuple[bytes, ...] = tuple(repr(k / 255).encode("ascii") for k in range(256))

# Real LEAF FEMNIST (LEAF paper, Table 1): writers, samples, per-writer mean and std.
LEAF_WRITERS, LEAF_SAMPLES, LEAF_MEAN, LEAF_STD = 3550, 805263, 226.83, 88.94
LEAF_WRITERS_PER_FILE = 100

Polyline = np.ndarray  # float [p, 2] glyph-unit points of one stroke


# ---------------------------------------------------------------------------------- templates
def _random_stroke(rng: np.random.Generator) -> Polyline:
    kind = rng.choice(3, p=[0.4, 0.3, 0.3])
    if kind == 0:  # straight line, long enough to be visible
        while True:
            a, b = rng.uniform(-0.9, 0.9, size=(2, 2))
            if np.hypot(*(b - a)) > 0.7:
                return np.stack([a, b])
    if kind == 1:  # circular arc sampled as a 7-point polyline
        r = rng.uniform(0.35, 0.75)
        c = rng.uniform(-0.9 + r, 0.9 - r, size=2)
        t0 = rng.uniform(0, 2 * np.pi)
        t = t0 + np.linspace(0, rng.uniform(0.5, 1.6) * np.pi, 7)
        return np.stack([c[0] + r * np.cos(t), c[1] + r * np.sin(t)], axis=1)
    ctrl = rng.uniform(-0.9, 0.9, size=(4, 2))  # cubic bezier
    u = np.linspace(0, 1, 7)[:, None]
    bern = np.concatenate([(1 - u) ** 3, 3 * u * (1 - u) ** 2, 3 * u ** 2 * (1 - u), u ** 3], 1)
    return bern @ ctrl


def build_templates() -> List[List[Polyline]]:
    """62 classes, each a list of strokes; fixed for all runs (TEMPLATE_SEED)."""
    rng = np.random.default_rng(TEMPLATE_SEED)
    pool = [_random_stroke(rng) for _ in range(POOL_SIZE)]
    combos: List[Tuple[int, ...]] = []
    seen = set()
    while len(combos) < 36:  # digits and upper case: distinct stroke sets
        k = int(rng.integers(2, 5))
        combo = tuple(sorted(rng.choice(POOL_SIZE, size=k, replace=False).tolist()))
        if combo not in seen:
            seen.add(combo)
            combos.append(combo)
    templates = [[pool[i] for i in c] for c in combos]
    for j in range(26):  # lower case = upper case shrunk towards the baseline, one stroke changed
        upper = combos[10 + j]
        strokes = [pool[i] for i in upper]
        if rng.random() < 0.5:
            swap = int(rng.integers(len(strokes)))
            strokes[swap] = _random_stroke(rng)
        # Image y grows downwards: +0.15 moves the glyph towards the baseline.
        templates.append([s * 0.8 + np.array([0.0, 0.15]) for s in strokes])
    return templates


def _class_geometry(strokes: List[Polyline]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten strokes to points, each point's stroke index, and segment start indices."""
    pts = np.concatenate(strokes, 0)
    sid = np.concatenate([np.full(len(s), i) for i, s in enumerate(strokes)])
    starts, off = [], 0
    for s in strokes:
        starts.extend(range(off, off + len(s) - 1))
        off += len(s)
    return pts, sid, np.asarray(starts)


# ---------------------------------------------------------------------------------- rendering
_YY, _XX = np.meshgrid(np.arange(SIDE, dtype=np.float32), np.arange(SIDE, dtype=np.float32),
                       indexing="ij")
_PX, _PY = _XX.reshape(1, 1, -1), _YY.reshape(1, 1, -1)


def render_class(strokes: List[Polyline], p: dict) -> np.ndarray:
    """Render n samples of one class from per-sample parameter arrays ``p``; uint8 [n, 784].

    Everything is a vectorized distance-to-segment field: for n samples and s segments this is
    a handful of [n, s, 784] float32 array ops, no Python loop over pixels or samples.
    """
    pts, sid, starts = _class_geometry(strokes)
    # Per-stroke jitter (each stroke moves a little on its own, like real pen strokes).
    centre = np.stack([pts[sid == i].mean(0) for i in range(len(strokes))])
    rel = pts[None] - centre[sid][None]                                      # [1, P, 2]
    ang, sc = p["stroke_rot"][:, sid], p["stroke_scale"][:, sid]             # [n, P]
    cos, sin = np.cos(ang), np.sin(ang)
    cx, cy = centre[sid][None, :, 0], centre[sid][None, :, 1]
    x = sc * (cos * rel[..., 0] - sin * rel[..., 1]) + cx + p["stroke_dx"][:, sid]
    y = sc * (sin * rel[..., 0] + cos * rel[..., 1]) + cy + p["stroke_dy"][:, sid]
    # Smooth elastic warp: low-frequency sines, so curves bend rather than break.
    x = x + p["warp_a"][:, None] * np.sin(p["warp_f"][:, None] * y + p["warp_ph"][:, None])
    y = y + p["warp_b"][:, None] * np.sin(p["warp_g"][:, None] * x + p["warp_ps"][:, None])
    # Global affine: rotation, slant (shear), scale, then glyph units -> pixels plus shift.
    cos, sin = np.cos(p["rot"])[:, None], np.sin(p["rot"])[:, None]
    x, y = cos * x - sin * y, sin * x + cos * y
    x = x + p["shear"][:, None] * y
    s = (p["scale"] * GLYPH_HALF_PX)[:, None]
    gx = (CENTRE_PX + p["dx"][:, None] + s * x).astype(np.float32)
    gy = (CENTRE_PX + p["dy"][:, None] + s * y).astype(np.float32)

    ax, ay = gx[:, starts, None], gy[:, starts, None]                        # [n, S, 1]
    vx, vy = gx[:, starts + 1, None] - ax, gy[:, starts + 1, None] - ay
    inv = 1.0 / np.maximum(vx * vx + vy * vy, 1e-6)
    wx, wy = _PX - ax, _PY - ay                                              # [n, S, 784]
    t = np.clip((wx * vx + wy * vy) * inv, 0.0, 1.0)
    wx -= t * vx
    wy -= t * vy
    dist = np.sqrt(np.min(wx * wx + wy * wy, axis=1))                        # [n, 784]
    # Anti-aliased coverage of a pen of the given width (1 pixel ramp at the edge).
    cover = np.clip(p["width"][:, None] / 2 + 0.5 - dist, 0.0, 1.0)
    ink = cover * p["dark"][:, None] + p["noise"] * (cover > 0)
    grey = np.clip(1.0 - ink, 0.0, 1.0)
    return np.rint(grey * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------- sampling
def leaf_counts(writers: int, seed: int) -> np.ndarray:
    """Per-writer sample counts with LEAF FEMNIST's mean and std (lognormal, at least 10),
    scaled so they sum to LEAF's total per writer exactly (805,263 at 3,550 writers)."""
    sigma2 = np.log(1 + (LEAF_STD / LEAF_MEAN) ** 2)     # lognormal with that mean and std
    rng = np.random.default_rng([seed, 0x1EAF])
    raw = rng.lognormal(np.log(LEAF_MEAN) - sigma2 / 2, np.sqrt(sigma2), writers)
    total = int(round(LEAF_SAMPLES * writers / LEAF_WRITERS))
    counts = np.maximum(10, np.floor(raw * total / raw.sum())).astype(np.int64)
    short = total - int(counts.sum())                      # floor lost a few: hand them out
    order = np.argsort(-(raw * total / raw.sum() - counts), kind="stable")
    if short >= 0:
        counts[order[:short]] += 1
    else:                                                  # the floor of 10 added a few
        counts[np.argsort(-counts, kind="stable")[:-short]] -= 1
    return counts


def _writer_plan(rng: np.random.Generator, writers: int, mean: float,
                 counts: Optional[np.ndarray] = None, first: int = 0):
    """Per-writer ids, sample counts (lognormal, clipped like FEMNIST, unless ``counts`` are
    given) and label sequences; writer ids are numbered from ``first``."""
    sigma = 0.6
    drawn = np.clip(np.rint(rng.lognormal(np.log(mean) - sigma ** 2 / 2, sigma, writers)),
                    20, 450).astype(np.int64)
    counts = drawn if counts is None else np.asarray(counts, dtype=np.int64)
    # FEMNIST is digit-heavy; each writer draws its own class mix around that prior (non-IID).
    prior = np.r_[np.full(10, 3.0), np.full(52, 1.0)]
    prior /= prior.sum()
    labels = [rng.choice(NUM_CLASSES, size=int(c), p=rng.dirichlet(prior * 40.0)) for c in counts]
    suffix = rng.integers(0, 100, size=writers)
    ids = ["f%04d_%02d" % (first + i, suffix[i]) for i in range(writers)]
    return ids, counts, labels


def _sample_params(rng: np.random.Generator, writer_of: np.ndarray, writers: int) -> dict:
    """Writer style (indexed by writer_of) plus per-sample jitter; all arrays length n."""
    n = writer_of.shape[0]
    style = {
        "dx": rng.uniform(-1.5, 1.5, writers), "dy": rng.uniform(-1.5, 1.5, writers),
        "shear": rng.uniform(-0.35, 0.35, writers), "scale": rng.uniform(0.75, 1.2, writers),
        "width": rng.uniform(0.7, 1.4, writers), "dark": rng.uniform(0.6, 0.95, writers),
        "noise_sd": rng.uniform(0.0, 0.08, writers), "rot": rng.uniform(-0.12, 0.12, writers),
    }
    w = {k: v[writer_of] for k, v in style.items()}
    s = 24  # per-stroke jitter arrays are drawn wide enough for any class (<= 4 strokes used)
    return {
        "dx": w["dx"] + rng.normal(0, 0.8, n), "dy": w["dy"] + rng.normal(0, 0.8, n),
        "shear": w["shear"] + rng.normal(0, 0.08, n),
        "scale": w["scale"] * np.exp(rng.normal(0, 0.07, n)),
        "rot": w["rot"] + rng.normal(0, 0.08, n),
        "width": np.clip(w["width"] + rng.normal(0, 0.12, n), 0.6, 2.0),
        "dark": np.clip(w["dark"] + rng.normal(0, 0.05, n), 0.45, 1.0),
        "stroke_rot": rng.normal(0, 0.15, (n, s)),
        "stroke_scale": np.exp(rng.normal(0, 0.1, (n, s))),
        "stroke_dx": rng.normal(0, 0.1, (n, s)), "stroke_dy": rng.normal(0, 0.1, (n, s)),
        "warp_a": rng.normal(0, 0.08, n), "warp_b": rng.normal(0, 0.08, n),
        "warp_f": rng.uniform(1.0, 3.0, n), "warp_g": rng.uniform(1.0, 3.0, n),
        "warp_ph": rng.uniform(0, 2 * np.pi, n), "warp_ps": rng.uniform(0, 2 * np.pi, n),
        "noise": w["noise_sd"][:, None] * rng.standard_normal((n, SIDE * SIDE)).astype(np.float32),
    }


def generate(writers: int, seed, mean: float = 200.0, chunk: int = 512,
             counts: Optional[np.ndarray] = None, first: int = 0):
    """Return (writer_ids, counts, images uint8 [N, 784], labels int64 [N]), writer-major order.
    ``seed`` is anything ``np.random.default_rng`` takes (streamed files pass [seed, file])."""
    rng = np.random.default_rng(seed)
    ids, counts, labels_per_writer = _writer_plan(rng, writers, mean, counts, first)
    labels = np.concatenate(labels_per_writer).astype(np.int64)
    writer_of = np.repeat(np.arange(writers), counts)
    params = _sample_params(rng, writer_of, writers)
    templates = build_templates()
    images = np.empty((labels.shape[0], SIDE * SIDE), dtype=np.uint8)
    for c in range(NUM_CLASSES):  # same class = same segment count, so batches need no padding
        idx = np.flatnonzero(labels == c)
        for lo in range(0, idx.shape[0], chunk):
            sel = idx[lo:lo + chunk]
            images[sel] = render_class(templates[c], {k: v[sel] for k, v in params.items()})
    return ids, counts, images, labels


# ---------------------------------------------------------------------------------- writing
def _json_str(s: str) -> bytes:
    return b'"' + s.encode("ascii") + b'"'


def leaf_file_chunks(ids: Sequence[str], counts: np.ndarray, images: np.ndarray,
                     labels: np.ndarray) -> Iterator[bytes]:
    """One LEAF file, serialized by hand writer by writer: the same text json.dumps would give,
    much faster, and never more than one writer's text in memory."""
    get = FLOAT_BYTES.__getitem__
    yield b"".join([b'{"users": [', b", ".join(_json_str(u) for u in ids), b'], "num_samples": [',
                    b", ".join(str(int(c)).encode() for c in counts), b'], "user_data": {'])
    off = 0
    for w, (uid, c) in enumerate(zip(ids, counts)):
        rows = b", ".join(b"[" + b", ".join(map(get, images[i].tobytes())) + b"]"
                          for i in range(off, off + int(c)))
        ys = b", ".join(str(int(v)).encode() for v in labels[off:off + int(c)])
        yield (b", " if w else b"") + _json_str(uid) + b': {"x": [' + rows + b'], "y": [' + ys + b"]}"
        off += int(c)
    yield b"}}"


def leaf_file_bytes(ids: Sequence[str], counts: np.ndarray, images: np.ndarray,
                    labels: np.ndarray) -> bytes:
    return b"".join(leaf_file_chunks(ids, counts, images, labels))


def _write_leaf_file(path: str, part) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            for chunk in leaf_file_chunks(*part):
                f.write(chunk)
    atomic_write(path, write)


def write_sample(out: str, writers: int, seed: int, mean: float = 200.0,
                 writers_per_file: int = 100, leaf: bool = False) -> Tuple[int, int]:
    """Generate and write ``all_data_<i>.json`` files; returns (samples, files). ``leaf``: LEAF's
    per-writer count distribution, streamed file by file (see the module docstring)."""
    if writers < 1 or writers_per_file < 1:
        raise ValueError("--writers and --writers-per-file must be >= 1")
    bounds = list(range(0, writers, writers_per_file)) + [writers]
    if not leaf:
        ids, counts, images, labels = generate(writers, seed, mean)
        offsets = np.r_[0, np.cumsum(counts)]
    else:
        all_counts = leaf_counts(writers, seed)
    samples = 0
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        if leaf:   # this file's writers only: memory does not grow with the writer count
            part = generate(hi - lo, [seed, i], mean, counts=all_counts[lo:hi], first=lo)
        else:
            a, b = offsets[lo], offsets[hi]
            part = (ids[lo:hi], counts[lo:hi], images[a:b], labels[a:b])
        _write_leaf_file(os.path.join(out, "all_data_%d.json" % i), part)
        samples += int(np.sum(part[1]))
        del part
    return samples, len(bounds) - 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder, e.g. data/femnist/raw")
    ap.add_argument("--writers", type=int, default=None,
                    help=f"required unless --leaf-size (then default {LEAF_WRITERS})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples-per-writer-mean", type=float, default=200.0)
    ap.add_argument("--writers-per-file", type=int, default=100)
    ap.add_argument("--leaf-size", action="store_true",
                    help="real FEMNIST's size and per-writer count distribution, streamed")
    args = ap.parse_args(argv)
    if args.writers is None and not args.leaf_size:
        ap.error("--writers is required (or --leaf-size for real FEMNIST's 3,550 writers)")
    t0 = time.time()
    samples, files = write_sample(args.out, args.writers or LEAF_WRITERS, args.seed,
                                  args.samples_per_writer_mean, args.writers_per_file,
                                  leaf=args.leaf_size)
    print("generated FEMNIST sample: writers=%d samples=%d files=%d seconds=%.1f out=%s"
          % (args.writers, samples, files, time.time() - t0, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
