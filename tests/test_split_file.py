"""split_file, the one writer of split files, checked from outside: what it writes loads back
(torch and the streaming reader agree), every zip CRC it patches is right, the bytes are a
function of the content, and every bad input names the file."""
import hashlib
import os
import zipfile
import zlib

import numpy as np
import pytest
import torch

from federatedscope.core.data.shard_format import ShardError, split_file as sfile


def _check(path, x, y):
    """torch, zipfile's CRC check and the pread layout all see exactly ``x``, ``y``."""
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None           # every patched CRC matches its record
    gx, gy = sfile.read_split(path)
    assert gx.dtype == x.dtype and torch.equal(gx, x) and torch.equal(gy, y)
    lay = sfile.split_layout(path)
    assert (lay.n, lay.sample_shape) == (len(x), tuple(x.shape[1:]))
    if len(x):
        fd = os.open(path, os.O_RDONLY)
        try:
            for rows in (np.array([0, len(x) - 1]), np.array([len(x) - 1])):
                xs, ys = sfile.read_rows(fd, lay, rows)
                assert np.array_equal(xs, x.numpy()[rows]) and np.array_equal(ys, y.numpy()[rows])
        finally:
            os.close(fd)


@pytest.mark.parametrize("dtype,shape", [(torch.uint8, (3, 5, 5)), (torch.float32, (7,)),
                                         (torch.int64, (4,)), (torch.uint8, (2, 4)),
                                         (torch.uint8, (6,)), (torch.uint8, (2,))])
@pytest.mark.parametrize("n", [1, 9])
def test_round_trip_of_each_sample_type(tmp_path, dtype, shape, n):
    # (2, 4) uint8 rows: 8-byte samples tie in size with the int64 labels; one row of 6 (or 2)
    # bytes ties with torch's 'byteorder' ('version') record, which comes first in the archive
    g = torch.Generator().manual_seed(3)
    x = (torch.rand((n, *shape), generator=g) * 200).to(dtype)
    y = torch.arange(n, dtype=torch.int64) % 4 + 1
    p = str(tmp_path / "train.pt")
    sfile.write_split(p, x, y)
    _check(p, x, y)


def test_chunks_are_concatenated_and_labels_made_int64(tmp_path):
    chunks = [np.full((k, 2, 3), i + 1, np.uint8) for i, k in enumerate((4, 1, 5))]
    y = np.arange(10, dtype=np.int32) * 3                    # int32 labels are stored int64
    p = str(tmp_path / "val.pt")
    sfile.write_split_chunks(p, y, (2, 3), iter(chunks))     # default dtype: uint8
    _check(p, torch.from_numpy(np.concatenate(chunks)), torch.arange(10, dtype=torch.int64) * 3)


def test_bytes_are_a_function_of_the_content(tmp_path):
    x = torch.arange(6 * 4, dtype=torch.uint8).reshape(6, 4)
    a, b, c = (str(tmp_path / f"{k}.pt") for k in "abc")
    sfile.write_split(a, x, torch.zeros(6, dtype=torch.int64))
    sfile.write_split(b, x, torch.zeros(6, dtype=torch.int64))
    sfile.write_split(c, x, torch.ones(6, dtype=torch.int64))
    assert sfile.sha256_file(a) == sfile.sha256_file(b) != sfile.sha256_file(c)
    for p in (a, c):
        with zipfile.ZipFile(p) as z:
            assert z.testzip() is None


def test_empty_split(tmp_path):
    p = str(tmp_path / "test.pt")
    sfile.write_split_chunks(p, np.zeros(0, np.int64), (28, 28), [])
    x, y = sfile.read_split(p)
    assert x.shape == (0, 28, 28) and x.dtype == torch.uint8 and y.shape == (0,)
    assert sfile.split_layout(p) == sfile.SplitLayout(p, 0, (28, 28), 0, 0, "uint8")
    q = str(tmp_path / "val.pt")
    sfile.write_split_chunks(q, np.zeros(0, np.int64), (3,), [], dtype="float32")
    assert sfile.split_layout(q) == sfile.SplitLayout(q, 0, (3,), 0, 0, "float32")
    with zipfile.ZipFile(p) as z:
        assert z.testzip() is None
    # an empty split held in memory writes as an empty chunk list does
    r = str(tmp_path / "train.pt")
    sfile.write_split(r, torch.zeros(0, 28, 28, dtype=torch.uint8),
                      torch.zeros(0, dtype=torch.int64))
    assert sfile.sha256_file(r) == sfile.sha256_file(p)


def test_chunks_of_zero_rows_are_accepted(tmp_path):
    # a caller cutting rows by ranges may hand over an empty range: it adds no bytes
    rows = np.arange(5 * 6, dtype=np.float32).reshape(5, 2, 3) / 4
    parts = [rows[:2], rows[2:2], rows[2:], rows[5:]]              # 2, 0, 3 and 0 rows
    y = np.array([4, 0, 3, 1, 2], np.int64)
    p, q = str(tmp_path / "train.pt"), str(tmp_path / "whole.pt")
    sfile.write_split_chunks(p, y, (2, 3), parts, dtype="float32")
    _check(p, torch.from_numpy(rows), torch.from_numpy(y))
    sfile.write_split_chunks(q, y, (2, 3), [rows], dtype="float32")
    assert sfile.sha256_file(p) == sfile.sha256_file(q)
    # an empty split given one empty chunk writes the same file as one given none
    e, f = str(tmp_path / "e.pt"), str(tmp_path / "f.pt")
    sfile.write_split_chunks(e, np.zeros(0, np.int64), (2, 3), [rows[:0]], dtype="float32")
    sfile.write_split_chunks(f, np.zeros(0, np.int64), (2, 3), [], dtype="float32")
    assert sfile.sha256_file(e) == sfile.sha256_file(f)


def _serialization_id(path):
    with zipfile.ZipFile(path) as z:
        (name,) = [n for n in z.namelist() if n.endswith("/.data/serialization_id")]
        return z.read(name).decode("ascii")


def _id_of(content: bytes, size: int) -> str:
    # the leading decimal digits of sha256(content) as one integer, as many as torch's id holds
    return str(int(hashlib.sha256(content).hexdigest(), 16)).zfill(size)[:size]


def test_serialization_id_is_pinned(tmp_path):
    """Shards cut by this and later versions must hash alike: torch's random per-save id is
    replaced by the digits of sha256(labels as int64 little-endian + CRC-32 of x's bytes as 4
    little-endian bytes); an index file's id by those of sha256(its int64 indices)."""
    x = np.array([[1, 2, 3], [250, 0, 7], [9, 9, 9], [4, 5, 6]], np.uint8)
    y = np.array([3, 0, 2, 3], np.int64)
    p = str(tmp_path / "train.pt")
    sfile.write_split_chunks(p, y, (3,), [x[:1], x[1:]])
    got = _serialization_id(p)
    crc = zlib.crc32(bytes([1, 2, 3, 250, 0, 7, 9, 9, 9, 4, 5, 6]))
    content = b"".join(int(v).to_bytes(8, "little") for v in (3, 0, 2, 3)) \
        + crc.to_bytes(4, "little")
    assert len(got) >= 16 and got == _id_of(content, len(got))
    e = str(tmp_path / "test.pt")
    sfile.write_split_chunks(e, np.zeros(0, np.int64), (3,), [])
    assert _serialization_id(e) == _id_of(b"\0\0\0\0", len(got))      # no labels, CRC 0
    i = str(tmp_path / "idx.pt")
    sfile.write_index(i, np.array([7, 1, 300], np.int32))
    idx_bytes = b"".join(int(v).to_bytes(8, "little") for v in (7, 1, 300))
    assert _serialization_id(i) == _id_of(idx_bytes, len(got))


@pytest.mark.parametrize("x,y,what", [
    (torch.zeros(4, 3, dtype=torch.uint8), torch.zeros(5, dtype=torch.int64), "len"),
    (torch.zeros(4, 3, dtype=torch.uint8), torch.zeros(4, dtype=torch.int32), "y dtype"),
    (torch.zeros(4, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), "1-d x"),
    (torch.zeros(4, 3, dtype=torch.int16), torch.zeros(4, dtype=torch.int64), "x dtype"),
])
def test_write_split_refuses_bad_tensors(tmp_path, x, y, what):
    p = str(tmp_path / "bad.pt")
    with pytest.raises(ValueError) as ei:
        sfile.write_split(p, x, y)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: need x [n, ...] of one of ['uint8', 'int64', 'float32']"), msg
    assert f"got {x.dtype} {tuple(x.shape)} / {y.dtype} {tuple(y.shape)}" in msg, what
    assert not os.path.exists(p)


@pytest.mark.parametrize("sizes,shape,match", [
    ((3, 3), (2, 2), r"chunk of shape \(3, 2, 2\) does not fit 5 x \(2, 2\) \(at row 3\)"),
    ((2, 2), (2, 2), r"got 4 sample rows, expected 5"),
    ((5,), (2, 3), r"chunk of shape \(5, 2, 3\) does not fit 5 x \(2, 2\) \(at row 0\)"),
])
def test_write_split_chunks_refuses_a_wrong_row_count_or_shape(tmp_path, sizes, shape, match):
    p = str(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=match) as ei:
        sfile.write_split_chunks(p, np.zeros(5, np.int64), (2, 2),
                                 [np.zeros((k, *shape), np.uint8) for k in sizes])
    assert str(ei.value).startswith(p)
    assert not os.path.exists(p)


def test_record_offset_errors_name_the_file(tmp_path):
    p = str(tmp_path / "x.pt")
    sfile.write_split(p, torch.zeros(3, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    with open(p, "rb") as f, pytest.raises(ShardError, match=f"{p}: no 99-byte tensor record"):
        sfile._record_offset(p, f, sfile._central_entries(f), 99)


def _labels_file(tmp_path, n=21):
    p = str(tmp_path / "train.pt")
    y = torch.arange(n, dtype=torch.int64) * 7 % 5
    sfile.write_split(p, torch.arange(n * 3, dtype=torch.uint8).reshape(n, 3), y)
    return p, y


def test_label_reads_by_rows_and_by_windows(tmp_path, monkeypatch):
    p, y = _labels_file(tmp_path)
    lay = sfile.split_layout(p)
    monkeypatch.setattr(sfile, "CHUNK", 64)          # 8 labels a window: 3 windows for 21
    seen = []
    fd = os.open(p, os.O_RDONLY)
    try:
        rows = np.array([0, 1, 2, 9, 15, 16, 20])
        assert np.array_equal(sfile.read_labels(fd, lay, rows), y.numpy()[rows])
        buf = np.zeros((7, 3), np.uint8)              # exactly len(rows): filled in place
        xs, ys = sfile.read_rows(fd, lay, rows, buf=buf)
        assert np.array_equal(xs[:, 0], rows * 3) and np.array_equal(ys, y.numpy()[rows])
        assert np.shares_memory(xs, buf)
        sfile.scan_labels(fd, lay, lambda c: seen.append(c.copy()))
    finally:
        os.close(fd)
    assert [len(c) for c in seen] == [8, 8, 5]
    assert np.array_equal(np.concatenate(seen), y.numpy())
    assert [tuple(r) for r in sfile._runs(np.array([3, 4, 5, 9, 11, 12]))] == [(0, 3), (3, 4),
                                                                              (4, 6)]


def test_a_file_that_shrank_under_the_reader(tmp_path):
    p, _ = _labels_file(tmp_path)
    lay = sfile.split_layout(p)
    with open(p, "r+b") as f:
        f.truncate(lay.y_offset + 8 * 4 + 1)
    fd = os.open(p, os.O_RDONLY)
    try:
        with pytest.raises(ShardError, match=f"{p}: file ended at byte {lay.y_offset + 33}, "
                                             f"expected {lay.y_offset + 48}"):
            sfile.read_labels(fd, lay, np.array([2, 3, 4, 5]))
        # one byte left in the window: it is read, then the end is reported after it
        with pytest.raises(ShardError, match=f"{p}: file ended at byte {lay.y_offset + 33}, "
                                             f"expected {lay.y_offset + 40}"):
            sfile.read_labels(fd, lay, np.array([4]))
        with pytest.raises(ShardError, match=f"^{p}: file ended at byte"):
            sfile.read_rows(fd, lay, np.array([5]))
        with open(p, "r+b") as f:
            f.truncate(lay.x_offset + 3 * 2 + 1)       # inside the samples now
        with pytest.raises(ShardError, match=f"^{p}: file ended at byte {lay.x_offset + 7}"):
            sfile.read_rows(fd, lay, np.array([2]))
        with pytest.raises(ShardError, match=f"^{p}: file ended at byte"):
            sfile.scan_labels(fd, lay, lambda c: None)
    finally:
        os.close(fd)


def test_index_files(tmp_path):
    p = str(tmp_path / "train.pt")
    sfile.write_index(p, np.array([5, 0, 3], np.int32))
    got = sfile.read_index(p)
    assert got.dtype == torch.int64 and got.tolist() == [5, 0, 3]
    with zipfile.ZipFile(p) as z:
        assert z.testzip() is None
    (tmp_path / "split").mkdir()
    q, _ = _labels_file(tmp_path / "split")
    with pytest.raises(ShardError, match=r"not an index file \(expected \{'idx': int64 \[n\]\}\)"):
        sfile.read_index(q)
    with pytest.raises(ShardError, match="not a split file"):
        sfile.read_split(p)
    for bad in (torch.arange(3), {"idx": torch.arange(3, dtype=torch.int32)},
                {"idx": torch.arange(3), "rows": 1}, {"idx": torch.zeros(2, 2, dtype=torch.int64)},
                {"rows": torch.arange(3)}):
        torch.save(bad, p)
        with pytest.raises(ShardError, match=f"^{p}: not an index file"):
            sfile.read_index(p)


@pytest.mark.parametrize("obj,match", [
    ({"x": torch.zeros(3, 2, dtype=torch.float64), "y": torch.zeros(3, dtype=torch.int64)},
     r"'x' must be a tensor \[n, \.\.\.\] of one of \['uint8', 'int64', 'float32'\], "
     r"got torch.float64 \(3, 2\)"),
    ({"x": [1, 2], "y": torch.zeros(2, dtype=torch.int64)}, r"'x' .*, got list$"),
    ({"x": torch.zeros(3, dtype=torch.uint8), "y": torch.zeros(3, dtype=torch.int64)},
     r"'x' must be .* got torch.uint8 \(3,\)"),
    ({"x": torch.zeros(3, 2, dtype=torch.uint8), "y": torch.zeros(3, dtype=torch.int32)},
     r"'y' must be an int64 tensor \[n\], got torch.int32 \(3,\)"),
    ({"x": torch.zeros(3, 2, dtype=torch.uint8), "y": torch.zeros(3, 1, dtype=torch.int64)},
     r"'y' must be an int64 tensor \[n\], got torch.int64 \(3, 1\)"),
    ({"x": torch.zeros(3, 2, dtype=torch.uint8), "y": torch.zeros(2, dtype=torch.int64)},
     r"3 samples but 2 labels"),
])
def test_read_split_refuses_what_is_not_a_split(tmp_path, obj, match):
    p = str(tmp_path / "val.pt")
    torch.save(obj, p)
    with pytest.raises(ShardError, match=f"^{p}: {match}"):
        sfile.read_split(p)


def test_unreadable_split_files(tmp_path):
    p = str(tmp_path / "test.pt")
    with pytest.raises(ShardError, match=f"^{p}: file not found$"):
        sfile.read_split(p)
    with open(p, "wb") as f:
        f.write(b"PK\x03\x04 not really a zip")
    with pytest.raises(ShardError, match=f"^{p}: cannot read it \\(truncated or corrupt file: "
                                         f".*zip"):   # torch's own first line says why
        sfile.read_split(p)


def test_a_pickled_object_is_refused_not_unpickled(tmp_path):
    import datetime
    p = str(tmp_path / "train.pt")
    torch.save({"x": datetime.date(2020, 1, 1), "y": datetime.date(2020, 1, 2)}, p)
    with pytest.raises(ShardError, match=f"^{p}: cannot read it"):
        sfile.read_split(p)


@pytest.mark.parametrize("x,y", [
    (torch.zeros(8, 3, dtype=torch.uint8)[2:5], torch.zeros(3, dtype=torch.int64)),  # offset
    (torch.zeros(8, 3, dtype=torch.uint8)[:3], torch.zeros(3, dtype=torch.int64)),   # longer
    (torch.zeros(3, 3, dtype=torch.uint8), torch.zeros(6, dtype=torch.int64)[3:]),
    (torch.zeros(3, 3, dtype=torch.uint8), torch.zeros(6, dtype=torch.int64)[:3]),
])
def test_layout_refuses_views_of_larger_storages(tmp_path, x, y):
    p = str(tmp_path / "train.pt")
    torch.save({"x": x, "y": y}, p)         # torch.save keeps the whole storage of a view
    with pytest.raises(ShardError, match=f"^{p}: tensors are views of larger storages"):
        sfile.split_layout(p)


def test_token_digest_is_sha256_of_utf8_any_string():
    import hashlib
    assert sf_token("é") == hashlib.sha256("é".encode("utf-8")).digest()
    # a token file decoded with surrogateescape still hashes (to its surrogate's UTF-8 form)
    assert sf_token("a\udcff") == hashlib.sha256(b"a\xed\xb3\xbf").digest()


def sf_token(t):
    from federatedscope.core.data.shard_format import token_digest
    return token_digest(t)


def _rewrite(src, dst, fn):
    """Copy a split file's archive, passing each record through ``fn`` (None drops it)."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        for info in z.infolist():
            data = fn(info.filename, z.read(info.filename))
            if data is not None:
                out.writestr(info, data)


def test_streaming_layout_needs_a_little_endian_file(tmp_path):
    src = str(tmp_path / "a.pt")
    x, y = torch.arange(12, dtype=torch.uint8).reshape(3, 4), torch.arange(3)
    sfile.write_split(src, x, y)
    big, old = str(tmp_path / "big.pt"), str(tmp_path / "old.pt")
    _rewrite(src, big, lambda n, d: b"big" if n.endswith("/byteorder") else d)
    with pytest.raises(ShardError, match=f"^{big}: written with byte order 'big'; streaming reads "
                                         f"need little-endian files"):
        sfile.split_layout(big)
    # archives of older torch versions have no byteorder record: little-endian by definition
    _rewrite(src, old, lambda n, d: None if n.endswith("/byteorder") else d)
    lay = sfile.split_layout(old)
    fd = os.open(old, os.O_RDONLY)
    try:
        xs, ys = sfile.read_rows(fd, lay, np.array([1, 2]))
    finally:
        os.close(fd)
    assert np.array_equal(xs, x.numpy()[1:]) and ys.tolist() == [1, 2]


def test_crc_patch_of_a_record_that_is_not_there(tmp_path):
    p, _ = _labels_file(tmp_path)
    with open(p, "r+b") as f, pytest.raises(
            ShardError, match=f"^{p}: cannot find the record to update in the archive$"):
        sfile._set_crc(p, f, sfile._central_entries(f), 12345, 7, 0)


def test_chunks_of_a_wider_integer_type_are_stored_as_the_split_dtype(tmp_path):
    p = str(tmp_path / "train.pt")
    chunks = [np.array([[250, 3]], np.int64), np.array([[7, 255]], np.int32)]
    sfile.write_split_chunks(p, np.array([1, 2]), (2,), chunks, dtype="uint8")
    x, _ = sfile.read_split(p)
    assert x.dtype == torch.uint8 and x.tolist() == [[250, 3], [7, 255]]


def _deflated(src, dst, compress):
    """A copy of the archive ``src`` at ``dst`` with the records ``compress(name)`` deflated."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for name in z.namelist():
            out.writestr(name, z.read(name), zipfile.ZIP_DEFLATED if compress(name)
                         else zipfile.ZIP_STORED)
    return dst


def test_damaged_or_compressed_records_are_named(tmp_path):
    src, _ = _labels_file(tmp_path)
    deflated = _deflated(src, str(tmp_path / "deflated.pt"), lambda name: "/data/" in name)
    with open(deflated, "rb") as f, pytest.raises(
            ShardError, match=f"^{deflated}: tensor record archive/data/0 is compressed"):
        sfile._record_offset(deflated, f, sfile._central_entries(f), 21 * 3)
    with zipfile.ZipFile(src) as z:
        at = z.getinfo("archive/data/0").header_offset
    with open(src, "r+b") as f:
        f.seek(at)
        f.write(b"PK\x09\x09")                      # the local header's signature, damaged
    with open(src, "rb") as f, pytest.raises(ShardError,
                                              match="^damaged zip header for archive/data/0$"):
        sfile._record_offset(src, f, sfile._central_entries(f), 21 * 3)


@pytest.mark.parametrize("record", ["archive/data/0", "archive/data/1"])
def test_the_streaming_layout_refuses_a_compressed_x_or_y_record(tmp_path, record):
    """torch.load reads a deflated record (it inflates it), but pread windows need the raw
    bytes at a fixed offset: the layout names the file and the record, x's or y's."""
    src = str(tmp_path / "train.pt")
    sfile.write_split(src, torch.arange(24, dtype=torch.uint8).reshape(3, 8),
                      torch.tensor([5, 0, 61]))
    bad = _deflated(src, str(tmp_path / "deflated.pt"), lambda name: name == record)
    assert sfile.read_split(bad)[1].tolist() == [5, 0, 61]
    with pytest.raises(ShardError, match=f"^{bad}: tensor record {record} is compressed"):
        sfile.split_layout(bad)


@pytest.mark.parametrize("n, shape, dtype", [(37, (28, 28), "uint8"), (5, (3, 4), "float32"),
                                             (0, (28, 28), "uint8")])
def test_in_memory_and_in_place_writes_give_the_same_bytes(tmp_path, monkeypatch, n, shape, dtype):
    """A split under IN_MEMORY_BYTES is built in memory, a larger one patched in place in its
    temp file: both must write the same bytes and return their true sha256."""
    rng = np.random.default_rng(3)
    x = (rng.integers(0, 256, (n, *shape)) if dtype == "uint8" else rng.random((n, *shape))) \
        .astype(dtype)
    y = rng.integers(0, 62, n)
    chunks = lambda: [x[:n // 3], x[n // 3:]]  # noqa: E731  two chunks, one may be empty
    small, large = str(tmp_path / "small.pt"), str(tmp_path / "large.pt")
    sha_small = sfile.write_split_chunks(small, y, shape, chunks(), dtype)
    monkeypatch.setattr(sfile, "IN_MEMORY_BYTES", -1)  # every split takes the in-place path
    sha_large = sfile.write_split_chunks(large, y, shape, chunks(), dtype)
    with open(small, "rb") as a, open(large, "rb") as b:
        assert a.read() == b.read()
    assert sha_small == sha_large == sfile.sha256_file(small)
    got_x, got_y = sfile.read_split(large)
    assert np.array_equal(got_x.numpy(), x) and got_y.tolist() == y.tolist()
    assert sorted(os.listdir(tmp_path)) == ["large.pt", "small.pt"]  # no temp file left


def test_index_file_returns_its_sha256(tmp_path):
    p = str(tmp_path / "train.pt")
    assert sfile.write_index(p, np.array([9, 4, 7])) == sfile.sha256_file(p)
    assert sfile.read_index(p).tolist() == [9, 4, 7]


def test_a_skeleton_reused_for_new_content_gives_the_bytes_torch_save_gives(tmp_path, monkeypatch):
    """Splits of one shape reuse the previous file as their skeleton: x, y, their CRCs and the
    serialization id must all be replaced, so the file equals one written from a fresh
    torch.save (the in-place path never uses a skeleton)."""
    monkeypatch.setattr(sfile, "_templates", sfile._Skeletons())
    rng = np.random.default_rng(11)
    splits = [(rng.integers(0, 256, (40, 2, 3)).astype(np.uint8), rng.integers(0, 62, 40))
              for _ in range(4)]
    # int64 [1] samples: x and y records have the same size, told apart by record number
    splits += [(rng.integers(0, 99, (40, 1)), rng.integers(0, 62, 40)) for _ in range(2)]
    built = []
    for i, (x, y) in enumerate(splits):
        p = str(tmp_path / f"fast{i}.pt")
        dt = x.dtype.name
        built.append((p, sfile.write_split_chunks(p, y, x.shape[1:], [x[:7], x[7:]], dt), x, y))
    assert len(sfile._templates) == 2  # two shapes: the uint8 one was reused three times
    monkeypatch.setattr(sfile, "IN_MEMORY_BYTES", -1)
    for i, (p, sha, x, y) in enumerate(built):
        ref = str(tmp_path / f"ref{i}.pt")
        assert sfile.write_split_chunks(ref, y, x.shape[1:], [x], x.dtype.name) == sha
        with open(p, "rb") as a, open(ref, "rb") as b:
            assert a.read() == b.read()
        got_x, got_y = sfile.read_split(p)
        assert np.array_equal(got_x.numpy(), x) and got_y.tolist() == y.tolist()
    # the kept skeletons stay under TEMPLATE_TOTAL bytes, least recently used dropped first
    monkeypatch.setattr(sfile, "IN_MEMORY_BYTES", 64 << 20)
    monkeypatch.setattr(sfile, "_templates", sfile._Skeletons())
    for n in (100, 200, 300, 100):
        sfile.write_split_chunks(str(tmp_path / "n.pt"), np.zeros(n), (400,),
                                 [np.ones((n, 400), np.uint8)])
    sizes = {k[0]: len(t) for k, (t, _) in sfile._templates.items()}
    assert list(sizes) == [200, 300, 100] and sizes[300] > 120_000
    monkeypatch.setattr(sfile, "TEMPLATE_TOTAL", sizes[300] + sizes[100])
    sfile.write_split_chunks(str(tmp_path / "n.pt"), np.zeros(300), (400,),
                             [np.ones((300, 400), np.uint8)])
    assert [k[0] for k in sfile._templates] == [100, 300]  # 200, least recently used, went
    assert sfile._templates.total == sizes[300] + sizes[100]


def test_private_writes_go_straight_to_the_path_with_the_same_bytes(tmp_path, monkeypatch):
    """``private``: the caller's own directory, published by its rename, so no temp file is
    made; the bytes and sha256 are those of the atomic write."""
    import tempfile
    x, y = np.arange(60, dtype=np.uint8).reshape(5, 3, 4), np.array([4, 0, 2, 2, 1])
    ref = str(tmp_path / "ref.pt")
    sha = sfile.write_split_chunks(ref, y, (3, 4), [x])
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: pytest.fail("a temp file was made"))
    for durable in (False, True):
        p = str(tmp_path / f"private_{durable}.pt")
        assert sfile.write_split_chunks(p, y, (3, 4), [x], durable=durable, private=True) == sha
        with open(p, "rb") as a, open(ref, "rb") as b:
            assert a.read() == b.read()
    idx = str(tmp_path / "idx.pt")
    assert sfile.write_index(idx, np.array([3, 1]), durable=False, private=True) == \
        sfile.sha256_file(idx)
    assert sfile.read_index(idx).tolist() == [3, 1]
    assert sorted(os.listdir(tmp_path)) == ["idx.pt", "private_False.pt", "private_True.pt",
                                            "ref.pt"]
