"""The shard tool's parts one at a time, in this process: a reading worker's parse of one piece
(``_read_one``), the parent taking pieces in order (``_in_order``, ``Spill.append_file``), the
pool's life (``read_pieces``: forked workers, pending pieces dropped when the read fails), when
``read_input`` reads in parallel at all, the ``--workers`` choice of ``prepare_shards``, the
progress bars' steps, the files a shard is written through, and ``verify_staged``'s refusal of a
shard that escapes the staged set. The pool here is ``LazyPool``: ProcessPoolExecutor's contract
run in this process, so what runs, and when, is exact rather than a race of processes."""
import dataclasses
import os
import tempfile
from concurrent.futures import Future

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from federatedscope.core.data import shard_format as sf
from federatedscope.core.data import sharding
from federatedscope.core.data import sharding_input as si
from federatedscope.core.data import sharding_output as so
from federatedscope.core.data.dataset_spec import DatasetSpec, WriterSamples
from federatedscope.core.data.shard_format import split_file
from federatedscope.core.data.sharding_plan import ShardingError
from federatedscope.register import dataset_spec_dict

TOY = "toy_units"
# int64 samples of 3 values (24 bytes a row), 7 classes: nothing here is FEMNIST's default
# four pieces (input files) of one or two writers each, 25 samples in all
PIECES = [[("w0", 3), ("w1", 4)], [("w2", 5)], [("w3", 3), ("w4", 6)], [("w5", 4)]]


def _samples(wid, n):
    """Writer wK's n samples: rows [100K + 3r, 100K + 3r + 1, 100K + 3r + 2], labels (K + r) % 7
    as uint8 (a reader may give any integer dtype; the tool keeps int64)."""
    k = int(wid[1:])
    x = (100 * k + np.arange(3 * n)).reshape(n, 3).astype(np.int64)
    return x, ((k + np.arange(n)) % 7).astype(np.uint8)


def _toy(pieces, reads=None, shape=(3,)):
    """A spec whose pieces are (root, i) and whose sequential reader reads them all in order;
    ``reads`` collects each (root, i) parsed; ``shape`` is what the reader gives (a reader that
    disagrees with the spec's (3,) is refused)."""
    reads = [] if reads is None else reads

    def read_piece(piece):
        root, i = piece
        reads.append(piece)
        for wid, n in pieces[i]:
            x, y = _samples(wid, n)
            yield WriterSamples(wid, x.reshape(n, *shape), y, f"{root}/p{i}.json", None)

    def iter_writers(root):
        got = False
        for i in range(len(pieces)):
            for ws in read_piece((root, i)):
                got = True
                yield ws
        if not got:
            raise ValueError(f"{root}: the {len(pieces)} toy files list no samples")
    return DatasetSpec(name=TOY, sample_dtype="int64", sample_shape=(3,), num_classes=7,
                       model_input=(3,), iter_writers=iter_writers,
                       list_inputs=lambda root: [f"{root}/p{i}.json" for i in range(len(pieces))],
                       pieces=lambda root: [(root, i) for i in range(len(pieces))],
                       read_piece=read_piece)


class LazyFuture(Future):
    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def result(self, timeout=None):
        self.pool.run_through(self)
        return super().result(timeout)


class LazyPool:
    """ProcessPoolExecutor's contract in this process: calls run in submission order, each only
    when a result needs it; ``shutdown(wait=True)`` runs what is left unless ``cancel_futures``
    drops it. ``ran`` lists the pieces parsed."""
    made = []

    def __init__(self, max_workers, mp_context):
        self.max_workers, self.mp_context = max_workers, mp_context
        self.queue, self.ran, self.shut = [], [], []
        LazyPool.made.append(self)

    def submit(self, fn, *args):
        fut = LazyFuture(self)
        self.queue.append((fut, fn, args))
        return fut

    def run_through(self, fut):
        while self.queue and (fut is None or not fut.done()):
            f, fn, args = self.queue.pop(0)
            self.ran.append(args[1])
            try:
                f.set_result(fn(*args))
            except Exception as e:     # as a worker's error reaches the parent
                f.set_exception(e)

    def shutdown(self, wait=True, cancel_futures=False):
        self.shut.append((wait, cancel_futures))
        if cancel_futures:
            for f, _, _ in self.queue:
                f.cancel()
            self.queue = []
        if wait:
            self.run_through(None)


class Bar:
    """A progress bar that records what it is told."""
    made = []

    def __init__(self, show, **kwargs):
        self.show, self.kwargs, self.steps, self.closed = show, kwargs, [], False
        Bar.made.append(self)

    def update(self, n=1):
        self.steps.append(n)

    def close(self):
        self.closed = True


@pytest.fixture
def toy(monkeypatch):
    """Registers a toy spec by name (a worker looks it up so) and puts LazyPool and Bar in place."""
    LazyPool.made, Bar.made = [], []
    monkeypatch.setattr(si, "ProcessPoolExecutor", LazyPool)
    monkeypatch.setattr(si, "progress_bar", Bar)
    monkeypatch.setattr(sharding, "progress_bar", Bar)

    def use(pieces=PIECES, **kw):
        spec = _toy(pieces, **kw)
        monkeypatch.setitem(dataset_spec_dict, TOY, spec)
        return spec
    return use


def _expected(pieces, root="R"):
    """{writer: (first spill row, labels, source)} of reading ``pieces`` in order, by hand."""
    out, row = {}, 0
    for i, piece in enumerate(pieces):
        for wid, n in piece:
            out[wid] = (row, _samples(wid, n)[1].tolist(), f"{root}/p{i}.json")
            row += n
    return out


def _read(spec, tmp_path, progress=False, **kw):
    spill = si.Spill(str(tmp_path / ".spill-5.bin"), spec)
    try:
        parts, kind = si.read_input(spec, "R", spec.list_inputs("R"), spill, progress, **kw)
        got = {w: (p[None].row, p[None].y.tolist(), p[None].source) for w, p in parts.items()}
        spill.f.flush()
        return got, kind, spill.gather(np.arange(spill.rows))
    finally:
        spill.close()


# ----------------------------------------------------------------------------- one worker's piece
def test_a_worker_spills_its_piece_and_returns_each_writers_counts_and_int64_labels(
        tmp_path, toy):
    toy([[("w3", 2), ("w9", 0), ("w4", 3), ("w7", 1)], []])
    path = str(tmp_path / ".spill-5-0.bin")
    index, labels = si._read_one(TOY, ("R", 0), path)
    assert index == [("w3", None, "R/p0.json", 2, 2), ("w9", None, "R/p0.json", 0, 0),
                     ("w4", None, "R/p0.json", 3, 3), ("w7", None, "R/p0.json", 1, 1)]
    # labels (3 + r) % 7, (4 + r) % 7, 7 % 7, as one int64 buffer whatever the reader gave
    assert labels == np.array([3, 4, 4, 5, 6, 0], np.int64).tobytes()
    rows = np.fromfile(path, np.int64).reshape(-1, 3)
    assert rows.tolist() == [[300, 301, 302], [303, 304, 305], [400, 401, 402],
                             [403, 404, 405], [406, 407, 408], [700, 701, 702]]
    # a piece without writers: an empty spill and no labels (the parent reads b"" as 0 labels)
    empty = str(tmp_path / ".spill-5-1.bin")
    assert si._read_one(TOY, ("R", 1), empty) == ([], b"")
    assert os.path.getsize(empty) == 0


def test_a_workers_bad_piece_is_a_sharding_error_naming_its_file_and_what_it_spilled_stays(
        tmp_path, toy):
    toy(shape=(1, 3))       # the reader gives [n, 1, 3]; the spec says [n, 3]
    with pytest.raises(ShardingError) as e:
        si._read_one(TOY, ("R", 2), str(tmp_path / "x.bin"))
    assert str(e.value) == ("R/p2.json: the reader gave samples int64[1, 3], but the dataset's "
                            "spec says int64[3]")

    def failing(piece):
        yield WriterSamples("w1", np.ones((2, 3), np.int64), [5, 6], "R/p0.json", None)
        raise ValueError("R/p0.json: writer w2 sample 4: label 9 is not in 0..6")
    spec = _toy(PIECES)
    dataset_spec_dict[TOY] = dataclasses.replace(spec, read_piece=failing)
    path = tmp_path / "y.bin"
    with pytest.raises(ShardingError, match=r"^R/p0.json: writer w2 sample 4: label 9 is not "
                                            r"in 0..6$"):
        si._read_one(TOY, "any", str(path))
    assert path.read_bytes() == np.ones((2, 3), np.int64).tobytes()   # flushed and closed


# ----------------------------------------------------------------------------- the parent's side
def _piece_file(path, rows, start):
    """A worker's piece spill of ``rows`` rows whose values count up from ``start``."""
    x = (start + np.arange(3 * rows)).reshape(rows, 3).astype(np.int64)
    x.tofile(path)
    return x


@settings(deadline=None, max_examples=25)
@given(st.lists(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=3),
                min_size=4, max_size=6))
def test_pieces_are_appended_in_input_order_by_rows_and_their_labels_cut_by_label_count(
        tmp_path_factory, pieces):
    """Each piece is [(rows, labels)] per writer. A reader's label count may differ from its row
    count (the sequential reader records both as given): the spill moves by rows, the labels
    are cut by label counts."""
    tmp = tmp_path_factory.mktemp("in_order")
    spill = si.Spill(str(tmp / ".spill-9.bin"), _toy(PIECES))
    futures, paths, want, xs, row, label = [], [], [], [], 0, 0
    for i, piece in enumerate(pieces):
        path = str(tmp / f".spill-9-{i}.bin")
        xs.append(_piece_file(path, sum(r for r, _ in piece), 1000 * i))
        index = [(f"w{i}_{j}", "train", f"f{i}", r, n) for j, (r, n) in enumerate(piece)]
        ys = list(range(label, label + sum(n for _, n in piece)))
        fut = Future()
        fut.set_result((index, np.array(ys, np.int64).tobytes()))
        futures.append(fut)
        paths.append(path)
        for j, (r, n) in enumerate(piece):
            want.append((f"w{i}_{j}", "train", f"f{i}", row, list(range(label, label + n))))
            row += r
            label += n
    Bar.made = []
    real_bar = si.progress_bar
    si.progress_bar = Bar
    try:
        got = [(w, s, src, first, y.tolist())
               for w, s, src, first, y in si._in_order(futures, paths, spill, True)]
    finally:
        si.progress_bar = real_bar
    assert got == want and spill.rows == row
    spill.f.flush()
    assert spill.gather(np.arange(row)).tolist() == np.concatenate(xs).tolist()
    assert [p for p in paths if os.path.exists(p)] == []           # each moved, then removed
    (bar,) = Bar.made
    assert bar.kwargs == {"total": len(pieces), "unit": "input", "desc": "reading input",
                          "leave": False}
    assert bar.show and bar.steps == [1] * len(pieces) and bar.closed
    spill.close()


def test_a_piece_copied_fifty_bytes_a_call_lands_whole_even_when_the_last_call_copies_one(
        tmp_path, monkeypatch):
    spill = si.Spill(str(tmp_path / ".spill-3.bin"), _toy(PIECES))
    first = spill.add(np.full((2, 3), 7, np.int64), "before")        # 48 bytes already there
    piece = str(tmp_path / ".spill-3-0.bin")
    x = _piece_file(piece, 10, 50)                                   # 240 bytes: 4 x 50 + 40
    x2 = _piece_file(str(tmp_path / "p1.bin"), 3, 90)                # 72 bytes: 71 + 1
    real, calls = os.copy_file_range, []

    def fifty(src, dst, count, offset_src, offset_dst):
        calls.append((count, offset_src, offset_dst))
        if len(calls) > 5 + 2:
            raise AssertionError("more copies than the bytes need")
        return real(src, dst, min(count, 50), offset_src, offset_dst)
    monkeypatch.setattr(os, "copy_file_range", fifty)
    assert (first, spill.append_file(piece, 10)) == (0, 2)
    assert calls == [(240 - 50 * c, 50 * c, 48 + 50 * c) for c in range(5)]  # the last asks 40
    monkeypatch.setattr(os, "copy_file_range",
                        lambda src, dst, count, o1, o2: real(src, dst, min(count, 71), o1, o2))
    assert spill.append_file(str(tmp_path / "p1.bin"), 3) == 12
    spill.f.flush()
    assert spill.gather(np.arange(15)).tolist() == [[7, 7, 7]] * 2 + x.tolist() + x2.tolist()
    spill.close()


# ----------------------------------------------------------------------------- the pool
def test_the_pool_forks_its_workers_whatever_the_default_start_method(tmp_path, toy):
    """Workers find a spec registered at run time only as forked copies of this process."""
    import multiprocessing
    spec = toy()
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        got = _read(spec, tmp_path, workers=3)[0]
    finally:
        multiprocessing.set_start_method(before, force=True)
    (pool,) = LazyPool.made
    assert pool.max_workers == 3 and pool.mp_context.get_start_method() == "fork"
    assert got == _expected(PIECES)


def test_a_failed_parallel_read_drops_the_pieces_no_worker_has_started(tmp_path, toy):
    pieces = [[("w0", 2)], [("w1", 2)], [("w2", 2)], [("w3", 2)], [("w4", 2)], [("w5", 2)]]
    spec = toy(pieces)
    real_read = spec.read_piece

    def second_fails(piece):
        if piece[1] == 1:
            raise ValueError("R/p1.json: writer w1 sample 0: not 3 values")
        yield from real_read(piece)
    dataset_spec_dict[TOY] = dataclasses.replace(spec, read_piece=second_fails)
    with pytest.raises(ShardingError, match="^R/p1.json: writer w1 sample 0: not 3 values$"):
        _read(dataset_spec_dict[TOY], tmp_path, workers=4)
    (pool,) = LazyPool.made
    assert pool.ran == [("R", 0), ("R", 1)] and pool.shut == [(True, True)]
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- read_input
@pytest.mark.parametrize("n_pieces,kw,parallel", [
    (4, {}, False),                  # workers default to 1: in this process
    (4, {"workers": 1}, False),
    (2, {"workers": 2}, True),       # two pieces are enough
    (1, {"workers": 3}, False),      # one piece: nothing to share
    (3, {"workers": 3}, True),
    (4, {"workers": 4, "no_pieces": True}, False)])   # a spec that cannot be cut
def test_the_input_is_read_in_parallel_only_with_two_workers_and_two_pieces(
        tmp_path, toy, n_pieces, kw, parallel):
    pieces, kw = PIECES[:n_pieces], dict(kw)      # a copy: the parameter is reused by reruns
    spec = toy(pieces)
    if kw.pop("no_pieces", False):
        spec = dataclasses.replace(spec, pieces=None, read_piece=None)
        dataset_spec_dict[TOY] = spec
    got, kind, rows = _read(spec, tmp_path, progress=True, **kw)
    assert got == _expected(pieces) and kind == "unsplit"
    assert rows.tolist() == np.concatenate([_samples(w, n)[0] for p in pieces
                                            for w, n in p]).tolist()
    assert [(p.max_workers, p.ran) for p in LazyPool.made] == \
        ([(kw["workers"], [("R", i) for i in range(n_pieces)])] if parallel else [])
    (bar,) = Bar.made
    assert bar.show and bar.kwargs == {"total": n_pieces, "unit": "input",
                                       "desc": "reading input", "leave": False}
    # one step per input: in parallel as each piece is taken; in this process when the next
    # input's first writer arrives (0 for the first) and once at the end
    assert bar.steps == ([1] * n_pieces if parallel else [0] + [1] * n_pieces) and bar.closed


def test_an_empty_parallel_read_gets_the_readers_own_message_and_a_full_one_reads_once(
        tmp_path, toy):
    reads = []
    spec = toy([[], [], []], reads=reads)
    with pytest.raises(ShardingError, match=r"^R: the 3 toy files list no samples$"):
        _read(spec, tmp_path, workers=2)
    assert reads == [("R", 0), ("R", 1), ("R", 2)] * 2    # the pieces, then the reader's own pass
    # pieces that gave nothing, though the sequential reader gives a writer: still empty
    spec = dataclasses.replace(spec, iter_writers=_toy(PIECES).iter_writers)
    with pytest.raises(ShardingError, match=r"^the input is empty: 3 input\(s\) under R hold "
                                            r"no writers with samples$"):
        _read(spec, tmp_path, workers=2)
    reads.clear()
    spec = toy(reads=reads)
    _read(spec, tmp_path, workers=2)
    assert reads == [("R", i) for i in range(4)]          # each piece parsed once, no more


# ----------------------------------------------------------------------------- prepare_shards
def _inputs(tmp_path, sizes):
    """Input files of the given sizes (the automatic worker count reads their total)."""
    root = tmp_path / "root"
    root.mkdir()
    for i, n in enumerate(sizes):
        (root / f"p{i}.json").write_bytes(b"x" * n)
    return str(root)


def test_workers_flag_is_taken_as_given_and_zero_asks_auto_workers_for_the_input_bytes(
        tmp_path, toy, monkeypatch):
    toy()
    root = _inputs(tmp_path, [100, 250, 7, 1])
    asked = []
    monkeypatch.setattr(sharding, "auto_workers", lambda total: asked.append(total) or 4)
    args = dict(dataset=TOY, root=root, clients=4, progress=True, seed=3)
    s = sharding.prepare_shards(sharding.ShardArgs(out=str(tmp_path / "a"), workers=3, **args))
    assert asked == [] and [p.max_workers for p in LazyPool.made] == [3]
    assert (s.clients, s.samples, s.written) == (4, 25, [1, 2, 3, 4])
    # the writing bar: one step per client, wiped when done
    writing = [b for b in Bar.made if b.kwargs.get("desc") == "writing shards"]
    assert [(b.show, b.kwargs, b.steps, b.closed) for b in writing] == \
        [(True, {"total": 4, "desc": "writing shards", "leave": False}, [1, 1, 1, 1], True)]
    LazyPool.made = []
    sharding.prepare_shards(sharding.ShardArgs(out=str(tmp_path / "b"), workers=0, **args))
    assert asked == [100 + 250 + 7 + 1] and [p.max_workers for p in LazyPool.made] == [4]
    a, b = sf.read_manifest(str(tmp_path / "a" / "manifest.json")), \
        sf.read_manifest(str(tmp_path / "b" / "manifest.json"))
    assert a.writer_ids == b.writer_ids and sum(map(len, a.writer_ids.values())) == 6


def test_a_staged_shard_linked_outside_the_stage_is_refused_naming_the_manifest(
        tmp_path, toy):
    toy()
    root = _inputs(tmp_path, [10, 10, 10, 10])
    out = tmp_path / "out"
    sharding.prepare_shards(sharding.ShardArgs(dataset=TOY, root=root, out=str(out), clients=4,
                                               progress=False))
    outside = tmp_path / "elsewhere"
    os.rename(out / "client_2", outside)
    os.symlink(outside, out / "client_2")       # the same files, outside the set
    with pytest.raises(ShardingError) as e:
        so.verify_staged(str(out))
    real = os.path.realpath(str(out))
    assert str(e.value).startswith(
        f"the new client_2 did not verify ({out}/manifest.json: client 2's shard_path "
        f"'client_2' resolves (through a symlink) to {os.path.realpath(outside)}, outside the "
        f"manifest's directory {real}; fix: ")
    assert str(e.value).endswith("; the old set was left as it was")


# ----------------------------------------------------------------------------- write_shard
@pytest.mark.parametrize("link", [False, True])
def test_a_shards_split_files_are_written_in_place_only_meta_json_through_a_temp_file(
        tmp_path, monkeypatch, link):
    """The shard's own temp directory is published by one rename: a temp file and rename per
    split file would only cost (3,550 shards x 3 files)."""
    spec = _toy(PIECES)
    spill = si.Spill(str(tmp_path / ".spill-1.bin"), spec)
    spill.add(np.arange(60, dtype=np.int64).reshape(20, 3), "toy")
    made, real = [], tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: made.append(kw["prefix"]) or real(**kw))
    packed = {"path": "../packed/data.pt", "bytes": 1, "sha256": "0" * 64} if link else None
    out = tmp_path / "out"
    out.mkdir()
    for k in (1, 2, 3, 4):
        rows = {"train": (np.array([k, k + 4, k + 8]), np.array([k % 7] * 3)),
                "val": (np.array([k + 12]), np.array([1])),
                "test": (np.array([k + 15]), np.array([2]))}
        meta = sharding.write_shard(str(out), k, [f"w{k}"], rows, spill, "p" * 32, spec, packed)
        assert meta.num_samples == {"train": 3, "val": 1, "test": 1}
        if not link:
            assert split_file.read_split(str(out / f"client_{k}" / "train.pt"))[0].tolist() == \
                [[3 * r, 3 * r + 1, 3 * r + 2] for r in (k, k + 4, k + 8)]
    assert made == [".meta.json."] * 4
    assert sorted(os.listdir(out)) == ["client_1", "client_2", "client_3", "client_4"]
    spill.close()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("extra_labels", [1, -1])
def test_a_reader_giving_a_writer_more_or_fewer_labels_than_samples_is_refused(
        tmp_path, toy, workers, extra_labels):
    """Sample i is paired with label i through the spill: one label too many or too few would
    give writer w3's labels to w4's samples. Refused, in one process and through the workers,
    naming the file and writer and the fix, before any shard is written."""
    spec = toy()

    def off_by_one(piece):
        for ws in spec.read_piece(piece):
            n = len(ws.y) + (extra_labels if ws.writer_id == "w3" else 0)
            yield WriterSamples(ws.writer_id, ws.x, np.resize(ws.y, n), ws.source, ws.split)
    dataset_spec_dict[TOY] = dataclasses.replace(spec, read_piece=off_by_one,
                                                 iter_writers=lambda root: (
                                                     ws for i in range(len(PIECES))
                                                     for ws in off_by_one((root, i))))
    with pytest.raises(ShardingError) as e:
        sharding.prepare_shards(sharding.ShardArgs(dataset=TOY, root="R", out=str(tmp_path / "o"),
                                                   clients=4, workers=workers, progress=False))
    assert str(e.value) == (f"R/p2.json, writer w3: the dataset's reader gave 3 samples but "
                            f"{3 + extra_labels} labels; a reader must yield one label per "
                            f"sample (fix the reader registered for this data.type)")
    assert not (tmp_path / "o" / "manifest.json").exists()
