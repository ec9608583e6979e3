"""The LEAF FEMNIST reader's input paths that the shard tool's tests only cross: a LEAF file's
structure (each writer entry, empty writers), the task cache's key and its layout check, FS's
processed ``task_<k>`` folders. Expected values are written out by hand."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from federatedscope.cv.dataset import leaf_femnist as lf
from federatedscope.cv.dataset.leaf_checks import FIX

SPLITS = (0.6, 0.2, 0.2)


def _said(caplog, level=logging.WARNING):
    """The reader's messages at ``level`` (an earlier test may have left INFO records on)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno == level and r.name == "federatedscope"]


def _image(k0: int):
    return [((k0 + j) % 256) / 255 for j in range(784)]


def _write(path, raw) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(raw, f)
    return str(path)


def _file(tmp_path, user_data, name="all_data_0.json"):
    users = list(user_data)
    ys = [e.get("y") if isinstance(e, dict) else None for e in user_data.values()]
    raw = {"users": users, "num_samples": [len(y) if isinstance(y, list) else 0 for y in ys],
           "user_data": user_data}
    return _write(tmp_path / name, raw)


# ------------------------------------------------------------------------ a LEAF file's structure
def test_writers_come_out_in_users_order_with_their_file_shape_and_split(tmp_path):
    path = _file(tmp_path, {"w_b": {"x": [_image(3), _image(9)], "y": [61, 0]},
                            "w_a": {"x": [_image(200)], "y": [7]}})
    ws = list(lf._writers_of_file(path, "test"))
    assert [w.writer_id for w in ws] == ["w_b", "w_a"]             # the file's order, not sorted
    assert [w.x.shape for w in ws] == [(2, 28, 28), (1, 28, 28)]
    assert ws[0].y.tolist() == [61, 0] and ws[1].y.tolist() == [7]
    assert ws[0].x[1, 0, :3].tolist() == [9, 10, 11] and ws[1].x[0, 2, 0] == (200 + 56) % 256
    assert all(w.source == path and w.split == "test" for w in ws)


@pytest.mark.parametrize("raw", [[1, 2], {"users": []}, {"user_data": [1]}, {"user_data": "x"}])
def test_a_file_without_a_user_data_object_is_not_a_leaf_file(tmp_path, raw):
    path = _write(tmp_path / "odd.json", raw)
    with pytest.raises(ValueError) as e:
        list(lf._writers_of_file(path, None))
    assert str(e.value) == f"{path}: not a LEAF file (needs a 'user_data' object)"


@pytest.mark.parametrize("entry", [[1], {"x": [], "y": 3}, {"x": "img", "y": []}, {"y": [1]},
                                   {"x": [[0.0] * 784]}])
def test_a_writer_entry_without_x_and_y_arrays_is_named(tmp_path, entry):
    path = _file(tmp_path, {"good": {"x": [_image(0)], "y": [1]}, "w7": entry})
    with pytest.raises(ValueError) as e:
        list(lf._writers_of_file(path, None))
    assert str(e.value) == (f"{path}, writer w7: needs an object with arrays 'x' and 'y'; {FIX}")


def test_more_images_than_labels_is_named_with_both_counts(tmp_path):
    raw = {"users": ["w1"], "user_data": {"w1": {"x": [_image(0)] * 3, "y": [1, 2]}}}
    path = _write(tmp_path / "f.json", raw)              # no num_samples: nothing else to agree
    with pytest.raises(ValueError) as e:
        list(lf._writers_of_file(path, None))
    assert str(e.value) == f"{path}, writer w1: 3 images but 2 labels; {FIX}"


@pytest.mark.parametrize("n_empty,named", [
    (6, "e0, e1, e2, e3, e4 ..."), (5, "e0, e1, e2, e3, e4"), (2, "e0, e1")])
def test_writers_without_samples_are_skipped_and_the_first_five_named(tmp_path, caplog,
                                                                      n_empty, named):
    empty = {f"e{i}": {"x": [], "y": []} for i in range(n_empty)}
    path = _file(tmp_path, dict(empty, full={"x": [_image(1)], "y": [5]}))
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        ws = list(lf._writers_of_file(path, None))
    assert [w.writer_id for w in ws] == ["full"]
    assert _said(caplog) == \
        [f"{path}: skipped {n_empty} writer(s) with 0 samples ({named})"]


def test_bookkeeping_and_label_errors_name_the_file_and_writer(tmp_path):
    raw = {"users": ["w1", "zz"], "user_data": {"w1": {"x": [_image(0)], "y": [1]}}}
    path = _write(tmp_path / "f.json", raw)
    with pytest.raises(ValueError) as e:
        list(lf._writers_of_file(path, None))
    assert str(e.value) == f"{path}: writer zz is in 'users' but not in 'user_data'; {FIX}"
    path = _file(tmp_path, {"w1": {"x": [_image(0), _image(1)], "y": [3, 62]}})
    with pytest.raises(ValueError) as e:
        list(lf._writers_of_file(path, None))
    assert str(e.value) == f"{path}, writer w1, sample 1: label 62 is outside [0, 62); {FIX}"


def test_a_leaf_input_whose_writers_are_all_empty_is_an_error_naming_it(tmp_path):
    raw_dir = tmp_path / "femnist" / "raw"
    _file(raw_dir, {"e0": {"x": [], "y": []}})
    _file(raw_dir, {"e1": {"x": [], "y": []}}, name="all_data_1.json")
    with pytest.raises(ValueError) as e:
        list(lf.iter_writers(str(tmp_path)))
    assert str(e.value).startswith(f"the input is empty: the 2 LEAF file(s) in {raw_dir} list "
                                   "no writers with samples")


# ------------------------------------------------------------------------------ the task cache
def _raw_tree(tmp_path):
    raw_dir = tmp_path / "femnist" / "raw"
    _file(raw_dir, {f"w{i}": {"x": [_image(i + j) for j in range(5)], "y": [i, 1, 2, 3, 4]}
                    for i in range(4)})
    return str(raw_dir), lf.list_leaf_files(str(raw_dir))


def test_the_cache_key_covers_every_input_and_argument_and_not_where_the_tree_lives(tmp_path):
    raw_dir, files = _raw_tree(tmp_path / "a")
    key = lf._cache_key(raw_dir, files, SPLITS, 1.0, 3)
    assert len(key) == 24 and int(key, 16) >= 0
    assert lf._cache_key(raw_dir, files, SPLITS, 1.0, 3) == key
    others = {lf._cache_key(raw_dir, files, (0.6, 0.3, 0.1), 1.0, 3),
              lf._cache_key(raw_dir, files, SPLITS, 0.5, 3),
              lf._cache_key(raw_dir, files, SPLITS, 1.0, 4)}
    assert key not in others and len(others) == 3
    moved = str(tmp_path / "b" / "raw")                # the same tree elsewhere: the same key
    shutil.copytree(raw_dir, moved)                    # copytree keeps the mtimes
    assert lf._cache_key(moved, lf.list_leaf_files(moved), SPLITS, 1.0, 3) == key
    os.rename(files[0], os.path.join(raw_dir, "all_data_9.json"))   # renamed: another key
    renamed = lf.list_leaf_files(raw_dir)
    assert lf._cache_key(raw_dir, renamed, SPLITS, 1.0, 3) != key
    with open(renamed[0], "a") as f:                   # one byte more, mtime put back
        f.write(" ")
    st = os.stat(renamed[0])
    os.utime(renamed[0], ns=(st.st_atime_ns, os.stat(os.path.join(moved, "all_data_0.json"))
                             .st_mtime_ns))
    os.rename(renamed[0], files[0])
    assert lf._cache_key(raw_dir, files, SPLITS, 1.0, 3) != key


def _valid_cache():
    x, y = torch.zeros((2, 28, 28), dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)
    return {"version": 1, "writers": ["w"],
            "tasks": [{"train": (x, y), "val": (x[:0], y[:0]), "test": (x[:1], y[:1])}]}


def _broken(change):
    obj = _valid_cache()
    change(obj)
    return obj


BAD_CACHES = [
    [], {"tasks": []}, _broken(lambda o: o.update(version=2)), _broken(lambda o: o.pop("tasks")),
    _broken(lambda o: o.update(tasks=[])), _broken(lambda o: o.update(tasks=({},))),
    _broken(lambda o: o["tasks"].append([1])), _broken(lambda o: o["tasks"][0].pop("val")),
    _broken(lambda o: o["tasks"][0].update(extra=o["tasks"][0]["val"])),
    _broken(lambda o: o["tasks"][0].update(test=(torch.zeros(1, 28, 28), torch.zeros(1).long()))),
    _broken(lambda o: o["tasks"][0].update(test=(torch.zeros(1, 28, 28, dtype=torch.uint8),
                                                 torch.zeros(1, dtype=torch.int32)))),
    _broken(lambda o: o["tasks"][0].update(test=(torch.zeros(1, 28, 27, dtype=torch.uint8),
                                                 torch.zeros(1).long()))),
    _broken(lambda o: o["tasks"][0].update(test=(torch.zeros(1, 27, 28, dtype=torch.uint8),
                                                 torch.zeros(1).long()))),
    _broken(lambda o: o["tasks"][0].update(test=(torch.zeros(2, 28, 28, dtype=torch.uint8),
                                                 torch.zeros(1).long()))),
]


def test_only_a_cache_of_the_right_layout_is_used():
    assert lf._valid_cached(_valid_cache())
    assert [lf._valid_cached(obj) for obj in BAD_CACHES] == [False] * len(BAD_CACHES)


def test_a_cache_of_another_layout_is_rebuilt_with_a_warning(tmp_path, caplog):
    raw_dir, _ = _raw_tree(tmp_path)
    tasks = lf.load_femnist_tasks(str(tmp_path), SPLITS, 1.0, 5)
    (cache,) = (tmp_path / "femnist" / "processed").glob("*.pt")
    torch.save(BAD_CACHES[-1], str(cache))                       # readable, wrong shape
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        again = lf.load_femnist_tasks(str(tmp_path), SPLITS, 1.0, 5)
    assert _said(caplog) == \
        [f"FEMNIST cache {cache} has an unexpected layout; rebuilding it"]
    assert [[torch.equal(a[s][0], b[s][0]) and torch.equal(a[s][1], b[s][1])
             for s in ("train", "val", "test")] for a, b in zip(tasks, again)] == [[True] * 3] * 4
    assert lf._valid_cached(torch.load(str(cache), weights_only=True))   # rewritten whole


@pytest.mark.parametrize("subsample", [0.0, -0.5, 1.01])
def test_a_subsample_outside_0_1_is_refused_before_any_read(tmp_path, subsample):
    with pytest.raises(ValueError) as e:
        lf.load_femnist_tasks(str(tmp_path), SPLITS, subsample, 0)    # no input here at all
    assert str(e.value) == f"data.subsample must be in (0, 1], got {subsample!r}"


@pytest.mark.parametrize("splits", [(0.6, 0.4), (0.5, 0.6, -0.1), (0.3, 0.3, 0.3),
                                    (0.5, 0.25, 0.25, 0.0)])
def test_splits_must_be_three_fractions_summing_to_one(splits):
    with pytest.raises(ValueError) as e:
        lf._check_splits(splits)
    assert str(e.value) == ("data.splits must be three non-negative fractions summing to 1 "
                            f"(train, val, test), got {list(splits)!r}")
    assert lf._check_splits((0.8, 0.0, 0.2)) == (0.8, 0.0, 0.2)
    assert lf._check_splits([1, 0, 0]) == (1.0, 0.0, 0.0)


# ------------------------------------------------------------- FS's processed task_<k> folders
def _task(folder, n_train=3, val=True, data=None, targets=None):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for name, n in (("train", n_train), ("val", 1), ("test", 2)):
        if name == "val" and not val:
            continue
        k = rng.integers(0, 256, size=(n, 784))
        x = torch.tensor(k / 255.0) if data is None or name != "train" else data
        y = torch.tensor(rng.integers(0, 62, n)) if targets is None or name != "train" \
            else targets
        torch.save((x, y), os.path.join(folder, name + ".pt"))


@pytest.mark.parametrize("obj,says", [
    ([torch.zeros(1, 784)], "expected a (data, targets) tuple"),
    ((torch.zeros(1, 784), torch.zeros(1), torch.zeros(1)), "expected a (data, targets) tuple"),
    ({"data": 1}, "expected a (data, targets) tuple"),
    ((torch.zeros(2, 783), torch.zeros(2).long()), "got (2, 783) and (2,)"),
    ((torch.zeros(2, 784), torch.zeros(3).long()), "got (2, 784) and (3,)"),
    ((torch.tensor(0.5), torch.zeros(1).long()), "got () and (1,)"),
    ((torch.zeros(1, 784), torch.tensor([62])), "labels must be in [0, 62)"),
    ((torch.zeros(2, 784), torch.tensor([0, -1])), "labels must be in [0, 62)"),
])
def test_a_bad_processed_train_file_is_named_with_what_is_wrong(tmp_path, obj, says):
    _task(tmp_path)
    torch.save(obj, str(tmp_path / "train.pt"))
    with pytest.raises(ValueError) as e:
        lf.read_fs_processed_task(str(tmp_path))
    assert str(e.value).startswith(str(tmp_path / "train.pt") + ": ") and says in str(e.value)


def test_processed_tasks_accept_28x28_data_edge_labels_and_an_empty_split(tmp_path):
    k = np.arange(2 * 784).reshape(2, 28, 28) % 256
    _task(tmp_path, data=torch.tensor(k / 255.0), targets=torch.tensor([0, 61]), val=False)
    torch.save((torch.zeros(0, 784, dtype=torch.float64), torch.zeros(0).long()),
               str(tmp_path / "test.pt"))
    out = lf.read_fs_processed_task(str(tmp_path))
    assert list(out) == ["train", "val", "test"]
    assert out["train"][0].numpy().tolist() == k.tolist() and out["train"][1].tolist() == [0, 61]
    for split in ("val", "test"):
        x, y = out[split]
        assert (x.shape, x.dtype, y.shape, y.dtype) == \
            ((0, 28, 28), torch.uint8, (0,), torch.int64)
    os.remove(tmp_path / "test.pt")
    with pytest.raises(FileNotFoundError) as e:
        lf.read_fs_processed_task(str(tmp_path))
    assert str(e.value) == f"FS processed task file {tmp_path / 'test.pt'} is missing"


def test_processed_tasks_are_read_in_numeric_order_one_writer_per_task(tmp_path):
    proc = tmp_path / "femnist" / "processed"
    for k in (10, 2, 1):
        _task(proc / f"task_{k}", n_train=k)
    (proc / "task_3").write_text("a file, not a task folder")
    assert [os.path.basename(p) for p in lf.list_inputs(str(tmp_path))] == \
        ["task_1", "task_2", "task_10"]
    ws = list(lf.iter_writers(str(tmp_path)))
    assert [(w.writer_id, w.split, len(w.y)) for w in ws] == [
        (f"task_{k}", s, n) for k in (1, 2, 10) for s, n in (("train", k), ("val", 1),
                                                              ("test", 2))]
    assert all(w.x.dtype == np.uint8 and w.x.shape[1:] == (28, 28) for w in ws)
    assert all(w.source == str(proc / w.writer_id) for w in ws)


def test_leaf_json_wins_over_processed_tasks_and_neither_is_an_error_naming_both(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        lf.list_inputs(str(tmp_path))
    assert "femnist/raw/*.json" in str(e.value) and lf._FS_TASKS in str(e.value)
    _task(tmp_path / "femnist" / "processed" / "task_1")
    raw_dir, files = _raw_tree(tmp_path)
    assert lf.list_inputs(str(tmp_path)) == files
    assert {w.writer_id for w in lf.iter_writers(str(tmp_path))} == {"w0", "w1", "w2", "w3"}


# ------------------------------------------------- messages, layouts and loads, written out whole
def _hint(raw):
    return ("generate a sample with `python scripts/tools/generate_femnist_sample.py --out "
            f"{raw} --writers 60 --seed 0`, or drop real LEAF FEMNIST JSON files (all_data_*.json, "
            "or LEAF's train/ and test/ folders) there")


def test_no_input_and_empty_input_messages_in_full(tmp_path):
    raw = os.path.join(str(tmp_path), "femnist", "raw")
    with pytest.raises(FileNotFoundError) as e:
        lf.list_inputs(str(tmp_path))
    assert str(e.value) == (
        f"no FEMNIST input under {tmp_path}; looked in: femnist/raw/*.json, "
        "femnist/raw/train/*.json + femnist/raw/test/*.json, femnist/raw/all_data/*.json, "
        "femnist/data/*.json, femnist/data/train/*.json + femnist/data/test/*.json, "
        "femnist/data/all_data/*.json, femnist/processed/task_<k>/ (FS's layout). To fix it, "
        + _hint(raw))
    assert lf.find_leaf_dir(str(tmp_path)) == ("", [])
    _file(tmp_path / "femnist" / "raw", {"e0": {"x": [], "y": []}})
    with pytest.raises(ValueError) as e:
        lf.load_femnist_tasks(str(tmp_path), SPLITS, 1.0, 0)
    assert str(e.value) == ("the input is empty: the 1 LEAF file(s) in " + raw + " list no "
                            "writers with samples ('users' is empty or every writer has 0 "
                            "samples); " + _hint(raw))


def test_a_leaf_tree_needs_both_folders_and_then_top_level_files_are_ignored_aloud(tmp_path,
                                                                                  caplog):
    raw = tmp_path / "raw"
    top = _file(raw, {"t": {"x": [_image(0)], "y": [1]}})
    _file(raw / "train", {"a": {"x": [_image(0)], "y": [1]}}, name="tr.json")
    assert lf._layout(str(raw)) == [(top, None)]               # train/ alone is not a tree
    te = _file(raw / "test", {"a": {"x": [_image(0)], "y": [2]}}, name="te.json")
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        assert lf._layout(str(raw)) == [(str(raw / "train" / "tr.json"), "train"), (te, "test")]
    assert _said(caplog) == \
        [f"{raw} has train/ and test/ folders; ignoring 1 top-level JSON file(s)"]


def test_the_cache_follows_the_tree_when_it_moves_and_says_what_it_read(tmp_path, monkeypatch,
                                                                       caplog):
    _raw_tree(tmp_path / "a")
    with caplog.at_level(logging.INFO, logger="federatedscope"):
        tasks = lf.load_femnist_tasks(str(tmp_path / "a"), SPLITS, 0.5, 2)
    (cache,) = (tmp_path / "a" / "femnist" / "processed").glob("*.pt")
    assert _said(caplog, logging.INFO) == \
        [f"FEMNIST: 2 of 4 writers as tasks, cached in {cache}"]
    shutil.copytree(tmp_path / "a", tmp_path / "b")           # mtimes kept: the same inputs

    def reread(_):
        raise AssertionError("raw data re-read although the moved cache is valid")
    monkeypatch.setattr(lf, "iter_leaf_writers", reread)
    moved = lf.load_femnist_tasks(str(tmp_path / "b"), SPLITS, 0.5, 2)
    assert [torch.equal(a["train"][0], b["train"][0]) for a, b in zip(tasks, moved)] == [True] * 2


RAN = []


def _record(*args):
    RAN.append(args)
    return args


class _Payload:
    """What a hostile file carries: unpickling it calls a function (here, one that records)."""

    def __reduce__(self):
        return (_record, ("unpickled",))


def test_files_carrying_code_are_never_unpickled(tmp_path, caplog):
    del RAN[:]
    _task(tmp_path / "task")
    torch.save((_Payload(), torch.zeros(1).long()), str(tmp_path / "task" / "train.pt"))
    with pytest.raises(ValueError) as e:
        lf.read_fs_processed_task(str(tmp_path / "task"))
    assert str(e.value).startswith(f"{tmp_path / 'task' / 'train.pt'}: not a tensor file that "
                                   "loads with weights_only=True (")
    assert str(e.value).endswith("); re-create it with FS's FEMNIST preprocessing")
    _raw_tree(tmp_path)
    tasks = lf.load_femnist_tasks(str(tmp_path), SPLITS, 1.0, 0)
    (cache,) = (tmp_path / "femnist" / "processed").glob("*.pt")
    torch.save({"version": 1, "tasks": [_Payload()]}, str(cache))
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        again = lf.load_femnist_tasks(str(tmp_path), SPLITS, 1.0, 0)
    (msg,) = _said(caplog)
    prefix, suffix = f"FEMNIST cache {cache} is unreadable (", "); rebuilding it"
    assert msg.startswith(prefix) and msg.endswith(suffix)
    assert "weights_only" in msg[len(prefix):-len(suffix)]       # torch's own reason, quoted
    assert RAN == []
    assert [torch.equal(a["test"][1], b["test"][1]) for a, b in zip(tasks, again)] == [True] * 4


def test_integers_0_and_1_and_exact_messages_of_the_k255_rule():
    assert lf.floats_to_uint8(np.array([0, 1]), "w").tolist() == [0, 255]
    rows = np.array([[0.0] * 783 + [0.5], [0.5] + [1.0] * 783])
    with pytest.raises(ValueError) as e:
        lf.floats_to_uint8(rows, "f.json, writer w")
    assert str(e.value) == ("f.json, writer w, sample 0 pixel 783: 2 pixel value(s) are not "
                            "multiples of 1/255 in [0, 1] (first: 0.5); FEMNIST pixels must be "
                            "exact k/255 grey values and are never binarised")
    with pytest.raises(ValueError) as e:
        lf.floats_to_uint8(np.array([1 / 255, 2.0]), "t")
    assert str(e.value).startswith("t: 1 pixel value(s) are not multiples of 1/255 in [0, 1] "
                                   "(first: 2.0); FEMNIST")
