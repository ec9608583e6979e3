"""The partition plan of the sharding tool: which writers, which client, which split.

Pure functions over writer ids, labels and spill row numbers (no samples), so they are cheap
and unit-testable. ``writer_split`` is THE per-writer train/val/test rule: the FS-style reader
(``cv/dataset/leaf_femnist.split_writer``) applies it to samples, the tool to row numbers, so
shard mode and the data_idx path see the same samples.
"""
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from federatedscope.core.data.shard_format.checks import SPLITS

STRATEGIES = ("sequential", "random", "manual")
# FS's splitters: samples (not writers) dealt to clients by label (``sharding_input.deal_parts``)
SAMPLE_STRATEGIES = ("lda", "iid")
Rows = Tuple[np.ndarray, np.ndarray]  # (row numbers, int64 labels)


class ShardingError(ValueError):
    """A user-caused sharding problem; the message says what to run instead."""


@dataclass
class Part:
    """One writer's samples from one input (a LEAF split, or unsplit): spill rows row..row+n."""
    row: int
    y: np.ndarray
    source: str


@dataclass
class Plan:
    clients: Dict[int, List[str]]  # client id (1..N) -> writer ids, in writer order
    source: Dict[str, Any]
    id: str


def natural_key(s: str) -> List[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def writer_order(ids: Sequence[str]) -> List[str]:
    """Sorted writer ids, as FS's loaders sort them; ids that are all one prefix plus a number
    (FS's processed ``task_<k>``) in numeric order, so task_10 follows task_9."""
    m = [re.fullmatch(r"(\D*)(\d+)", w) for w in ids]
    if ids and all(m) and len({x.group(1) for x in m}) == 1:
        return sorted(ids, key=natural_key)
    return sorted(ids)


def subsample_writers(ids: List[str], subsample: float, seed: int, strategy: str) -> List[str]:
    """The same writer subset as ``load_femnist_tasks`` for the same (subsample, seed)."""
    if not 0.0 < subsample <= 1.0:
        raise ShardingError(f"--subsample {subsample} must be in (0, 1]")
    if subsample < 1.0 and strategy == "manual":
        raise ShardingError("--subsample cannot be combined with --strategy manual: the "
                            "assignment file already chooses the writers")
    if subsample >= 1.0:
        return list(ids)
    n_keep = min(len(ids), max(1, int(math.ceil(len(ids) * subsample))))
    chosen = np.sort(np.random.default_rng(seed % (2 ** 63)).permutation(len(ids))[:n_keep])
    return [ids[i] for i in chosen]


def assign(chosen: List[str], all_ids: List[str], n: int, strategy: str, seed: int,
           assignment: str) -> Dict[int, List[str]]:
    """client id -> writers; a writer is never split across clients."""
    if strategy not in STRATEGIES:
        raise ShardingError(f"--strategy {strategy!r}: choose one of {list(STRATEGIES)}")
    if n < 1:
        raise ShardingError(f"--clients {n} must be >= 1")
    if strategy == "manual":
        if not assignment:
            raise ShardingError("--strategy manual needs --assignment FILE.json "
                                "({\"1\": [writer ids], \"2\": [...], ...})")
        return load_assignment(assignment, n, all_ids)
    if assignment:
        raise ShardingError("--assignment is only used with --strategy manual")
    if n > len(chosen):
        raise ShardingError(f"--clients {n} but only {len(chosen)} writers are available; writers "
                            f"are never split across clients, so use --clients <= {len(chosen)}")
    order = list(chosen)
    if strategy == "random":
        perm = np.random.default_rng([seed % (2 ** 63), 1]).permutation(len(order))
        order = [order[i] for i in perm]
    rank = {w: i for i, w in enumerate(chosen)}
    return {k + 1: sorted(order[a:b], key=rank.__getitem__)
            for k, (a, b) in enumerate(group_bounds(len(order), n))}


def group_bounds(items: int, groups: int) -> List[Tuple[int, int]]:
    """[a, b) of ``groups`` contiguous groups over ``items``: sizes differ by at most one, the
    larger ones first (FS's sequential assignment), none empty when items >= groups."""
    q, r = divmod(items, groups)
    out, a = [], 0
    for k in range(groups):
        b = a + q + (1 if k < r else 0)
        out.append((a, b))
        a = b
    return out


def load_assignment(path: str, n: int, known: Sequence[str]) -> Dict[int, List[str]]:
    """Validate ``{"<client id>": [writer ids]}``: ids exactly 1..N, writers exist, none twice."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ShardingError(f"--assignment {path}: file not found") from None
    except ValueError as e:
        raise ShardingError(f"--assignment {path}: malformed JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ShardingError(f"--assignment {path}: must be a JSON object mapping client id to a "
                            f"list of writer ids")
    out: Dict[int, List[str]] = {}
    for key, ws in raw.items():
        if not re.fullmatch(r"[1-9][0-9]*", str(key)):
            raise ShardingError(f"--assignment {path}: client id {key!r} is not a positive integer")
        if not isinstance(ws, list) or not ws or not all(isinstance(w, str) for w in ws):
            raise ShardingError(f"--assignment {path}: client {key} needs a non-empty list of "
                                f"writer id strings")
        out[int(key)] = ws
    if sorted(out) != list(range(1, n + 1)):
        raise ShardingError(f"--assignment {path}: client ids must be exactly 1..{n} (--clients "
                            f"{n}), got {sorted(out)[:10]}")
    known_set, seen = set(known), {}
    rank = {w: i for i, w in enumerate(known)}
    for k in sorted(out):
        for w in out[k]:
            if w not in known_set:
                raise ShardingError(f"--assignment {path}: writer {w!r} (client {k}) is not in "
                                    f"the input data")
            if w in seen:
                raise ShardingError(f"--assignment {path}: writer {w!r} is assigned twice "
                                    f"(clients {seen[w]} and {k}); writers are never split")
            seen[w] = k
        out[k] = sorted(out[k], key=rank.__getitem__)
    return out


def _writer_rng(seed: int, writer_id: str) -> np.random.Generator:
    # Keyed by writer id, so a writer's split does not change with which other writers exist.
    digest = hashlib.sha256(writer_id.encode("utf-8")).digest()
    return np.random.default_rng([seed % (2 ** 63), int.from_bytes(digest[:8], "little")])


def writer_split(sizes: Dict[Optional[str], int], splits: Sequence[float], seed: int,
                 writer_id: str) -> Dict[str, Tuple[Optional[str], np.ndarray]]:
    """THE per-writer rule: for each split, (which input part, indices into that part).

    ``sizes`` maps the input's own split of this writer (None: unsplit) to its sample count.
    Unsplit: shuffle (seeded by seed and writer id), cut by the three fractions. Split in
    train/val/test already (FS's processed tasks): kept as it is. Split in train/test (LEAF):
    its test kept; val carved from its train so that train:val keeps the configured proportion.
    """
    rng = _writer_rng(seed, writer_id)
    empty = np.zeros(0, np.int64)
    if None in sizes:
        n = sizes[None]
        perm = rng.permutation(n)
        n_train = int(math.floor(n * splits[0] + 1e-9))
        n_val = int(math.floor(n * splits[1] + 1e-9))
        return {"train": (None, perm[:n_train]), "val": (None, perm[n_train:n_train + n_val]),
                "test": (None, perm[n_train + n_val:])}
    if "val" in sizes:
        return {s: (s, np.arange(sizes.get(s, 0), dtype=np.int64)) for s in SPLITS}
    out = {"test": ("test", np.arange(sizes.get("test", 0), dtype=np.int64))}
    if "train" not in sizes:
        return dict(out, train=("train", empty), val=("train", empty))
    n = sizes["train"]
    perm = rng.permutation(n)
    denom = splits[0] + splits[1]
    n_val = int(math.floor(n * splits[1] / denom + 1e-9)) if denom > 0 else 0
    return dict(out, val=("train", perm[:n_val]), train=("train", perm[n_val:]))


def split_rows(parts: Dict[Optional[str], Part], splits: Tuple[float, float, float], seed: int,
               wid: str) -> Dict[str, Rows]:
    """A writer's (spill rows, labels) per split: ``writer_split`` run on row numbers."""
    out = {}
    for s, (key, idx) in writer_split({k: len(p.y) for k, p in parts.items()}, splits, seed,
                                      wid).items():
        p = parts.get(key)
        if p is None or not len(idx):
            out[s] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        else:
            out[s] = (p.row + idx.astype(np.int64), p.y[idx])
    return out


def _listing(src_dir: str, inputs: List[str]) -> List[List[Any]]:
    files: List[str] = []
    for p in inputs:
        files += sorted(os.path.join(p, f) for f in os.listdir(p)) if os.path.isdir(p) else [p]
    out = []
    for f in files:
        st = os.stat(f)
        out.append([os.path.relpath(f, src_dir), st.st_size, st.st_mtime_ns])
    return out


def plan_id(options: Dict[str, Any], dataset: str, src_dir: str, inputs: List[str],
            clients: Dict[int, List[str]]) -> str:
    """Hash of everything that decides a shard's content: dataset, input files, every run
    option (``run_options``: seed, splits, subsample, assignment file, ...), the assignment."""
    blob = json.dumps({"v": 2, "dataset": dataset, "inputs": _listing(src_dir, inputs),
                       "options": options,
                       "clients": {str(k): v for k, v in sorted(clients.items())}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]
