"""Input side of the sharding tool: read a dataset once, through its registered DatasetSpec.

The spec's reader (``spec.iter_writers(root)``) yields one writer's samples at a time, one input
file in memory at a time; each writer's samples are appended to a raw spill file and only labels
+ offsets stay in memory, so peak memory is bounded by the largest input file. Every bad sample
is the reader's error (naming file, writer and sample). Nothing here knows a dataset: sample
dtype and shape come from the spec.

In parallel (``--workers``): parsing the public format (LEAF's JSON: ~60 s for all of FEMNIST on
one core) is most of the tool's time, and a spec may cut its input into independent pieces
(files). Each worker process parses one piece at a time with the spec's ``read_piece`` and
appends its samples to a spill file of its own beside the main one (``.spill-<pid>-<piece>.bin``,
removed by the next run if this one is killed), returning only each writer's id, split, source,
row count and labels. The parent takes the pieces in input order, moves each piece's rows into
the main spill in the kernel (``copy_file_range``) and gets exactly the records the sequential
reader gives, so the partition and every shard byte are the same. Memory: one parsed piece per
worker plus the parent's labels.
"""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from federatedscope.core.data.dataset_spec import DatasetSpec, WriterSamples, get_spec
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

    def append_file(self, path: str, rows: int) -> int:
        """Append another spill file of ``rows`` rows (a worker's piece) in the kernel; returns
        the first row's number here."""
        start, nbytes = self.rows, rows * self.row_bytes
        if os.path.getsize(path) != nbytes:
            raise ShardingError(f"{path}: a reading worker spilled {os.path.getsize(path)} bytes "
                                f"for {rows} rows of {self.row_bytes} bytes")
        self.f.flush()
        at = self.f.seek(0, os.SEEK_END)
        with open(path, "rb") as src:
            done = 0
            while done < nbytes:
                n = os.copy_file_range(src.fileno(), self.f.fileno(), nbytes - done,
                                       done, at + done)
                if n == 0:
                    raise ShardingError(f"{path}: ended after {done} of {nbytes} bytes")
                done += n
        self.f.seek(at + nbytes)
        self.rows += rows
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


def _guarded(writers: Iterator[WriterSamples]) -> Iterator[WriterSamples]:
    """A reader's errors (they name file, writer and sample) as ShardingErrors."""
    try:
        yield from writers
    except (OSError, ValueError) as e:
        if isinstance(e, ShardingError):
            raise
        raise ShardingError(str(e)) from None


def _reader(spec: DatasetSpec, root: str) -> Iterator[WriterSamples]:
    return _guarded(spec.iter_writers(root))


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


def _input_bar(progress: bool, inputs: int):
    """The "reading input" bar, one step per input file, wiped when done."""
    return progress_bar(progress, total=inputs, unit="input", desc="reading input", leave=False)


def read_input(spec: DatasetSpec, root: str, inputs: List[str], spill: Spill,
               progress: bool, workers: int = 1
               ) -> Tuple[Dict[str, Dict[Optional[str], Part]], str]:
    """One pass over the input: spill samples, keep {writer: {input split: Part}}; and the kind
    of split the input came with. ``workers`` > 1 parses the spec's pieces in that many
    processes (``read_pieces``); the result is the same, row for row."""
    parts: Dict[str, Dict[Optional[str], Part]] = {}
    pieces = spec.pieces(root) if workers > 1 and spec.pieces is not None else []
    parallel = len(pieces) >= 2
    records = read_pieces(spec, pieces, spill, workers, progress) if parallel else \
        _sequential(spec, root, spill, _input_bar(progress, len(inputs)))
    try:
        for writer, split, source, row, y in records:
            have = parts.setdefault(writer, {})
            if split in have:
                raise ShardingError(f"writer {writer} appears twice in the {split or 'unsplit'} "
                                    f"data: {have[split].source} and {source}")
            have[split] = Part(row, y, source)
    finally:
        records.close()  # now, not when the traceback goes: stops the workers, drops their spills
    if not parts and parallel:
        # an input with no samples: the reader's own message names the files and the fix
        for _ in _reader(spec, root):
            break
    if not parts:
        raise ShardingError(f"the input is empty: {len(inputs)} input(s) under {root} hold no "
                            f"writers with samples")
    seen = {s for p in parts.values() for s in p}
    kind = "unsplit" if None in seen else ("train_val_test" if "val" in seen else "train_test")
    return parts, kind


Record = Tuple[str, Optional[str], str, int, np.ndarray]  # writer, split, source, first row, y


def _sequential(spec: DatasetSpec, root: str, spill: Spill, bar) -> Iterator[Record]:
    current = None
    for ws in _reader(spec, root):
        if ws.source != current:
            bar.update(1 if current else 0)
            current = ws.source
        yield (ws.writer_id, ws.split, ws.source, spill.add(ws.x, ws.source),
               np.asarray(ws.y, np.int64))
    bar.update(1 if current else 0)      # the last input is read too
    bar.close()


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


# ----------------------------------------------------------------------------- in parallel
# writer id, split, source, sample rows, label count (labels follow as one int64 buffer)
Index = List[Tuple[str, Optional[str], str, int, int]]


def piece_spill(main: str, i: int) -> str:
    """``<dir>/.spill-<pid>-<i>.bin`` beside the main ``.spill-<pid>.bin``."""
    return main[:-len(".bin")] + f"-{i}.bin"


def _read_one(spec_name: str, piece: Any, path: str) -> Tuple[Index, bytes]:
    """In a worker: parse ``piece``, spill its samples to ``path``; (index, labels)."""
    spec = get_spec(spec_name)   # registered in the parent before it forked
    spill = Spill(path, spec)
    index: Index = []
    ys = []
    try:
        for ws in _guarded(spec.read_piece(piece)):
            spill.add(ws.x, ws.source)
            y = np.asarray(ws.y, np.int64)
            index.append((ws.writer_id, ws.split, ws.source, len(ws.x), len(y)))
            ys.append(y)
    finally:
        spill.f.close()
    return index, (np.concatenate(ys) if ys else np.zeros(0, np.int64)).tobytes()


def read_pieces(spec: DatasetSpec, pieces: List[Any], spill: Spill, workers: int,
                progress: bool) -> Iterator[Record]:
    """The sequential reader's records (writer, split, source, first row, labels), in its order,
    from ``workers`` processes. A worker's error (it names file, writer and sample) is raised
    for the first piece that has one, as the sequential reader would."""
    paths = [piece_spill(spill.path, i) for i in range(len(pieces))]
    # fork: the workers inherit the registered specs (no re-import); they start at the first
    # submit, before the progress bar exists, so no bar thread is forked
    pool = ProcessPoolExecutor(max_workers=workers,
                               mp_context=multiprocessing.get_context("fork"))
    try:
        futures = [pool.submit(_read_one, spec.name, p, path) for p, path in zip(pieces, paths)]
        yield from _in_order(futures, paths, spill, progress)
    finally:   # whatever failed above: no worker outlives the read, no piece spill stays
        pool.shutdown(wait=True, cancel_futures=True)
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)


def _in_order(futures, paths: List[str], spill: Spill, progress: bool) -> Iterator[Record]:
    bar = _input_bar(progress, len(paths))
    try:
        for fut, path in zip(futures, paths):
            try:
                index, labels = fut.result()
            except BrokenProcessPool:
                raise ShardingError(
                    f"a worker reading the input died (killed, or out of memory: each holds one "
                    f"parsed input file); run again with --workers 1 (one file in memory) or "
                    f"fewer workers") from None
            first = spill.append_file(path, sum(ix[3] for ix in index))
            os.unlink(path)
            ys = np.frombuffer(labels, np.int64)
            y_at = 0
            for writer, split, source, rows, n_y in index:
                yield writer, split, source, first, ys[y_at:y_at + n_y].copy()
                first += rows
                y_at += n_y
            bar.update(1)
    finally:
        bar.close()


def auto_workers(total_bytes: int) -> int:
    """Two workers on a machine with two or more usable cores for an input large enough to
    pay for them (a process per worker); one otherwise."""
    return min(2, len(os.sched_getaffinity(0))) if total_bytes >= PARALLEL_MIN_BYTES else 1


# below this much input the sequential reader finishes before two workers would have started
PARALLEL_MIN_BYTES = 64 * 1024 * 1024
