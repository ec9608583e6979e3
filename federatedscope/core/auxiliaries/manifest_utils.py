"""Reading and writing ``meta.json`` (per shard) and ``manifest.json`` (per partition).

Nothing else in the tree parses or writes these files. Every read is validated and every problem
is a ``ManifestError`` whose message names the file, the field and the fix. Validation is
deliberately cheap (type checks done with C builtins, no per-entry objects beyond a slotted
dataclass) so a server loads a 10,000-client manifest in well under 0.5 s. Writer ids per client
are in the manifest too, but only ``read_writer_ids`` turns them into lists, one client at a time.

The records live in ``manifest_schema`` and the join check in ``shard_declaration``; both are
re-exported here, where the rest of the tree imports them from. Spec: ``doc/distributed_data.md``.
"""
import json
import os
from array import array
from typing import Any, Dict, List, Optional

from federatedscope.core.auxiliaries.manifest_schema import (  # noqa: F401  (re-exported)
    FORMAT_VERSION, PREPARE_CMD, SPLITS, FileEntry, Manifest, ManifestEntry, ManifestError,
    ShardMeta, _Checker, _is_sha, _load_json, compute_fingerprint, now_iso)
from federatedscope.core.auxiliaries.shard_declaration import (  # noqa: F401  (re-exported)
    ShardDeclaration, check_declaration)
from federatedscope.core.auxiliaries.utils import atomic_write_bytes


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


def manifest_to_dict(m: Manifest,
                     writer_ids: Optional[Dict[int, List[str]]] = None) -> Dict[str, Any]:
    wids = writer_ids or {}
    return {"format_version": m.format_version, "dataset": m.dataset, "strategy": m.strategy,
            "seed": m.seed, "splits": list(m.splits), "source": m.source,
            "num_classes": m.num_classes, "sample_type": m.sample_type, "packed": m.packed,
            "created": m.created, "total_clients": m.total_clients,
            "clients": [_entry_dict(e, wids.get(k)) for k, e in sorted(m.clients.items())]}


def _entry_dict(e: ManifestEntry, writer_ids: Optional[List[str]] = None) -> Dict[str, Any]:
    # client_id first and compact separators: ``read_writer_ids`` finds a client's line by prefix
    d = {"client_id": e.client_id, "shard_path": e.shard_path, "num_samples": dict(e.num_samples),
         "fingerprint": e.fingerprint, "label_hist": list(e.label_hist)}
    if e.token_hash:
        d["token_hash"] = e.token_hash
    if writer_ids is not None:
        d["writer_ids"] = list(writer_ids)
    return d


_ENTRY_KEYS = frozenset(("client_id", "shard_path", "num_samples", "fingerprint", "label_hist"))
_SPLIT_KEYS = frozenset(SPLITS)
_INT = {int}
_STR = {str}


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
                and ("token_hash" not in e or _is_sha(e["token_hash"]))
                and ("writer_ids" not in e or (type(e["writer_ids"]) is list
                                               and set(map(type, e["writer_ids"])) <= _STR)))
    except (TypeError, KeyError, ValueError, OverflowError):
        return False


def _entry_slow(c: _Checker, e: Any, where: str, ncls: int) -> ManifestEntry:
    c.obj(e, where)
    c.keys(e, where, ("client_id", "shard_path", "num_samples", "fingerprint", "label_hist"))
    cid = c.pos_int(e["client_id"], f"{where}.client_id")
    counts = c.counts(e["num_samples"], f"{where}.num_samples")
    wids = e.get("writer_ids", [])
    if type(wids) is not list or not set(map(type, wids)) <= _STR:
        c.fail(f"{where}.writer_ids", "must be a list of writer id strings")
    return ManifestEntry(
        cid, c.rel_path(e["shard_path"], f"{where}.shard_path"), counts,
        c.sha(e["fingerprint"], f"{where}.fingerprint"),
        c.hist(e["label_hist"], f"{where}.label_hist", ncls, counts["train"]),
        c.sha(e["token_hash"], f"{where}.token_hash") if "token_hash" in e else "")


def _entries(c: _Checker, clients: Any, ncls: int, sample_type: str) -> Dict[int, ManifestEntry]:
    if type(clients) is not list:
        c.fail("clients", "must be a list of client entries")
    if not clients:  # a job over no clients would wait forever; refuse it where it is read
        c.fail("clients", "lists no clients (a partition needs at least one)")
    out: Dict[int, ManifestEntry] = {}
    for i, e in enumerate(clients):
        if _entry_ok(e, ncls):
            ent = ManifestEntry(e["client_id"], e["shard_path"], e["num_samples"],
                                e["fingerprint"], e["label_hist"], e.get("token_hash", ""),
                                sample_type)
        else:
            ent = _entry_slow(c, e, f"clients[{i}]", ncls)
            ent.sample_type = sample_type
        if ent.client_id in out:
            c.fail(f"clients[{i}].client_id", f"duplicates client id {ent.client_id}; "
                                             f"every client id must be unique")
        out[ent.client_id] = ent
    return out


def read_manifest(path: str) -> Manifest:
    d = _load_json(path, _manifest_fix(path))
    n = d.get("total_clients", "N") if type(d) is dict else "N"
    c = _Checker(path, _manifest_fix(path, n if type(n) is int and n > 0 else "N"))
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
    sample_type = c.string(d.get("sample_type", "uint8[28,28]"), "sample_type")
    clients = _entries(c, d["clients"], ncls, sample_type)
    if c.nonneg_int(d["total_clients"], "total_clients") != len(clients):
        c.fail("total_clients", f"is {d['total_clients']} but 'clients' lists "
                                f"{len(clients)} entries")
    packed = c.packed(d.get("packed"), escape_ok=False)
    return Manifest(dataset=c.string(d["dataset"], "dataset"),
                    strategy=c.string(d["strategy"], "strategy"), seed=d["seed"],
                    splits=[float(s) for s in splits], source=d["source"], clients=clients,
                    num_classes=ncls, sample_type=sample_type,
                    packed=packed, created=str(d.get("created", "")))


def load_manifest(path: str) -> Dict[int, ManifestEntry]:
    """client id -> entry, validated. The server's view of who may join and with what."""
    return read_manifest(path).clients


def write_manifest(path: str, manifest: Manifest,
                   writer_ids: Optional[Dict[int, List[str]]] = None) -> None:
    """Header fields indented, one compact line per client: readable and fast to parse.

    ``writer_ids`` (client id -> writer ids) goes on each client's line; pass
    ``read_all_writer_ids(path)`` when rewriting a manifest so they are kept.
    """
    d = manifest_to_dict(manifest, writer_ids)
    clients = d.pop("clients")
    head = _one_key_per_line(d).decode("utf-8")[:-3]
    lines = ",\n  ".join(json.dumps(e, separators=(",", ":")) for e in clients)
    text = f'{head},\n "clients": [\n  {lines}\n ]\n}}\n' if clients else \
        f'{head},\n "clients": []\n}}\n'
    atomic_write_bytes(path, text.encode("utf-8"))


def shard_dir(manifest_path: str, entry: ManifestEntry) -> str:
    """The real directory of a manifest entry, resolved against the manifest's directory.

    Symlinks are resolved *before* the containment check: a shard path that is (or runs through)
    a link to somewhere outside the manifest's directory is refused like a ``..`` path would be.
    """
    base = os.path.realpath(os.path.dirname(os.path.abspath(manifest_path)))
    real = os.path.realpath(os.path.join(base, entry.shard_path))
    if os.path.commonpath([base, real]) != base:
        raise ManifestError(
            f"{manifest_path}: client {entry.client_id}'s shard_path {entry.shard_path!r} "
            f"resolves (through a symlink) to {real}, outside the manifest's directory {base}; "
            f"fix: move the shard under {base} (not a link) or re-cut: "
            f"{_manifest_fix(manifest_path)}")
    return real


# ----------------------------------------------------------------------------- writer ids
def read_writer_ids(manifest_path: str, client_id: int) -> List[str]:
    """One client's writer ids, without building any other client's list.

    ``write_manifest`` puts each client on its own line starting ``{"client_id":<k>,``; that line
    alone is parsed. A manifest laid out otherwise (edited by hand) falls back to a full parse.
    """
    prefix = f'{{"client_id":{int(client_id)},'
    try:
        with open(manifest_path, "r", encoding="utf-8") as f:
            for line in f:
                s = line.strip()
                if s.startswith(prefix):
                    return _writers_of(manifest_path, json.loads(s.rstrip(",")), client_id)
    except (OSError, ValueError):
        pass
    raw = _load_json(manifest_path, _manifest_fix(manifest_path))
    for e in (raw.get("clients") or []) if type(raw) is dict else []:
        if type(e) is dict and e.get("client_id") == client_id:
            return _writers_of(manifest_path, e, client_id)
    raise ManifestError(f"{manifest_path}: client {client_id} is not listed; "
                        f"fix: {_manifest_fix(manifest_path)}")


def _writers_of(path: str, e: Dict[str, Any], client_id: int) -> List[str]:
    wids = e.get("writer_ids")
    if wids is None:
        raise ManifestError(f"{path}: client {client_id}'s entry has no 'writer_ids' (made by an "
                            f"older version of the tool); fix: {_manifest_fix(path)}")
    if type(wids) is not list or not set(map(type, wids)) <= _STR:
        raise ManifestError(f"{path}: field 'writer_ids' of client {client_id} must be a list of "
                            f"strings; fix: {_manifest_fix(path)}")
    return wids


def read_all_writer_ids(manifest_path: str) -> Dict[int, List[str]]:
    """Every client's writer ids (one full parse): for tools that rewrite the manifest."""
    raw = _load_json(manifest_path, _manifest_fix(manifest_path))
    out: Dict[int, List[str]] = {}
    for e in (raw.get("clients") or []) if type(raw) is dict else []:
        if type(e) is dict and type(e.get("writer_ids")) is list:
            out[e["client_id"]] = e["writer_ids"]
    return out
