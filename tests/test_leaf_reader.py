"""LEAF FEMNIST reader: lossless uint8, rejection of odd values, LEAF trees, FS task semantics."""
import importlib.util
import json
import os
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from federatedscope.cv.dataset import leaf_femnist as lf

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "scripts", "tools", "generate_femnist_sample.py")
_spec = importlib.util.spec_from_file_location("generate_femnist_sample", _PATH)
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

SPLITS = [0.6, 0.2, 0.2]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("data")
    gen.write_sample(str(r / "femnist" / "raw"), writers=6, seed=1, mean=30, writers_per_file=4)
    return r


def _raw_json(root):
    out = {}
    for p in lf.list_leaf_files(str(root / "femnist" / "raw")):
        with open(p) as f:
            out.update(json.load(f)["user_data"])
    return out


def _write_leaf(path, user_data):
    path.parent.mkdir(parents=True, exist_ok=True)
    users = sorted(user_data)
    path.write_text(json.dumps({"users": users,
                                "num_samples": [len(user_data[u]["y"]) for u in users],
                                "user_data": user_data}))


def test_all_k255_values_round_trip_bit_exact():
    v = [k / 255 for k in range(256)]
    u8 = lf.floats_to_uint8(np.asarray(v), "test")
    assert u8.tolist() == list(range(256))
    assert torch.equal(torch.from_numpy(u8).float() / 255.0, torch.tensor(v, dtype=torch.float32))
    # LEAF may also write 1 - k/255, which is k/255 only up to rounding: still accepted.
    assert lf.floats_to_uint8(np.asarray([1 - 3 / 255]), "t").tolist() == [252]


def test_iter_writers_lossless(root):
    raw = _raw_json(root)
    writers = list(lf.iter_leaf_writers(str(root / "femnist" / "raw")))
    assert sorted(w.writer_id for w in writers) == sorted(raw) and len(writers) == 6
    assert [os.path.basename(w.source) for w in writers].count("all_data_0.json") == 4
    for w in writers:
        assert w.split is None and w.x.dtype == np.uint8 and w.y.dtype == np.int64
        assert w.x.shape == (len(raw[w.writer_id]["y"]), 28, 28)
        assert w.y.tolist() == raw[w.writer_id]["y"]
        ref = torch.tensor(raw[w.writer_id]["x"], dtype=torch.float32).reshape(-1, 28, 28)
        assert torch.equal(torch.from_numpy(w.x).float() / 255.0, ref)


def test_fs_all_data_subfolder(root, tmp_path):
    # FS keeps the downloaded LEAF files in raw/all_data/; that layout reads the same.
    src = root / "femnist" / "raw"
    dst = tmp_path / "femnist" / "raw" / "all_data"
    dst.mkdir(parents=True)
    for name in os.listdir(src):
        if name.endswith(".json"):
            (dst / name).write_bytes((src / name).read_bytes())
    a = lf.load_femnist_tasks(str(tmp_path), SPLITS, 1.0, 0)
    b = lf.load_femnist_tasks(str(root), SPLITS, 1.0, 0)
    assert len(a) == len(b) == 6
    assert all(torch.equal(x["train"][0], y["train"][0]) for x, y in zip(a, b))


def test_rejects_non_k255_values(tmp_path):
    x = [[1.0] * 784, [1.0] * 783 + [0.5]]  # 0.5 is not k/255: must not be rounded/binarised
    _write_leaf(tmp_path / "bad.json", {"f0001_01": {"x": x, "y": [1, 2]}})
    with pytest.raises(ValueError) as e:
        list(lf.iter_leaf_writers(str(tmp_path)))
    assert "bad.json" in str(e.value) and "f0001_01" in str(e.value) and "0.5" in str(e.value)
    _write_leaf(tmp_path / "bad.json", {"f0001_01": {"x": [[1.2] * 784], "y": [1]}})
    with pytest.raises(ValueError, match="f0001_01"):
        list(lf.iter_leaf_writers(str(tmp_path)))
    _write_leaf(tmp_path / "bad.json", {"f0001_01": {"x": [[1.0] * 700], "y": [1]}})
    with pytest.raises(ValueError, match="784"):
        list(lf.iter_leaf_writers(str(tmp_path)))


def _leaf_tree(root, tmp_path):
    """Split the sample the way LEAF does: per writer, first 75% to train/, rest to test/."""
    raw = _raw_json(root)
    tr, te = {}, {}
    for uid, d in raw.items():
        cut = int(0.75 * len(d["y"]))
        tr[uid] = {"x": d["x"][:cut], "y": d["y"][:cut]}
        te[uid] = {"x": d["x"][cut:], "y": d["y"][cut:]}
    base = tmp_path / "femnist" / "raw"
    _write_leaf(base / "train" / "all_data_0_niid_0_keep_0_train_9.json", tr)
    _write_leaf(base / "test" / "all_data_0_niid_0_keep_0_test_9.json", te)
    return raw, tr, te


def test_leaf_train_test_tree(root, tmp_path):
    raw, tr, te = _leaf_tree(root, tmp_path)
    base = str(tmp_path / "femnist" / "raw")
    assert [os.path.basename(os.path.dirname(p)) for p in lf.list_leaf_files(base)] == \
        ["train", "test"]
    ws = list(lf.iter_leaf_writers(base))
    assert sorted((w.writer_id, w.split) for w in ws) == \
        sorted([(u, "train") for u in raw] + [(u, "test") for u in raw])
    tasks = lf.load_femnist_tasks(str(tmp_path), SPLITS, 1.0, 0)
    assert len(tasks) == 6
    for uid, task in zip(sorted(raw), tasks):
        # LEAF's test set is kept as is; val is carved out of LEAF's train (train:val = 3:1).
        assert task["test"][1].tolist() == te[uid]["y"]
        n = len(tr[uid]["y"])
        assert len(task["val"][1]) == int(n * 0.25 + 1e-9)
        assert len(task["train"][1]) + len(task["val"][1]) == n
        got = sorted(task["train"][1].tolist() + task["val"][1].tolist())
        assert got == sorted(tr[uid]["y"])


def test_pieces_are_the_leaf_files_with_their_split_and_read_back_every_writer(root, tmp_path):
    # the shard tool's parallel read: one piece per LEAF file, in the order iter_writers reads
    # them, each read alone yielding that file's writers with the file's split
    raw, tr, te = _leaf_tree(root, tmp_path)
    base = tmp_path / "femnist" / "raw"
    pieces = lf.leaf_pieces(str(tmp_path))
    assert pieces == [(str(base / "train" / "all_data_0_niid_0_keep_0_train_9.json"), "train"),
                      (str(base / "test" / "all_data_0_niid_0_keep_0_test_9.json"), "test")]
    for (path, split), part in zip(pieces, (tr, te)):
        ws = list(lf.read_leaf_piece((path, split)))
        assert [(w.writer_id, w.split, w.source) for w in ws] == \
            [(u, split, path) for u in sorted(part)]
        for w in ws:
            assert w.y.tolist() == part[w.writer_id]["y"]
    # a flat folder: split None; no LEAF file anywhere: no piece
    flat = lf.leaf_pieces(str(root))
    assert flat == [(p, None) for p in lf.list_leaf_files(str(root / "femnist" / "raw"))]
    assert len(flat) == 2
    assert lf.leaf_pieces(str(tmp_path / "empty")) == []


def test_tasks_splits_deterministic(root):
    raw = _raw_json(root)
    a = lf.load_femnist_tasks(str(root), SPLITS, 1.0, 0)
    b = lf.load_femnist_tasks(str(root), SPLITS, 1.0, 0)
    c = lf.load_femnist_tasks(str(root), SPLITS, 1.0, 1)
    assert len(a) == 6
    for uid, ta, tb, tc in zip(sorted(raw), a, b, c):
        n = len(raw[uid]["y"])
        sizes = [len(ta[s][1]) for s in ("train", "val", "test")]
        assert sizes[0] == int(n * 0.6 + 1e-9) and sizes[1] == int(n * 0.2 + 1e-9)
        assert sum(sizes) == n
        for s in ("train", "val", "test"):
            x, y = ta[s]
            assert x.dtype == torch.uint8 and x.shape[1:] == (28, 28) and y.dtype == torch.int64
            assert torch.equal(x, tb[s][0]) and torch.equal(y, tb[s][1])
        # Every sample lands in exactly one split.
        allx = torch.cat([ta[s][0] for s in ("train", "val", "test")]).reshape(n, -1)
        ref = torch.from_numpy(lf.floats_to_uint8(np.asarray(raw[uid]["x"]), "r"))
        assert sorted(map(bytes, allx.numpy())) == sorted(map(bytes, ref.numpy()))
    assert any(not torch.equal(ta["train"][0], tc["train"][0]) for ta, tc in zip(a, c))


def test_subsample(root):
    first = lambda tasks: [t["train"][1].tolist() + t["test"][1].tolist() for t in tasks]  # noqa
    half = lf.load_femnist_tasks(str(root), SPLITS, 0.5, 3)
    assert len(half) == 3
    assert first(half) == first(lf.load_femnist_tasks(str(root), SPLITS, 0.5, 3))
    assert len(lf.load_femnist_tasks(str(root), SPLITS, 0.01, 3)) == 1  # at least one writer
    choices = {tuple(map(tuple, first(lf.load_femnist_tasks(str(root), SPLITS, 0.5, s))))
               for s in range(6)}
    assert len(choices) > 1  # the seed picks the writers
    with pytest.raises(ValueError):
        lf.load_femnist_tasks(str(root), SPLITS, 0.0, 0)
    with pytest.raises(ValueError, match="splits"):
        lf.load_femnist_tasks(str(root), [0.5, 0.2, 0.2], 1.0, 0)


def test_cache_reuse_and_rebuild(root, tmp_path, monkeypatch):
    r = tmp_path / "cache_root"
    gen.write_sample(str(r / "femnist" / "raw"), writers=3, seed=2, mean=20)
    tasks = lf.load_femnist_tasks(str(r), SPLITS, 1.0, 7)
    proc = r / "femnist" / "processed"
    caches = list(proc.glob("*.pt"))
    assert len(caches) == 1
    assert torch.load(str(caches[0]), weights_only=True)["writers"] == \
        [w.writer_id for w in lf.iter_leaf_writers(str(r / "femnist" / "raw"))]

    def boom(_):
        raise AssertionError("raw data re-read although the cache is valid")
    monkeypatch.setattr(lf, "iter_leaf_writers", boom)
    again = lf.load_femnist_tasks(str(r), SPLITS, 1.0, 7)
    assert all(torch.equal(a["val"][0], b["val"][0]) for a, b in zip(tasks, again))
    monkeypatch.undo()

    caches[0].write_bytes(b"not a torch file")  # corrupt cache -> rebuilt, same content
    rebuilt = lf.load_femnist_tasks(str(r), SPLITS, 1.0, 7)
    assert all(torch.equal(a["test"][1], b["test"][1]) for a, b in zip(tasks, rebuilt))
    assert torch.load(str(caches[0]), weights_only=True)["version"] == 1

    lf.load_femnist_tasks(str(r), SPLITS, 1.0, 8)  # other args -> other cache file
    raw0 = r / "femnist" / "raw" / "all_data_0.json"
    st = raw0.stat()
    os.utime(raw0, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # raw changed -> new key
    lf.load_femnist_tasks(str(r), SPLITS, 1.0, 7)
    assert len(list(proc.glob("*.pt"))) == 3


def test_missing_raw_dir_error(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        lf.load_femnist_tasks(str(tmp_path), SPLITS, 1.0, 0)
    msg = str(e.value)
    raw = os.path.join(str(tmp_path), "femnist", "raw")
    assert raw in msg
    assert "python scripts/tools/generate_femnist_sample.py --out %s --writers 60 --seed 0" % raw \
        in msg
    os.makedirs(raw)
    with pytest.raises(FileNotFoundError) as e:
        lf.load_femnist_tasks(str(tmp_path), SPLITS, 1.0, 0)
    for place in ("femnist/raw/*.json", "femnist/raw/train/*.json + femnist/raw/test/*.json",
                  "femnist/raw/all_data/*.json", "femnist/data/all_data/*.json",
                  "femnist/data/train/*.json + femnist/data/test/*.json"):
        assert place in str(e.value)  # every place looked at is listed


def test_read_fs_processed_task(tmp_path):
    rng = np.random.default_rng(0)
    ks = {s: rng.integers(0, 256, size=(n, 784)) for s, n in (("train", 5), ("val", 2),
                                                              ("test", 3))}
    for s, k in ks.items():
        # FS stores torch.tensor(np.stack(json floats)): float64 [n, 784] in [0, 1].
        # float32 copies (e.g. re-saved by a user) are within 1e-6 of k/255 and accepted too.
        data = torch.tensor(k / 255.0)
        targets = torch.LongTensor(rng.integers(0, 62, len(k)))
        torch.save((data.float() if s == "val" else data, targets), str(tmp_path / (s + ".pt")))
    out = lf.read_fs_processed_task(str(tmp_path))
    for s, k in ks.items():
        x, y = out[s]
        assert x.dtype == torch.uint8 and x.shape == (len(k), 28, 28) and y.dtype == torch.int64
        assert np.array_equal(x.reshape(len(k), -1).numpy(), k)
    os.remove(tmp_path / "val.pt")  # FS omits val.pt when val_frac == 0
    assert lf.read_fs_processed_task(str(tmp_path))["val"][0].shape == (0, 28, 28)
    bad = torch.full((1, 784), 0.5, dtype=torch.float32)
    torch.save((bad, torch.LongTensor([0])), str(tmp_path / "test.pt"))
    with pytest.raises(ValueError, match="test.pt"):
        lf.read_fs_processed_task(str(tmp_path))
    os.remove(tmp_path / "train.pt")
    with pytest.raises(FileNotFoundError, match="train.pt"):
        lf.read_fs_processed_task(str(tmp_path))


def _parsed_rows(rows) -> list:
    """Rows as the reader sees them: written as JSON text, parsed through its hook."""
    return lf._load_json("w.json", json.dumps({"x": rows}).encode())["x"]


def test_pixels_join_exact_literals_and_send_anything_else_to_the_checked_path():
    """Exact k/255 literals are joined as bytes; JSON integers (1 == 255/255) and 1 - k/255
    (k/255 up to rounding) take the checked path and give the same uint8; every bad row is named
    by sample and pixel, never rounded."""
    hook = lf._PixelIntern()
    assert [hook[repr(k / 255)] for k in range(256)] == [bytes((k,)) for k in range(256)]
    assert hook["-0.0"] == b"\0" and hook["0.99607843"] == b"\xfe"  # 254/255 to 8 places
    for other in ("0.5", "1.0039215686", "-0.0039215686", "2.0", "1e400", "-1e400"):
        assert type(hook[other]) is float  # for the checked path to name
    rng = np.random.default_rng(5)
    ks = rng.integers(0, 256, (6, 784))
    ks[0, :256] = np.arange(256)  # every grey level at least once
    xs = [[float(k) / 255 for k in row] for row in ks]
    fast = lf._pixels(_parsed_rows(xs), "w")
    assert fast.dtype == np.uint8 and np.array_equal(fast, ks)
    odd = [list(r) for r in xs]
    odd[2][10], odd[3][0], odd[4][7] = 1, 0, 1 - 3 / 255
    want = ks.copy()
    want[2, 10], want[3, 0], want[4, 7] = 255, 0, 252
    assert np.array_equal(lf._pixels(_parsed_rows(odd), "w"), want)
    for bad, says in [(xs[:1] + [xs[1][:783]], "sample 1: image has 783 values"),
                      # 783 + 785 values join to 2 x 784: the length check still names it
                      ([xs[0][:783], xs[1] + [0.0]], "sample 0: image has 783 values"),
                      (xs[:3] + [xs[3][:5] + ["0.5"] + xs[3][6:]], "sample 3, pixel 5: '0.5'"),
                      (xs[:1] + [xs[1][:9] + [None] + xs[1][10:]], "sample 1, pixel 9: None"),
                      (xs[:4] + [xs[4][:3] + [True] + xs[4][4:]],
                       "sample 4, pixel 3: True is a JSON boolean"),
                      (xs[:2] + [[xs[2]] * 784], "sample 2, pixel 0"),
                      ([{"a": 1}], "sample 0: image is a JSON object"),
                      (xs[:5] + [xs[5][:100] + [0.5] + xs[5][101:]],
                       "sample 5 pixel 100: 1 pixel value"),
                      (xs[:1] + [xs[1][:2] + [2.0] + xs[1][3:]], "sample 1 pixel 2: 1 pixel")]:
        with pytest.raises(ValueError, match="^w, " + says.replace("(", r"\(")):
            lf._pixels(_parsed_rows(bad), "w")


def test_valid_rows_are_joined_without_the_checked_path(monkeypatch, tmp_path):
    """The checked path gives the same pixels, so only its absence shows the join did the work:
    with it disabled, valid rows (and a whole valid file) still read back exactly."""
    def refused(*_):
        raise AssertionError("a valid row took the checked path")
    ks = np.random.default_rng(9).integers(0, 256, (5, 784))
    rows = _parsed_rows([[k / 255 for k in row] for row in ks.tolist()])  # the hook checks k/255
    monkeypatch.setattr(lf, "images", refused)          # every checked path starts here
    with monkeypatch.context() as m:
        m.setattr(lf, "floats_to_uint8", refused)
        got = lf._pixels(rows, "w")
    assert got.shape == (5, 784) and got.flags.writeable and np.array_equal(got, ks)
    _write_leaf(tmp_path / "ok.json", {"f0007_11": {"x": [[k / 255 for k in row]
                                                          for row in ks.tolist()],
                                                    "y": [0, 61, 3, 3, 9]}})
    (w,) = list(lf.iter_leaf_writers(str(tmp_path)))
    assert w.x.shape == (5, 28, 28) and np.array_equal(w.x.reshape(5, 784), ks)
    assert w.y.tolist() == [0, 61, 3, 3, 9] and w.writer_id == "f0007_11"


def test_a_file_that_is_not_json_is_named(tmp_path):
    bad = tmp_path / "all_data_0.json"
    bad.write_bytes(b'{"users": ["f1"], "user_data": {')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: not valid JSON \("):
        list(lf.iter_leaf_writers(str(tmp_path)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=40),
       st.sampled_from(["%r", "%.17g", "%.9f", "%.12e"]))
def test_every_way_of_writing_k255_reads_back_as_k(ks, fmt):
    """However a writer prints k/255 (shortest repr, 17 digits, 9 decimals, exponent), the
    parsed pixel is k: the hook's tolerance is floats_to_uint8's."""
    row = ", ".join(fmt % (k / 255) for k in ks)
    n = len(ks)
    pixels = (row + ", ") * (784 // n) + ", ".join(fmt % (k / 255) for k in ks[:784 % n])
    text = '{"x": [[' + pixels.rstrip(", ") + "]]}"
    got = lf._pixels(lf._load_json("w.json", text.encode())["x"], "w")
    assert got[0].tolist() == (ks * (784 // n + 1))[:784]


def test_a_float_label_or_count_is_named_as_the_number_written(tmp_path):
    """1.0 parses to the hook's byte 255; messages still show the JSON number."""
    _write_leaf(tmp_path / "bad.json", {"f0001_01": {"x": [[0.0] * 784] * 2, "y": [3, 1.0]}})
    with pytest.raises(ValueError, match=r"sample 1: label 1\.0 is a JSON number with a fraction"):
        list(lf.iter_leaf_writers(str(tmp_path)))
    doc = json.loads((tmp_path / "bad.json").read_text())
    doc["user_data"]["f0001_01"]["y"] = [3, 1]
    doc["num_samples"] = [0.0]
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"'num_samples' says 0\.0 but user_data holds 2"):
        list(lf.iter_leaf_writers(str(tmp_path)))


def test_the_parser_packs_each_writer_as_the_parser_closes_it():
    """A writer's rows become uint8 [n, 784] inside the parse (the parsed file then holds about
    1 byte per pixel, not an 8-byte pointer per pixel); rows the join refuses, and objects that
    are not a writer's entry ("x" without "y"), stay as parsed, for the checked path to name."""
    import tracemalloc
    rng = np.random.default_rng(11)
    ks = {f"f{i:04d}_07": rng.integers(0, 256, (40 + i, 784)) for i in range(6)}
    data = {w: {"x": (k / 255).tolist(), "y": [i % 62] * len(k)}
            for i, (w, k) in enumerate(ks.items())}
    data["f0099_01"] = {"x": [[0.5] * 784], "y": [3]}
    text = json.dumps({"users": list(data), "num_samples": [len(v["y"]) for v in data.values()],
                       "user_data": data, "x": [[1 / 255] * 784]}).encode()
    pixels = sum(k.size for k in ks.values())

    def retained(hook) -> "tuple[dict, int]":
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            parsed = lf._load_json("w.json", text, object_hook=hook)
            return parsed, tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    packed, packed_bytes = retained(lf._pack_writer)
    plain, plain_bytes = retained(None)
    for w, k in ks.items():
        x = packed["user_data"][w]["x"]
        assert isinstance(x, np.ndarray) and x.dtype == np.uint8 and np.array_equal(x, k)
        assert isinstance(plain["user_data"][w]["x"], list)
    assert type(packed["user_data"]["f0099_01"]["x"]) is list     # 0.5 is no k/255: unjoined
    assert type(packed["x"]) is list                              # not a writer's entry
    assert packed_bytes < 1.2 * pixels < 8 * pixels < plain_bytes


def test_the_reader_packs_while_parsing_not_after(monkeypatch, root):
    """Every valid writer of a real file reaches ``_pixels`` packed already: the packing happens
    inside the parse, so the parsed file never holds a pointer per pixel."""
    seen = []
    real = lf._pixels
    monkeypatch.setattr(lf, "_pixels", lambda xs, where: seen.append(type(xs)) or real(xs, where))
    writers = list(lf.iter_leaf_writers(str(root / "femnist" / "raw")))
    assert len(writers) == 6 and seen == [np.ndarray] * 6
