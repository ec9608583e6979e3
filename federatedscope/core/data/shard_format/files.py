"""Writing ``meta.json`` (per shard) and ``manifest.json`` (per partition), and where a
manifest's shards are.

The writer's side of the JSON files (their one reader is ``records.py``). Layout on write: header
fields one a line, one compact line per client (readable, diffable); every write is a temp file
and a rename. ``shard_dir`` resolves an entry's directory and refuses one outside the manifest's.
"""
import json
import os
from typing import Any, Dict, List

from federatedscope.core.auxiliaries.utils import atomic_write_bytes
from federatedscope.core.data.shard_format.checks import ManifestError, manifest_fix
from federatedscope.core.data.shard_format.records import (Manifest, ManifestEntry, ShardMeta,
                                                           read_manifest)


def _one_key_per_line(d: Dict[str, Any]) -> str:
    # readable (one field a line) yet small: 3 x 62-bin histograms stay on their own lines
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}"
                      for k, v in d.items())
    return "{\n" + body + "\n}\n"


# ----------------------------------------------------------------------------- meta.json
def write_meta(path: str, meta: ShardMeta, durable: bool = True) -> None:
    if os.path.isdir(path):
        path = os.path.join(path, "meta.json")
    atomic_write_bytes(path, _one_key_per_line(meta.to_dict()).encode("utf-8"), durable)


# ----------------------------------------------------------------------------- manifest.json
def write_manifest(path: str, manifest: Manifest) -> None:
    """Header fields one a line, then one compact line per client (with its writer ids)."""
    d = manifest.to_dict()
    clients = d.pop("clients")
    head = _one_key_per_line(d)[:-3]
    lines = ",\n  ".join(json.dumps(e, separators=(",", ":")) for e in clients)
    text = f'{head},\n "clients": [\n  {lines}\n ]\n}}\n' if clients else \
        f'{head},\n "clients": []\n}}\n'
    atomic_write_bytes(path, text.encode("utf-8"))


def manifest_base(manifest_path: str) -> str:
    """The manifest's real directory (what ``shard_dir`` resolves shard paths against)."""
    return os.path.realpath(os.path.dirname(os.path.abspath(manifest_path)))


def shard_dir(manifest_path: str, entry: ManifestEntry, base: str = "") -> str:
    """The real directory of a manifest entry, resolved against the manifest's directory
    (``base``: ``manifest_base(manifest_path)``, when a caller resolving many entries has it).

    Symlinks are resolved *before* the containment check: a shard path that is (or runs through)
    a link to somewhere outside the manifest's directory is refused like a ``..`` path would be.
    """
    base = base or manifest_base(manifest_path)
    real = os.path.realpath(os.path.join(base, entry.shard_path))
    if os.path.commonpath([base, real]) != base:
        raise ManifestError(
            f"{manifest_path}: client {entry.client_id}'s shard_path {entry.shard_path!r} "
            f"resolves (through a symlink) to {real}, outside the manifest's directory {base}; "
            f"fix: move the shard under {base} (not a link) or re-cut: "
            f"{manifest_fix(manifest_path, dataset=entry.dataset)}")
    return real


def read_writer_ids(manifest_path: str, client_id: int) -> List[str]:
    """One client's writer ids (a full, validated JSON read of the manifest)."""
    m = read_manifest(manifest_path)
    if client_id not in m.clients:
        raise ManifestError(f"{manifest_path}: client {client_id} is not listed; "
                            f"fix: {manifest_fix(manifest_path, m.total_clients, m.dataset)}")
    if client_id not in m.writer_ids:
        raise ManifestError(f"{manifest_path}: client {client_id}'s entry has no 'writer_ids' "
                            f"(made by an older version of the tool); fix: "
                            f"{manifest_fix(manifest_path, m.total_clients, m.dataset)}")
    return m.writer_ids[client_id]
