"""The one reader/writer of shard split files (``train.pt`` ...), index files and packed files.

A split file is ``torch.save({"x": uint8 [n, *shape], "y": int64 [n]})`` (doc/architecture.md).
torch writes its zip archive uncompressed with 64-byte aligned records, so the bytes of ``x`` sit
at a fixed offset in the file. Two things here rely on that, both checked when used:

* ``write_split_chunks`` writes a split of any size in O(chunk) memory: it ``torch.save``s an
  *unwritten* placeholder tensor (untouched ``torch.empty`` pages map the kernel's zero page, so
  they cost no RSS), then overwrites the record's bytes in place from the caller's chunks;
* ``SplitLayout`` lets the streaming reader ``os.pread`` windows of rows without mapping the file,
  so a client's RSS does not grow with its shard (touched pages of an mmap would count).

Files are only ever loaded with ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""
import hashlib
import os
import struct
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Tuple

import numpy as np
import torch

from federatedscope.core.auxiliaries.utils import _atomic_write, atomic_torch_save

CHUNK = 1 << 20  # sha256 / copy granularity: 1 MB keeps memory flat at disk speed


class ShardError(ValueError):
    """A shard (or one of its files) is missing, unreadable or inconsistent; says the fix."""


def _load(path: str, mmap: bool) -> object:
    if not os.path.isfile(path):
        raise ShardError(f"{path}: file not found")
    try:
        return torch.load(path, weights_only=True, mmap=mmap, map_location="cpu")
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError for bad bytes
        raise ShardError(f"{path}: cannot read it (truncated or corrupt file: "
                         f"{str(e).splitlines()[0][:200]})") from None


def read_split(path: str, mmap: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x uint8 [n, ...], y int64 [n])``; format errors name the file."""
    obj = _load(path, mmap)
    if not isinstance(obj, dict) or set(obj) != {"x", "y"}:
        raise ShardError(f"{path}: not a split file (expected a dict with keys 'x' and 'y')")
    x, y = obj["x"], obj["y"]
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() < 2:
        raise ShardError(f"{path}: 'x' must be a uint8 tensor [n, ...], got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
        raise ShardError(f"{path}: 'y' must be an int64 tensor [n], got "
                         f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
    if len(x) != len(y):
        raise ShardError(f"{path}: {len(x)} samples but {len(y)} labels")
    return x, y


def write_split(path: str, x_u8: torch.Tensor, y: torch.Tensor) -> None:
    """Atomically write a split held in memory."""
    x_u8, y = torch.as_tensor(x_u8), torch.as_tensor(y)
    if x_u8.dtype != torch.uint8 or y.dtype != torch.int64 or len(x_u8) != len(y):
        raise ValueError(f"{path}: need uint8 x and int64 y of equal length, got "
                         f"{x_u8.dtype} {tuple(x_u8.shape)} / {y.dtype} {tuple(y.shape)}")
    atomic_torch_save(path, {"x": x_u8.contiguous(), "y": y.contiguous()})


def write_split_chunks(path: str, y: np.ndarray, sample_shape: Tuple[int, ...],
                       chunks: Iterable[np.ndarray]) -> None:
    """Atomically write a split whose samples arrive as uint8 chunks ``[k, *sample_shape]``.

    Memory stays O(largest chunk + labels) whatever the split size (see module doc).
    """
    n = int(len(y))
    row = int(np.prod(sample_shape))
    y_t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))

    def write(tmp: str) -> None:
        placeholder = torch.empty((n, *sample_shape), dtype=torch.uint8)
        torch.save({"x": placeholder, "y": y_t}, tmp)
        del placeholder
        written = 0
        with open(tmp, "r+b") as f:
            if n:
                f.seek(_record_offset(tmp, f, n * row, prefer_first=True))
            for c in chunks:
                c = np.ascontiguousarray(c, dtype=np.uint8)
                if c.shape[1:] != tuple(sample_shape) or written + len(c) > n:
                    raise ValueError(f"{path}: chunk of shape {c.shape} does not fit "
                                     f"{n} x {sample_shape} (at row {written})")
                f.write(memoryview(c).cast("B"))
                written += len(c)
        if written != n:
            raise ValueError(f"{path}: got {written} sample rows, expected {n}")
    _atomic_write(path, write)


def write_index(path: str, idx: np.ndarray) -> None:
    """--link mode: a client's split is int64 row indices into the packed file."""
    atomic_torch_save(path, {"idx": torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))})


def read_index(path: str) -> torch.Tensor:
    obj = _load(path, False)
    if not isinstance(obj, dict) or set(obj) != {"idx"} or not isinstance(obj["idx"], torch.Tensor) \
            or obj["idx"].dtype != torch.int64 or obj["idx"].dim() != 1:
        raise ShardError(f"{path}: not an index file (expected {{'idx': int64 [n]}})")
    return obj["idx"]


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            h.update(view[:k])
    return h.hexdigest()


# ----------------------------------------------------------------------------- raw offsets
def _record_offset(path: str, f, nbytes: int, prefer_first: bool) -> int:
    """File offset of the (stored, uncompressed) ``data/<k>`` record holding ``nbytes`` bytes."""
    with zipfile.ZipFile(path) as z:
        recs = [i for i in z.infolist() if "/data/" in i.filename and i.file_size == nbytes
                and i.filename.rsplit("/", 1)[-1].isdigit()]
    if not recs:
        raise ShardError(f"{path}: no {nbytes}-byte tensor record in the archive")
    recs.sort(key=lambda i: int(i.filename.rsplit("/", 1)[-1]))
    info = recs[0] if prefer_first else recs[-1]
    if info.compress_type != zipfile.ZIP_STORED:
        raise ShardError(f"{path}: tensor record {info.filename} is compressed; re-create the "
                         f"file with this version's tools")
    f.seek(info.header_offset)
    hdr = f.read(30)
    if len(hdr) != 30 or hdr[:4] != b"PK\x03\x04":
        raise ShardError(f"{path}: damaged zip header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", hdr[26:30])
    return info.header_offset + 30 + name_len + extra_len


@dataclass
class SplitLayout:
    """Where the rows and labels of a split file are, for ``os.pread`` windows."""
    path: str
    n: int
    sample_shape: Tuple[int, ...]
    x_offset: int
    y_offset: int

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.sample_shape))


def split_layout(path: str) -> SplitLayout:
    """Shapes via ``torch.load(mmap=True)`` (maps, touches only the pickle), offsets via zipfile."""
    x, y = read_split(path, mmap=True)
    n, shape = len(x), tuple(x.shape[1:])
    if n and not (x.is_contiguous() and x.storage_offset() == 0 and y.storage_offset() == 0
                  and x.untyped_storage().nbytes() == x.nbytes
                  and y.untyped_storage().nbytes() == y.nbytes):
        raise ShardError(f"{path}: tensors are views of larger storages; re-create the file with "
                         f"this version's tools")
    x_nbytes, y_nbytes = x.nbytes, y.nbytes
    del x, y  # unmap
    if n == 0:
        return SplitLayout(path, 0, shape, 0, 0)
    with open(path, "rb") as f:
        # x is pickled first, so when sizes tie (8-byte samples) it is the lower record number
        xo = _record_offset(path, f, x_nbytes, prefer_first=True)
        yo = _record_offset(path, f, y_nbytes, prefer_first=x_nbytes != y_nbytes)
    _check_byteorder(path)
    return SplitLayout(path, n, shape, xo, yo)


def _check_byteorder(path: str) -> None:
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith("/byteorder")]
        order = z.read(names[0]).decode() if names else "little"
    if order != "little" or np.little_endian is False:
        raise ShardError(f"{path}: written with byte order {order!r}; streaming reads need "
                         f"little-endian files on a little-endian machine (use streaming: false)")


def pread_exact(fd: int, nbytes: int, offset: int, out: memoryview, path: str) -> None:
    """Fill ``out[:nbytes]`` from ``offset``; a short read means the file shrank under us."""
    got = 0
    while got < nbytes:
        k = os.preadv(fd, [out[got:nbytes]], offset + got)
        if k <= 0:
            raise ShardError(f"{path}: file ended at byte {offset + got}, expected "
                             f"{offset + nbytes} (truncated while reading?)")
        got += k


def read_rows(fd: int, lay: SplitLayout, rows: np.ndarray,
              buf: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Samples and labels of the sorted row indices ``rows``, one pread per contiguous run."""
    k = len(rows)
    rb = lay.row_bytes
    xs = buf[:k] if buf is not None and len(buf) >= k else np.empty((k, *lay.sample_shape), np.uint8)
    ys = np.empty(k, np.int64)
    xv, yv = memoryview(xs.reshape(-1)), memoryview(ys.view(np.uint8))
    for a, b in _runs(rows):
        first = int(rows[a])
        pread_exact(fd, (b - a) * rb, lay.x_offset + first * rb, xv[a * rb:], lay.path)
        pread_exact(fd, (b - a) * 8, lay.y_offset + first * 8, yv[a * 8:], lay.path)
    return xs, ys


def _runs(rows: np.ndarray) -> Iterable[Tuple[int, int]]:
    """[a, b) position ranges of ``rows`` whose values are consecutive integers."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(rows)]))
    return zip(starts.tolist(), ends.tolist())


def scan_labels(fd: int, lay: SplitLayout, on_chunk: Callable[[np.ndarray], None]) -> None:
    """Feed the labels to ``on_chunk`` in bounded windows (self-check without loading them all)."""
    step = CHUNK // 8
    buf = np.empty(step, np.int64)
    for start in range(0, lay.n, step):
        k = min(step, lay.n - start)
        pread_exact(fd, k * 8, lay.y_offset + start * 8, memoryview(buf.view(np.uint8)), lay.path)
        on_chunk(buf[:k])
