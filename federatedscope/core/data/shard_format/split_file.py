"""The one reader/writer of shard split files (``train.pt`` ...), index files and packed files.

A split file is ``torch.save({"x": <sample dtype> [n, *shape], "y": int64 [n]})`` (README.md).
torch writes its zip archive uncompressed with 64-byte aligned records, so the bytes of ``x`` sit
at a fixed offset in the file. Two things here rely on that, both checked when used:

* ``write_split_chunks`` writes a split of any size in O(chunk) memory: it ``torch.save``s an
  *unwritten* placeholder tensor (untouched ``torch.empty`` pages map the kernel's zero page, so
  they cost no RSS), then overwrites the record's bytes in place from the caller's chunks (in a
  memory buffer, written once, for a split under IN_MEMORY_BYTES; skipping torch.save when a
  file of the same shape was just written);
* ``SplitLayout`` lets the streaming reader ``os.pread`` windows of rows without mapping the file,
  so a client's RSS does not grow with its shard (touched pages of an mmap would count).

Files are only ever loaded with ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""
import hashlib
import io
import os
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch

# atomic_write: the shared temp + fsync + rename helper; its writer callback lets us patch the
# temp file in place before the rename.
from federatedscope.core.auxiliaries.utils import atomic_write
# sha256_file lives with the format's checks (no torch needed to verify a shard); it is also
# reached here, beside the files it hashes
from federatedscope.core.data.shard_format.checks import (CHUNK, SAMPLE_DTYPES, ShardError,  # noqa: F401
                                                        sha256_file)

_TORCH_DTYPES = {getattr(torch, n): n for n in SAMPLE_DTYPES}


def _load(path: str, mmap: bool) -> object:
    if not os.path.isfile(path):
        raise ShardError(f"{path}: file not found")
    try:
        return torch.load(path, weights_only=True, mmap=mmap, map_location="cpu")
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError for bad bytes
        raise ShardError(f"{path}: cannot read it (truncated or corrupt file: "
                         f"{str(e).splitlines()[0][:200]})") from None


def read_split(path: str, mmap: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x [n, ...], y int64 [n])``, x of a supported sample dtype; errors name the file."""
    obj = _load(path, mmap)
    if not isinstance(obj, dict) or set(obj) != {"x", "y"}:
        raise ShardError(f"{path}: not a split file (expected a dict with keys 'x' and 'y')")
    x, y = obj["x"], obj["y"]
    if not isinstance(x, torch.Tensor) or x.dtype not in _TORCH_DTYPES or x.dim() < 2:
        raise ShardError(f"{path}: 'x' must be a tensor [n, ...] of one of {list(SAMPLE_DTYPES)}, "
                         f"got {_describe(x)}")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
        raise ShardError(f"{path}: 'y' must be an int64 tensor [n], got {_describe(y)}")
    if len(x) != len(y):
        raise ShardError(f"{path}: {len(x)} samples but {len(y)} labels")
    return x, y


def _describe(v: object) -> str:
    if isinstance(v, torch.Tensor):
        return f"{v.dtype} {tuple(v.shape)}"
    return type(v).__name__


def write_split(path: str, x: torch.Tensor, y: torch.Tensor) -> str:
    """Atomically write a split held in memory."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dtype not in _TORCH_DTYPES or y.dtype != torch.int64 or len(x) != len(y) or x.dim() < 2:
        raise ValueError(f"{path}: need x [n, ...] of one of {list(SAMPLE_DTYPES)} and int64 "
                         f"y [n], got {x.dtype} {tuple(x.shape)} / {y.dtype} {tuple(y.shape)}")
    return write_split_chunks(path, y.numpy(), tuple(x.shape[1:]), [x.contiguous().numpy()],
                              _TORCH_DTYPES[x.dtype])


# A split whose bytes fit this is built in memory and written once: one zip parse, no re-read to
# hash it. Larger ones are patched in place in the temp file, in O(chunk) memory.
IN_MEMORY_BYTES = 16 << 20
# Every byte of a split file that depends on its content (x and y data, their CRCs, the
# serialization id and its CRC) is overwritten by ``fill``; the rest depends only on (n, sample
# shape, dtype). So a finished small file is the skeleton of the next one of that shape, and most
# splits skip torch.save and the zip parse. Bounded: the least recently used go first once the
# kept files exceed TEMPLATE_TOTAL bytes (a split over TEMPLATE_BYTES is never kept).
TEMPLATE_BYTES = 4 << 20
TEMPLATE_TOTAL = 32 << 20
_Entries = Dict[str, Tuple[int, zipfile.ZipInfo]]


class _Skeletons(OrderedDict):
    """(file bytes, central directory) by (n, sample shape, dtype); least recently used first."""
    total = 0

    def keep(self, key: tuple, data: bytes, entries: _Entries) -> None:
        old = self.pop(key, None)
        self.total += len(data) - (len(old[0]) if old else 0)
        self[key] = (data, entries)
        while self.total > TEMPLATE_TOTAL:
            _, (dropped, _) = self.popitem(last=False)
            self.total -= len(dropped)


_templates = _Skeletons()


def write_split_chunks(path: str, y: np.ndarray, sample_shape: Tuple[int, ...],
                       chunks: Iterable[np.ndarray], dtype: str = "uint8",
                       durable: bool = True, private: bool = False) -> str:
    """Atomically write a split whose samples arrive as chunks ``[k, *sample_shape]`` of ``dtype``
    (``durable``: as ``atomic_write``'s); returns the file's sha256. ``private``: ``path`` is in
    a directory nobody reads until it is renamed into place as a whole, so a split built in
    memory is written straight to ``path`` (no temp file and rename of its own).

    Memory stays O(largest chunk + labels + IN_MEMORY_BYTES) whatever the split size (module
    doc). The file is byte-for-byte a function of its content, so equal shards have equal sha256s.
    """
    n = int(len(y))
    row = int(np.prod(sample_shape)) * np.dtype(dtype).itemsize
    y_t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))

    def fill(f, entries: Optional[_Entries] = None) -> _Entries:
        if entries is None:  # no skeleton of this shape: torch.save one
            placeholder = torch.empty((n, *sample_shape), dtype=getattr(torch, dtype))
            torch.save({"x": placeholder, "y": y_t}, f)
            del placeholder
            entries = _central_entries(f)
        written, crc = 0, 0
        x_at = _record_offset(path, f, entries, n * row) if n else 0
        f.seek(x_at)
        for c in chunks:
            c = np.ascontiguousarray(c, dtype=dtype)
            if c.shape[1:] != tuple(sample_shape) or written + len(c) > n:
                raise ValueError(f"{path}: chunk of shape {c.shape} does not fit "
                                 f"{n} x {sample_shape} (at row {written})")
            # a C-contiguous array is a flat byte buffer to write() and crc32(); no
            # memoryview cast, which refuses a chunk of zero rows
            f.write(c)
            crc = zlib.crc32(c, crc)
            written += len(c)
        if written != n:
            raise ValueError(f"{path}: got {written} sample rows, expected {n}")
        y_bytes = y_t.numpy().tobytes()
        if n:
            _set_crc(path, f, entries, x_at, n * row, crc)
            # y too, so a skeleton's labels are replaced (x is pickled first: the lower record
            # number when the sizes tie)
            y_at = _record_offset(path, f, entries, n * 8, prefer_first=n * row != n * 8)
            f.seek(y_at)
            f.write(y_bytes)
            _set_crc(path, f, entries, y_at, n * 8, zlib.crc32(y_bytes))
        _fix_serialization_id(path, f, entries, y_bytes + crc.to_bytes(4, "little"))
        return entries

    if n * row <= IN_MEMORY_BYTES:
        key = (n, tuple(sample_shape), dtype) if n * row <= TEMPLATE_BYTES else None
        return _write_built(path, fill, durable, key, private)

    def write(tmp: str) -> None:
        # through a file object, so the archive's record prefix is 'archive', not the temp name
        with open(tmp, "w+b") as f:
            fill(f)
    atomic_write(path, write, durable)
    return sha256_file(path)


def write_index(path: str, idx: np.ndarray, durable: bool = True, private: bool = False) -> str:
    """--link mode: a client's split is int64 row indices into the packed file; returns its
    sha256 (``private``: as ``write_split_chunks``')."""
    t = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))

    def fill(f, entries: Optional[_Entries] = None) -> _Entries:
        torch.save({"idx": t}, f)
        entries = _central_entries(f)
        _fix_serialization_id(path, f, entries, t.numpy().tobytes())
        return entries
    return _write_built(path, fill, durable, None, private)


def _write_built(path: str, fill: Callable[..., _Entries], durable: bool,
                 key: Optional[tuple], private: bool = False) -> str:
    """Build the file in memory with ``fill`` (from the skeleton cached under ``key``, if any),
    write it in one write (atomically unless ``private``), and return the sha256 of the bytes written (no re-read of
    a file just written)."""
    hit = _templates.get(key) if key is not None else None
    buf = io.BytesIO(hit[0]) if hit else io.BytesIO()
    entries = fill(buf, hit[1] if hit else None)
    data = buf.getbuffer()  # no copy of a large split; only a skeleton is copied
    if key is not None:
        _templates.keep(key, bytes(data), entries)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            if private and durable:
                f.flush()
                os.fsync(f.fileno())
    try:
        if private:  # the directory's rename publishes it: no temp file, no rename of its own
            write(path)
        else:
            atomic_write(path, write, durable)
        return hashlib.sha256(data).hexdigest()
    finally:
        data.release()


def _central_entries(f) -> _Entries:
    """name -> (file offset of its central-directory header, info), of the archive in ``f``
    (a file opened for update, or a BytesIO). Patching record bytes moves no record, so one
    parse serves every patch of a file."""
    f.flush()
    with zipfile.ZipFile(f) as z:
        infos = {i.filename: i for i in z.infolist()}
        start = z.start_dir
    f.seek(start)
    cd = f.read()
    out, p = {}, 0
    while cd[p:p + 4] == b"PK\x01\x02":
        nl, el, cl = struct.unpack("<HHH", cd[p + 28:p + 34])
        name = cd[p + 46:p + 46 + nl].decode("utf-8")
        out[name] = (start + p, infos[name])
        p += 46 + nl + el + cl
    return out


def _set_crc(path: str, f, entries: _Entries, data_at: int,
             size: int, crc: int, name: str = "") -> None:
    """Store ``crc`` for the record whose data starts at ``data_at`` (descriptor + central dir)."""
    for cname, (cd_at, info) in entries.items():
        if (name and cname != name) or (not name and (info.file_size != size
                                                      or _data_offset(f, info) != data_at)):
            continue
        packed = struct.pack("<I", crc)
        f.seek(cd_at + 16)
        f.write(packed)
        if info.flag_bits & 0x08:  # data descriptor after the data, optional signature
            f.seek(data_at + size)
            sig = f.read(4)
            f.seek(data_at + size + (4 if sig == b"PK\x07\x08" else 0))
        else:
            f.seek(info.header_offset + 14)
        f.write(packed)
        return
    raise ShardError(f"{path}: cannot find the record to update in the archive")


def _fix_serialization_id(path: str, f, entries: _Entries, content: bytes) -> None:
    """torch writes a random id per save; derive it from the content so files are reproducible."""
    for name, (_, info) in entries.items():
        if name.endswith("/.data/serialization_id") and info.compress_type == zipfile.ZIP_STORED:
            digits = str(int(hashlib.sha256(content).hexdigest(), 16)).zfill(info.file_size)
            new = digits[:info.file_size].encode("ascii")
            at = _data_offset(f, info)
            f.seek(at)
            f.write(new)
            _set_crc(path, f, entries, at, info.file_size, zlib.crc32(new), name=name)
            return


def _data_offset(f, info: zipfile.ZipInfo) -> int:
    f.seek(info.header_offset)
    hdr = f.read(30)
    if len(hdr) != 30 or hdr[:4] != b"PK\x03\x04":
        raise ShardError(f"damaged zip header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", hdr[26:30])
    return info.header_offset + 30 + name_len + extra_len


def read_index(path: str) -> torch.Tensor:
    obj = _load(path, False)
    idx = obj.get("idx") if isinstance(obj, dict) else None
    if idx is None or set(obj) != {"idx"} or not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 \
            or idx.dim() != 1:
        raise ShardError(f"{path}: not an index file (expected {{'idx': int64 [n]}})")
    return obj["idx"]


# ----------------------------------------------------------------------------- raw offsets
def _record_offset(path: str, f, entries: _Entries, nbytes: int, prefer_first: bool = True) -> int:
    """File offset of the (stored, uncompressed) ``data/<k>`` record holding ``nbytes`` bytes."""
    recs = [i for _, i in entries.values() if "/data/" in i.filename and i.file_size == nbytes
            and i.filename.rsplit("/", 1)[-1].isdigit()]
    if not recs:
        raise ShardError(f"{path}: no {nbytes}-byte tensor record in the archive")
    recs.sort(key=lambda i: int(i.filename.rsplit("/", 1)[-1]))
    info = recs[0] if prefer_first else recs[-1]
    if info.compress_type != zipfile.ZIP_STORED:
        raise ShardError(f"{path}: tensor record {info.filename} is compressed; re-create the "
                         f"file with this version's tools")
    return _data_offset(f, info)


@dataclass
class SplitLayout:
    """Where the rows and labels of a split file are, for ``os.pread`` windows."""
    path: str
    n: int
    sample_shape: Tuple[int, ...]
    x_offset: int
    y_offset: int
    dtype: str = "uint8"

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.sample_shape)) * np.dtype(self.dtype).itemsize


def split_layout(path: str) -> SplitLayout:
    """Shapes via ``torch.load(mmap=True)`` (maps, touches only the pickle), offsets via zipfile."""
    x, y = read_split(path, mmap=True)
    n, shape, dtype = len(x), tuple(x.shape[1:]), _TORCH_DTYPES[x.dtype]
    if n and not (x.is_contiguous() and x.storage_offset() == 0 and y.storage_offset() == 0
                  and x.untyped_storage().nbytes() == x.nbytes
                  and y.untyped_storage().nbytes() == y.nbytes):
        raise ShardError(f"{path}: tensors are views of larger storages; re-create the file with "
                         f"this version's tools")
    x_nbytes, y_nbytes = x.nbytes, y.nbytes
    del x, y  # unmap
    if n == 0:
        return SplitLayout(path, 0, shape, 0, 0, dtype)
    with open(path, "rb") as f:
        entries = _central_entries(f)
        # x is pickled first, so when sizes tie (8-byte samples) it is the lower record number
        xo = _record_offset(path, f, entries, x_nbytes, prefer_first=True)
        yo = _record_offset(path, f, entries, y_nbytes, prefer_first=x_nbytes != y_nbytes)
    _check_byteorder(path)
    return SplitLayout(path, n, shape, xo, yo, dtype)


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
    if buf is not None and len(buf) >= k:
        xs = buf[:k]
    else:
        xs = np.empty((k, *lay.sample_shape), lay.dtype)
    ys = np.empty(k, np.int64)
    xv, yv = memoryview(xs.reshape(-1).view(np.uint8)), memoryview(ys.view(np.uint8))
    for a, b in _runs(rows):
        first = int(rows[a])
        pread_exact(fd, (b - a) * rb, lay.x_offset + first * rb, xv[a * rb:], lay.path)
        pread_exact(fd, (b - a) * 8, lay.y_offset + first * 8, yv[a * 8:], lay.path)
    return xs, ys


def read_labels(fd: int, lay: SplitLayout, rows: np.ndarray) -> np.ndarray:
    """Labels only of the sorted row indices ``rows`` (8 bytes a row, no pixels read)."""
    ys = np.empty(len(rows), np.int64)
    yv = memoryview(ys.view(np.uint8))
    for a, b in _runs(rows):
        pread_exact(fd, (b - a) * 8, lay.y_offset + int(rows[a]) * 8, yv[a * 8:], lay.path)
    return ys


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
