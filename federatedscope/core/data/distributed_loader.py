"""A client's own shard: ``verify_shard`` (the one shard check) and ``DistributedShardLoader``.

The loader opens only its ``shard_path`` (and, for a ``--link`` shard, the packed file its meta
names). ``verify_shard`` checks the files (size and, with ``verify_checksum``, sha256); it is also
what the shard tool runs on a shard ``--resume`` keeps and on every staged shard, and what the
launcher's pre-flight runs, so they can never disagree about a good shard. The loader then checks
``meta.json`` against the tensors (counts, dtype, shape, label range and histogram), so a client
never trains on, or declares, data other than what was prepared. There is no fallback: a missing or
inconsistent shard is a ``ShardError`` that says how to make it. In-memory mode yields
``TensorSplit``s; ``streaming=True`` yields ``StreamingSplit``s that ``os.pread`` bounded windows,
so RSS stays flat however large the shard is (Unix only: see doc/architecture.md "Portability").

Nothing here knows a dataset: shapes, class counts and ``sample_type`` come from ``meta.json``.
"""
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from federatedscope.core.data import shard_format as sf
from federatedscope.core.data.datasets import TensorSplit
from federatedscope.core.data.dataset_spec import get_spec
from federatedscope.core.data.shard_format import split_file
from federatedscope.core.data.shard_format.checks import (SPLITS, ManifestError, ShardError,
                                                          recreate_message, sha256_file, shard_fix)
from federatedscope.core.data.shard_format.records import (FileEntry, ManifestEntry,
                                                           ShardDeclaration, ShardMeta,
                                                           check_declaration, read_meta)
from federatedscope.core.data.streaming import StreamingSplit
from federatedscope.core.data.transforms import build_transform, split_transforms

logger = logging.getLogger("federatedscope")
__all__ = ["DistributedShardLoader", "ShardError", "file_problem", "shard_files", "verify_shard"]


def shard_files(shard: str, meta: ShardMeta) -> List[Tuple[str, FileEntry]]:
    """(path, recorded entry) of every file the shard's meta lists, the packed file last."""
    out = [(os.path.join(shard, n), e) for n, e in sorted(meta.files.items())]
    if meta.packed:
        out.append((os.path.normpath(os.path.join(shard, meta.packed["path"])),
                    FileEntry(meta.packed["bytes"], meta.packed["sha256"])))
    return out


def file_problem(path: str, want: FileEntry, check_sha: bool,
                 sha_memo: Optional[Dict[str, str]] = None) -> str:
    """'' when ``path`` exists with the recorded size (and sha256); else what is wrong.
    ``sha_memo`` (path -> sha256) lets one caller hash a file shared by shards (--link) once."""
    if not os.path.isfile(path):
        return f"missing {path} (meta.json lists it)"
    size = os.path.getsize(path)
    if size != want.bytes:
        return f"{path}: {size} bytes but meta.json says {want.bytes} (truncated or replaced file)"
    if check_sha and _sha(path, sha_memo) != want.sha256:
        return f"{path}: sha256 differs from meta.json (the file was modified after it was prepared)"
    return ""


def _sha(path: str, memo: Optional[Dict[str, str]]) -> str:
    if memo is None:
        return sha256_file(path)
    if path not in memo:
        memo[path] = sha256_file(path)
    return memo[path]


def verify_shard(shard: str, entry: Optional[ManifestEntry] = None, check_sha: bool = True,
                 client_id: Optional[int] = None, missing_splits_ok: bool = False,
                 meta: Optional[ShardMeta] = None,
                 sha_memo: Optional[Dict[str, str]] = None) -> ShardMeta:
    """Read (unless given) and check one shard directory; return its meta.

    Checks: meta.json is valid; it belongs to ``client_id`` (when given); every file it lists
    exists with its recorded size and, with ``check_sha``, sha256 (split files may be absent
    with ``missing_splits_ok``: the loader's ``strict_check False``); the packed file of a
    --link shard likewise; with ``entry``, the shard matches that manifest entry in full.
    Raises ``ShardError`` listing every problem, ending with the command that re-creates it.
    """
    if not os.path.isdir(shard):
        raise ShardError(f"shard directory {shard} does not exist (cwd {os.getcwd()}); make it "
                         f"with: {shard_fix(shard, '', entry.dataset if entry else '')}")
    fix = shard_fix(shard, "--overwrite", entry.dataset if entry else "")
    meta_path = os.path.join(shard, "meta.json")
    if meta is None:
        try:
            meta = read_meta(meta_path, fix=fix)
        except ManifestError as e:
            raise ShardError(str(e)) from None
    if client_id is not None and meta.client_id != client_id:
        raise ShardError(f"{meta_path} belongs to client {meta.client_id}, but this process is "
                         f"client {client_id}; point distributed_data.shard_path at "
                         f"client_{client_id}'s shard or fix distribute.client_id")
    problems = [f"{meta_path} does not match the manifest: {r}"
                for r in (check_declaration(entry, ShardDeclaration.of_meta(meta))
                          if entry is not None else [])]
    splits = {os.path.join(shard, f"{s}.pt") for s in SPLITS}
    for path, want in shard_files(shard, meta):
        if missing_splits_ok and path in splits and not os.path.exists(path):
            continue
        problems.append(file_problem(path, want, check_sha, sha_memo))
    problems = [p for p in problems if p]
    if problems:
        raise ShardError(recreate_message("; ".join(problems), shard, dataset=meta.dataset))
    return meta


class DistributedShardLoader:
    """Loads, checks and exposes one client's shard (spec: doc/distributed_data.md).

    Attributes after loading: ``meta`` (ShardMeta), ``num_samples`` {split: n}, ``datasets``
    {split: BatchSource}, ``fingerprint``, ``label_hist`` (train), ``sample_type`` (from
    meta.json, e.g. ``uint8[28,28]``), ``last_modified`` (newest mtime of the shard's files,
    float epoch seconds; the client reports it in its join as ``shard_last_modified``).
    ``client_id`` None skips the check that meta.json belongs to this client.
    """

    def __init__(self, shard_path: str, client_id: Optional[int] = None, streaming: bool = False,
                 strict_check: bool = True, verify_checksum: bool = True,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 transforms: Optional[Dict[str, Callable[[torch.Tensor], torch.Tensor]]] = None):
        self.shard_path = os.fspath(shard_path) if shard_path else ""
        self.strict, self.verify = bool(strict_check), bool(verify_checksum)
        self.streaming = bool(streaming)
        self.client_id: Optional[int] = int(client_id) if client_id and client_id > 0 else None
        self.transform = transform if transform is not None else build_transform([])
        # per split (data.val_transform / data.test_transform), else ``transform``
        self.split_transforms = dict(transforms or {})
        if not self.shard_path:
            raise ShardError("distributed_data.shard_path is empty; set it to this client's shard "
                             "directory (e.g. data/<dataset>/shards/client_1); make shards with: "
                             + sf.recreate_command("data/<dataset>/shards"))
        self._meta_path = os.path.join(self.shard_path, "meta.json")
        self.meta_dataset = ""  # the dataset named in errors, once meta.json was read
        self.reload()

    @classmethod
    def from_config(cls, cfg: Any, client_id: Optional[int] = None,
                    shard_path: Optional[str] = None) -> "DistributedShardLoader":
        """The builder's call: ``distributed_data.*`` and the split transforms (``data.transform``,
        ``data.val_transform``, ``data.test_transform``) from ``cfg``;
        ``client_id`` defaults to ``distribute.client_id``, ``shard_path`` (a standalone
        simulation passes each manifest entry's directory) to ``distributed_data.shard_path``."""
        dd = cfg.distributed_data
        cid = client_id if client_id is not None else int(cfg.distribute.client_id)
        return cls(dd.shard_path if shard_path is None else shard_path, client_id=cid,
                   streaming=dd.streaming, strict_check=dd.strict_check,
                   verify_checksum=dd.verify_checksum,
                   transforms=split_transforms(cfg.data, get_spec(cfg.data.type)))

    # -------------------------------------------------------------- public API
    @property
    def fingerprint(self) -> str:
        return self.meta.fingerprint

    @property
    def label_hist(self) -> List[int]:
        """Train label histogram as loaded (what the server's manifest records)."""
        return list(self._hist["train"])

    def declaration(self) -> sf.ShardDeclaration:
        return sf.ShardDeclaration(self.meta.client_id, dict(self.num_samples), self.fingerprint,
                                   self.label_hist, self.meta.sample_type, self.meta.dataset)

    def has_changed(self) -> bool:
        """Cheap: compare (inode, mtime, size); only if they moved, read meta.json and compare
        fingerprints (and, with verify_checksum, re-hash files whose meta did not change)."""
        if self._stats(self.meta, self._packed) == self._snapshot:
            return False
        try:
            meta = sf.read_meta(self._meta_path)
        except sf.ManifestError:
            return True  # half-replaced or damaged: reload() says what is wrong
        if meta.fingerprint != self.meta.fingerprint:
            return True
        if self.verify and any(os.path.isfile(p) and file_problem(p, e, True)
                               for p, e in shard_files(self.shard_path, meta)):
            return True  # same meta, other bytes: reload() reports the tamper
        self._snapshot = self._stats(self.meta, self._packed)
        return False

    def acknowledge_disk_state(self) -> None:
        """After a refresh that failed its checks: remember what is on disk now, so
        ``has_changed`` stays False (no error every round) until the shard changes again."""
        self._snapshot = self._stats(self.meta, self._packed)

    def reload(self) -> None:
        """(Re)read the shard; on ShardError the previously loaded state is kept unchanged."""
        meta = self._read_meta()
        packed = self._packed_path(meta)
        loaded = {s: self._load_split(meta, packed, s) for s in sf.SPLITS}
        old = getattr(self, "datasets", {})
        self.meta, self._packed = meta, packed
        self.sample_type = meta.sample_type
        self.datasets = {s: v[0] for s, v in loaded.items()}
        for src in old.values():  # the previous streaming splits hold descriptors of old files
            if isinstance(src, StreamingSplit):
                src.close()
        self.num_samples = {s: len(v[0]) for s, v in loaded.items()}
        self._hist = {s: v[1] for s, v in loaded.items()}
        self._snapshot = self._stats(meta, packed)
        self.last_modified = max(m for _, m, _ in self._snapshot.values())
        for s in sf.SPLITS:
            if loaded[s][2]:
                logger.info("Client %s loaded %d %s samples from %s", meta.client_id,
                            self.num_samples[s], s, loaded[s][2])

    @property
    def train_data(self):
        return self.datasets["train"]

    # -------------------------------------------------------------- internals
    def _error(self, msg: str, flags: str = "--resume") -> ShardError:
        return ShardError(sf.recreate_message(msg, self.shard_path, flags, self.meta_dataset))

    def _read_meta(self) -> sf.ShardMeta:
        """meta.json, and every file it lists checked (size; sha256 with verify_checksum)."""
        if os.path.isdir(self.shard_path) and not os.path.isfile(self._meta_path):
            raise self._error(f"{self._meta_path} is missing, so {self.shard_path} is not a "
                              f"complete shard (interrupted run?)")
        try:
            meta = verify_shard(self.shard_path, check_sha=self.verify,
                                   client_id=self.client_id, missing_splits_ok=True)
        except ShardError as e:
            hint = ("" if not self.verify or "sha256" not in str(e) else
                    " (distributed_data.verify_checksum False skips the sha256 check)")
            raise ShardError(f"{e}{hint}") from None
        self.meta_dataset = meta.dataset
        return meta

    def _packed_path(self, meta: sf.ShardMeta) -> Optional[str]:
        if not meta.packed:
            return None
        return os.path.normpath(os.path.join(self.shard_path, meta.packed["path"]))

    def _stats(self, meta: sf.ShardMeta,
               packed: Optional[str]) -> Dict[str, Tuple[int, float, int]]:
        out = {}
        paths = [self._meta_path] + [os.path.join(self.shard_path, n) for n in sorted(meta.files)]
        for p in paths + ([packed] if packed else []):
            try:
                st = os.stat(p)
                out[p] = (st.st_ino, st.st_mtime, st.st_size)
            except FileNotFoundError:
                out[p] = (0, 0.0, -1)
        return out

    def _load_split(self, meta: sf.ShardMeta, packed: Optional[str], split: str):
        """(dataset, label histogram, source for the log line; '' when missing)."""
        path = os.path.join(self.shard_path, f"{split}.pt")
        if not os.path.isfile(path):
            return self._missing(meta, split, path)
        try:
            if packed is not None:
                ds, hist = self._link_split(meta, packed, path, split)
            elif self.streaming:
                ds, hist = self._stream_split(meta, path, split)
            else:
                x, y = split_file.read_split(path)
                self._check_shape(meta, path, tuple(x.shape[1:]), str(x.dtype).replace("torch.", ""))
                ds, hist = TensorSplit(x, y, self._transform(split)), self._bincount(meta, path, y)
        except ShardError as e:
            raise self._error(str(e)) from None
        if len(ds) != meta.num_samples[split]:
            raise self._error(f"{path}: holds {len(ds)} samples but meta.json says "
                              f"num_samples.{split}={meta.num_samples[split]}")
        if hist != meta.label_hist[split]:
            raise self._error(f"{path}: label histogram differs from meta.json label_hist.{split}")
        src = path + (f" (rows of {packed})" if packed else "")
        return ds, hist, src + (" (streaming)" if self.streaming else "")

    def _transform(self, split: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.split_transforms.get(split, self.transform)

    def _missing(self, meta: sf.ShardMeta, split: str, path: str):
        msg = f"{path} is missing (meta.json lists it), so the shard is incomplete"
        if self.strict:
            raise self._error(msg, "--resume  (or set distributed_data.strict_check False to "
                                   "run without this split)")
        logger.warning("%s; strict_check is off, so the %s split is empty", msg, split)
        empty = TensorSplit(torch.zeros((0, *meta.sample_shape), dtype=getattr(torch, meta.sample_dtype)),
                            torch.zeros(0, dtype=torch.int64), self._transform(split))
        return empty, [0] * meta.num_classes, ""

    @staticmethod
    def _check_shape(meta: sf.ShardMeta, path: str, shape: Tuple[int, ...], dtype: str) -> None:
        if sf.sample_type_of(dtype, shape) != meta.sample_type:
            raise ShardError(f"{path}: samples are {sf.sample_type_of(dtype, shape)} but "
                             f"meta.json says {meta.sample_type}")

    @staticmethod
    def _bincount(meta: sf.ShardMeta, path: str, y: torch.Tensor) -> List[int]:
        k = meta.num_classes
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            bad = y[(y < 0) | (y >= k)]
            raise ShardError(f"{path}: {len(bad)} label(s) outside [0, {k}) "
                             f"(first: {int(bad[0])})")
        return torch.bincount(y, minlength=k).tolist()   # k zeros for an empty split

    def _stream_split(self, meta: sf.ShardMeta, path: str,
                      split: str) -> Tuple[StreamingSplit, List[int]]:
        lay = split_file.split_layout(path)
        self._check_shape(meta, path, lay.sample_shape, lay.dtype)
        hist = np.zeros(meta.num_classes, np.int64)

        def add(chunk: np.ndarray) -> None:  # labels in 1 MB windows: memory stays flat
            hist[:] += self._bincount(meta, path, torch.from_numpy(chunk.copy()))
        fd = os.open(path, os.O_RDONLY)
        try:
            split_file.scan_labels(fd, lay, add)
        finally:
            os.close(fd)
        return StreamingSplit(lay, None, self._transform(split)), hist.tolist()

    def _link_split(self, meta: sf.ShardMeta, packed: str, path: str, split: str):
        rows = split_file.read_index(path).numpy()
        lay = split_file.split_layout(packed)
        self._check_shape(meta, packed, lay.sample_shape, lay.dtype)
        if len(rows) and (rows.min() < 0 or rows.max() >= lay.n):
            raise ShardError(f"{path}: row index out of range for packed file {packed} "
                             f"({lay.n} rows)")
        fd = os.open(packed, os.O_RDONLY)
        try:  # labels only: 8 bytes a row, read in file order
            order = np.argsort(rows, kind="stable")
            ys = np.empty(len(rows), np.int64)
            ys[order] = split_file.read_labels(fd, lay, rows[order])
        finally:
            os.close(fd)
        y = torch.from_numpy(ys)
        hist = self._bincount(meta, path, y)
        if self.streaming:
            return StreamingSplit(lay, rows, self._transform(split)), hist
        x, _ = split_file.read_split(packed, mmap=True)
        xs = x[torch.from_numpy(rows)].clone()  # copy this client's rows, then drop the mapping
        del x
        return TensorSplit(xs, y, self._transform(split)), hist
