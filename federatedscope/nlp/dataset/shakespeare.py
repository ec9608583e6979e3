"""Shakespeare as LEAF ships it, FS's ``data.type: shakespeare``: one writer per play role,
``x`` an 80-character string, ``y`` the next character. Stored as int64 ``[80]`` indices into
LEAF's 80-symbol vocabulary, label int64 in [0, 80) (FS's ``word_to_indices``/``letter_to_vec``).

A character outside the vocabulary is an error naming file, writer and sample (FS would map it to
-1, which no embedding can look up). Where the JSON is looked for: ``cv/dataset/leaf_json``.
"""
from typing import Iterator, List

import numpy as np

from federatedscope.core.data.dataset_spec import DatasetSpec, WriterSamples
from federatedscope.cv.dataset.leaf_json import find_leaf_input, iter_leaf_users, list_leaf_inputs
from federatedscope.core.data.spec_data import registered_loader
from federatedscope.register import register_data, register_dataset_spec

NAME = "shakespeare"
SEQ_LEN = 80
# LEAF's vocabulary, in LEAF's order (index = position)
ALL_LETTERS = ("\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]"
               "abcdefghijklmnopqrstuvwxyz}")
NUM_LETTERS = len(ALL_LETTERS)  # 80

_LOOKUP = np.full(256, -1, dtype=np.int64)  # every LEAF symbol is ASCII
for _i, _c in enumerate(ALL_LETTERS):
    _LOOKUP[ord(_c)] = _i


def encode(text: str, where: str) -> np.ndarray:
    """Characters -> vocabulary indices; an unknown character names itself and its position."""
    # surrogatepass: a lone surrogate (JSON "\ud800") gets the named error below, not a bare
    # UnicodeEncodeError without file, writer or sample
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"),
                          dtype=np.uint32).astype(np.int64)
    idx = np.where(codes < 256, _LOOKUP[np.minimum(codes, 255)], -1)
    if (idx < 0).any():
        j = int(np.flatnonzero(idx < 0)[0])
        raise ValueError(f"{where}: character {text[j]!r} at position {j} is not in LEAF's "
                         f"{NUM_LETTERS}-symbol Shakespeare vocabulary; re-run LEAF's "
                         f"preprocessing")
    return idx


def _writer(xs: list, ys: list, where: str):
    x = np.empty((len(xs), SEQ_LEN), dtype=np.int64)
    y = np.empty((len(ys),), dtype=np.int64)
    for i, (s, t) in enumerate(zip(xs, ys)):
        at = f"{where}, sample {i}"
        if not isinstance(s, str) or len(s) != SEQ_LEN:
            size = len(s) if hasattr(s, "__len__") else "?"
            raise ValueError(f"{at}: x must be a string of {SEQ_LEN} characters, got "
                             f"{type(s).__name__} of length {size}")
        if not isinstance(t, str) or len(t) != 1:
            raise ValueError(f"{at}: y must be one character, got {t!r}")
        x[i] = encode(s, at)
        y[i] = encode(t, at + " (label)")[0]
    return x, y


def iter_shakespeare_writers(root: str) -> Iterator[WriterSamples]:
    """Every role of every LEAF file, one JSON file in memory at a time."""
    _, files = find_leaf_input(root, NAME)
    for path, split in files:
        for uid, xs, ys in iter_leaf_users(path):
            x, y = _writer(xs, ys, f"{path}, writer {uid}")
            yield WriterSamples(uid, x, y, path, split)


def list_shakespeare_inputs(root: str) -> List[str]:
    return list_leaf_inputs(root, NAME)


SHAKESPEARE = DatasetSpec(name=NAME, sample_dtype="int64", sample_shape=(SEQ_LEN,),
                          num_classes=NUM_LETTERS, model_input=(SEQ_LEN,),
                          iter_writers=iter_shakespeare_writers,
                          list_inputs=list_shakespeare_inputs, has_writers=True,
                          default_transform=())

register_dataset_spec(NAME, SHAKESPEARE)
# FS's path (standalone without shards, data_idx): one partition per role, the shard tool's rules
register_data(NAME, registered_loader([NAME], lambda _type: SHAKESPEARE))
