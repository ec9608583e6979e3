"""Input side of the sharding tool: find the FEMNIST input, parse it once, spill its pixels.

One file in memory at a time (``iter_leaf_writers``); each writer's uint8 samples are appended to
a raw spill file and only labels + offsets stay in memory, so peak memory is bounded by the
largest input file. Every bad sample is an error naming file, writer and sample index (the LEAF
reader's checks); a writer with 0 samples is skipped with a warning.
"""
import glob
import os
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from federatedscope.core.data import shard_io
from federatedscope.core.data.sharding_plan import Part, ShardingError, natural_key

SHAPE = (28, 28)
ROW = 28 * 28
WINDOW = 4096  # rows per copy window: ~3 MB, big enough for disk speed, small for memory
GAP = 8        # spill rows read through (and dropped) rather than starting a new pread


def find_source(root: str) -> Tuple[str, str, List[str]]:
    """(kind, dir, inputs): LEAF JSON (flat, all_data/ or train/test tree, in FS's femnist/raw or
    LEAF's own femnist/data) or FS's processed task dirs. The no-input error lists every place."""
    from federatedscope.cv.dataset.leaf_femnist import find_leaf_dir, no_input_message
    src, files = find_leaf_dir(root)
    if files:
        tree = any(os.path.basename(os.path.dirname(f)) == "test" for f in files)
        return ("leaf_train_test" if tree else "leaf_json"), src, files
    proc = os.path.join(root, "femnist", "processed")
    tasks = [d for d in glob.glob(os.path.join(proc, "task_*")) if os.path.isdir(d)]
    if tasks:
        return "fs_processed", proc, sorted(tasks, key=natural_key)
    raise ShardingError(no_input_message(root, ["femnist/processed/task_<k>/ (FS's layout)"]))


class Spill:
    """Raw uint8 rows of every writer, appended in arrival order; read back in windows."""

    def __init__(self, path: str):
        self.path = path
        self.f = open(path, "w+b")
        self.rows = 0

    def add(self, x: np.ndarray) -> int:
        start = self.rows
        if len(x):  # memoryview cannot cast an empty array; nothing to write anyway
            self.f.write(memoryview(np.ascontiguousarray(x, dtype=np.uint8)).cast("B"))
            self.rows += len(x)
        return start

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the given order: one pread per cluster of nearby rows (gaps <= GAP rows are
        read through), so a writer's shuffled split costs a few reads, never one per row, and a
        read never exceeds (GAP + 1) x the window."""
        out = np.empty((len(rows), *SHAPE), np.uint8)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        cuts = np.flatnonzero(np.diff(srt) > GAP) + 1
        for seg in np.split(np.arange(len(srt)), cuts):
            if not len(seg):
                continue
            lo, hi = int(srt[seg[0]]), int(srt[seg[-1]]) + 1
            span = np.empty((hi - lo, *SHAPE), np.uint8)
            shard_io.pread_exact(self.f.fileno(), span.nbytes, lo * ROW,
                                 memoryview(span.reshape(-1)), self.path)
            out[order[seg]] = span[srt[seg] - lo]
        return out

    def chunks(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        self.f.flush()
        for s in range(0, len(rows), WINDOW):
            yield self.gather(rows[s:s + WINDOW])

    def close(self) -> None:
        self.f.close()
        os.unlink(self.path)


def read_input(kind: str, src_dir: str, inputs: List[str], spill: Spill,
               progress: bool) -> Dict[str, Dict[Optional[str], Part]]:
    """One pass over the input: spill pixels, keep {writer: {leaf split: Part}}."""
    from tqdm import tqdm
    from federatedscope.cv.dataset.leaf_femnist import (empty_input_message, iter_leaf_writers,
                                                        read_fs_processed_task)
    parts: Dict[str, Dict[Optional[str], Part]] = {}
    total = sum(os.path.getsize(f) for f in inputs) if kind != "fs_processed" else len(inputs)
    bar = tqdm(total=total, unit="B" if kind != "fs_processed" else "task", unit_scale=True,
               desc="reading input", disable=not progress, leave=False)

    def add(wid: str, split: Optional[str], x: np.ndarray, y: np.ndarray, source: str) -> None:
        have = parts.setdefault(wid, {})
        if split in have:
            raise ShardingError(f"writer {wid} appears twice in the {split or 'unsplit'} data: "
                                f"{have[split].source} and {source}")
        have[split] = Part(spill.add(x), np.asarray(y, np.int64), source)

    if kind == "fs_processed":
        for d in inputs:
            for split, (x, y) in read_fs_processed_task(d).items():
                add(os.path.basename(d), split, x.numpy(), y.numpy(), d)
            bar.update(1)
    else:
        current = None
        for ws in iter_leaf_writers(src_dir):
            if ws.source != current:
                bar.update(os.path.getsize(current) if current else 0)
                current = ws.source
            add(ws.writer_id, ws.split, ws.x, ws.y, ws.source)
        bar.update(os.path.getsize(current) if current else 0)
    bar.close()
    if not parts:
        raise ShardingError(empty_input_message(src_dir, inputs))
    return parts
