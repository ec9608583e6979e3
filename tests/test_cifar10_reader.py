"""CIFAR-10 readers: both public layouts, hand-made records, and the restricted unpickler."""
import os
import pickle

import numpy as np
import pytest

from dataset_tools import tool
from federatedscope import register
from federatedscope.cv.dataset import cifar10
from federatedscope.cv.dataset.cifar10 import (CIFAR10, find_layout, read_bin_batch,
                                               read_py_batch, restricted_load)

gen = tool("generate_cifar10_sample")
NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    gen.write_sample(str(root), per_file=20, seed=5)
    return str(root)


def test_both_layouts_read_the_same_images(cifar_root):
    assert register.dataset_spec_dict["cifar10"] is CIFAR10
    assert register.dataset_spec_dict["cifar10@torchvision"].sample_type == "uint8[3,32,32]"
    assert CIFAR10.has_writers is False and CIFAR10.num_classes == 10
    blocks = list(CIFAR10.iter_writers(cifar_root))
    assert find_layout(cifar_root)[0] == "py"  # the python layout wins when both are present
    assert [b.writer_id for b in blocks] == NAMES
    assert [b.split for b in blocks] == ["train"] * 5 + ["test"]
    for b in blocks:
        assert b.x.shape == (20, 3, 32, 32) and b.x.dtype == np.uint8 and b.y.dtype == np.int64
        bin_path = os.path.join(cifar_root, "cifar-10-batches-bin", b.writer_id + ".bin")
        x, y = read_bin_batch(bin_path)
        assert np.array_equal(x, b.x) and np.array_equal(y, b.y)
    labels = np.concatenate([b.y for b in blocks])
    assert labels.min() >= 0 and labels.max() <= 9 and len(np.unique(labels)) == 10


def _record_image():
    """One image whose red plane is all 1, green all 2, blue all 3; pixel (row 0, col 1) of red
    is 200 (CIFAR stores the 1024 red values row-major, then green, then blue)."""
    row = np.repeat(np.array([1, 2, 3], np.uint8), 1024)
    row[1] = 200
    return row


def test_binary_records_by_hand(tmp_path):
    d = tmp_path / "cifar10" / "cifar-10-batches-bin"  # also found under <root>/cifar10/
    os.makedirs(d)
    rec = np.concatenate([[7], _record_image(), [2], _record_image()]).astype(np.uint8)
    for n in NAMES:
        rec.tofile(d / (n + ".bin"))
    blocks = list(CIFAR10.iter_writers(str(tmp_path)))
    x, y = blocks[0].x, blocks[0].y
    assert y.tolist() == [7, 2]
    assert x[0, 0, 0, 1] == 200 and x[0, 0, 0, 0] == 1 and x[1, 1].min() == x[1, 1].max() == 2
    assert x[0, 2, 31, 31] == 3
    (d / "test_batch.bin").write_bytes(rec.tobytes()[:-5])
    with pytest.raises(ValueError, match=r"test_batch\.bin: 6141 bytes .*3073-byte"):
        list(CIFAR10.iter_writers(str(tmp_path)))


@pytest.mark.parametrize("dump", [lambda b: gen.py2_pickle(b),          # as Python 2 wrote it
                                  lambda b: pickle.dumps({k.decode(): v for k, v in b.items()},
                                                         protocol=4)])  # a Python 3 re-save
def test_python_batches_by_hand(tmp_path, dump):
    batch = {b"batch_label": b"x", b"labels": [9, 0],
             b"data": np.stack([_record_image(), _record_image()]),
             b"filenames": [b"a.png", b"b.png"]}
    (tmp_path / "b").write_bytes(dump(batch))
    x, y = read_py_batch(str(tmp_path / "b"))
    assert y.tolist() == [9, 0] and y.dtype == np.int64
    assert x.shape == (2, 3, 32, 32) and x[1, 0, 0, 1] == 200 and x[1, 2, 5, 5] == 3


def test_bad_labels_and_incomplete_layouts_name_the_file(tmp_path):
    bad = {b"labels": [10], b"data": _record_image()[None]}
    (tmp_path / "b").write_bytes(gen.py2_pickle(bad))
    with pytest.raises(ValueError, match=r"b: labels must be in \[0, 10\)"):
        read_py_batch(str(tmp_path / "b"))
    (tmp_path / "b").write_bytes(gen.py2_pickle({b"labels": [1]}))
    with pytest.raises(ValueError, match=r"not a CIFAR-10 python batch: has no 'data'"):
        read_py_batch(str(tmp_path / "b"))
    gen.write_sample(str(tmp_path), per_file=2, seed=0, layouts=("py",))
    os.remove(tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(FileNotFoundError, match=r"incomplete: missing test_batch.*"
                                                r"generate_cifar10_sample"):
        CIFAR10.list_inputs(str(tmp_path))


# A pickle that calls os.system('touch <marker>') when loaded by an unrestricted unpickler.
def _evil(module: bytes, name: bytes, arg: str) -> bytes:
    return b"c" + module + b"\n" + name + b"\n(S'" + arg.encode() + b"'\ntR."


@pytest.mark.parametrize("module,name", [(b"os", b"system"), (b"posix", b"system"),
                                         (b"builtins", b"eval"), (b"numpy", b"load"),
                                         (b"subprocess", b"call")])
def test_restricted_unpickler_refuses_anything_but_numpy_arrays(tmp_path, module, name):
    marker = tmp_path / "pwned"
    payload = _evil(module, name, f"touch {marker}")
    with pytest.raises(pickle.UnpicklingError, match=r"evil_batch: refuses to load "
                                                     + module.decode() + r"\." + name.decode()):
        restricted_load(payload, "evil_batch")
    assert not marker.exists()
    # the same refusal through the reader, naming the file
    d = tmp_path / "cifar-10-batches-py"
    os.makedirs(d, exist_ok=True)
    (d / "data_batch_1").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="data_batch_1: refuses"):
        read_py_batch(str(d / "data_batch_1"))
    assert not marker.exists()


def test_the_allow_list_is_only_numpy_array_reconstruction():
    assert cifar10._ALLOWED == {("numpy.core.multiarray", "_reconstruct"),
                                ("numpy._core.multiarray", "_reconstruct"),
                                ("numpy", "ndarray"), ("numpy", "dtype")}


def test_one_batch_file_in_memory_at_a_time(cifar_root, monkeypatch):
    opened = []
    real = cifar10.read_py_batch
    monkeypatch.setattr(cifar10, "read_py_batch", lambda p: opened.append(p) or real(p))
    for i, block in enumerate(CIFAR10.iter_writers(cifar_root)):
        assert len(opened) == i + 1 and os.path.basename(opened[-1]) == block.writer_id
