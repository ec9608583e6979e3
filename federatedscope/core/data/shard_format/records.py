"""The typed records of the shard format, each with its one ``to_dict`` / ``from_dict``, the one
reader of ``meta.json`` and ``manifest.json``, and the one declaration-vs-manifest comparison.

``from_dict`` is the only validation path of a record: the file readers below, the server (a join
declaration off the wire) and the tool all go through it, so "valid" means one thing. Every read is
JSON; every problem is a ``ManifestError`` naming the file, the field and the fix. Checks use
C-level builtins where it matters (a 10,000-client manifest is read in well under half a second).
Field-by-field spec: ``README.md`` next to this file.
"""
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from federatedscope.core.data.shard_format.checks import (FORMAT_VERSION, SPLIT_FILES, SPLITS,
                                                          Checker, ManifestError, manifest_fix,
                                                          sample_type_of, shard_fix)


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str

    def to_dict(self) -> Dict[str, Any]:
        return {"bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Any, c: Checker, where: str) -> "FileEntry":
        c.obj(d, where)
        c.keys(d, where, ("bytes", "sha256"))
        return cls(c.nonneg_int(d["bytes"], f"{where}.bytes"), c.sha(d["sha256"], f"{where}.sha256"))


def compute_fingerprint(files: Mapping[str, FileEntry],
                        packed: Optional[Mapping[str, Any]] = None) -> str:
    """sha256 over the sorted (file name, sha256) pairs; a --link shard adds its packed file."""
    pairs = [(name, e.sha256) for name, e in files.items()]
    if packed:
        pairs.append(("packed:" + packed["path"], packed["sha256"]))
    h = hashlib.sha256()
    for name, sha in sorted(pairs):
        h.update(f"{name}\0{sha}\n".encode("utf-8"))
    return h.hexdigest()


@dataclass
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
        return sample_type_of(self.sample_dtype, self.sample_shape)

    def to_dict(self) -> Dict[str, Any]:
        return {"format_version": self.format_version, "dataset": self.dataset,
                "client_id": self.client_id, "writer_ids": list(self.writer_ids),
                "num_samples": dict(self.num_samples),
                "label_hist": {s: list(self.label_hist[s]) for s in SPLITS},
                "num_classes": self.num_classes, "sample_shape": list(self.sample_shape),
                "sample_dtype": self.sample_dtype,
                "files": {k: e.to_dict() for k, e in sorted(self.files.items())},
                "packed": self.packed, "plan_id": self.plan_id, "fingerprint": self.fingerprint,
                "created": self.created}

    @classmethod
    def from_dict(cls, d: Any, c: Checker) -> "ShardMeta":
        c.obj(d, "meta")
        c.keys(d, "", ("format_version", "dataset", "client_id", "writer_ids", "num_samples",
                       "label_hist", "num_classes", "sample_shape", "sample_dtype", "files",
                       "fingerprint"))
        c.version(d["format_version"])
        counts = c.counts(d["num_samples"], "num_samples")
        ncls = c.pos_int(d["num_classes"], "num_classes")
        c.obj(d["label_hist"], "label_hist")
        hists = {s: c.hist(d["label_hist"].get(s), f"label_hist.{s}", ncls, counts[s])
                 for s in SPLITS}
        c.sample_type(d["sample_dtype"], d["sample_shape"])
        files = {}
        for name, e in c.obj(d["files"], "files").items():
            if name not in SPLIT_FILES:
                c.fail(f"files.{name}", f"is not one of {list(SPLIT_FILES)}")
            files[name] = FileEntry.from_dict(e, c, f"files.{name}")
        packed = c.packed(d.get("packed"), escape_ok=True)
        fp = c.sha(d["fingerprint"], "fingerprint")
        if fp != compute_fingerprint(files, packed):
            c.fail("fingerprint", "does not match the sha256s listed under 'files' "
                                  "(meta.json was edited)")
        created, plan_id = d.get("created", ""), d.get("plan_id", "")
        return cls(client_id=c.pos_int(d["client_id"], "client_id"),
                   dataset=c.string(d["dataset"], "dataset"),
                   writer_ids=c.strings(d["writer_ids"], "writer_ids"), num_samples=counts,
                   label_hist=hists, files=files, num_classes=ncls,
                   sample_shape=d["sample_shape"], sample_dtype=d["sample_dtype"],
                   fingerprint=fp, created=created if type(created) is str else "",
                   packed=packed, plan_id=plan_id if type(plan_id) is str else "")


_ENTRY_KEYS = frozenset(("client_id", "shard_path", "num_samples", "fingerprint", "label_hist"))


@dataclass
class ManifestEntry:
    client_id: int
    shard_path: str            # relative to the manifest's directory
    num_samples: Dict[str, int]
    fingerprint: str
    label_hist: List[int]      # train split
    token_hash: str = ""       # optional sha256 hex of the client's secret token (never the token)
    # the manifest's sample type and dataset, copied onto each entry when read (not stored per
    # entry in the file), so that a declaration check given only the entry is complete
    sample_type: str = ""
    dataset: str = ""

    def to_dict(self, writer_ids: Optional[List[str]] = None) -> Dict[str, Any]:
        d = {"client_id": self.client_id, "shard_path": self.shard_path,
             "num_samples": dict(self.num_samples), "fingerprint": self.fingerprint,
             "label_hist": list(self.label_hist)}
        if self.token_hash:
            d["token_hash"] = self.token_hash
        if writer_ids is not None:
            d["writer_ids"] = list(writer_ids)
        return d

    @classmethod
    def from_dict(cls, e: Any, c: Checker, where: str, num_classes: int,
                  head: "Manifest") -> "ManifestEntry":
        c.obj(e, where)
        c.keys(e, where, _ENTRY_KEYS)
        counts = c.counts(e["num_samples"], f"{where}.num_samples")
        return cls(c.pos_int(e["client_id"], f"{where}.client_id"),
                   c.rel_path(e["shard_path"], f"{where}.shard_path"), counts,
                   c.sha(e["fingerprint"], f"{where}.fingerprint"),
                   c.hist(e["label_hist"], f"{where}.label_hist", num_classes, counts["train"]),
                   c.sha(e["token_hash"], f"{where}.token_hash") if "token_hash" in e else "",
                   head.sample_type, head.dataset)


@dataclass
class Manifest:
    dataset: str
    strategy: str
    seed: int
    splits: List[float]
    source: Dict[str, Any]
    clients: Dict[int, ManifestEntry]
    num_classes: int
    sample_type: str
    packed: Optional[Dict[str, Any]] = None
    created: str = ""
    format_version: int = FORMAT_VERSION
    # client id -> writer ids (stored on each client's line; what --resume and audits read)
    writer_ids: Dict[int, List[str]] = field(default_factory=dict)

    @property
    def total_clients(self) -> int:
        return len(self.clients)

    def to_dict(self) -> Dict[str, Any]:
        return {"format_version": self.format_version, "dataset": self.dataset,
                "strategy": self.strategy, "seed": self.seed, "splits": list(self.splits),
                "source": self.source, "num_classes": self.num_classes,
                "sample_type": self.sample_type, "packed": self.packed, "created": self.created,
                "total_clients": self.total_clients,
                "clients": [e.to_dict(self.writer_ids.get(k))
                            for k, e in sorted(self.clients.items())]}

    @classmethod
    def from_dict(cls, d: Any, c: Checker) -> "Manifest":
        c.obj(d, "manifest")
        c.keys(d, "", ("format_version", "dataset", "strategy", "seed", "splits", "source",
                       "total_clients", "clients"))
        c.version(d["format_version"])
        dataset = c.string(d["dataset"], "dataset")
        splits = d["splits"]
        if (type(splits) is not list or len(splits) != 3
                or not all(type(s) in (int, float) and s >= 0 for s in splits)):
            c.fail("splits", f"must be 3 non-negative fractions, got {splits!r}")
        if type(d["seed"]) is not int:
            c.fail("seed", f"must be an integer, got {d['seed']!r}")
        c.obj(d["source"], "source")
        ncls, sample_type = _dataset_defaults(d, c, dataset)
        head = cls(dataset, c.string(d["strategy"], "strategy"), d["seed"],
                   [float(s) for s in splits], d["source"], {}, ncls, sample_type,
                   c.packed(d.get("packed"), escape_ok=False), str(d.get("created", "")))
        clients = d["clients"]
        if type(clients) is not list:
            c.fail("clients", "must be a list of client entries")
        if not clients:  # a job over no clients would wait forever; refuse it where it is read
            c.fail("clients", "lists no clients (a partition needs at least one)")
        for i, e in enumerate(clients):
            ent = ManifestEntry.from_dict(e, c, f"clients[{i}]", ncls, head)
            if ent.client_id in head.clients:
                c.fail(f"clients[{i}].client_id", f"duplicates client id {ent.client_id}; "
                                                 f"every client id must be unique")
            head.clients[ent.client_id] = ent
            if "writer_ids" in e:
                head.writer_ids[ent.client_id] = c.strings(e["writer_ids"],
                                                           f"clients[{i}].writer_ids")
        if c.nonneg_int(d["total_clients"], "total_clients") != len(head.clients):
            c.fail("total_clients", f"is {d['total_clients']} but 'clients' lists "
                                    f"{len(head.clients)} entries")
        return head


def _dataset_defaults(d: Dict[str, Any], c: Checker, dataset: str):
    """num_classes and sample_type; a manifest written before they were recorded takes them
    from the dataset's registered spec (never from a constant here)."""
    if "num_classes" in d and "sample_type" in d:
        return c.pos_int(d["num_classes"], "num_classes"), c.string(d["sample_type"],
                                                                    "sample_type")
    from federatedscope.core.data.dataset_spec import get_spec
    try:
        spec = get_spec(dataset)
    except ValueError as e:
        c.fail("num_classes", f"is missing and {e}")
    return (c.pos_int(d.get("num_classes", spec.num_classes), "num_classes"),
            c.string(d.get("sample_type", spec.sample_type), "sample_type"))


@dataclass
class ShardDeclaration:
    """What a client claims about its shard when it joins (travels over the network)."""
    client_id: int
    num_samples: Dict[str, int]
    fingerprint: str
    label_hist: List[int]
    sample_type: str
    dataset: str = ""  # optional on the wire: clients of older versions do not send it

    def to_dict(self) -> Dict[str, Any]:
        d = {"client_id": self.client_id, "num_samples": dict(self.num_samples),
             "fingerprint": self.fingerprint, "label_hist": list(self.label_hist),
             "sample_type": self.sample_type}
        if self.dataset:
            d["dataset"] = self.dataset
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "ShardDeclaration":
        # Comes from the network: strict types, no coercion, bounded sizes.
        c = Checker("join declaration", "the client's shard (re-run the client after fixing it)")
        c.obj(d, "declaration")
        c.keys(d, "declaration", ("client_id", "num_samples", "fingerprint", "label_hist",
                                  "sample_type"))
        cid = c.pos_int(d["client_id"], "client_id")
        counts = c.counts(d["num_samples"], "num_samples")
        fp = c.sha(d["fingerprint"], "fingerprint")
        hist = c.hist(d["label_hist"], "label_hist", None, counts["train"])
        st = c.string(d["sample_type"], "sample_type")
        ds = c.string(d.get("dataset", ""), "dataset")
        if len(st) > 64 or len(ds) > 64 or len(hist) > 100_000:
            c.fail("sample_type/dataset/label_hist", "is implausibly large")
        return cls(cid, counts, fp, hist, st, ds)

    @classmethod
    def of_meta(cls, meta: ShardMeta) -> "ShardDeclaration":
        """The declaration a client holding this shard sends (loader and pre-flight)."""
        return cls(meta.client_id, dict(meta.num_samples), meta.fingerprint,
                   list(meta.label_hist["train"]), meta.sample_type, meta.dataset)


# ----------------------------------------------------------------------------- reading the files
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


def read_meta(path: str, fix: str = "") -> ShardMeta:
    """Read and validate ``meta.json`` (``path`` may be the file or its shard directory)."""
    if os.path.isdir(path):
        path = os.path.join(path, "meta.json")
    fix = fix or shard_fix(os.path.dirname(path))
    return ShardMeta.from_dict(_load_json(path, fix), Checker(path, fix))


def read_manifest(path: str) -> Manifest:
    d = _load_json(path, manifest_fix(path))
    n = d.get("total_clients", "N") if type(d) is dict else "N"
    ds = d.get("dataset", "") if type(d) is dict else ""
    fix = manifest_fix(path, n if type(n) is int and n > 0 else "N",
                       ds if type(ds) is str else "")
    return Manifest.from_dict(d, Checker(path, fix))


def load_manifest(path: str) -> Dict[int, ManifestEntry]:
    """client id -> entry, validated. The server's view of who may join and with what."""
    return read_manifest(path).clients


# ----------------------------------------------------------------------------- comparing
def check_declaration(entry: Optional[ManifestEntry], decl: ShardDeclaration,
                      sample_type: Optional[str] = None) -> List[str]:
    """Why ``decl`` does not match the manifest ``entry``; an empty list means it matches.

    Complete on its own: ``read_manifest`` puts the manifest's sample type and dataset on every
    entry (``sample_type`` overrides the entry's when given). A declaration without a dataset
    (an older client) is not compared on it.
    """
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
    want_type = entry.sample_type if sample_type is None else sample_type
    if decl.sample_type != want_type:
        reasons.append(f"sample type {decl.sample_type!r} != manifest {want_type!r}")
    if decl.dataset and entry.dataset and decl.dataset != entry.dataset:
        reasons.append(f"dataset {decl.dataset!r} != manifest {entry.dataset!r} (a shard of "
                       f"another dataset)")
    return reasons
