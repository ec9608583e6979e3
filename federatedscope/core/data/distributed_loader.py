"""A client's own shard: ``DistributedShardLoader`` opens only its ``shard_path``.

(and, for a ``--link`` shard, the packed file its meta names). ``verify_shard`` checks the files
(size and, with ``verify_checksum``, sha256); the loader then checks ``meta.json`` against the
tensors (counts, dtype, shape, label range and histogram), so a client never trains on, or
declares, data other than what was prepared. There is no fallback: a missing or inconsistent
shard is a ``ShardError`` that says how to make it. In-memory mode yields ``TensorSplit``s;
``streaming=True`` yields ``StreamingSplit``s that ``os.pread`` bounded windows, so RSS stays flat
however large the shard is (Unix only: see doc/architecture.md "Portability").

Nothing here knows a dataset: shapes, class counts and ``sample_type`` come from ``meta.json``.
"""
import logging
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from federatedscope.core.data import shard_format as sf
from federatedscope.core.data.datasets import Batch, TensorSplit, batch_loader, shuffled_order
from federatedscope.core.data.shard_format import split_file
from federatedscope.core.data.shard_format.checks import ShardError
from federatedscope.core.data.shard_format.split_file import SplitLayout
from federatedscope.core.data.dataset_spec import get_spec
from federatedscope.core.data.transforms import build_transform, transform_for

logger = logging.getLogger("federatedscope")
BLOCK_BYTES = 4 << 20  # streaming window: ~5,300 rows of 784 bytes; the unit of the block shuffle

__all__ = ["DistributedShardLoader", "StreamingSplit", "ShardError"]


class StreamingSplit(IterableDataset):
    """A split read in windows with ``os.pread``; never materialised, never mmap'd.

    Shuffling is a deterministic block shuffle: the block order is a permutation seeded by
    ``seed`` and the order inside block ``b`` one seeded by ``(seed, b)``, so a block reads the
    same wherever it is read. With DataLoader workers, worker ``w`` of ``W`` takes every W-th
    block of that order: each sample exactly once per epoch. Batches carry over block boundaries
    (inside one worker), so without workers a pass has exactly ``ceil(n / batch_size)`` batches.
    """

    def __init__(self, layout: SplitLayout, rows: Optional[np.ndarray], transform,
                 block_rows: int = 0):
        super().__init__()
        self.layout, self.transform = layout, transform
        self.rows = rows  # None: rows 0..n-1 of layout; else --link positions into the packed file
        self.n = layout.n if rows is None else len(rows)
        self.block_rows = block_rows or max(1, BLOCK_BYTES // max(layout.row_bytes, 1))
        # Opened once, at load time: if the file is later replaced (a shard refresh by rename)
        # and the refresh fails its checks, this split keeps reading the bytes that were
        # verified, not the new ones. One descriptor per streaming split, closed by close();
        # forked DataLoader workers share it (pread does not move a file offset).
        self._fd: Optional[int] = os.open(layout.path, os.O_RDONLY)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    def __len__(self) -> int:
        return self.n

    def _my_blocks(self, shuffle: bool, seed: int) -> List[int]:
        """This process's blocks in epoch order (every block when not in a DataLoader worker)."""
        nb = (self.n + self.block_rows - 1) // self.block_rows
        order = shuffled_order(nb, shuffle, seed).tolist()
        info = get_worker_info()
        return order if info is None else order[info.id::info.num_workers]

    def _read_block(self, fd: int, b: int, buf: np.ndarray) -> Tuple[np.ndarray, np.ndarray,
                                                                       Optional[np.ndarray]]:
        """Rows of block ``b`` (a view of ``buf``), labels, and the order that restores dataset
        order when --link rows had to be read in file order (else None)."""
        lo, hi = b * self.block_rows, min(self.n, (b + 1) * self.block_rows)
        idx = np.arange(lo, hi, dtype=np.int64) if self.rows is None else self.rows[lo:hi]
        if len(idx) > 1 and bool((np.diff(idx) < 0).any()):
            order = np.argsort(idx, kind="stable")
            xs, ys = split_file.read_rows(fd, self.layout, idx[order], buf)
            inv = np.empty_like(order)
            inv[order] = np.arange(len(order))
            return xs, ys, inv
        xs, ys = split_file.read_rows(fd, self.layout, idx, buf)
        return xs, ys, None

    def _batches(self, batch_size: int, shuffle: bool, seed: int, blocks: List[int],
                 drop_last: bool) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Raw batches of ``blocks``. All buffers are allocated once and reused, so memory is
        flat: a fresh 4 MB tensor per block fragments the heap and peak RSS creeps up."""
        shape, dt = self.layout.sample_shape, self.layout.dtype
        buf = np.empty((self.block_rows, *shape), dt)                   # pread window
        stage_x = torch.empty((self.block_rows + batch_size, *shape), dtype=getattr(torch, dt))
        stage_y = torch.empty(self.block_rows + batch_size, dtype=torch.int64)
        have = 0
        fd = self._fd
        if fd is None:
            raise ShardError(f"{self.layout.path}: this streaming split was closed (its shard "
                             f"was reloaded); use the loader's current datasets")
        for b in blocks:
            xs, ys, inv = self._read_block(fd, b, buf)
            k = len(ys)
            sel = None if inv is None else torch.from_numpy(inv)
            if shuffle:
                perm = shuffled_order(k, True, int(seed) * 1_000_003 + b)
                sel = perm if sel is None else sel[perm]
            x, y = torch.from_numpy(xs), torch.from_numpy(ys)
            if sel is None:
                stage_x[have:have + k].copy_(x)
                stage_y[have:have + k].copy_(y)
            else:
                torch.index_select(x, 0, sel, out=stage_x[have:have + k])
                torch.index_select(y, 0, sel, out=stage_y[have:have + k])
            have += k
            full = (have // batch_size) * batch_size
            for s in range(0, full, batch_size):
                yield stage_x[s:s + batch_size], stage_y[s:s + batch_size]
            if full:  # carry the remainder (< batch_size <= full rows: no overlap)
                stage_x[:have - full].copy_(stage_x[full:have])
                stage_y[:have - full].copy_(stage_y[full:have])
                have -= full
        if have and not drop_last:
            yield stage_x[:have], stage_y[:have]

    def _out(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        # x/y are views of reused buffers: hand out tensors that own their memory
        xt = self.transform(x)
        if xt.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            xt = xt.clone()
        return xt, y.clone()

    def iter_batches(self, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                     drop_last: bool = False, pin_memory: bool = False) -> Iterator[Batch]:
        """``drop_last`` drops the incomplete last batch of each reader (of each worker)."""
        epoch = _StreamEpoch(self, batch_size, shuffle, seed, drop_last)
        if num_workers == 0 and not pin_memory:
            yield from epoch
        else:
            yield from batch_loader(epoch, None, num_workers, pin_memory)

    def __iter__(self) -> Iterator[Batch]:
        """Samples one by one, in file order (torch DataLoader protocol); workers take
        disjoint blocks."""
        for x, y in self._batches(self.block_rows, False, 0, self._my_blocks(False, 0), False):
            xt, yt = self._out(x, y)
            for i in range(len(yt)):
                yield xt[i], yt[i]


class _StreamEpoch(IterableDataset):
    """One epoch of transformed batches; in a DataLoader worker, that worker's blocks only."""

    def __init__(self, split: StreamingSplit, batch_size: int, shuffle: bool, seed: int,
                 drop_last: bool):
        super().__init__()
        self.split, self.args = split, (batch_size, shuffle, seed)
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[Batch]:
        bs, shuffle, seed = self.args
        s = self.split
        for x, y in s._batches(bs, shuffle, seed, s._my_blocks(shuffle, seed), self.drop_last):
            yield s._out(x, y)


class DistributedShardLoader:
    """Loads, checks and exposes one client's shard (spec: doc/distributed_data.md).

    Attributes after loading: ``meta`` (ShardMeta), ``num_samples`` {split: n}, ``datasets``
    {split: BatchSource}, ``fingerprint``, ``label_hist`` (train), ``sample_type`` (from
    meta.json, e.g. ``uint8[28,28]``), ``last_modified`` (newest mtime of the shard's files,
    float epoch seconds; the client reports it in its join as ``shard_last_modified``).
    ``client_id`` None skips the check that meta.json belongs to this client.
    """

    def __init__(self, shard_path: str, client_id: Optional[int] = None, streaming: bool = False,
                 strict_check: bool = True, verify_checksum: bool = True,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.shard_path = os.fspath(shard_path) if shard_path else ""
        self.strict, self.verify = bool(strict_check), bool(verify_checksum)
        self.streaming = bool(streaming)
        self.client_id: Optional[int] = int(client_id) if client_id and client_id > 0 else None
        self.transform = transform if transform is not None else build_transform([])
        if not self.shard_path:
            raise ShardError("distributed_data.shard_path is empty; set it to this client's shard "
                             "directory (e.g. data/<dataset>/shards/client_1); make shards with: "
                             + sf.recreate_command("data/<dataset>/shards"))
        self._meta_path = os.path.join(self.shard_path, "meta.json")
        self.meta_dataset = ""  # the dataset named in errors, once meta.json was read
        self.reload()

    @classmethod
    def from_config(cls, cfg: Any, client_id: Optional[int] = None,
                    shard_path: Optional[str] = None) -> "DistributedShardLoader":
        """The builder's call: ``distributed_data.*`` and ``data.transform`` from ``cfg``;
        ``client_id`` defaults to ``distribute.client_id``, ``shard_path`` (a standalone
        simulation passes each manifest entry's directory) to ``distributed_data.shard_path``."""
        dd = cfg.distributed_data
        cid = client_id if client_id is not None else int(cfg.distribute.client_id)
        return cls(dd.shard_path if shard_path is None else shard_path, client_id=cid,
                   streaming=dd.streaming, strict_check=dd.strict_check,
                   verify_checksum=dd.verify_checksum,
                   transform=transform_for(cfg.data.transform, get_spec(cfg.data.type)))

    # -------------------------------------------------------------- public API
    @property
    def fingerprint(self) -> str:
        return self.meta.fingerprint

    @property
    def label_hist(self) -> List[int]:
        """Train label histogram as loaded (what the server's manifest records)."""
        return list(self._hist["train"])

    def declaration(self) -> sf.ShardDeclaration:
        return sf.ShardDeclaration(self.meta.client_id, dict(self.num_samples), self.fingerprint,
                                   self.label_hist, self.meta.sample_type, self.meta.dataset)

    def has_changed(self) -> bool:
        """Cheap: compare (inode, mtime, size); only if they moved, read meta.json and compare
        fingerprints (and, with verify_checksum, re-hash files whose meta did not change)."""
        if self._stats(self.meta, self._packed) == self._snapshot:
            return False
        try:
            meta = sf.read_meta(self._meta_path)
        except sf.ManifestError:
            return True  # half-replaced or damaged: reload() says what is wrong
        if meta.fingerprint != self.meta.fingerprint:
            return True
        if self.verify and any(os.path.isfile(p) and sf.file_problem(p, e, True)
                               for p, e in sf.shard_files(self.shard_path, meta)):
            return True  # same meta, other bytes: reload() reports the tamper
        self._snapshot = self._stats(self.meta, self._packed)
        return False

    def acknowledge_disk_state(self) -> None:
        """After a refresh that failed its checks: remember what is on disk now, so
        ``has_changed`` stays False (no error every round) until the shard changes again."""
        self._snapshot = self._stats(self.meta, self._packed)

    def reload(self) -> None:
        """(Re)read the shard; on ShardError the previously loaded state is kept unchanged."""
        meta = self._read_meta()
        packed = self._packed_path(meta)
        loaded = {s: self._load_split(meta, packed, s) for s in sf.SPLITS}
        old = getattr(self, "datasets", {})
        self.meta, self._packed = meta, packed
        self.sample_type = meta.sample_type
        self.datasets = {s: v[0] for s, v in loaded.items()}
        for src in old.values():  # the previous streaming splits hold descriptors of old files
            if isinstance(src, StreamingSplit):
                src.close()
        self.num_samples = {s: len(v[0]) for s, v in loaded.items()}
        self._hist = {s: v[1] for s, v in loaded.items()}
        self._snapshot = self._stats(meta, packed)
        self.last_modified = max(m for _, m, _ in self._snapshot.values())
        for s in sf.SPLITS:
            if loaded[s][2]:
                logger.info("Client %s loaded %d %s samples from %s", meta.client_id,
                            self.num_samples[s], s, loaded[s][2])

    @property
    def train_data(self):
        return self.datasets["train"]

    # -------------------------------------------------------------- internals
    def _error(self, msg: str, flags: str = "--resume") -> ShardError:
        return ShardError(sf.recreate_message(msg, self.shard_path, flags, self.meta_dataset))

    def _read_meta(self) -> sf.ShardMeta:
        """meta.json, and every file it lists checked (size; sha256 with verify_checksum)."""
        if os.path.isdir(self.shard_path) and not os.path.isfile(self._meta_path):
            raise self._error(f"{self._meta_path} is missing, so {self.shard_path} is not a "
                              f"complete shard (interrupted run?)")
        try:
            meta = sf.verify_shard(self.shard_path, check_sha=self.verify,
                                   client_id=self.client_id, missing_splits_ok=True)
        except ShardError as e:
            hint = ("" if not self.verify or "sha256" not in str(e) else
                    " (distributed_data.verify_checksum False skips the sha256 check)")
            raise ShardError(f"{e}{hint}") from None
        self.meta_dataset = meta.dataset
        return meta

    def _packed_path(self, meta: sf.ShardMeta) -> Optional[str]:
        if not meta.packed:
            return None
        return os.path.normpath(os.path.join(self.shard_path, meta.packed["path"]))

    def _stats(self, meta: sf.ShardMeta,
               packed: Optional[str]) -> Dict[str, Tuple[int, float, int]]:
        out = {}
        paths = [self._meta_path] + [os.path.join(self.shard_path, n) for n in sorted(meta.files)]
        for p in paths + ([packed] if packed else []):
            try:
                st = os.stat(p)
                out[p] = (st.st_ino, st.st_mtime, st.st_size)
            except FileNotFoundError:
                out[p] = (0, 0.0, -1)
        return out

    def _load_split(self, meta: sf.ShardMeta, packed: Optional[str], split: str):
        """(dataset, label histogram, source for the log line; '' when missing)."""
        path = os.path.join(self.shard_path, f"{split}.pt")
        if not os.path.isfile(path):
            return self._missing(meta, split, path)
        try:
            if packed is not None:
                ds, hist = self._link_split(meta, packed, path)
            elif self.streaming:
                ds, hist = self._stream_split(meta, path)
            else:
                x, y = split_file.read_split(path)
                self._check_shape(meta, path, tuple(x.shape[1:]), str(x.dtype).replace("torch.", ""))
                ds, hist = TensorSplit(x, y, self.transform), self._bincount(meta, path, y)
        except ShardError as e:
            raise self._error(str(e)) from None
        if len(ds) != meta.num_samples[split]:
            raise self._error(f"{path}: holds {len(ds)} samples but meta.json says "
                              f"num_samples.{split}={meta.num_samples[split]}")
        if hist != meta.label_hist[split]:
            raise self._error(f"{path}: label histogram differs from meta.json label_hist.{split}")
        src = path + (f" (rows of {packed})" if packed else "")
        return ds, hist, src + (" (streaming)" if self.streaming else "")

    def _missing(self, meta: sf.ShardMeta, split: str, path: str):
        msg = f"{path} is missing (meta.json lists it), so the shard is incomplete"
        if self.strict:
            raise self._error(msg, "--resume  (or set distributed_data.strict_check False to "
                                   "run without this split)")
        logger.warning("%s; strict_check is off, so the %s split is empty", msg, split)
        empty = TensorSplit(torch.zeros((0, *meta.sample_shape), dtype=getattr(torch, meta.sample_dtype)),
                            torch.zeros(0, dtype=torch.int64), self.transform)
        return empty, [0] * meta.num_classes, ""

    @staticmethod
    def _check_shape(meta: sf.ShardMeta, path: str, shape: Tuple[int, ...], dtype: str) -> None:
        if sf.sample_type_of(dtype, shape) != meta.sample_type:
            raise ShardError(f"{path}: samples are {sf.sample_type_of(dtype, shape)} but "
                             f"meta.json says {meta.sample_type}")

    @staticmethod
    def _bincount(meta: sf.ShardMeta, path: str, y: torch.Tensor) -> List[int]:
        k = meta.num_classes
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            bad = y[(y < 0) | (y >= k)]
            raise ShardError(f"{path}: {len(bad)} label(s) outside [0, {k}) "
                             f"(first: {int(bad[0])})")
        return torch.bincount(y, minlength=k).tolist()   # k zeros for an empty split

    def _stream_split(self, meta: sf.ShardMeta, path: str) -> Tuple[StreamingSplit, List[int]]:
        lay = split_file.split_layout(path)
        self._check_shape(meta, path, lay.sample_shape, lay.dtype)
        hist = np.zeros(meta.num_classes, np.int64)

        def add(chunk: np.ndarray) -> None:  # labels in 1 MB windows: memory stays flat
            hist[:] += self._bincount(meta, path, torch.from_numpy(chunk.copy()))
        fd = os.open(path, os.O_RDONLY)
        try:
            split_file.scan_labels(fd, lay, add)
        finally:
            os.close(fd)
        return StreamingSplit(lay, None, self.transform), hist.tolist()

    def _link_split(self, meta: sf.ShardMeta, packed: str, path: str):
        rows = split_file.read_index(path).numpy()
        lay = split_file.split_layout(packed)
        self._check_shape(meta, packed, lay.sample_shape, lay.dtype)
        if len(rows) and (rows.min() < 0 or rows.max() >= lay.n):
            raise ShardError(f"{path}: row index out of range for packed file {packed} "
                             f"({lay.n} rows)")
        fd = os.open(packed, os.O_RDONLY)
        try:  # labels only: 8 bytes a row, read in file order
            order = np.argsort(rows, kind="stable")
            ys = np.empty(len(rows), np.int64)
            ys[order] = split_file.read_labels(fd, lay, rows[order])
        finally:
            os.close(fd)
        y = torch.from_numpy(ys)
        hist = self._bincount(meta, path, y)
        if self.streaming:
            return StreamingSplit(lay, rows, self.transform), hist
        x, _ = split_file.read_split(packed, mmap=True)
        xs = x[torch.from_numpy(rows)].clone()  # copy this client's rows, then drop the mapping
        del x
        return TensorSplit(xs, y, self.transform), hist
