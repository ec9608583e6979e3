"""The partition plan of the sharding tool: which writers, which client, which split.

Pure functions over writer ids, labels and spill row numbers (no pixels), so they are cheap and
unit-testable. The per-writer train/val/test rule is the FS-style path's own
(``leaf_femnist.split_writer``), so shard mode and the data_idx path see the same samples.
"""
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

SPLITS = ("train", "val", "test")
STRATEGIES = ("sequential", "random", "manual")
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


def writer_order(parts: Dict[str, Any], natural: bool) -> List[str]:
    """Sorted writer ids like FS's tasks; FS's processed ``task_<k>`` dirs in numeric order."""
    return sorted(parts, key=natural_key) if natural else sorted(parts)


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
    groups = np.array_split(np.arange(len(order)), n)
    return {k + 1: sorted((order[i] for i in g), key=rank.__getitem__)
            for k, g in enumerate(groups)}


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


def split_rows(parts: Dict[Optional[str], Part], splits: Tuple[float, float, float], seed: int,
               wid: str) -> Dict[str, Rows]:
    """A writer's (spill rows, labels) per split.

    FS's processed tasks are already split and kept as they are. LEAF data goes through the
    FS-style path's own per-writer rule, run on row numbers in place of pixels.
    """
    if "val" in parts:  # FS processed layout
        return {s: (np.arange(parts[s].row, parts[s].row + len(parts[s].y), dtype=np.int64),
                    parts[s].y) for s in SPLITS}
    from federatedscope.cv.dataset.leaf_femnist import WriterSamples, split_writer
    ws = {k: WriterSamples(wid, np.arange(p.row, p.row + len(p.y), dtype=np.int64), p.y,
                           p.source, k) for k, p in parts.items()}
    got = split_writer(ws, splits, seed, wid)
    return {s: (got[s][0].numpy().astype(np.int64, copy=False), got[s][1].numpy())
            for s in SPLITS}


def _listing(src_dir: str, inputs: List[str]) -> List[List[Any]]:
    files: List[str] = []
    for p in inputs:
        files += sorted(os.path.join(p, f) for f in os.listdir(p)) if os.path.isdir(p) else [p]
    out = []
    for f in files:
        st = os.stat(f)
        out.append([os.path.relpath(f, src_dir), st.st_size, st.st_mtime_ns])
    return out


def plan_id(args: Any, kind: str, src_dir: str, inputs: List[str],
            clients: Dict[int, List[str]]) -> str:
    """Hash of everything that decides a shard's content: input files, split rule, assignment."""
    blob = json.dumps({"v": 1, "kind": kind, "inputs": _listing(src_dir, inputs),
                       "seed": int(args.seed), "splits": [float(s) for s in args.splits],
                       "link": bool(args.link),
                       "clients": {str(k): v for k, v in sorted(clients.items())}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]
