"""The shard format's vocabulary: version, split names, errors, the field checker, the fix text.

Everything here is shared by the records, the file readers, the verifier, the tool and the
loader, so each rule (what a split is called, how a token is hashed, which command re-creates a
shard, what a valid field looks like) is written once. The people who meet these errors are
operators looking at a log, so every failure names the file, the field and the command to run.
"""
import hashlib
import os
import posixpath
import time
from array import array
from typing import Any, Dict, Iterable, List, Optional

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
SPLIT_FILES = tuple(f"{s}.pt" for s in SPLITS)
# the names the manifest has for a sample dtype; x is stored as this dtype in the split files
SAMPLE_DTYPES = ("uint8", "int64", "float32")
_HEX = frozenset("0123456789abcdef")
_SPLIT_SET = frozenset(SPLITS)
_INT = {int}


class ShardError(ValueError):
    """A shard (or one of its files) is missing, unreadable or inconsistent; says the fix."""


class ManifestError(ShardError):
    """A manifest/meta/declaration field is malformed; the message names file, field and fix."""


def recreate_command(out: str, dataset: str = "", clients: Any = "N", flags: str = "",
                     root: str = "data") -> str:
    """The one "re-create it with" command line, for every error of the tool, loader and launcher.

    ``dataset`` empty means "whatever the shards were cut from" (a shard or manifest that could
    not be read does not say); ``flags`` is e.g. ``--resume`` or ``--overwrite``.
    """
    ds = dataset or "NAME"
    cmd = (f"python scripts/tools/prepare_shards.py --dataset {ds} --root {root} "
           f"--clients {clients} --out {out or '.'}")
    return f"{cmd} {flags}".rstrip()


def shard_fix(shard: str, flags: str = "--resume", dataset: str = "") -> str:
    """The fix for a damaged shard directory (its set is the directory above it)."""
    out = os.path.dirname(os.path.normpath(os.path.abspath(shard))) if shard else "."
    return recreate_command(out, dataset, flags=flags)


def manifest_fix(path: str, n: Any = "N", dataset: str = "") -> str:
    out = os.path.dirname(os.path.abspath(path)) or "."
    return recreate_command(out, dataset, n, "--overwrite")


def recreate_message(problem: str, shard: str, flags: str = "--resume",
                     dataset: str = "") -> str:
    """``problem`` plus the one "re-create it with" sentence, for errors about a shard."""
    return f"{problem}; re-create it with: {shard_fix(shard, flags, dataset)}"


def token_digest(token: str) -> bytes:
    """The one token hash: sha256 of the token's UTF-8 bytes.

    ``surrogatepass`` so that any Python string (a token file decoded with surrogateescape, or a
    value from the wire) hashes instead of raising; the manifest stores ``.hex()`` of this.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def is_sha(v: Any) -> bool:
    return type(v) is str and len(v) == 64 and _HEX.issuperset(v)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def sample_type_of(dtype: str, shape: Iterable[int]) -> str:
    """``uint8[28,28]``: the string meta.json, the manifest and a declaration compare."""
    return f"{dtype}[" + ",".join(str(int(d)) for d in shape) + "]"


class Checker:
    """Raises ManifestError naming ``source`` (a file) and the field, with ``fix`` appended."""

    def __init__(self, source: str, fix: str):
        self.source, self.fix = source, fix

    def fail(self, fld: str, problem: str) -> None:
        raise ManifestError(f"{self.source}: field '{fld}' {problem}; fix: {self.fix}")

    def obj(self, v: Any, fld: str) -> dict:
        if type(v) is not dict:
            self.fail(fld, f"must be a JSON object, got {type(v).__name__}")
        return v

    def keys(self, d: dict, fld: str, required: Iterable[str]) -> None:
        if isinstance(required, frozenset):
            if d.keys() >= required:
                return  # the common case, one C-level set comparison
            required = sorted(required)
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

    def strings(self, v: Any, fld: str) -> List[str]:
        # set(map(type, ...)) runs in C: 10k clients' writer lists stay cheap
        if type(v) is not list or not set(map(type, v)) <= {str}:
            self.fail(fld, "must be a list of strings")
        return v

    def sha(self, v: Any, fld: str) -> str:
        if not is_sha(v):
            self.fail(fld, f"must be 64 lower-case hex digits (a sha256), got {v!r}")
        return v

    def version(self, v: Any) -> None:
        if v != FORMAT_VERSION or type(v) is not int:
            self.fail("format_version", f"is {v!r}, but this version reads format {FORMAT_VERSION} "
                                        f"only (re-create the file with this version's tool)")

    def counts(self, v: Any, fld: str) -> Dict[str, int]:
        if type(v) is dict and v.keys() == _SPLIT_SET and set(map(type, v.values())) == _INT:
            if min(v.values()) >= 0:
                return v  # the common case in C; anything else is explained below
        self.obj(v, fld)
        if v.keys() != set(SPLITS):
            self.fail(fld, f"must have exactly the keys {list(SPLITS)}, got {sorted(v)}")
        for s in SPLITS:
            self.nonneg_int(v[s], f"{fld}.{s}")
        return v

    def hist(self, v: Any, fld: str, num_classes: Optional[int], total: int) -> List[int]:
        # set(map(type, ...)) runs in C: this keeps 10k x 62 bins well under the time budget.
        # array('Q') takes non-negative integers only: range check and sum in one C call
        try:
            if type(v) is not list or not set(map(type, v)) <= _INT:
                raise TypeError
            got = sum(array("Q", v))
        except (TypeError, OverflowError):
            self.fail(fld, "must be a list of non-negative integers")
        if num_classes is not None and len(v) != num_classes:
            self.fail(fld, f"has {len(v)} bins, expected num_classes={num_classes}")
        if got != total:
            self.fail(fld, f"sums to {got} but the sample count is {total}")
        return v

    def rel_path(self, v: Any, fld: str) -> str:
        if type(v) is str and v and v[0] not in "/\\" and ".." not in v and ":" not in v:
            return v  # plainly relative (what the tool writes); the rest is looked at closely
        self.string(v, fld)
        norm = posixpath.normpath(v.replace("\\", "/"))
        if not v or v.startswith(("/", "\\")) or v[1:2] == ":" or os.path.isabs(v):
            self.fail(fld, f"is {v!r}: it must be a path relative to the manifest's directory")
        if norm == ".." or norm.startswith("../"):
            self.fail(fld, f"is {v!r}, which escapes the manifest's directory ('..'); "
                           f"shards must live under the directory holding manifest.json")
        return v

    def sample_type(self, dtype: Any, shape: Any) -> str:
        if dtype not in SAMPLE_DTYPES:
            self.fail("sample_dtype", f"is {dtype!r}; supported: {list(SAMPLE_DTYPES)}")
        if type(shape) is not list or not shape or not all(type(s) is int and s > 0
                                                           for s in shape):
            self.fail("sample_shape", f"must be a list of positive integers, got {shape!r}")
        return sample_type_of(dtype, shape)

    def packed(self, v: Any, escape_ok: bool) -> Optional[Dict[str, Any]]:
        """--link: ``{"path", "bytes", "sha256"}`` of the packed file, or None."""
        if v is None:
            return None
        self.obj(v, "packed")
        self.keys(v, "packed", ("path", "bytes", "sha256"))
        if escape_ok:  # a shard's own meta points at '../packed/data.pt'
            if os.path.isabs(self.string(v["path"], "packed.path")):
                self.fail("packed.path", "must be relative to the shard directory")
        else:
            self.rel_path(v["path"], "packed.path")
        self.nonneg_int(v["bytes"], "packed.bytes")
        self.sha(v["sha256"], "packed.sha256")
        return v


# sha256 / copy granularity: 1 MB keeps memory flat at disk speed
CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            h.update(view[:k])
    return h.hexdigest()
