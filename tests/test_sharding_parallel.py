"""The shard tool's input parsed by several worker processes (``--workers``): the same records,
rows and shard bytes as the sequential reader, the first failing piece's error, no leftovers."""
import json
import multiprocessing
import os
import time

import numpy as np
import pytest

from federatedscope.core.data import shard_format as sf
from federatedscope.core.data import sharding_input as si
from federatedscope.core.data.dataset_spec import DatasetSpec, WriterSamples
from federatedscope.core.data.sharding_plan import ShardingError
from federatedscope.register import dataset_spec_dict
from harness.procs import run_script
from test_sharding import ROOT, run, write_leaf

# ----------------------------------------------------------------------------- a toy spec
# pieces are (name, writers, rows per writer, delay s, failure); the worker looks the spec up by
# name, as it would a registered dataset's
TOY = "toy_pieces"


def _toy_writers(piece):
    name, writers, rows, delay, fail = piece
    time.sleep(delay)     # an early piece finishing last: order must still be the input's
    for w in range(writers):
        if fail == "kill" and w == 1:
            os._exit(9)   # the worker dies as an OOM kill would end it
        if fail and w == 1:
            raise ValueError(f"{name}: writer {name}w{w} sample 0: {fail}")
        base = sum(map(ord, name)) * 1000 + w * 100
        x = np.arange(base, base + 2 * rows, dtype=np.int64).reshape(rows, 2)
        source = f"{name}@{os.getpid()}" if fail == "pid" else name
        yield WriterSamples(f"{name}w{w}", x, (np.arange(rows) + w) % 5, source, None)


def _toy_spec(pieces):
    def iter_writers(root):
        for p in pieces:
            yield from _toy_writers(p)
    return DatasetSpec(name=TOY, sample_dtype="int64", sample_shape=(2,), num_classes=5,
                       model_input=(2,), iter_writers=iter_writers,
                       list_inputs=lambda root: [p[0] for p in pieces],
                       pieces=lambda root: list(pieces), read_piece=_toy_writers)


@pytest.fixture
def toy(monkeypatch):
    def use(pieces):
        spec = _toy_spec(pieces)
        monkeypatch.setitem(dataset_spec_dict, TOY, spec)
        return spec
    return use


def _read(spec, tmp_path, workers, tag):
    spill = si.Spill(str(tmp_path / f".spill-{tag}.bin"), spec)
    try:
        parts, kind = si.read_input(spec, "R", [p[0] for p in spec.pieces("R")], spill, False,
                                    workers)
        spill.f.flush()
        rows = {(w, s): spill.gather(np.arange(p.row, p.row + len(p.y))).tolist()
                for w, ps in parts.items() for s, p in ps.items()}
        return ({(w, s): (p.row, p.y.tolist(), p.source) for w, ps in parts.items()
                 for s, p in ps.items()}, rows, kind, spill.rows)
    finally:
        spill.close()


def test_workers_give_the_sequential_readers_records_rows_and_order(tmp_path, toy):
    # 7 pieces of 1..4 writers and 1..9 rows; the first piece is the slowest
    pieces = [(f"p{i}", 1 + i % 4, 1 + (3 * i) % 9, 0.3 if i == 0 else 0.0, None)
              for i in range(7)]
    spec = toy(pieces)
    want = _read(spec, tmp_path, 1, "one")
    for workers in (2, 3):
        got = _read(spec, tmp_path, workers, f"w{workers}")
        assert got == want
    records, rows, kind, total = want
    # hand-checked against the pieces: writers in input order, rows back to back
    assert kind == "unsplit" and total == sum(p[1] * p[2] for p in pieces)
    assert records[("p0w0", None)] == (0, [0], "p0")          # 1 writer of 1 row
    assert records[("p1w0", None)][0] == 1 and records[("p1w1", None)][0] == 1 + 4
    assert rows[("p1w1", None)] == np.arange(sum(map(ord, "p1")) * 1000 + 100,
                                             sum(map(ord, "p1")) * 1000 + 108).reshape(
        4, 2).tolist()
    assert sorted(os.listdir(tmp_path)) == []                  # piece spills gone, spills closed


def test_the_pieces_are_read_by_exactly_the_given_number_of_processes_other_than_this(
        tmp_path, toy):
    # 9 pieces of 0.2 s each: 3 workers all take some (more than this box's 2 cores, so not
    # a count the pool would pick by itself); never a fourth, never this process
    spec = toy([(f"p{i}", 1, 2, 0.2, "pid") for i in range(9)])
    records = _read(spec, tmp_path, 3, "x")[0]
    pids = {int(src.split("@")[1]) for _, _, src in records.values()}
    assert len(pids) == 3 and os.getpid() not in pids


def test_a_piece_spill_moves_in_whatever_the_kernel_copies_per_call(tmp_path, monkeypatch):
    """copy_file_range may copy less than asked: 7 bytes a call still lands every byte at its
    offset; a piece spill of the wrong size, or one that ends early, is an error naming it."""
    spec = _toy_spec([])
    spill = si.Spill(str(tmp_path / ".spill-1.bin"), spec)
    spill.add(np.arange(6, dtype=np.int64).reshape(3, 2), "before")
    piece = tmp_path / ".spill-1-0.bin"
    rows = np.arange(100, 140, dtype=np.int64).reshape(20, 2)
    piece.write_bytes(rows.tobytes())
    real, calls = os.copy_file_range, []

    def small(src, dst, count, offset_src=None, offset_dst=None):
        calls.append((count, offset_src, offset_dst))
        return real(src, dst, min(count, 7), offset_src, offset_dst)
    monkeypatch.setattr(os, "copy_file_range", small)
    assert spill.append_file(str(piece), 20) == 3 and spill.rows == 23
    assert len(calls) == -(-320 // 7) and calls[1] == (313, 7, 48 + 7)
    spill.add(np.array([[7, 7]], np.int64), "after")      # appended after the piece
    spill.f.flush()
    assert spill.gather(np.arange(24)).tolist() == \
        [[0, 1], [2, 3], [4, 5]] + rows.tolist() + [[7, 7]]
    piece.write_bytes(rows.tobytes()[:-16])
    with pytest.raises(ShardingError, match=f"^{piece}: a reading worker spilled 304 bytes for "
                                            f"20 rows of 16 bytes$"):
        spill.append_file(str(piece), 20)
    piece.write_bytes(rows.tobytes())
    monkeypatch.setattr(os, "copy_file_range", lambda *a: 0)   # the file shrank meanwhile
    with pytest.raises(ShardingError, match=f"^{piece}: ended after 0 of 320 bytes$"):
        spill.append_file(str(piece), 20)
    assert si.piece_spill("/a/b/.spill-12.bin", 3) == "/a/b/.spill-12-3.bin"
    spill.close()


def test_the_parallel_read_shows_the_same_input_bar(tmp_path, capsys):
    raw = tmp_path / "data" / "femnist" / "raw"
    for i in range(3):
        write_leaf(str(raw / f"all_data_{i}.json"), {f"f{i}a": 5, f"f{i}b": 6}, seed=i)
    run(str(tmp_path / "data"), tmp_path / "out", clients=2, workers=2, progress=True)
    err = capsys.readouterr().err
    assert "\rreading input:   0%|          | 0/3 [00:00<?, ?input/s]" in err
    assert "\n" not in err and err.split("\r")[-2].strip() == ""    # wiped when done


def test_the_first_failing_piece_is_named_and_no_piece_spill_is_left(tmp_path, toy):
    pieces = [("a", 2, 3, 0.0, None), ("b", 2, 3, 0.3, "bad pixel 0.7"),
              ("c", 2, 3, 0.0, "bad label 99"), ("d", 2, 3, 0.0, None)]
    spec = toy(pieces)
    with pytest.raises(ShardingError) as e:
        _read(spec, tmp_path, 3, "x")
    assert str(e.value) == "b: writer bw1 sample 0: bad pixel 0.7"   # b before c, though c ends first
    assert os.listdir(tmp_path) == []


def test_a_writer_in_two_pieces_is_refused_with_both_sources(tmp_path, toy):
    spec = toy([("a", 2, 2, 0.0, None), ("b", 1, 2, 0.0, None), ("a", 1, 1, 0.0, None)])
    with pytest.raises(ShardingError, match="writer aw0 appears twice in the unsplit data: a and a"):
        _read(spec, tmp_path, 2, "x")
    assert os.listdir(tmp_path) == []


def test_a_worker_that_dies_is_an_error_naming_the_fix(tmp_path, toy):
    spec = toy([("a", 2, 2, 0.0, None), ("b", 3, 2, 0.0, "kill"), ("c", 1, 2, 0.0, None)])
    with pytest.raises(ShardingError, match=r"a worker reading the input died .*--workers 1"):
        _read(spec, tmp_path, 2, "x")
    assert os.listdir(tmp_path) == []


def test_no_worker_outlives_a_read_that_failed_in_the_parent(tmp_path, toy, monkeypatch):
    """The parent failing (here its progress bar, after the first piece) still stops every
    worker and removes every piece spill."""
    class Broken:
        def update(self, n=1):
            raise OSError("stderr is gone")

        def close(self):
            raise OSError("stderr is gone")
    monkeypatch.setattr(si, "progress_bar", lambda *a, **k: Broken())
    spec = toy([("a", 2, 2, 0.0, None), ("b", 2, 2, 0.2, None), ("c", 2, 2, 0.0, None)])
    with pytest.raises(OSError, match="stderr is gone"):
        _read(spec, tmp_path, 2, "x")
    assert multiprocessing.active_children() == [] and os.listdir(tmp_path) == []


def test_an_input_of_empty_pieces_gets_the_readers_own_message(tmp_path, toy):
    spec = toy([("a", 0, 2, 0.0, None), ("b", 0, 2, 0.0, None), ("c", 0, 2, 0.0, None)])
    with pytest.raises(ShardingError, match=r"^the input is empty: 3 input\(s\) under R hold "
                                            r"no writers with samples$"):
        _read(spec, tmp_path, 2, "x")
    raw = tmp_path / "data" / "femnist" / "raw"
    for i in range(2):   # LEAF files whose writers all have 0 samples
        write_leaf(str(raw / f"all_data_{i}.json"), {f"f{i}": 0, f"g{i}": 0})
    with pytest.raises(ShardingError, match=r"the input is empty: the 2 LEAF file\(s\) in "
                                            r".* list no writers with samples"):
        run(str(tmp_path / "data"), tmp_path / "out", workers=2)
    assert multiprocessing.active_children() == []


def test_automatic_workers_are_two_for_a_large_input_on_two_or_more_cores(monkeypatch):
    big = si.PARALLEL_MIN_BYTES
    for cores, size, want in ((16, big, 2), (2, big, 2), (1, big, 1), (16, big - 1, 1),
                              (16, 4 * big, 2)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, c=cores: set(range(c)))
        assert si.auto_workers(size) == want, (cores, size)


# ----------------------------------------------------------------------------- FEMNIST, whole tool
def _shard_bytes(out):
    """{path: bytes} of the set, with the creation times (which differ run to run) dropped."""
    got = {}
    for d, dirs, files in os.walk(str(out)):
        dirs[:] = [x for x in dirs if x != ".staging"]
        for f in files:
            p = os.path.join(d, f)
            rel = os.path.relpath(p, str(out))
            if f in ("meta.json", "manifest.json"):
                doc = json.loads(open(p).read())
                doc.pop("created", None)
                got[rel] = doc
            elif f != ".lock":
                got[rel] = open(p, "rb").read()
    return got


@pytest.mark.parametrize("layout,link", [("all_data", False), ("tree", True)])
def test_femnist_shards_are_the_same_byte_for_byte_with_three_workers(tmp_path, layout, link):
    raw = tmp_path / "data" / "femnist" / "raw"
    n = 0
    for i in range(6):    # 6 files of 2..4 writers (a train/test tree: 3 files each)
        sub = ("train" if i < 3 else "test") if layout == "tree" else "all_data"
        ids = [f"f{j:04d}" for j in range(n, n + 2 + i % 3)]
        n = n if layout == "tree" and i == 2 else n + len(ids)
        if layout == "tree" and i >= 3:  # the test files hold the train files' writers
            ids = [f"f{j:04d}" for j in range(3 * (i - 3), 3 * (i - 3) + 2 + i % 3)]
        write_leaf(str(raw / sub / f"all_data_{i}.json"),
                   {w: 6 + (7 * k) % 11 for k, w in enumerate(ids)}, seed=i)
    kw = dict(clients=4, strategy="random", seed=7, link=link)
    one = run(str(tmp_path / "data"), tmp_path / "one", workers=1, **kw)
    three = run(str(tmp_path / "data"), tmp_path / "three", workers=3, **kw)
    assert one.samples == three.samples > 0 and one.clients == three.clients == 4
    a, b = _shard_bytes(tmp_path / "one"), _shard_bytes(tmp_path / "three")
    assert a == b and len([p for p in a if p.endswith(".pt")]) == 4 * 3 + link
    assert not [n for n in os.listdir(tmp_path / "three") if n.startswith(".spill")]
    man = sf.read_manifest(str(tmp_path / "three" / "manifest.json"))
    assert man.source["inputs"] == 6


def test_the_cli_refuses_workers_below_one(tmp_path):
    r = run_script([os.path.join(ROOT, "scripts", "tools", "prepare_femnist_shards.py"),
                    "--root", str(tmp_path), "--workers", "0"])
    assert r.returncode == 2
    assert "--workers '0': expected a whole number >= 1 (1 reads the input in this process)" \
        in r.stderr

