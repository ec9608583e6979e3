"""LEAF FEMNIST reading: raw JSON -> uint8 writer samples -> FS-style per-writer tasks.

Data contract (doc/architecture.md): a sample is uint8 ``[28, 28]`` holding ``round(v * 255)`` of
the LEAF float ``v``. LEAF values are exactly ``k/255``, so this is lossless; anything else is an
error naming the file and writer (silently binarising or rounding odd data would hide a broken
download or a different preprocessing).
"""
import glob
import hashlib
import json
import logging
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from federatedscope.core.auxiliaries.utils import atomic_torch_save
from federatedscope.core.data.dataset_spec import WriterSamples
from federatedscope.core.data.shard_format.checks import SPLITS
from federatedscope.core.data.sharding_plan import natural_key, subsample_writers
from federatedscope.core.data.spec_data import gather_writers, split_writer
from federatedscope.cv.dataset.leaf_checks import FIX as _FIX
from federatedscope.cv.dataset.leaf_checks import (NUM_CLASSES, SIDE, check_users, images,
                                                   json_number, labels)

logger = logging.getLogger("federatedscope")

K255_TOL = 1e-6
_CACHE_VERSION = 1
_FS_TASKS = "femnist/processed/task_<k>/ (FS's layout)"

Split = Tuple[torch.Tensor, torch.Tensor]


def _generate_hint(raw_dir: str) -> str:
    return ("generate a sample with `python scripts/tools/generate_femnist_sample.py --out %s "
            "--writers 60 --seed 0`, or drop real LEAF FEMNIST JSON files (all_data_*.json, or "
            "LEAF's train/ and test/ folders) there" % raw_dir)


def _json_in(folder: str) -> List[str]:
    return sorted(glob.glob(os.path.join(folder, "*.json")))


def _leaf_tree(raw_dir: str) -> Optional[Tuple[List[str], List[str]]]:
    """LEAF's own output (``train/`` and ``test/`` folders of JSON), or None."""
    train, test = _json_in(os.path.join(raw_dir, "train")), _json_in(os.path.join(raw_dir, "test"))
    if train and test:
        return train, test
    return None


def _layout(raw_dir: str) -> List[Tuple[str, Optional[str]]]:
    """(path, split) of every LEAF file: a LEAF train/test tree, else ``*.json``, else FS's own
    download layout ``all_data/*.json``."""
    tree = _leaf_tree(raw_dir)
    if tree is not None:
        stray = _json_in(raw_dir)
        if stray:
            logger.warning("%s has train/ and test/ folders; ignoring %d top-level JSON file(s)",
                           raw_dir, len(stray))
        return [(p, "train") for p in tree[0]] + [(p, "test") for p in tree[1]]
    files = _json_in(raw_dir) or _json_in(os.path.join(raw_dir, "all_data"))
    return [(p, None) for p in files]


def list_leaf_files(raw_dir: str) -> List[str]:
    """Sorted JSON paths: ``train/*.json`` then ``test/*.json`` for a LEAF tree, else ``*.json``
    (or ``all_data/*.json``, where FS keeps them)."""
    return [p for p, _ in _layout(raw_dir)]


def leaf_dirs(root: str) -> List[str]:
    """Where LEAF JSON is looked for, in order: FS's ``femnist/raw`` and LEAF's own output tree
    ``femnist/data`` (``all_data/`` or ``train/`` + ``test/``, as LEAF's preprocess.sh leaves it)."""
    return [os.path.join(root, "femnist", "raw"), os.path.join(root, "femnist", "data")]


def places_looked(root: str) -> List[str]:
    """Every pattern ``find_leaf_dir`` tries (relative to ``root``), for a no-input error."""
    out = []
    for d in leaf_dirs(root):
        d = os.path.relpath(d, root)
        out += [f"{d}/*.json", f"{d}/train/*.json + {d}/test/*.json", f"{d}/all_data/*.json"]
    return out


def no_input_message(root: str, extra: Sequence[str] = ()) -> str:
    return ("no FEMNIST input under %s; looked in: %s. To fix it, %s"
            % (root, ", ".join(places_looked(root) + list(extra)),
               _generate_hint(leaf_dirs(root)[0])))


def empty_input_message(src_dir: str, files: Sequence[str]) -> str:
    return ("the input is empty: the %d LEAF file(s) in %s list no writers with samples "
            "('users' is empty or every writer has 0 samples); %s"
            % (len(files), src_dir, _generate_hint(src_dir)))


def find_leaf_dir(root: str) -> Tuple[str, List[str]]:
    """(directory, files) of the first place under ``root`` that holds LEAF JSON; ('', [])."""
    for d in leaf_dirs(root):
        files = list_leaf_files(d)      # [] for a folder that does not exist
        if files:
            return d, files
    return "", []


def floats_to_uint8(values: np.ndarray, where: str) -> np.ndarray:
    """Exact ``k/255`` floats -> uint8 ``k``; anything else raises ValueError naming ``where``
    (and, for ``[n, 784]`` input, the sample index and pixel of the first bad value)."""
    v = np.asarray(values, dtype=np.float64)
    k = np.multiply(v, 255.0, out=np.empty_like(v))  # out=: stays an array for 0-d input
    np.rint(k, out=k)
    # the check below, in place: one temporary instead of seven (this runs on every pixel)
    d = np.divide(k, 255.0, out=np.empty_like(v))
    np.subtract(v, d, out=d)
    np.abs(d, out=d)
    ok = d <= K255_TOL  # False for NaN
    ok &= k >= 0
    ok &= k <= 255
    if not ok.all():
        bad = ~ok
        flat = int(np.flatnonzero(bad)[0])    # flatnonzero: the index in the flat order
        first = v.flat[flat]
        at = (", sample %d pixel %d" % divmod(flat, v.shape[1])) if v.ndim == 2 else ""
        raise ValueError(
            "%s%s: %d pixel value(s) are not multiples of 1/255 in [0, 1] (first: %r); FEMNIST "
            "pixels must be exact k/255 grey values and are never binarised"
            % (where, at, int(bad.sum()), float(first)))
    return k.astype(np.uint8)


class _PixelIntern(dict):
    """json ``parse_float`` hook: one object per distinct literal, and an exact ``k/255`` literal
    (FEMNIST's every pixel) becomes ``k`` as a 1-byte ``bytes``.

    A LEAF file has ~15M pixel literals but only ~256 distinct ones, so each is converted and
    checked once here, not once per pixel, and a parsed image row is already its uint8 row:
    ``b"".join(row)`` builds it in C (measured 1.7x as fast as packing 784 floats and checking
    them in numpy). CPython keeps one object per 1-byte ``bytes``, so the parsed file costs what
    interned floats cost. Any other literal stays a float, for the checked path to name.
    """

    def __missing__(self, key: str) -> Union[bytes, float]:
        v = float(key)
        try:  # the one k/255 rule (floats_to_uint8), once per distinct literal
            value = floats_to_uint8(np.asarray(v), key).tobytes()
        except ValueError:
            value = v
        self[key] = value
        return value


def _joined(xs: list) -> Optional[np.ndarray]:
    """Parsed image rows (``_PixelIntern`` literals) as uint8 ``[n, 784]``, or None when a row
    or pixel is not what a valid file holds.

    The join takes nothing but bytes, so a JSON integer (``0``, ``1``), ``true``, a string, a
    non-k/255 number or a nested array is refused; a ragged row is caught by its length (rows
    of 783 and 785 values would join to the right total).
    """
    try:
        if all(len(row) == SIDE * SIDE for row in xs):
            flat = bytearray().join(map(b"".join, xs))  # writable: torch takes it as is
            return np.frombuffer(flat, np.uint8).reshape(len(xs), SIDE * SIDE)
    except TypeError:
        pass
    return None


def _pixels(xs: Union[list, np.ndarray], where: str) -> np.ndarray:
    """A writer's images as uint8 ``[n, 784]``: packed already by the parser
    (``_pack_writer``), joined here, or, for rows the join refuses, through the checked path,
    which reads the pixels back as numbers and names the first bad sample and pixel."""
    if isinstance(xs, np.ndarray):
        return xs
    packed = _joined(xs)
    if packed is not None:
        return packed
    numbers = [[json_number(v) for v in row] if type(row) is list else row for row in xs]
    return floats_to_uint8(images(numbers, where), where)


def _pack_writer(obj: dict) -> dict:
    """json ``object_hook``: a writer's entry (an object with "x" and "y") has its image rows
    packed into uint8 the moment the parser closes it. A parsed row otherwise holds an 8-byte
    pointer per pixel until the whole file is parsed; packed, a file's peak is its bytes plus
    1 byte per pixel (the parsed file's pointers were most of the shard tool's peak). Rows the
    join refuses stay as parsed, for ``_pixels``' checked path to name."""
    xs = obj.get("x")
    if type(xs) is list and "y" in obj:
        packed = _joined(xs)
        if packed is not None:
            obj["x"] = packed
    return obj


def _load_json(path: str, data: Optional[bytes] = None, object_hook=None) -> dict:
    """``path`` parsed with the pixel-interning ``parse_float`` hook (and ``object_hook``)."""
    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    try:
        return json.loads(data, parse_float=_PixelIntern().__getitem__, object_hook=object_hook)
    except ValueError as e:
        raise ValueError("%s: not valid JSON (%s)" % (path, e)) from None


def _writers_of_file(path: str, split: Optional[str]) -> Iterator[WriterSamples]:
    raw = _load_json(path, object_hook=_pack_writer)
    if not isinstance(raw, dict) or not isinstance(raw.get("user_data"), dict):
        raise ValueError("%s: not a LEAF file (needs a 'user_data' object)" % path)
    skipped = []
    for uid in check_users(raw, path):
        where = "%s, writer %s" % (path, uid)
        entry = raw["user_data"][uid]
        if not isinstance(entry, dict) or not isinstance(entry.get("x"), (list, np.ndarray)) \
                or not isinstance(entry.get("y"), list):
            raise ValueError("%s: needs an object with arrays 'x' and 'y'; %s" % (where, _FIX))
        n = len(entry["y"])
        if len(entry["x"]) != n:
            raise ValueError("%s: %d images but %d labels; %s" % (where, len(entry["x"]), n, _FIX))
        if n == 0:  # documented: a writer with no samples is skipped (it can train nothing)
            skipped.append(uid)
            continue
        y = labels(entry["y"], where)
        x = _pixels(entry["x"], where)
        yield WriterSamples(str(uid), x.reshape(n, SIDE, SIDE), y, path, split)
        entry.clear()  # drop the parsed lists early
    if skipped:
        logger.warning("%s: skipped %d writer(s) with 0 samples (%s)", path, len(skipped),
                       ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))


def leaf_pieces(root: str) -> List[Tuple[str, Optional[str]]]:
    """The LEAF files under ``root`` as (path, split) pieces ``read_leaf_piece`` reads one at a
    time (in this order they yield ``iter_writers(root)``'s writers); [] without LEAF files."""
    src, files = find_leaf_dir(root)
    return _layout(src) if files else []


def read_leaf_piece(piece: Tuple[str, Optional[str]]) -> Iterator[WriterSamples]:
    return _writers_of_file(piece[0], piece[1])


def iter_leaf_writers(raw_dir: str) -> Iterator[WriterSamples]:
    """Yield every writer of every LEAF file under ``raw_dir``, one JSON file in memory at a time.

    A LEAF tree (``train/``, ``test/``) yields each writer twice, with split 'train' and 'test'.
    """
    for path, split in _layout(raw_dir):
        yield from _writers_of_file(path, split)


# ------------------------------------------------------------------------------------ tasks
def _check_splits(splits: Sequence[float]) -> Tuple[float, float, float]:
    s = tuple(float(v) for v in splits)
    if len(s) != 3 or min(s) < 0 or abs(sum(s) - 1.0) > 1e-6:
        raise ValueError("data.splits must be three non-negative fractions summing to 1 "
                         "(train, val, test), got %r" % (list(splits),))
    return s  # type: ignore[return-value]


def _cache_key(raw_dir: str, files: List[str], splits: Tuple[float, float, float],
               subsample: float, seed: int) -> str:
    listing = []
    for p in files:
        st = os.stat(p)
        listing.append([os.path.relpath(p, raw_dir), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"v": _CACHE_VERSION, "files": listing, "splits": list(splits),
                       "subsample": float(subsample), "seed": int(seed)}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def _valid_cached(obj: object) -> bool:
    if not isinstance(obj, dict) or obj.get("version") != _CACHE_VERSION:
        return False
    tasks = obj.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        return False
    for t in tasks:
        if not isinstance(t, dict) or set(t) != set(SPLITS):
            return False
        for x, y in t.values():
            if x.dtype != torch.uint8 or y.dtype != torch.int64 or x.shape[1:] != (SIDE, SIDE) \
                    or x.shape[0] != y.shape[0]:
                return False
    return True


def load_femnist_tasks(root: str, splits: Sequence[float], subsample: float,
                       seed: int) -> List[Dict[str, Split]]:
    """FS semantics: one task per writer (sorted ids), ``subsample`` fraction of writers, each
    writer shuffled and split by ``splits``; all deterministic in ``seed``.

    Reads ``<root>/femnist/raw`` and caches the result in ``<root>/femnist/processed/<hash>.pt``
    (hash of file list/sizes/mtimes and the arguments); a corrupt cache is rebuilt.
    """
    split_t = _check_splits(splits)
    if not 0.0 < float(subsample) <= 1.0:
        raise ValueError("data.subsample must be in (0, 1], got %r" % (subsample,))
    raw_dir, files = find_leaf_dir(root)
    if not files:
        raise FileNotFoundError(no_input_message(root))
    cache = os.path.join(root, "femnist", "processed",
                         _cache_key(raw_dir, files, split_t, subsample, seed) + ".pt")
    if os.path.exists(cache):
        try:
            obj = torch.load(cache, weights_only=True)
            if _valid_cached(obj):
                return obj["tasks"]
            logger.warning("FEMNIST cache %s has an unexpected layout; rebuilding it", cache)
        except Exception as e:  # a torn or foreign file must not block training
            logger.warning("FEMNIST cache %s is unreadable (%s); rebuilding it", cache, e)

    by_writer = gather_writers(iter_leaf_writers(raw_dir), empty_input_message(raw_dir, files))
    writer_ids = sorted(by_writer)
    # the shard tool's own subset rule, so both paths use the same writers for (subsample, seed)
    chosen = subsample_writers(writer_ids, float(subsample), seed, "sequential")
    tasks = [split_writer(by_writer[w], split_t, seed, w) for w in chosen]
    atomic_torch_save(cache, {"version": _CACHE_VERSION,
                              "writers": chosen, "tasks": tasks})
    logger.info("FEMNIST: %d of %d writers as tasks, cached in %s", len(tasks), len(writer_ids),
                cache)
    return tasks


def read_fs_processed_task(task_dir: str) -> Dict[str, Split]:
    """Read FS's processed ``<task_dir>/{train,val,test}.pt`` ((data float [n,784], targets)).

    ``train.pt`` and ``test.pt`` are required; FS omits ``val.pt`` when val_frac is 0, and then
    'val' is empty.
    """
    out: Dict[str, Split] = {}
    for name in SPLITS:
        path = os.path.join(task_dir, name + ".pt")
        if not os.path.exists(path):
            if name == "val":
                out[name] = (torch.zeros((0, SIDE, SIDE), dtype=torch.uint8),
                             torch.zeros((0,), dtype=torch.int64))
                continue
            raise FileNotFoundError("FS processed task file %s is missing" % path)
        try:
            obj = torch.load(path, weights_only=True)
        except Exception as e:  # torn, foreign, or carrying code: never unpickled unrestricted
            raise ValueError("%s: not a tensor file that loads with weights_only=True (%s); "
                             "re-create it with FS's FEMNIST preprocessing" % (path, e)) from None
        if not isinstance(obj, (tuple, list)) or len(obj) != 2:
            raise ValueError("%s: expected a (data, targets) tuple" % path)
        data, targets = torch.as_tensor(obj[0]), torch.as_tensor(obj[1])
        if data.dim() == 0 or data.numel() != data.shape[0] * SIDE * SIDE \
                or targets.numel() != data.shape[0]:
            raise ValueError("%s: data must be [n, 784] with n targets, got %s and %s"
                             % (path, tuple(data.shape), tuple(targets.shape)))
        n = data.shape[0]
        x = floats_to_uint8(data.double().numpy(), path).reshape(n, SIDE, SIDE)
        y = targets.reshape(-1).long()
        if n and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
            raise ValueError("%s: labels must be in [0, %d)" % (path, NUM_CLASSES))
        out[name] = (torch.from_numpy(x), y)
    return out


# ------------------------------------------------------------------ the DatasetSpec's reader
def _fs_tasks(root: str) -> List[str]:
    proc = os.path.join(root, "femnist", "processed")
    tasks = [d for d in glob.glob(os.path.join(proc, "task_*")) if os.path.isdir(d)]
    return sorted(tasks, key=natural_key)


def list_inputs(root: str) -> List[str]:
    """What the reader opens under ``root``: LEAF JSON files (see ``find_leaf_dir``), else FS's
    processed ``task_<k>`` folders; neither is an error listing every place looked."""
    files = find_leaf_dir(root)[1] or _fs_tasks(root)
    if not files:
        raise FileNotFoundError(no_input_message(root, [_FS_TASKS]))
    return files


def iter_writers(root: str) -> Iterator[WriterSamples]:
    """Every writer under ``root``, one input in memory at a time: LEAF writers (split 'train'/
    'test' for a LEAF tree, None otherwise), or FS's processed tasks (one writer per task, its
    own train/val/test split)."""
    src, files = find_leaf_dir(root)
    if files:
        any_writer = False
        for ws in iter_leaf_writers(src):
            any_writer = True
            yield ws
        if not any_writer:
            raise ValueError(empty_input_message(src, files))
        return
    for d in list_inputs(root):
        for split, (x, y) in read_fs_processed_task(d).items():
            yield WriterSamples(os.path.basename(d), x.numpy(), y.numpy(), d, split)
