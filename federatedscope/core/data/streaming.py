"""A split read in bounded windows: ``StreamingSplit``, the loader's ``streaming=True`` mode.

A shard's split file is never materialised or mmap'd: blocks of rows are ``os.pread`` into one
reused buffer, so a client's RSS stays flat however large its shard is (Unix only: see
doc/architecture.md "Portability"). The block is also the unit of the deterministic shuffle.
"""
import os
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from federatedscope.core.data.datasets import Batch, batch_loader, shuffled_order
from federatedscope.core.data.shard_format import split_file
from federatedscope.core.data.shard_format.checks import ShardError
from federatedscope.core.data.shard_format.split_file import SplitLayout

BLOCK_BYTES = 4 << 20  # streaming window: ~5,300 rows of 784 bytes; the unit of the block shuffle


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
