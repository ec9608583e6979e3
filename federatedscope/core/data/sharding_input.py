"""Input side of the sharding tool: read a dataset once, through its registered DatasetSpec.

The spec's reader (``spec.iter_writers(root)``) yields one writer's samples at a time, one input
file in memory at a time; each writer's samples are appended to a raw spill file and only labels
+ offsets stay in memory, so peak memory is bounded by the largest input file. Every bad sample
is the reader's error (naming file, writer and sample). Nothing here knows a dataset: sample
dtype and shape come from the spec.
"""
import os
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from federatedscope.core.data.dataset_spec import DatasetSpec, WriterSamples
from federatedscope.core.data.shard_format.split_file import pread_exact
from federatedscope.core.data.sharding_plan import Part, ShardingError
from federatedscope.core.data.spec_data import pool_members, sample_partition

WINDOW = 4096  # rows per copy window: ~3 MB of 784-byte rows, big for disk speed, small for memory
GAP = 8        # spill rows read through (and dropped) rather than starting a new pread


def find_inputs(spec: DatasetSpec, root: str) -> Tuple[str, List[str]]:
    """(the folder holding the inputs, the inputs): fails on missing input before any output."""
    try:
        inputs = spec.list_inputs(root)
    except (OSError, ValueError) as e:
        raise ShardingError(str(e)) from None
    if not inputs:
        raise ShardingError(f"no {spec.name} input under {root} (the dataset's reader found no "
                            f"input files); check --root and --dataset")
    src = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in inputs])
    return src, inputs


class Spill:
    """Raw rows of every writer, appended in arrival order; read back in windows."""

    def __init__(self, path: str, spec: DatasetSpec):
        self.path = path
        self.shape, self.dtype = tuple(spec.sample_shape), np.dtype(spec.sample_dtype)
        self.row_bytes = spec.row_bytes
        self.f = open(path, "w+b")
        self.rows = 0

    def add(self, x: np.ndarray, where: str) -> int:
        if tuple(x.shape[1:]) != self.shape or x.dtype != self.dtype:
            raise ShardingError(f"{where}: the reader gave samples {x.dtype}{list(x.shape[1:])}, "
                                f"but the dataset's spec says {self.dtype}{list(self.shape)}")
        start = self.rows
        if len(x):  # memoryview cannot cast an empty array; nothing to write anyway
            self.f.write(memoryview(np.ascontiguousarray(x)).cast("B"))
            self.rows += len(x)
        return start

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the given order: one pread per cluster of nearby rows (gaps <= GAP rows are
        read through), so a writer's shuffled split costs a few reads, never one per row, and a
        read never exceeds (GAP + 1) x the window."""
        out = np.empty((len(rows), *self.shape), self.dtype)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        cuts = np.flatnonzero(np.diff(srt) > GAP) + 1
        for seg in np.split(np.arange(len(srt)), cuts):
            if not len(seg):
                continue
            lo, hi = int(srt[seg[0]]), int(srt[seg[-1]]) + 1
            span = np.empty((hi - lo, *self.shape), self.dtype)
            pread_exact(self.f.fileno(), span.nbytes, lo * self.row_bytes,
                        memoryview(span.reshape(-1).view(np.uint8)), self.path)
            out[order[seg]] = span[srt[seg] - lo]
        return out

    def chunks(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        self.f.flush()
        for s in range(0, len(rows), WINDOW):
            yield self.gather(rows[s:s + WINDOW])

    def close(self) -> None:
        self.f.close()
        os.unlink(self.path)


def _reader(spec: DatasetSpec, root: str) -> Iterator[WriterSamples]:
    """The spec's reader; its errors (they name file, writer and sample) as ShardingErrors."""
    try:
        yield from spec.iter_writers(root)
    except (OSError, ValueError) as e:
        if isinstance(e, ShardingError):
            raise
        raise ShardingError(str(e)) from None


class _NoBar:
    """A bar that shows nothing: tqdm's first bar, even a disabled one, costs ~70 ms (it makes a
    multiprocessing lock), so ``--no-progress`` runs make none."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(show: bool, **kwargs):
    """A tqdm bar, or a ``_NoBar`` when none is shown."""
    if not show:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(**kwargs)


def read_input(spec: DatasetSpec, root: str, inputs: List[str], spill: Spill,
               progress: bool) -> Tuple[Dict[str, Dict[Optional[str], Part]], str]:
    """One pass over the input: spill samples, keep {writer: {input split: Part}}; and the kind
    of split the input came with."""
    parts: Dict[str, Dict[Optional[str], Part]] = {}
    bar = progress_bar(progress, total=len(inputs), unit="input", desc="reading input",
                       leave=False)
    current = None
    for ws in _reader(spec, root):
        if ws.source != current:
            bar.update(1 if current else 0)
            current = ws.source
        have = parts.setdefault(ws.writer_id, {})
        if ws.split in have:
            raise ShardingError(f"writer {ws.writer_id} appears twice in the "
                                f"{ws.split or 'unsplit'} data: {have[ws.split].source} and "
                                f"{ws.source}")
        have[ws.split] = Part(spill.add(ws.x, ws.source), np.asarray(ws.y, np.int64), ws.source)
    bar.update(1 if current else 0)      # the last input is read too
    bar.close()
    if not parts:
        raise ShardingError(f"the input is empty: {len(inputs)} input(s) under {root} hold no "
                            f"writers with samples")
    seen = {s for p in parts.values() for s in p}
    kind = "unsplit" if None in seen else ("train_val_test" if "val" in seen else "train_test")
    return parts, kind


def deal_parts(parts: Dict[str, Dict[Optional[str], Part]], spill: Spill, splitter, seed: int,
               consistent: bool = False) -> Dict[str, Dict[Optional[str], Part]]:
    """``--strategy lda/iid``: the samples dealt to clients by FS's splitter, as writers
    ``client_<k>`` (one per client). The split is ``spec_data.sample_partition`` on the same
    pools as FS's ``data.splitter`` path, so both give client k the same samples for one seed;
    each client's samples are copied to the end of the spill so a writer stays one row range."""
    members = pool_members({w: list(p) for w, p in parts.items()})
    rows = {s: np.concatenate([np.arange(parts[w][s].row, parts[w][s].row + len(parts[w][s].y))
                               for w in ws]).astype(np.int64) for s, ws in members.items()}
    ys = {s: np.concatenate([parts[w][s].y for w in ws]).astype(np.int64)
          for s, ws in members.items()}
    dealt = sample_partition(ys, splitter, seed, consistent)
    out: Dict[str, Dict[Optional[str], Part]] = {}
    for k, got in sorted(dealt.items()):
        own = out.setdefault(f"client_{k}", {})
        for s, idx in got.items():
            where = f"client {k}'s {s or 'unsplit'} samples"
            start = spill.rows
            for chunk in spill.chunks(rows[s][idx]):
                spill.add(chunk, where)
            own[s] = Part(start, ys[s][idx], where)
    return out
