"""split_file's two less visible rules, checked at their boundaries:

* which write path a split takes: built in memory up to IN_MEMORY_BYTES (its skeleton kept for
  the next split of that shape up to TEMPLATE_BYTES), patched in place in a temp file above it,
  with the caller's ``durable`` passed through;
* the CRC patch on every form of stored zip record: CRC in the local header, in a data descriptor
  with its optional signature, and in one without (torch writes one form today; another zip
  writer, or a later torch, may write another).
"""
import io
import struct
import zipfile
import zlib

import numpy as np
import pytest

from federatedscope.core.data.shard_format import split_file as sfile

ROW = 100  # bytes of one (100,) uint8 sample


@pytest.fixture
def routes(monkeypatch):
    """Small thresholds (6 rows kept, 12 rows in memory) and a record of every write's route."""
    monkeypatch.setattr(sfile, "_templates", sfile._Skeletons())
    monkeypatch.setattr(sfile, "TEMPLATE_BYTES", 6 * ROW)
    monkeypatch.setattr(sfile, "IN_MEMORY_BYTES", 12 * ROW)
    seen = {"built": [], "atomic": [], "saves": 0}
    built, atomic, save = sfile._write_built, sfile.atomic_write, sfile.torch.save

    def spy_built(path, fill, durable, key, private=False):
        seen["built"].append(key)
        return built(path, fill, durable, key, private)

    def spy_atomic(path, writer, durable=True):
        seen["atomic"].append(durable)
        return atomic(path, writer, durable)

    def spy_save(*a, **k):
        seen["saves"] += 1
        return save(*a, **k)
    monkeypatch.setattr(sfile, "_write_built", spy_built)
    monkeypatch.setattr(sfile, "atomic_write", spy_atomic)
    monkeypatch.setattr(sfile.torch, "save", spy_save)
    return seen


def _write(path, n, durable=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, ROW)).astype(np.uint8)
    y = rng.integers(0, 62, n)
    sha = sfile.write_split_chunks(str(path), y, (ROW,), [x[:n // 2], x[n // 2:]],
                                   durable=durable)
    got_x, got_y = sfile.read_split(str(path))
    assert np.array_equal(got_x.numpy(), x) and got_y.tolist() == y.tolist()
    assert sha == sfile.sha256_file(str(path))


def test_a_split_at_the_skeleton_limit_is_kept_and_reused(tmp_path, routes):
    _write(tmp_path / "a.pt", 6)
    assert routes["built"] == [(6, (ROW,), "uint8")] and routes["saves"] == 1
    assert list(sfile._templates) == [(6, (ROW,), "uint8")]
    _write(tmp_path / "b.pt", 6, seed=1)         # same shape: no torch.save, other content
    assert routes["saves"] == 1 and len(routes["built"]) == 2
    _write(tmp_path / "c.pt", 5, seed=2)         # another row count is another skeleton
    assert routes["saves"] == 2 and len(sfile._templates) == 2


def test_a_split_over_the_skeleton_limit_is_built_in_memory_but_not_kept(tmp_path, routes):
    for name in ("a.pt", "b.pt"):
        _write(tmp_path / name, 7)
    assert routes["built"] == [None, None] and routes["saves"] == 2
    assert len(sfile._templates) == 0


def test_the_in_memory_limit_is_inclusive_and_larger_splits_are_patched_in_place(tmp_path,
                                                                                  routes):
    _write(tmp_path / "at.pt", 12)
    assert routes["built"] == [None] and routes["atomic"] == [True]
    for durable in (False, True):
        _write(tmp_path / f"over_{durable}.pt", 13, durable=durable)
    assert routes["built"] == [None], "a split over IN_MEMORY_BYTES was built in memory"
    assert routes["atomic"] == [True, False, True]   # the caller's durable, as given


# ----------------------------------------------------------------------------- zip record forms
def _zip(records, descriptor=None):
    """A stored zip archive of ``records`` [(name, data)], written by hand: CRCs in the local
    headers (``descriptor`` None), or after each record's data in a data descriptor with
    (``"signed"``) or without (``"bare"``) its PK\\x07\\x08 signature."""
    flag = 0 if descriptor is None else 0x08
    out, central = io.BytesIO(), b""
    for name, data in records:
        name_b, crc, at = name.encode(), zlib.crc32(data), out.tell()
        head_crc, head_size = (crc, len(data)) if descriptor is None else (0, 0)
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flag, 0, 0, 0, head_crc,
                              head_size, head_size, len(name_b), 0) + name_b + data)
        if descriptor is not None:
            out.write((b"PK\x07\x08" if descriptor == "signed" else b"")
                      + struct.pack("<III", crc, len(data), len(data)))
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flag, 0, 0, 0, crc,
                               len(data), len(data), len(name_b), 0, 0, 0, 0, 0, at) + name_b
    start = out.tell()
    out.write(central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records),
                                    len(central), start, 0))
    return out.getvalue()


@pytest.mark.parametrize("descriptor", [None, "signed", "bare"])
@pytest.mark.parametrize("patched", ["archive/data/0", "archive/data/1"])
def test_a_patched_record_gets_its_crc_wherever_the_archive_keeps_it(descriptor, patched):
    """Overwrite one record's bytes and store its CRC: the archive equals one written with the
    new bytes, in every form, and its neighbours are untouched (the last record is followed by
    the central directory, the first by the next local header)."""
    old = [("archive/data/0", bytes(range(40))), ("archive/data/1", b"\x07" * 24)]
    new = [(name, bytes((b * 5 + 1) % 256 for b in data) if name == patched else data)
           for name, data in old]
    f = io.BytesIO(_zip(old, descriptor))
    entries = sfile._central_entries(f)
    info = entries[patched][1]
    at = sfile._data_offset(f, info)
    data = dict(new)[patched]
    f.seek(at)
    f.write(data)
    sfile._set_crc("x.pt", f, entries, at, len(data), zlib.crc32(data))
    assert f.getvalue() == _zip(new, descriptor)
    with zipfile.ZipFile(f) as z:
        assert z.testzip() is None and z.read(patched) == data


def test_the_hand_written_forms_are_what_they_claim():
    """The builder above is a real zip in each form (Python's zipfile reads it back) and the
    descriptor forms set bit 3, the plain form does not."""
    records = [("a/data/0", b"abc"), ("a/data/1", b"")]
    for descriptor in (None, "signed", "bare"):
        with zipfile.ZipFile(io.BytesIO(_zip(records, descriptor))) as z:
            assert [(i.filename, z.read(i)) for i in z.infolist()] == records
            assert {bool(i.flag_bits & 0x08) for i in z.infolist()} == {descriptor is not None}

