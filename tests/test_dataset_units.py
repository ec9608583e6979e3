"""Unit rules of the datasets beyond FEMNIST's reader, the domain models and the loss: small
files in the real formats written by hand, expectations computed by hand."""
import json
import logging
import math
import os
import pickle
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.data.datasets import TensorSplit
from federatedscope.cv.dataloader import dataloader
from federatedscope.cv.dataset import cifar10, femnist_spec, leaf_json
from federatedscope.cv.dataset.celeba import CELEBA, decode_image, image_dirs
from federatedscope.cv.dataset.cifar10 import (find_layout, iter_cifar10_blocks,
                                               list_cifar10_inputs, read_bin_batch,
                                               read_py_batch)
from federatedscope.cv.dataset.leaf_json import (find_leaf_input, int_labels, iter_leaf_users,
                                                 leaf_layout, load_leaf_json, write_leaf_json)
from federatedscope.cv.model.cnn import ConvNet2, call_convnet2
from federatedscope.nlp.dataset.shakespeare import SHAKESPEARE, encode
from federatedscope.nlp.loss.character_loss import class_weights, create_character_loss
from federatedscope.nlp.model.model_builder import get_rnn
from federatedscope.nlp.model.rnn import LSTM
from federatedscope.nlp.trainer.trainer import NLPTrainer, call_nlp_trainer

NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# --------------------------------------------------------------------------------- CIFAR-10
def _cifar_record(label: int, red: int) -> bytes:
    """One binary record: label byte, then the red plane (all ``red``), green (all 2) and blue
    (all 3), each 1024 bytes row-major."""
    return bytes([label]) + bytes([red]) * 1024 + bytes([2]) * 1024 + bytes([3]) * 1024


def _bin_layout(base, records_of):
    d = base / "cifar-10-batches-bin"
    os.makedirs(d, exist_ok=True)
    for i, n in enumerate(NAMES):
        (d / (n + ".bin")).write_bytes(records_of(i))
    return d


def test_cifar_spec_fields_are_fs_facts():
    spec = cifar10._spec("cifar10@torchvision")
    assert spec.name == "cifar10@torchvision"
    assert (spec.sample_dtype, spec.sample_shape, spec.num_classes, spec.model_input) == \
        ("uint8", (3, 32, 32), 10, (3, 32, 32))
    assert spec.has_writers is False
    assert spec.iter_writers is iter_cifar10_blocks and spec.list_inputs is list_cifar10_inputs
    assert spec.default_transform == (["ToTensor"], ["Normalize", {
        "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.243, 0.261]}])
    assert spec.row_bytes == 3 * 32 * 32


def test_cifar_binary_layout_only_reads_as_bin_with_labels_and_sources(tmp_path):
    # file i holds 4 records: labels i, i+1, i+2, 9 and red planes 10*i + k
    d = _bin_layout(tmp_path, lambda i: b"".join(_cifar_record(lab, 10 * i + k) for k, lab in
                                                 enumerate([i, i + 1, i + 2, 9])))
    kind, files = find_layout(str(tmp_path))
    assert kind == "bin"
    assert files == [(str(d / (n + ".bin")), "train") for n in NAMES[:5]] + \
        [(str(d / "test_batch.bin"), "test")]
    assert list_cifar10_inputs(str(tmp_path)) == [p for p, _ in files]
    blocks = list(iter_cifar10_blocks(str(tmp_path)))
    assert [(b.writer_id, b.split, b.source) for b in blocks] == \
        [(n + ".bin", s, p) for n, (p, s) in zip(NAMES, files)]
    for i, b in enumerate(blocks):
        assert b.y.tolist() == [i, i + 1, i + 2, 9] and b.y.dtype == np.int64
        assert b.x.shape == (4, 3, 32, 32)
        assert b.x[:, 0, 31, 31].tolist() == [10 * i + k for k in range(4)]
        assert (b.x[:, 1] == 2).all() and (b.x[:, 2] == 3).all()


def test_cifar_bin_file_sizes_and_labels_name_the_file(tmp_path):
    p = tmp_path / "b.bin"
    p.write_bytes(b"")
    with pytest.raises(ValueError) as e:
        read_bin_batch(str(p))
    assert str(e.value) == (f"{p}: 0 bytes is not a whole number of 3073-byte CIFAR-10 records "
                            f"(1 label byte + 3072 pixels); re-extract cifar-10-binary.tar.gz")
    p.write_bytes(_cifar_record(0, 0) + _cifar_record(10, 0))
    with pytest.raises(ValueError) as e:
        read_bin_batch(str(p))
    assert str(e.value) == (f"{p}: labels must be in [0, 10), found 0..10; the file is damaged, "
                            f"re-download it")
    p.write_bytes(_cifar_record(9, 7) * 3)   # 9 is the last class
    x, y = read_bin_batch(str(p))
    assert y.tolist() == [9, 9, 9] and x.shape == (3, 3, 32, 32) and x[2, 0, 0, 0] == 7


def _py_batch(path, **batch):
    path.write_bytes(pickle.dumps(batch, protocol=4))
    return str(path)


def _rows(n):
    rows = np.zeros((n, 3072), np.uint8)
    rows[:, 1024:2048] = np.arange(n, dtype=np.uint8)[:, None]   # green plane = sample index
    return rows


@pytest.mark.parametrize("batch,why", [
    ([1, 2], "holds a list, not a dict"),
    ({"data": _rows(2)}, "has no 'labels' entry (keys: ['data'])"),
    ({"data": _rows(2).astype(np.int64), "labels": [0, 1]},
     "data must be uint8 [n, 3072] with n labels, got int64 (2, 3072) and labels (2,)"),
    ({"data": np.zeros(3072, np.uint8), "labels": [0]},
     "data must be uint8 [n, 3072] with n labels, got uint8 (3072,) and labels (1,)"),
    ({"data": _rows(2)[:, :3000], "labels": [0, 1]},
     "data must be uint8 [n, 3072] with n labels, got uint8 (2, 3000) and labels (2,)"),
    ({"data": _rows(3), "labels": [0, 1]},
     "data must be uint8 [n, 3072] with n labels, got uint8 (3, 3072) and labels (2,)"),
    ({"data": _rows(2), "labels": [0.0, 1.0]}, "labels must be integers, got float64"),
])
def test_cifar_python_batch_shape_errors_name_file_and_what_is_wrong(tmp_path, batch, why):
    path = str(tmp_path / "data_batch_3")
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(ValueError) as e:
        read_py_batch(path)
    assert str(e.value) == f"{path}: not a CIFAR-10 python batch: {why}"


def test_cifar_python_batch_labels_any_int_width_and_negative_label(tmp_path):
    p = _py_batch(tmp_path / "b", data=_rows(4), labels=np.array([3, 0, 9, 1], np.uint8))
    x, y = read_py_batch(p)
    assert y.dtype == np.int64 and y.tolist() == [3, 0, 9, 1]
    assert x[:, 1, 17, 4].tolist() == [0, 1, 2, 3] and x.shape == (4, 3, 32, 32)
    p = _py_batch(tmp_path / "b", data=_rows(2), labels=[2, -1])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\), found -1\.\.2;"):
        read_py_batch(p)
    # an empty batch is read as 0 images (no min/max of nothing)
    x, y = read_py_batch(_py_batch(tmp_path / "b", data=_rows(0), labels=np.zeros(0, np.int64)))
    assert x.shape == (0, 3, 32, 32) and y.shape == (0,)


def test_cifar_nothing_found_lists_every_place_and_the_fix(tmp_path):
    d = _bin_layout(tmp_path / "cifar10", lambda i: _cifar_record(i, 0))
    os.remove(d / "data_batch_2.bin")
    os.remove(d / "test_batch.bin")
    r = str(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        find_layout(r)
    assert str(e.value) == (
        f"no CIFAR-10 input under {r}; looked in: {r}/cifar-10-batches-py; "
        f"{r}/cifar-10-batches-bin; {r}/cifar10/cifar-10-batches-py; "
        f"{r}/cifar10/cifar-10-batches-bin (incomplete: missing data_batch_2.bin, "
        f"test_batch.bin). To fix it, extract cifar-10-python.tar.gz or cifar-10-binary.tar.gz "
        f"into {r}, or generate a sample with `python scripts/tools/generate_cifar10_sample.py "
        f"--out {r}`")


# ----------------------------------------------------------------------------------- LEAF JSON
def _write_raw(path, doc, prefix=b""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(prefix + json.dumps(doc).encode("utf-8"))
    return str(path)


def test_leaf_split_tree_needs_both_halves(tmp_path):
    raw = tmp_path / "raw"
    write_leaf_json(str(raw / "train" / "t.json"), [("a", [1], [0])])
    write_leaf_json(str(raw / "all_data" / "b.json"), [("a", [1], [0])])
    write_leaf_json(str(raw / "all_data" / "a.json"), [("a", [1], [0])])
    # train/ without test/ is not LEAF's split tree: all_data/ is read, files sorted
    assert leaf_layout(str(raw)) == [(str(raw / "all_data" / "a.json"), None),
                                     (str(raw / "all_data" / "b.json"), None)]
    write_leaf_json(str(raw / "test" / "t.json"), [("a", [1], [0])])
    assert leaf_layout(str(raw)) == [(str(raw / "train" / "t.json"), "train"),
                                     (str(raw / "test" / "t.json"), "test")]


def test_leaf_input_missing_names_every_place_and_the_generator(tmp_path):
    r = str(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        find_leaf_input(r, "celeba")
    d1, d2 = f"{r}/celeba/raw", f"{r}/celeba/data"
    assert str(e.value) == (
        f"no LEAF celeba JSON under {r}; looked in: {d1}/train/*.json + {d1}/test/*.json, "
        f"{d1}/*.json, {d1}/all_data/*.json, {d2}/train/*.json + {d2}/test/*.json, {d2}/*.json, "
        f"{d2}/all_data/*.json. To fix it, drop LEAF's celeba output there, or generate a "
        f"sample with `python scripts/tools/generate_celeba_sample.py --out {d1}`")
    # LEAF's own data/ is used when FS's raw/ holds nothing; raw/ wins when both do
    write_leaf_json(f"{d2}/x.json", [("a", [1], [0])])
    assert find_leaf_input(r, "celeba") == (d2, [(f"{d2}/x.json", None)])
    write_leaf_json(f"{d1}/all_data/y.json", [("a", [1], [0])])
    assert find_leaf_input(r, "celeba") == (d1, [(f"{d1}/all_data/y.json", None)])


def test_leaf_json_is_read_as_bytes_so_a_bom_is_accepted(tmp_path):
    doc = {"users": ["u"], "num_samples": [1], "user_data": {"u": {"x": ["é"], "y": [1]}}}
    p = _write_raw(tmp_path / "a.json", doc, prefix=b"\xef\xbb\xbf")
    assert load_leaf_json(p) == doc


@pytest.mark.parametrize("text,why", [
    (b"[1, 2]", "not a LEAF file (needs a 'user_data' object)"),
    (b'{"users": []}', "not a LEAF file (needs a 'user_data' object)"),
    (b'{"user_data": []}', "not a LEAF file (needs a 'user_data' object)"),
])
def test_leaf_json_without_user_data_object_is_refused(tmp_path, text, why):
    (tmp_path / "a.json").write_bytes(text)
    with pytest.raises(ValueError) as e:
        load_leaf_json(str(tmp_path / "a.json"))
    assert str(e.value) == f"{tmp_path / 'a.json'}: {why}"


def test_leaf_json_syntax_error_names_file_and_fix(tmp_path):
    (tmp_path / "a.json").write_bytes(b'{"users": [')
    with pytest.raises(ValueError) as e:
        load_leaf_json(str(tmp_path / "a.json"))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'a.json'}: not valid JSON (")
    assert msg.endswith("); re-run LEAF's preprocessing or replace the file")


def test_leaf_users_skip_empty_writers_and_keep_going(tmp_path, caplog):
    # 7 empty writers between real ones: the warning lists the first 5 and says there are more
    users = [("r0", ["a"], [0])] + [(f"e{i}", [], []) for i in range(7)] + \
        [("r1", ["b", "c"], [1, 0])]
    p = str(tmp_path / "a.json")
    write_leaf_json(p, users)
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        got = list(iter_leaf_users(p))
    assert got == [("r0", ["a"], [0]), ("r1", ["b", "c"], [1, 0])]
    assert [r.getMessage() for r in caplog.records] == \
        [f"{p}: skipped 7 writer(s) with 0 samples (e0, e1, e2, e3, e4 ...)"]


@pytest.mark.parametrize("empty,listed", [(5, "e0, e1, e2, e3, e4"),
                                          (6, "e0, e1, e2, e3, e4 ..."),
                                          (1, "e0")])
def test_leaf_skip_warning_says_more_only_beyond_five(tmp_path, caplog, empty, listed):
    p = str(tmp_path / "a.json")
    write_leaf_json(p, [(f"e{i}", [], []) for i in range(empty)] + [("r", ["a"], [1])])
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        assert [u for u, _, _ in iter_leaf_users(p)] == ["r"]
    assert [r.getMessage() for r in caplog.records] == \
        [f"{p}: skipped {empty} writer(s) with 0 samples ({listed})"]


@pytest.mark.parametrize("entry,why", [
    ([1], "needs an object with arrays 'x' and 'y'"),
    ({"x": "abc", "y": [1]}, "needs an object with arrays 'x' and 'y'"),
    ({"x": [1], "y": 1}, "needs an object with arrays 'x' and 'y'"),
    ({"x": [1, 2, 3], "y": [1, 0]}, "3 samples but 2 labels"),
])
def test_leaf_writer_entry_errors_name_file_and_writer(tmp_path, entry, why):
    p = _write_raw(tmp_path / "a.json", {"users": ["ok", "w7"],
                                         "user_data": {"ok": {"x": [0], "y": [0]}, "w7": entry}})
    with pytest.raises(ValueError) as e:
        list(iter_leaf_users(p))
    assert str(e.value) == f"{p}, writer w7: {why}"


def test_leaf_users_bookkeeping_errors_name_the_file(tmp_path):
    p = _write_raw(tmp_path / "a.json", {"users": ["a", "b"], "num_samples": [1, 2],
                                         "user_data": {"a": {"x": [0], "y": [0]},
                                                       "b": {"x": [0], "y": [0]}}})
    with pytest.raises(ValueError, match=r"^" + str(tmp_path / "a.json") + ", writer b: "
                                         r"'num_samples' says 2 but user_data holds 1 labels"):
        list(iter_leaf_users(p))


def test_leaf_users_drop_each_writers_lists_once_handed_out(tmp_path, monkeypatch):
    doc = {"users": ["a", "b"], "user_data": {"a": {"x": [1], "y": [0]},
                                              "b": {"x": [2], "y": [1]}}}
    monkeypatch.setattr(leaf_json, "load_leaf_json", lambda p: doc)
    it = iter_leaf_users("mem.json")
    assert next(it) == ("a", [1], [0])
    assert next(it) == ("b", [2], [1]) and doc["user_data"]["a"] == {}


def test_int_labels_are_json_integers_unless_integral_floats_are_allowed():
    y = int_labels([3, 0, 4], "w", 5)
    assert y.tolist() == [3, 0, 4] and y.dtype == np.int64
    with pytest.raises(ValueError) as e:
        int_labels([1, 1.0], "f.json, writer 2", 5)
    assert str(e.value) == ("f.json, writer 2, sample 1: label 1.0 is not a JSON integer in "
                            "[0, 5); fix the file (re-run LEAF's preprocessing)")
    with pytest.raises(ValueError, match=r"sample 0: label 5 is not"):
        int_labels([5], "w", 5)
    with pytest.raises(ValueError, match=r"sample 1: label -1 is not"):
        int_labels([0, -1], "w", 5)
    y = int_labels([1.0, 0.0, 4], "w", 5, integral_floats=True)
    assert y.tolist() == [1, 0, 4] and y.dtype == np.int64


def test_write_leaf_json_writes_leafs_three_keys(tmp_path):
    p = str(tmp_path / "sub" / "a.json")
    write_leaf_json(p, [("w1", ["é", "b"], [0, 1]), ("w2", [], [])])
    with open(p, "rb") as f:
        raw = f.read()
    assert json.loads(raw) == {"users": ["w1", "w2"], "num_samples": [2, 0],
                               "user_data": {"w1": {"x": ["é", "b"], "y": [0, 1]},
                                             "w2": {"x": [], "y": []}}}


# ------------------------------------------------------------------------------------- CelebA
def test_celeba_image_dirs_in_search_order():
    assert image_dirs("/r", "/j") == ["/j/img_align_celeba", "/j/raw/img_align_celeba",
                                      "/r/celeba/raw/img_align_celeba"]


def _png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def test_celeba_images_found_in_each_dir_first_dir_wins(tmp_path):
    root = tmp_path
    json_dir = root / "celeba" / "data"        # LEAF's own tree: images beside all_data/
    write_leaf_json(str(json_dir / "all_data" / "a.json"),
                    [("c1", ["1.png", "2.png", "3.png"], [1, 0, 1])])
    grey = lambda v: np.full((20, 20, 3), v, np.uint8)  # noqa: E731
    _png(str(json_dir / "img_align_celeba" / "1.png"), grey(10))
    _png(str(json_dir / "raw" / "img_align_celeba" / "1.png"), grey(99))   # shadowed
    _png(str(json_dir / "raw" / "img_align_celeba" / "2.png"), grey(20))
    _png(str(root / "celeba" / "raw" / "img_align_celeba" / "3.png"), grey(30))
    (w,) = CELEBA.iter_writers(str(root))
    assert w.x[:, :, 40, 40].tolist() == [[10] * 3, [20] * 3, [30] * 3]
    assert w.source == str(json_dir / "all_data" / "a.json") and w.split is None
    assert w.y.tolist() == [1, 0, 1]


def _celeba_writer(tmp_path, xs, ys):
    write_leaf_json(str(tmp_path / "celeba" / "raw" / "a.json"), [("9", xs, ys)])
    return list(CELEBA.iter_writers(str(tmp_path)))


def test_celeba_missing_image_lists_the_three_dirs(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        _celeba_writer(tmp_path, ["nope.jpg"], [0])
    j = tmp_path / "celeba" / "raw"
    assert str(e.value) == (
        f"{j / 'a.json'}, writer 9, sample 0: image nope.jpg is in none of "
        f"{j}/img_align_celeba, {j}/raw/img_align_celeba, {j}/img_align_celeba; extract LEAF's "
        f"img_align_celeba.zip into one of them")


@pytest.mark.parametrize("name", ["", ".", "..", "d/1.png"])
def test_celeba_image_names_must_be_plain_file_names(tmp_path, name):
    # the '.' and '..' entries exist as directories, '' would be the folder itself
    _png(str(tmp_path / "celeba" / "raw" / "img_align_celeba" / "d" / "1.png"),
         np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError) as e:
        _celeba_writer(tmp_path, [name], [0])
    assert str(e.value) == (f"{tmp_path / 'celeba' / 'raw' / 'a.json'}, writer 9, sample 0: "
                            f"image name {name!r} must be a plain file name inside "
                            f"img_align_celeba/ (no folders)")


def _hwc(v):
    return np.full((84, 84, 3), v, np.int64)


@pytest.mark.parametrize("bad,shown", [
    (_hwc(255).reshape(-1)[:-1].tolist(), "shape (21167,) dtype int64"),
    ((_hwc(100) + 0.5).reshape(-1).tolist(), "shape (21168,) dtype float64"),
    (_hwc(256).reshape(-1).tolist(), "shape (21168,) dtype int64"),
    (np.concatenate([_hwc(0).reshape(-1)[1:], [-1]]).tolist(), "shape (21168,) dtype int64"),
])
def test_celeba_pixel_list_must_be_84x84x3_bytes(tmp_path, bad, shown):
    good = _hwc(0).reshape(-1).tolist()
    with pytest.raises(ValueError) as e:
        _celeba_writer(tmp_path, [good, bad], [0, 1])
    assert str(e.value) == (f"{tmp_path / 'celeba' / 'raw' / 'a.json'}, writer 9, sample 1: a "
                            f"pixel-list sample must be 21168 integers in 0..255 (84x84 RGB), "
                            f"got {shown}")


def test_celeba_pixel_list_extremes_and_mixed_samples(tmp_path):
    hwc = np.zeros((84, 84, 3), np.int64)
    hwc[0, 1] = [255, 0, 7]          # pixel (row 0, col 1): R 255, G 0, B 7
    _png(str(tmp_path / "celeba" / "raw" / "img_align_celeba" / "p.png"),
         np.full((84, 84, 3), 60, np.uint8))
    (w,) = _celeba_writer(tmp_path, [hwc.reshape(-1).tolist(), "p.png"], [1.0, 0])
    assert w.x.dtype == np.uint8 and w.x[0, :, 0, 1].tolist() == [255, 0, 7]
    assert w.x[1, :, 3, 3].tolist() == [60, 60, 60] and w.y.tolist() == [1, 0]


def test_celeba_sample_of_another_json_type_names_it(tmp_path):
    with pytest.raises(ValueError) as e:
        _celeba_writer(tmp_path, [17], [0])
    assert str(e.value) == (f"{tmp_path / 'celeba' / 'raw' / 'a.json'}, writer 9, sample 0: x "
                            f"must be an image file name or a pixel list, got int")


def test_celeba_decode_makes_grey_rgb_and_uses_lanczos_then_bicubic(tmp_path):
    # a grey-scale image becomes three equal planes
    g = (np.arange(30 * 40) % 256).astype(np.uint8).reshape(30, 40)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    x = decode_image(str(tmp_path / "g.png"))
    assert x.shape == (3, 84, 84) and x.dtype == np.uint8
    assert (x[0] == x[1]).all() and (x[1] == x[2]).all()
    # CelebA's 178x218 with fine detail: FS's preprocessing (thumbnail with Lanczos to 69x84,
    # then bicubic to 84x84); a bicubic thumbnail gives other pixels
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "c.png")
    ref = Image.fromarray(img)
    ref.thumbnail((84, 84), Image.Resampling.LANCZOS)
    assert ref.size == (69, 84)
    want = np.asarray(ref.resize((84, 84), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    other = Image.fromarray(img)
    other.thumbnail((84, 84), Image.Resampling.BICUBIC)
    other = np.asarray(other.resize((84, 84), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    assert not np.array_equal(want, other)
    assert np.array_equal(decode_image(str(tmp_path / "c.png")), want)


def test_celeba_unreadable_image_names_itself_and_the_fix(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError) as e:
        decode_image(str(tmp_path / "bad.jpg"))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'bad.jpg'}: not a readable image (cannot identify")
    assert msg.endswith("); re-extract img_align_celeba")


def test_celeba_without_pillow_names_the_image_and_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` fail
    with pytest.raises(ValueError) as e:
        decode_image("x/000001.jpg")
    assert str(e.value) == ("x/000001.jpg: reading CelebA's JPEG images needs Pillow; "
                            "pip install Pillow")


# --------------------------------------------------------------------------------- Shakespeare
def test_encode_returns_int64_indices_and_points_at_the_first_unknown_character():
    idx = encode("\n}a", "w")
    assert idx.dtype == np.int64 and idx.tolist() == [0, 79, 53]
    # '\n' (index 0) before the unknown character must not be taken for it
    for bad, pos in (("\u2014", 3), ("\u0100", 3), ("\u00ff", 3), ("~", 3), ("\U0001F600", 3)):
        with pytest.raises(ValueError) as e:
            encode("a\nb" + bad + "c", "f.json, writer R, sample 2")
        assert str(e.value) == (f"f.json, writer R, sample 2: character {bad!r} at position "
                                f"{pos} is not in LEAF's 80-symbol Shakespeare vocabulary; "
                                f"re-run LEAF's preprocessing")


def test_a_lone_surrogate_in_the_json_is_named_like_any_unknown_character(tmp_path):
    # json.loads turns "\\ud800" into a lone surrogate, which no UTF codec encodes: it must
    # still get the message naming file, writer and sample
    p = tmp_path / "shakespeare" / "raw" / "p.json"
    p.parent.mkdir(parents=True)
    p.write_text('{"users": ["R"], "num_samples": [1], "user_data": {"R": {"x": ["'
                 + "a" * 77 + '\\ud800bc"], "y": ["d"]}}}')
    with pytest.raises(ValueError) as e:
        list(SHAKESPEARE.iter_writers(str(tmp_path)))
    assert str(e.value) == (f"{p}, writer R, sample 0: character '\\ud800' at position 77 is "
                            f"not in LEAF's 80-symbol Shakespeare vocabulary; re-run LEAF's "
                            f"preprocessing")


@pytest.mark.parametrize("x,shown", [(12, "int of length ?"), (["a"] * 80, "list of length 80"),
                                     ("a" * 81, "str of length 81")])
def test_shakespeare_sample_must_be_an_80_character_string(tmp_path, x, shown):
    p = tmp_path / "shakespeare" / "raw" / "p.json"
    write_leaf_json(str(p), [("ROLE", ["b" * 80, x], ["a", "b"])])
    with pytest.raises(ValueError) as e:
        list(SHAKESPEARE.iter_writers(str(tmp_path)))
    assert str(e.value) == f"{p}, writer ROLE, sample 1: x must be a string of 80 characters, " \
                           f"got {shown}"


def test_shakespeare_split_tree_keeps_source_and_split(tmp_path):
    d = tmp_path / "shakespeare" / "data"
    line = "To be, or not to be: that is the question. Whether 'tis nobler in the mind to suf"
    assert len(line) == 81
    write_leaf_json(str(d / "train" / "a.json"), [("HAMLET", [line[:80]], [line[80]])])
    write_leaf_json(str(d / "test" / "a.json"), [("HAMLET", [line[1:81]], ["e"])])
    tr, te = SHAKESPEARE.iter_writers(str(tmp_path))
    assert (tr.source, tr.split) == (str(d / "train" / "a.json"), "train")
    assert (te.source, te.split) == (str(d / "test" / "a.json"), "test")
    # T=44, o=67, ' '=1; the label after "...to suf" is 'f' (58), the next window's is 'e' (57)
    assert tr.x[0, :3].tolist() == [44, 67, 1] and tr.y.tolist() == [58]
    assert te.x[0, -1] == 58 and te.y.tolist() == [57]


# -------------------------------------------------------------------------------- loss, models
def test_character_loss_weights_follow_the_device_and_default_to_cpu():
    assert class_weights().device.type == "cpu"
    w = class_weights("meta")
    assert w.device.type == "meta" and w.shape == (80,)
    crit = create_character_loss("Character_Loss", "meta")
    assert crit.weight.device.type == "meta" and crit.reduction == "mean"
    assert create_character_loss("character_loss").weight.device.type == "cpu"


def test_character_loss_mean_divides_by_the_summed_weights():
    crit = create_character_loss("character_loss", "cpu")
    logits = torch.zeros(3, 80)
    logits[0, 53] = math.log(79.0)   # sample 0: 'a' has p = 79/158 = 1/2, the others 1/80
    y = torch.tensor([53, 54, 0])    # 'a' (weight 8 x .2226), 'b' (8), '\n' (8 x .4380)
    wa, wb, wn = 8 * 0.2226022051965085, 8.0, 8 * 0.43795308843799086
    ce = [math.log(2.0), math.log(80.0), math.log(80.0)]
    expected = (wa * ce[0] + wb * ce[1] + wn * ce[2]) / (wa + wb + wn)
    assert crit(logits, y).item() == pytest.approx(expected, rel=1e-5)


def test_lstm_defaults_and_layer_settings():
    m = LSTM(in_channels=80, hidden=16, out_channels=80)
    assert m.encoder.embedding_dim == 8 and m.rnn.input_size == 8
    assert m.rnn.num_layers == 2 and m.rnn.dropout == 0.0 and m.rnn.batch_first is True
    assert LSTM(80, 16, 80, n_layers=3, dropout=0.25).rnn.num_layers == 3
    assert LSTM(80, 16, 80, n_layers=2, dropout=0.25).rnn.dropout == 0.25
    # one layer: no dropout between layers (torch would warn and ignore it)
    assert LSTM(80, 16, 80, n_layers=1, dropout=0.25).rnn.dropout == 0.0


def test_lstm_sequences_of_a_batch_are_independent():
    torch.manual_seed(1)
    m = LSTM(in_channels=80, hidden=12, out_channels=7).eval()
    x = torch.randint(0, 80, (4, 9))
    out = m(x)
    assert out.shape == (4, 7)
    for i in range(4):
        assert torch.allclose(out[i], m(x[i:i + 1])[0], atol=1e-6)


def _rnn_cfg(**kw):
    base = dict(type="LSTM", in_channels=80, out_channels=61, embed_size=5, hidden=24,
                dropout=0.25)
    base.update(kw)
    return SimpleNamespace(**base)


def test_get_rnn_reads_every_model_key():
    m = get_rnn(_rnn_cfg(), (7,))
    assert (m.in_channels, m.hidden, m.out_channels, m.embed_size) == (80, 24, 61, 5)
    assert m.rnn.dropout == 0.25 and m.decoder.out_features == 61
    # a config without embed_size: FS's default 8
    cfg = _rnn_cfg()
    del cfg.embed_size
    assert get_rnn(cfg, (7,)).encoder.embedding_dim == 8
    assert get_rnn(_rnn_cfg(in_channels=1), (7,)).in_channels == 1
    assert get_rnn(_rnn_cfg(in_channels=0), (3, 7)).in_channels == 7
    with pytest.raises(ValueError) as e:
        get_rnn(_rnn_cfg(in_channels=0), None)
    assert str(e.value) == ("model.type=lstm needs model.in_channels (the vocabulary size, 80 "
                            "for shakespeare) or a dataset whose input shape gives it")


def _manual_convnet2(m, x, p, training, bn=True):
    """ConvNet2's forward written out with torch.nn.functional, conv padding 2."""
    f = torch.nn.functional
    for conv, norm in ((m.conv1, getattr(m, "bn1", None)), (m.conv2, getattr(m, "bn2", None))):
        x = f.conv2d(x, conv.weight, conv.bias, padding=2)
        if bn:
            x = f.batch_norm(x, None, None, norm.weight, norm.bias, training=True)
        x = f.max_pool2d(f.relu(x), 2)
    x = f.dropout(x.flatten(1), p=p, training=training)
    x = f.dropout(f.relu(f.linear(x, m.fc1.weight, m.fc1.bias)), p=p, training=training)
    return f.linear(x, m.fc2.weight, m.fc2.bias)


@pytest.mark.parametrize("use_bn", [True, False])
def test_convnet2_forward_is_fs_pipeline_with_dropout_only_in_training(use_bn):
    torch.manual_seed(0)
    m = ConvNet2(in_channels=3, h=12, w=8, hidden=16, class_num=5, dropout=0.3, use_bn=use_bn)
    assert m.use_bn is use_bn and hasattr(m, "bn1") is use_bn
    x = torch.rand(4, 3, 12, 8)
    torch.manual_seed(7)
    got = m.train()(x)
    torch.manual_seed(7)
    assert torch.allclose(got, _manual_convnet2(m, x, 0.3, True, use_bn), atol=1e-5)
    if not use_bn:
        # eval: no dropout (BN's batch statistics would differ from its running ones)
        assert torch.allclose(m.eval()(x), _manual_convnet2(m, x, 0.3, False, False), atol=1e-5)


def test_convnet2_defaults_are_femnist_sized():
    m = ConvNet2(in_channels=1)
    assert m.fc1.in_features == 7 * 7 * 64 and m.fc1.out_features == 2048
    assert m.fc2.out_features == 10 and m.dropout == 0.0 and m.use_bn is True
    assert m.conv1.padding == (2, 2) and m.conv2.padding == (2, 2)
    assert m.conv1.kernel_size == (5, 5) and m.conv2.out_channels == 64


def test_call_convnet2_reads_the_model_config():
    cfg = SimpleNamespace(type="ConvNet2", in_channels=0, hidden=40, out_channels=2, dropout=0.2)
    m = call_convnet2(cfg, (3, 84, 84))
    assert m.conv1.in_channels == 3 and m.fc1.in_features == 21 * 21 * 64
    assert m.fc1.out_features == 40 and m.fc2.out_features == 2 and m.dropout == 0.2
    cfg.in_channels = 1
    assert call_convnet2(cfg, (3, 32, 20)).conv1.in_channels == 1
    assert call_convnet2(cfg, (3, 32, 20)).fc1.in_features == 8 * 5 * 64
    cfg.type = "lstm"
    assert call_convnet2(cfg, (3, 32, 32)) is None


def test_nlptrainer_name_is_case_blind():
    assert call_nlp_trainer("NLPTrainer") is NLPTrainer
    assert call_nlp_trainer("general") is None


# ----------------------------------------------------------------- FEMNIST spec and cv loader
def _femnist_root(tmp_path, writers=4, per=8):
    """``writers`` writers f0.. with ``per`` samples; sample i of writer j has pixel 0 equal to
    10*j + i (as LEAF's k/255 float) and label i."""
    users = []
    for j in range(writers):
        xs = []
        for i in range(per):
            img = [0.0] * 784
            img[0] = (10 * j + i) / 255
            xs.append(img)
        users.append((f"f{j}", xs, list(range(per))))
    write_leaf_json(str(tmp_path / "femnist" / "raw" / "all_data" / "a.json"), users[:2])
    write_leaf_json(str(tmp_path / "femnist" / "raw" / "all_data" / "b.json"), users[2:])
    return str(tmp_path)


def test_femnist_spec_delegates_to_the_leaf_reader(tmp_path):
    root = _femnist_root(tmp_path, writers=4, per=2)
    a, b = (str(tmp_path / "femnist" / "raw" / "all_data" / n) for n in ("a.json", "b.json"))
    assert femnist_spec.list_inputs(root) == [a, b]
    writers = list(femnist_spec.iter_writers(root))
    assert [w.writer_id for w in writers] == ["f0", "f1", "f2", "f3"]
    assert writers[3].x[1, 0, 0] == 31 and writers[3].y.tolist() == [0, 1]
    assert femnist_spec.pieces(root) == [(a, None), (b, None)]
    assert [w.writer_id for w in femnist_spec.read_piece((b, "test"))] == ["f2", "f3"]
    assert next(femnist_spec.read_piece((b, "test"))).split == "test"


def test_load_cv_dataset_one_client_per_sorted_writer(tmp_path):
    cfg = get_default_cfg()
    cfg.data.type, cfg.data.root = "femnist", _femnist_root(tmp_path)
    cfg.data.splits, cfg.data.seed, cfg.data.subsample = [0.5, 0.25, 0.25], 3, 1.0
    data, back = dataloader.load_cv_dataset(cfg, {"client_1": "A", "client_3": "C"})
    assert back is cfg and sorted(data) == [1, 2, 3, 4]
    assert [data[k].client_cfg for k in (1, 2, 3, 4)] == ["A", None, "C", None]
    for k in (1, 2, 3, 4):
        assert [len(data[k][s]) for s in ("train", "val", "test")] == [4, 2, 2]
        assert all(isinstance(data[k][s], TensorSplit) for s in ("train", "val", "test"))
        # client k is writer f{k-1}: its 8 samples, each once; ToTensor scales to [0, 1]
        seen = []
        for s in ("train", "val", "test"):
            for i in range(len(data[k][s])):
                x, y = data[k][s][i]
                assert x.shape == (1, 28, 28) and x.dtype == torch.float32
                seen.append(round(float(x[0, 0, 0]) * 255))
                assert seen[-1] == 10 * (k - 1) + int(y)
        assert sorted(seen) == [10 * (k - 1) + i for i in range(8)]
    # half the writers, and without per-client configs
    cfg.data.subsample = 0.5
    data, _ = dataloader.load_cv_dataset(cfg)
    assert len(data) == 2 and data[1].client_cfg is None and data[2].client_cfg is None


def test_load_cv_dataset_uses_the_seed_and_the_transform(tmp_path):
    cfg = get_default_cfg()
    cfg.data.type, cfg.data.root = "femnist", _femnist_root(tmp_path, writers=4, per=16)
    cfg.data.splits, cfg.data.subsample = [0.5, 0.25, 0.25], 1.0
    cfg.data.transform = [["Normalize", {"mean": [0.5], "std": [0.5]}]]

    def train_order(seed):
        cfg.data.seed = seed
        d, _ = dataloader.load_cv_dataset(cfg)
        return [round((float(d[1]["train"][i][0][0, 0, 0]) * 0.5 + 0.5) * 255)
                for i in range(8)]
    orders = {tuple(train_order(s)) for s in (1, 2, 3, 4)}
    assert len(orders) > 1      # the split shuffles by data.seed
    # Normalize((x - .5) / .5) applied after ToTensor: sample value v/255 -> 2v/255 - 1
    cfg.data.seed = 1
    d, _ = dataloader.load_cv_dataset(cfg)
    x, y = d[2]["test"][0]
    assert float(x[0, 0, 0]) == pytest.approx(2 * (10 + int(y)) / 255 - 1, abs=1e-6)


def test_call_cv_data_routes_by_type_and_splitter(monkeypatch):
    calls = []
    monkeypatch.setattr(dataloader, "load_cv_dataset",
                        lambda c, cc=None: calls.append(("cv", c, cc)) or "cv")
    monkeypatch.setattr(dataloader, "load_spec_partitions",
                        lambda c, s, cc=None: calls.append(("spec", c, s, cc)) or "spec")
    cfg = SimpleNamespace(data=SimpleNamespace(type="FEMNIST", splitter=""))
    assert dataloader.call_cv_data(cfg, {"client_1": 1}) == "cv"
    assert calls == [("cv", cfg, {"client_1": 1})]
    cfg.data.splitter = "lda"
    assert dataloader.call_cv_data(cfg, "cc") == "spec"
    assert calls[-1] == ("spec", cfg, femnist_spec.FEMNIST, "cc")
    cfg.data.type = "cifar10"
    assert dataloader.call_cv_data(cfg) is None and len(calls) == 2


def test_load_cv_dataset_leaves_a_split_the_task_lacks_absent(monkeypatch):
    from federatedscope.cv.dataset import leaf_femnist
    x, y = torch.zeros(3, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 2])
    monkeypatch.setattr(leaf_femnist, "load_femnist_tasks",
                        lambda *a: [{"train": (x, y), "test": (x[:1], y[:1])}])
    cfg = get_default_cfg()
    data, _ = dataloader.load_cv_dataset(cfg)
    assert sorted(data[1]) == ["test", "train"] and data[1].val_data is None
    assert len(data[1]["train"]) == 3 and len(data[1]["test"]) == 1
