"""CIFAR-10, FS's ``data.type: CIFAR10@torchvision`` (also ``cifar10``): 32x32 RGB images,
10 classes, stored as uint8 ``[3, 32, 32]``. CIFAR has no writers (``has_writers`` False): the
shard tool splits it among clients with ``data.splitter`` ('lda' in FS's baseline).

Both layouts of the public release are read unchanged, looked for in ``<root>/`` (where
torchvision's download leaves them, so ``data.root: data/`` as in FS) and ``<root>/cifar10/``:

* ``cifar-10-batches-py/``: ``data_batch_1..5`` and ``test_batch``, each a Python pickle of a
  dict with ``data`` (uint8 [10000, 3072], CHW planes) and ``labels``. Pickle can run any code
  it names, so these are read by ``RestrictedUnpickler``, which admits only the numpy names an
  array needs; a file naming anything else (``os.system``...) is refused.
* ``cifar-10-batches-bin/``: ``data_batch_1..5.bin`` and ``test_batch.bin``, records of one label
  byte followed by 3072 pixel bytes.

Each input file is one ``WriterSamples`` (writer id = file name, split 'train'/'test').
"""
import io
import os
import pickle
from typing import Iterator, List, Tuple

import numpy as np

from federatedscope.core.data.dataset_spec import DatasetSpec, WriterSamples
from federatedscope.register import register_dataset_spec

NAME = "cifar10"
FS_NAME = "cifar10@torchvision"
SIDE = 32
NUM_CLASSES = 10
ROW = 3 * SIDE * SIDE
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
PY_DIR, BIN_DIR = "cifar-10-batches-py", "cifar-10-batches-bin"
# FS's baseline normalisation (fedavg_convnet2_on_cifar10.yaml)
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]

# Exactly what pickling a numpy array needs (module, name); numpy >= 2 writes numpy._core.
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, strings, numbers and numpy arrays; nothing else."""

    def __init__(self, file, source: str):
        # 'bytes': the release was pickled by Python 2 (its documented reading)
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"{self.source}: refuses to load {module}.{name}; a CIFAR-10 batch holds only a "
                f"dict of lists, strings and numpy arrays. Re-download cifar-10-python.tar.gz "
                f"and extract it unchanged")
        return super().find_class(module, name)


def restricted_load(data: bytes, source: str):
    return RestrictedUnpickler(io.BytesIO(data), source).load()


def _key(batch: dict, name: str):
    for k in (name.encode("ascii"), name):
        if k in batch:
            return batch[k]
    raise ValueError(f"has no {name!r} entry (keys: {sorted(map(str, batch))})")


def _check(x: np.ndarray, y: np.ndarray, path: str) -> Tuple[np.ndarray, np.ndarray]:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
        raise ValueError(f"{path}: labels must be in [0, {NUM_CLASSES}), found "
                         f"{int(y.min())}..{int(y.max())}; the file is damaged, re-download it")
    return x.reshape(-1, 3, SIDE, SIDE), y.astype(np.int64)


def read_py_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        batch = restricted_load(f.read(), path)
    try:
        if not isinstance(batch, dict):
            raise ValueError(f"holds a {type(batch).__name__}, not a dict")
        x = np.asarray(_key(batch, "data"))
        y = np.asarray(_key(batch, "labels"))
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != ROW or y.shape != (len(x),):
            raise ValueError(f"data must be uint8 [n, {ROW}] with n labels, got {x.dtype} "
                             f"{x.shape} and labels {y.shape}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers, got {y.dtype}")
    except ValueError as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch: {e}") from None
    return _check(x, y, path)


def read_bin_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % (ROW + 1):
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {ROW + 1}-byte "
                         f"CIFAR-10 records (1 label byte + {ROW} pixels); re-extract "
                         f"cifar-10-binary.tar.gz")
    rec = raw.reshape(-1, ROW + 1)
    return _check(rec[:, 1:].copy(), rec[:, 0].copy(), path)


def find_layout(root: str) -> Tuple[str, List[Tuple[str, str]]]:
    """('py'|'bin', [(path, split)]) of the first complete layout; FileNotFoundError naming every
    place looked at. A layout is complete when all six files are there."""
    looked = []
    for base in (root, os.path.join(root, NAME)):
        for kind, folder, ext in (("py", PY_DIR, ""), ("bin", BIN_DIR, ".bin")):
            d = os.path.join(base, folder)
            files = [(os.path.join(d, n + ext), "train") for n in TRAIN_FILES] + \
                    [(os.path.join(d, n + ext), "test") for n in TEST_FILES]
            missing = [p for p, _ in files if not os.path.isfile(p)]
            if not missing:
                return kind, files
            looked.append(d if len(missing) == len(files) else
                          f"{d} (incomplete: missing {', '.join(map(os.path.basename, missing))})")
    raise FileNotFoundError(
        f"no CIFAR-10 input under {root}; looked in: {'; '.join(looked)}. To fix it, extract "
        f"cifar-10-python.tar.gz or cifar-10-binary.tar.gz into {root}, or generate a sample "
        f"with `python scripts/tools/generate_cifar10_sample.py --out {root}`")


def list_cifar10_inputs(root: str) -> List[str]:
    return [p for p, _ in find_layout(root)[1]]


def iter_cifar10_blocks(root: str) -> Iterator[WriterSamples]:
    """One ``WriterSamples`` per input file (train files first), one file in memory at a time."""
    kind, files = find_layout(root)
    read = read_py_batch if kind == "py" else read_bin_batch
    for path, split in files:
        x, y = read(path)
        yield WriterSamples(os.path.basename(path), x, y, path, split)


def _spec(name: str) -> DatasetSpec:
    return DatasetSpec(
        name=name, sample_dtype="uint8", sample_shape=(3, SIDE, SIDE), num_classes=NUM_CLASSES,
        model_input=(3, SIDE, SIDE), iter_writers=iter_cifar10_blocks,
        list_inputs=list_cifar10_inputs, has_writers=False,
        default_transform=(["ToTensor"], ["Normalize", {"mean": MEAN, "std": STD}]))


CIFAR10 = _spec(NAME)
register_dataset_spec(NAME, CIFAR10)
register_dataset_spec(FS_NAME, _spec(FS_NAME))
