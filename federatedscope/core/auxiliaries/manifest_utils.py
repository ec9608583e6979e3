"""The one schema of ``meta.json`` (per shard) and ``manifest.json`` (per partition).

Nothing else in the tree parses or writes these files. Every read is validated and every problem
is a ``ManifestError`` whose message names the file, the field and the fix, because the people who
meet these errors are operators looking at a log, not at this code. Validation is deliberately
cheap (type checks done with C builtins, no per-entry objects beyond a slotted dataclass) so a
server loads a 10,000-client manifest in well under 0.5 s. Spec: ``doc/distributed_data.md``.
"""
import hashlib
import json
import os
import posixpath
import time
from array import array
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional

from federatedscope.core.auxiliaries.utils import atomic_write_bytes

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


@dataclass
class ShardDeclaration:
    """What a client claims about its shard when it joins (travels over the network)."""
    client_id: int
    num_samples: Dict[str, int]
    fingerprint: str
    label_hist: List[int]
    sample_type: str = "uint8[28,28]"

    def to_dict(self) -> Dict[str, Any]:
        return {"client_id": self.client_id, "num_samples": dict(self.num_samples),
                "fingerprint": self.fingerprint, "label_hist": list(self.label_hist),
                "sample_type": self.sample_type}

    @classmethod
    def from_dict(cls, d: Any) -> "ShardDeclaration":
        # Comes from the network: strict types, no coercion, bounded sizes.
        c = _Checker("join declaration", "the client's shard (re-run the client after fixing it)")
        c.obj(d, "declaration")
        c.keys(d, "declaration", ("client_id", "num_samples", "fingerprint", "label_hist",
                                  "sample_type"))
        cid = c.pos_int(d["client_id"], "client_id")
        counts = c.counts(d["num_samples"], "num_samples")
        fp = c.sha(d["fingerprint"], "fingerprint")
        hist = c.hist(d["label_hist"], "label_hist", None, counts["train"])
        st = c.string(d["sample_type"], "sample_type")
        if len(st) > 64 or len(hist) > 100_000:
            c.fail("sample_type/label_hist", "is implausibly large")
        return cls(cid, counts, fp, hist, st)


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


# ----------------------------------------------------------------------------- meta.json
def _meta_fix(path: str) -> str:
    out = os.path.dirname(os.path.dirname(os.path.abspath(path))) or "."
    return PREPARE_CMD.format(n="N", out=out) + " --resume  (re-creates damaged shards)"


def meta_to_dict(m: ShardMeta) -> Dict[str, Any]:
    return {"format_version": m.format_version, "dataset": m.dataset, "client_id": m.client_id,
            "writer_ids": list(m.writer_ids), "num_samples": dict(m.num_samples),
            "label_hist": {s: list(m.label_hist[s]) for s in SPLITS},
            "num_classes": m.num_classes, "sample_shape": list(m.sample_shape),
            "sample_dtype": m.sample_dtype,
            "files": {k: {"bytes": e.bytes, "sha256": e.sha256}
                      for k, e in sorted(m.files.items())},
            "packed": m.packed, "plan_id": m.plan_id, "fingerprint": m.fingerprint,
            "created": m.created}


def meta_from_dict(d: Any, source: str, fix: str = "") -> ShardMeta:
    c = _Checker(source, fix or _meta_fix(source))
    c.obj(d, "meta")
    c.keys(d, "", ("format_version", "dataset", "client_id", "writer_ids", "num_samples",
                   "label_hist", "num_classes", "sample_shape", "sample_dtype", "files",
                   "fingerprint"))
    c.version(d["format_version"])
    counts = c.counts(d["num_samples"], "num_samples")
    ncls = c.pos_int(d["num_classes"], "num_classes")
    c.obj(d["label_hist"], "label_hist")
    hists = {s: c.hist(d["label_hist"].get(s), f"label_hist.{s}", ncls, counts[s]) for s in SPLITS}
    wids = d["writer_ids"]
    if type(wids) is not list or not set(map(type, wids)) <= {str}:
        c.fail("writer_ids", "must be a list of strings")
    shape = d["sample_shape"]
    if type(shape) is not list or not shape or not all(type(s) is int and s > 0 for s in shape):
        c.fail("sample_shape", f"must be a list of positive integers, got {shape!r}")
    if d["sample_dtype"] != "uint8":
        c.fail("sample_dtype", f"is {d['sample_dtype']!r}; only 'uint8' samples are supported")
    files = _files_from(c, d["files"])
    packed = c.packed(d.get("packed"), escape_ok=True)  # relative to the shard dir: '../packed/'
    fp = c.sha(d["fingerprint"], "fingerprint")
    if fp != compute_fingerprint(files, packed):
        c.fail("fingerprint", "does not match the sha256s listed under 'files' "
                              "(meta.json was edited)")
    created, plan_id = d.get("created", ""), d.get("plan_id", "")
    return ShardMeta(client_id=c.pos_int(d["client_id"], "client_id"),
                     dataset=c.string(d["dataset"], "dataset"), writer_ids=wids,
                     num_samples=counts, label_hist=hists, files=files, num_classes=ncls,
                     sample_shape=shape, sample_dtype="uint8", fingerprint=fp,
                     created=created if type(created) is str else "", packed=packed,
                     plan_id=plan_id if type(plan_id) is str else "")


def _files_from(c: _Checker, files: Any) -> Dict[str, FileEntry]:
    c.obj(files, "files")
    out = {}
    for name, e in files.items():
        if name not in {f"{s}.pt" for s in SPLITS}:
            c.fail(f"files.{name}", f"is not one of {[s + '.pt' for s in SPLITS]}")
        c.obj(e, f"files.{name}")
        c.keys(e, f"files.{name}", ("bytes", "sha256"))
        out[name] = FileEntry(c.nonneg_int(e["bytes"], f"files.{name}.bytes"),
                              c.sha(e["sha256"], f"files.{name}.sha256"))
    return out


def read_meta(path: str, fix: str = "") -> ShardMeta:
    """Read and validate ``meta.json`` (``path`` may be the file or its shard directory)."""
    if os.path.isdir(path):
        path = os.path.join(path, "meta.json")
    return meta_from_dict(_load_json(path, fix or _meta_fix(path)), path, fix)


def _one_key_per_line(d: Dict[str, Any]) -> bytes:
    # readable (one field a line) yet small: 3 x 62-bin histograms stay on their own lines
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                      for k, v in d.items())
    return ("{\n" + body + "\n}\n").encode("utf-8")


def write_meta(path: str, meta: ShardMeta) -> None:
    if os.path.isdir(path):
        path = os.path.join(path, "meta.json")
    atomic_write_bytes(path, _one_key_per_line(meta_to_dict(meta)))


# ----------------------------------------------------------------------------- manifest.json
def _manifest_fix(path: str, n: Any = "N") -> str:
    out = os.path.dirname(os.path.abspath(path)) or "."
    return PREPARE_CMD.format(n=n, out=out) + " --overwrite"


def manifest_to_dict(m: Manifest) -> Dict[str, Any]:
    return {"format_version": m.format_version, "dataset": m.dataset, "strategy": m.strategy,
            "seed": m.seed, "splits": list(m.splits), "source": m.source,
            "num_classes": m.num_classes, "sample_type": m.sample_type, "packed": m.packed,
            "created": m.created, "total_clients": m.total_clients,
            "clients": [_entry_dict(e) for _, e in sorted(m.clients.items())]}


def _entry_dict(e: ManifestEntry) -> Dict[str, Any]:
    d = {"client_id": e.client_id, "shard_path": e.shard_path, "num_samples": dict(e.num_samples),
         "fingerprint": e.fingerprint, "label_hist": list(e.label_hist)}
    if e.token_hash:
        d["token_hash"] = e.token_hash
    return d


_ENTRY_KEYS = frozenset(("client_id", "shard_path", "num_samples", "fingerprint", "label_hist"))
_SPLIT_KEYS = frozenset(SPLITS)
_INT = {int}


def _entry_ok(e: Any, ncls: int) -> bool:
    """Fast path for one well-formed entry (C-level checks only); the slow path explains failures.

    ``array('Q', xs)`` accepts only non-negative integers, so it type- and range-checks a
    histogram in one C call; ``bytes.fromhex`` does the same for a sha256.
    """
    try:
        cid, path, counts, fp, hist = (e["client_id"], e["shard_path"], e["num_samples"],
                                       e["fingerprint"], e["label_hist"])
        return (type(cid) is int and cid > 0 and type(path) is str and path != ""
                and ".." not in path and path[0] not in "/\\" and ":" not in path
                and type(counts) is dict and counts.keys() == _SPLIT_KEYS
                and type(fp) is str and len(fp) == 64 and len(bytes.fromhex(fp)) == 32
                and fp.lower() == fp and type(hist) is list and len(hist) == ncls
                and sum(array("Q", counts.values())) >= 0
                and sum(array("Q", hist)) == counts["train"]
                and bool not in set(map(type, counts.values()))
                and ("token_hash" not in e or _is_sha(e["token_hash"])))
    except (TypeError, KeyError, ValueError, OverflowError):
        return False


def _entry_slow(c: _Checker, e: Any, where: str, ncls: int) -> ManifestEntry:
    c.obj(e, where)
    c.keys(e, where, ("client_id", "shard_path", "num_samples", "fingerprint", "label_hist"))
    cid = c.pos_int(e["client_id"], f"{where}.client_id")
    counts = c.counts(e["num_samples"], f"{where}.num_samples")
    return ManifestEntry(
        cid, c.rel_path(e["shard_path"], f"{where}.shard_path"), counts,
        c.sha(e["fingerprint"], f"{where}.fingerprint"),
        c.hist(e["label_hist"], f"{where}.label_hist", ncls, counts["train"]),
        c.sha(e["token_hash"], f"{where}.token_hash") if "token_hash" in e else "")


def _entries(c: _Checker, clients: Any, ncls: int) -> Dict[int, ManifestEntry]:
    if type(clients) is not list:
        c.fail("clients", "must be a list of client entries")
    out: Dict[int, ManifestEntry] = {}
    for i, e in enumerate(clients):
        if _entry_ok(e, ncls):
            ent = ManifestEntry(e["client_id"], e["shard_path"], e["num_samples"],
                                e["fingerprint"], e["label_hist"], e.get("token_hash", ""))
        else:
            ent = _entry_slow(c, e, f"clients[{i}]", ncls)
        if ent.client_id in out:
            c.fail(f"clients[{i}].client_id", f"duplicates client id {ent.client_id}; "
                                             f"every client id must be unique")
        out[ent.client_id] = ent
    return out


def read_manifest(path: str) -> Manifest:
    d = _load_json(path, _manifest_fix(path))
    n = d.get("total_clients", "N") if type(d) is dict else "N"
    c = _Checker(path, _manifest_fix(path, n if type(n) is int else "N"))
    c.obj(d, "manifest")
    c.keys(d, "", ("format_version", "dataset", "strategy", "seed", "splits", "source",
                   "total_clients", "clients"))
    c.version(d["format_version"])
    ncls = c.pos_int(d.get("num_classes", 62), "num_classes")
    splits = d["splits"]
    if (type(splits) is not list or len(splits) != 3
            or not all(type(s) in (int, float) and s >= 0 for s in splits)):
        c.fail("splits", f"must be 3 non-negative fractions, got {splits!r}")
    if type(d["seed"]) is not int:
        c.fail("seed", f"must be an integer, got {d['seed']!r}")
    c.obj(d["source"], "source")
    clients = _entries(c, d["clients"], ncls)
    if c.nonneg_int(d["total_clients"], "total_clients") != len(clients):
        c.fail("total_clients", f"is {d['total_clients']} but 'clients' lists "
                                f"{len(clients)} entries")
    packed = c.packed(d.get("packed"), escape_ok=False)
    return Manifest(dataset=c.string(d["dataset"], "dataset"),
                    strategy=c.string(d["strategy"], "strategy"), seed=d["seed"],
                    splits=[float(s) for s in splits], source=d["source"], clients=clients,
                    num_classes=ncls, sample_type=c.string(d.get("sample_type", "uint8[28,28]"),
                                                           "sample_type"),
                    packed=packed, created=str(d.get("created", "")))


def load_manifest(path: str) -> Dict[int, ManifestEntry]:
    """client id -> entry, validated. The server's view of who may join and with what."""
    return read_manifest(path).clients


def write_manifest(path: str, manifest: Manifest) -> None:
    """Header fields indented, one compact line per client: readable and fast to parse."""
    d = manifest_to_dict(manifest)
    clients = d.pop("clients")
    head = _one_key_per_line(d).decode("utf-8")[:-3]
    lines = ",\n  ".join(json.dumps(e, separators=(",", ":")) for e in clients)
    text = f'{head},\n "clients": [\n  {lines}\n ]\n}}\n' if clients else \
        f'{head},\n "clients": []\n}}\n'
    atomic_write_bytes(path, text.encode("utf-8"))


def shard_dir(manifest_path: str, entry: ManifestEntry) -> str:
    """Absolute-or-relative directory of a manifest entry, resolved against the manifest's dir."""
    return os.path.normpath(os.path.join(os.path.dirname(manifest_path), entry.shard_path))


# ----------------------------------------------------------------------------- declarations
def check_declaration(entry: Optional[ManifestEntry], decl: ShardDeclaration,
                      sample_type: Optional[str] = None) -> List[str]:
    """Why ``decl`` does not match the manifest ``entry``; an empty list means it matches."""
    if entry is None:
        return [f"client id {decl.client_id} is not listed in the manifest"]
    reasons: List[str] = []
    if entry.client_id != decl.client_id:
        reasons.append(f"client id {decl.client_id} != manifest entry {entry.client_id}")
    for s in SPLITS:
        got, want = decl.num_samples.get(s), entry.num_samples.get(s)
        if got != want:
            reasons.append(f"{s} count {got} != manifest {want}")
    if decl.fingerprint != entry.fingerprint:
        reasons.append(f"fingerprint {decl.fingerprint[:12]}... != manifest "
                       f"{entry.fingerprint[:12]}... (the shard differs from the one prepared)")
    if list(decl.label_hist) != list(entry.label_hist):
        a, b = list(decl.label_hist), list(entry.label_hist)
        diff = next((f"class {i}: {x} vs {y}" for i, (x, y) in enumerate(zip(a, b)) if x != y),
                    f"{len(a)} bins vs {len(b)}")
        reasons.append(f"train label_hist differs from the manifest ({diff})")
    if sample_type is not None and decl.sample_type != sample_type:
        reasons.append(f"sample type {decl.sample_type!r} != manifest {sample_type!r}")
    return reasons
