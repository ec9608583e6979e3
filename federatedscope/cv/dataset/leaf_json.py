"""LEAF's on-disk layout, shared by the LEAF datasets whose samples are not FEMNIST's floats
(CelebA here, Shakespeare in ``nlp/``): where the JSON files are, and each writer's raw
``x``/``y`` lists with LEAF's bookkeeping checked.

LEAF JSON is ``{"users": [...], "num_samples": [...], "user_data": {uid: {"x": [...],
"y": [...]}}}``. It is looked for, in order, in FS's ``<root>/<name>/raw`` and LEAF's own
``<root>/<name>/data``, each as LEAF's ``train/`` + ``test/`` folders, else ``*.json``, else
``all_data/*.json`` (FS's download layout and LEAF's preprocess output).
"""
import glob
import json
import logging
import os
from typing import Iterator, List, Optional, Tuple

import numpy as np

from federatedscope.cv.dataset.leaf_checks import check_users

logger = logging.getLogger("federatedscope")

LeafFile = Tuple[str, Optional[str]]   # (path, 'train'/'test' for LEAF's split tree, else None)


def _json_in(folder: str) -> List[str]:
    return sorted(glob.glob(os.path.join(folder, "*.json")))


def leaf_layout(raw_dir: str) -> List[LeafFile]:
    train, test = _json_in(os.path.join(raw_dir, "train")), _json_in(os.path.join(raw_dir, "test"))
    if train and test:
        return [(p, "train") for p in train] + [(p, "test") for p in test]
    files = _json_in(raw_dir) or _json_in(os.path.join(raw_dir, "all_data"))
    return [(p, None) for p in files]


def leaf_dirs(root: str, name: str) -> List[str]:
    return [os.path.join(root, name, "raw"), os.path.join(root, name, "data")]


def find_leaf_input(root: str, name: str) -> Tuple[str, List[LeafFile]]:
    """(directory, files) of the first place under ``root`` holding LEAF JSON for ``name``;
    FileNotFoundError listing every place looked at otherwise."""
    for d in leaf_dirs(root, name):
        files = leaf_layout(d) if os.path.isdir(d) else []
        if files:
            return d, files
    looked = []
    for d in leaf_dirs(root, name):
        looked += [f"{d}/train/*.json + {d}/test/*.json", f"{d}/*.json", f"{d}/all_data/*.json"]
    raise FileNotFoundError(
        f"no LEAF {name} JSON under {root}; looked in: {', '.join(looked)}. To fix it, drop "
        f"LEAF's {name} output there, or generate a sample with `python scripts/tools/"
        f"generate_{name}_sample.py --out {leaf_dirs(root, name)[0]}`")


def list_leaf_inputs(root: str, name: str) -> List[str]:
    return [p for p, _ in find_leaf_input(root, name)[1]]


def load_leaf_json(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-run LEAF's preprocessing or replace "
                         f"the file") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("user_data"), dict):
        raise ValueError(f"{path}: not a LEAF file (needs a 'user_data' object)")
    return raw


def iter_leaf_users(path: str) -> Iterator[Tuple[str, list, list]]:
    """(writer id, x list, y list) of every writer with samples in one LEAF file, in the
    file's ``users`` order; writers with 0 samples are skipped with a warning (they can train
    nothing). Each writer's lists are dropped once the caller moves on."""
    raw = load_leaf_json(path)
    skipped = []
    for uid in check_users(raw, path):
        entry = raw["user_data"][uid]
        where = f"{path}, writer {uid}"
        if not isinstance(entry, dict) or not isinstance(entry.get("x"), list) \
                or not isinstance(entry.get("y"), list):
            raise ValueError(f"{where}: needs an object with arrays 'x' and 'y'")
        if len(entry["x"]) != len(entry["y"]):
            raise ValueError(f"{where}: {len(entry['x'])} samples but {len(entry['y'])} labels")
        if not entry["y"]:
            skipped.append(uid)
            continue
        yield str(uid), entry["x"], entry["y"]
        entry.clear()
    if skipped:
        logger.warning("%s: skipped %d writer(s) with 0 samples (%s)", path, len(skipped),
                       ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))


def int_labels(ys: list, where: str, num_classes: int,
               integral_floats: bool = False) -> np.ndarray:
    """JSON integers in [0, num_classes); "1", true and 0.5 are errors, never coerced. With
    ``integral_floats``, 0.0/1.0/... count as integers (LEAF's CelebA script writes its labels
    as ``(attr + 1) / 2``, floats under Python 3)."""
    kinds = (int, float) if integral_floats else (int,)
    for i, v in enumerate(ys):
        if type(v) not in kinds or not 0 <= v < num_classes or v != int(v):  # NaN fails 0 <= v
            raise ValueError(f"{where}, sample {i}: label {v!r} is not a JSON integer in "
                             f"[0, {num_classes}); fix the file (re-run LEAF's preprocessing)")
    return np.asarray(ys, dtype=np.float64 if integral_floats else np.int64).astype(np.int64)


def write_leaf_json(path: str, users: List[Tuple[str, list, list]]) -> None:
    """Write one LEAF JSON file (atomically) of (writer id, x list, y list); the sample
    generators' single writer of the format this module reads."""
    from federatedscope.core.auxiliaries.utils import atomic_write_bytes
    doc = {"users": [u for u, _, _ in users], "num_samples": [len(y) for _, _, y in users],
           "user_data": {u: {"x": x, "y": y} for u, x, y in users}}
    atomic_write_bytes(path, json.dumps(doc).encode("utf-8"))
