"""Checks of one parsed LEAF JSON file: nothing in it is silently dropped or coerced.

Each failure is a ValueError naming the file, the writer and the sample index (and the pixel),
because a quietly "fixed" sample (3.7 read as 3, ``true`` as 1, a 783-value image padded, a writer
missing from ``users`` dropped) would be wrong data nobody notices.
"""
from typing import List

import numpy as np

SIDE = 28          # FEMNIST's samples are SIDE x SIDE (femnist_spec reads these two)
NUM_CLASSES = 62  # 10 digits, 26 upper-, 26 lower-case letters


FIX = ("fix the file (re-run LEAF's preprocessing, or regenerate a sample with "
        "scripts/tools/generate_femnist_sample.py)")


def labels(ys: list, where: str) -> np.ndarray:
    """JSON integers in [0, 62) only: 3.7, "3" and true are errors, never rounded or converted."""
    if set(map(type, ys)) <= {int}:  # C-level type check; bool is its own type, so excluded
        # numpy holds a label beyond int64 as float64 or object: still compared exactly here
        y = np.array(ys)
        bad = np.flatnonzero((y < 0) | (y >= NUM_CLASSES))
        if not len(bad):
            return y.astype(np.int64)
        i = int(bad[0])
        raise ValueError("%s, sample %d: label %d is outside [0, %d); %s"
                         % (where, i, ys[i], NUM_CLASSES, FIX))
    i = next(i for i, v in enumerate(ys) if type(v) is not int)
    v = json_number(ys[i])
    raise ValueError("%s, sample %d: label %r is a JSON %s; labels must be JSON integers in "
                     "[0, %d) (nothing is rounded or converted); %s"
                     % (where, i, v, _json_type(v), NUM_CLASSES, FIX))


def json_number(v: object) -> object:
    """A parsed JSON value as the number it was: FEMNIST's parse hook turns each exact ``k/255``
    literal into the 1-byte ``bytes`` ``k`` (``leaf_femnist._PixelIntern``)."""
    return v[0] / 255 if type(v) is bytes else v


def _json_type(v: object) -> str:
    return {bool: "boolean", float: "number with a fraction", str: "string", type(None): "null",
            list: "array", dict: "object"}.get(type(v), type(v).__name__)


def images(xs: list, where: str) -> np.ndarray:
    """``[n, 784]`` float64; a ragged or non-numeric image names its sample index and pixel.

    Every pixel's type is checked: numpy would turn ``true`` into 1.0 silently. Only writers
    the fast pixel join refused come here (``leaf_femnist._pixels``), so this costs nothing on a
    valid file.
    """
    row = SIDE * SIDE
    for i, img in enumerate(xs):
        if type(img) is not list:
            raise ValueError("%s, sample %d: image is a JSON %s, not an array of %d numbers; %s"
                             % (where, i, _json_type(img), row, FIX))
        if len(img) != row:
            raise ValueError("%s, sample %d: image has %d values, expected %d (28x28); %s"
                             % (where, i, len(img), row, FIX))
        if not set(map(type, img)) <= {float, int}:
            j = next(j for j, v in enumerate(img) if type(v) not in (float, int))
            raise ValueError("%s, sample %d, pixel %d: %r is a JSON %s, not a number; %s"
                             % (where, i, j, img[j], _json_type(img[j]), FIX))
    return np.asarray(xs, dtype=np.float64)


def check_users(raw: dict, path: str) -> List[str]:
    """``users``, ``num_samples`` and ``user_data`` must agree; a mismatch is an error, since
    reading either one alone would silently drop writers or samples."""
    data = raw["user_data"]
    users = raw.get("users", list(data))
    if type(users) is not list or not set(map(type, users)) <= {str}:
        raise ValueError("%s: 'users' must be a list of writer id strings; %s" % (path, FIX))
    listed = set(users)
    if len(listed) != len(users):
        dup = next(u for i, u in enumerate(users) if u in users[:i])
        raise ValueError("%s: writer %s is listed twice in 'users'; %s" % (path, dup, FIX))
    for uid in users:
        if uid not in data:
            raise ValueError("%s: writer %s is in 'users' but not in 'user_data'; %s"
                             % (path, uid, FIX))
    extra = [u for u in data if u not in listed]
    if extra:
        n = len(data[extra[0]].get("y", [])) if isinstance(data[extra[0]], dict) else "?"
        raise ValueError("%s: writer %s (%s samples) is in 'user_data' but not in 'users' (%d "
                         "such writer(s)); it would be dropped silently: add it to 'users' and "
                         "'num_samples', or remove it from 'user_data'"
                         % (path, extra[0], n, len(extra)))
    counts = raw.get("num_samples")
    if counts is not None:
        if type(counts) is not list or len(counts) != len(users):
            raise ValueError("%s: 'num_samples' must list one count per writer in 'users' (%d), "
                             "got %s; %s" % (path, len(users), _short(counts), FIX))
        for uid, n in zip(users, counts):
            y = data[uid].get("y") if isinstance(data[uid], dict) else None
            if isinstance(y, list) and (type(n) is not int or n != len(y)):
                raise ValueError("%s, writer %s: 'num_samples' says %r but user_data holds %d "
                                 "labels; %s" % (path, uid, json_number(n), len(y), FIX))
    return users


def _short(v: object) -> str:
    text = repr([json_number(e) for e in v] if type(v) is list else json_number(v))
    return text if len(text) <= 60 else text[:57] + "..."
