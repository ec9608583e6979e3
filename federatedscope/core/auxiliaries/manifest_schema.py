"""The records of ``meta.json`` (per shard) and ``manifest.json`` (per partition), and the checker.

Typed dataclasses for every record plus ``_Checker``, which turns a bad field into a
``ManifestError`` naming the file, the field and the fix (the people who meet these errors are
operators looking at a log, not at this code). Reading/writing lives in ``manifest_utils``; the
join-time comparison in ``shard_declaration``. Spec: ``doc/distributed_data.md``.
"""
import hashlib
import json
import os
import posixpath
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
PREPARE_CMD = ("python scripts/tools/prepare_femnist_shards.py --root data --clients {n} "
               "--out {out}")
_HEX = frozenset("0123456789abcdef")


class ManifestError(ValueError):
    """A manifest/meta/declaration problem; the message names file, field and fix."""


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str


@dataclass(slots=True)
class ShardMeta:
    """``client_<k>/meta.json``: what the shard holds, and the hashes that prove it."""
    client_id: int
    dataset: str
    writer_ids: List[str]
    num_samples: Dict[str, int]
    label_hist: Dict[str, List[int]]
    files: Dict[str, FileEntry]
    num_classes: int
    sample_shape: List[int]
    sample_dtype: str = "uint8"
    fingerprint: str = ""
    created: str = ""
    # --link mode: the shared packed file, path relative to the shard directory
    packed: Optional[Dict[str, Any]] = None
    # identifies the partition run that made the shard (``--resume`` keeps only matching shards)
    plan_id: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def sample_type(self) -> str:
        return f"{self.sample_dtype}[{','.join(str(d) for d in self.sample_shape)}]"


@dataclass(slots=True)
class ManifestEntry:
    client_id: int
    shard_path: str            # relative to the manifest's directory
    num_samples: Dict[str, int]
    fingerprint: str
    label_hist: List[int]      # train split
    token_hash: str = ""       # optional sha256 hex of the client's secret token (never the token)
    # the manifest's one sample type, copied onto each entry when read, so that a declaration
    # check given only the entry is complete (not stored per entry in the file)
    sample_type: str = "uint8[28,28]"


@dataclass
class Manifest:
    dataset: str
    strategy: str
    seed: int
    splits: List[float]
    source: Dict[str, Any]
    clients: Dict[int, ManifestEntry]
    num_classes: int = 62
    sample_type: str = "uint8[28,28]"
    packed: Optional[Dict[str, Any]] = None
    created: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def total_clients(self) -> int:
        return len(self.clients)


# ----------------------------------------------------------------------------- validation
class _Checker:
    """Raises ManifestError naming ``source`` (a file) and the field, with ``fix`` appended."""

    def __init__(self, source: str, fix: str):
        self.source, self.fix = source, fix

    def fail(self, fld: str, problem: str) -> None:
        raise ManifestError(f"{self.source}: field '{fld}' {problem}; fix: {self.fix}")

    def obj(self, v: Any, fld: str) -> None:
        if type(v) is not dict:
            self.fail(fld, f"must be a JSON object, got {type(v).__name__}")

    def keys(self, d: dict, fld: str, required: Iterable[str]) -> None:
        missing = [k for k in required if k not in d]
        if missing:
            self.fail(f"{fld}.{missing[0]}" if fld else missing[0], "is missing")

    def pos_int(self, v: Any, fld: str) -> int:
        if type(v) is not int or v < 1:
            self.fail(fld, f"must be a positive integer, got {v!r}")
        return v

    def nonneg_int(self, v: Any, fld: str) -> int:
        if type(v) is not int or v < 0:
            self.fail(fld, f"must be a non-negative integer, got {v!r}")
        return v

    def string(self, v: Any, fld: str) -> str:
        if type(v) is not str:
            self.fail(fld, f"must be a string, got {type(v).__name__}")
        return v

    def sha(self, v: Any, fld: str) -> str:
        if not _is_sha(v):
            self.fail(fld, f"must be 64 lower-case hex digits (a sha256), got {v!r}")
        return v

    def version(self, v: Any) -> None:
        if v != FORMAT_VERSION or type(v) is not int:
            self.fail("format_version", f"is {v!r}, but this version reads format {FORMAT_VERSION} "
                                        f"only (re-create the file with this version's tool)")

    def counts(self, v: Any, fld: str) -> Dict[str, int]:
        self.obj(v, fld)
        if set(v) != set(SPLITS):
            self.fail(fld, f"must have exactly the keys {list(SPLITS)}, got {sorted(v)}")
        for s in SPLITS:
            self.nonneg_int(v[s], f"{fld}.{s}")
        return v

    def hist(self, v: Any, fld: str, num_classes: Optional[int], total: int) -> List[int]:
        # set(map(type, ...)) runs in C: this keeps 10k x 62 bins well under the time budget.
        if type(v) is not list or not set(map(type, v)) <= {int} or (v and min(v) < 0):
            self.fail(fld, "must be a list of non-negative integers")
        if num_classes is not None and len(v) != num_classes:
            self.fail(fld, f"has {len(v)} bins, expected num_classes={num_classes}")
        if sum(v) != total:
            self.fail(fld, f"sums to {sum(v)} but the sample count is {total}")
        return v

    def rel_path(self, v: Any, fld: str) -> str:
        self.string(v, fld)
        norm = posixpath.normpath(v.replace("\\", "/"))
        if not v or v.startswith(("/", "\\")) or v[1:2] == ":" or os.path.isabs(v):
            self.fail(fld, f"is {v!r}: it must be a path relative to the manifest's directory")
        if norm == ".." or norm.startswith("../"):
            self.fail(fld, f"is {v!r}, which escapes the manifest's directory ('..'); "
                           f"shards must live under the directory holding manifest.json")
        return v


    def packed(self, v: Any, escape_ok: bool) -> Optional[Dict[str, Any]]:
        """--link: ``{"path", "bytes", "sha256"}`` of the packed file, or None."""
        if v is None:
            return None
        self.obj(v, "packed")
        self.keys(v, "packed", ("path", "bytes", "sha256"))
        if escape_ok:
            if os.path.isabs(self.string(v["path"], "packed.path")):
                self.fail("packed.path", "must be relative to the shard directory")
        else:
            self.rel_path(v["path"], "packed.path")
        self.nonneg_int(v["bytes"], "packed.bytes")
        self.sha(v["sha256"], "packed.sha256")
        return v


def _is_sha(v: Any) -> bool:
    return type(v) is str and len(v) == 64 and _HEX.issuperset(v)


def _load_json(path: str, fix: str) -> Any:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ManifestError(f"{path}: file not found; fix: {fix}") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e.strerror}); fix: {fix}") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: malformed JSON ({e}); fix: {fix}") from None


def compute_fingerprint(files: Mapping[str, Any],
                        packed: Optional[Mapping[str, Any]] = None) -> str:
    """sha256 over the sorted (file name, sha256) pairs; a --link shard adds its packed file."""
    pairs = [(name, e.sha256 if isinstance(e, FileEntry) else e) for name, e in files.items()]
    if packed:
        pairs.append(("packed:" + packed["path"], packed["sha256"]))
    h = hashlib.sha256()
    for name, sha in sorted(pairs):
        h.update(f"{name}\0{sha}\n".encode("utf-8"))
    return h.hexdigest()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
