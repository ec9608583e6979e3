"""Per-client secret tokens: made with the shards, files mode 0600, the manifest keeps hashes.

A token file is written to a 0600 temp file beside it and renamed in place only by ``commit``,
so the sharding tool can stage new tokens and swap them in together with the new manifest: a
failed re-cut leaves both the old tokens and the old hashes as they were.
"""
import dataclasses
import os
import secrets
from typing import Dict, Iterable, List

from federatedscope.core.auxiliaries.utils import fsync_dir
from federatedscope.core.data import shard_format as sf

SUFFIX = ".new"


def token_hash(token: str) -> str:
    """What the manifest stores: hex of the one token hash (``shard_format.token_digest``), which
    the server compares with the hash of what a client presents."""
    return sf.token_digest(token).hex()


def token_path(out_dir: str, client_id: int) -> str:
    return os.path.join(out_dir, f"client_{client_id}.token")


def stage_tokens(out_dir: str, client_ids: Iterable[int]) -> Dict[int, str]:
    """New tokens for ``client_ids``, written as ``client_<k>.token.new`` (0600, fsynced);
    returns client id -> sha256 hash. ``commit`` renames them into place."""
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    hashes = {}
    for cid in client_ids:
        token = secrets.token_urlsafe(32)
        tmp = token_path(out_dir, cid) + SUFFIX
        if os.path.exists(tmp):
            os.remove(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        hashes[cid] = token_hash(token)
    return hashes


def commit(out_dir: str, client_ids: Iterable[int]) -> List[str]:
    """Rename the staged token files into place; returns their paths."""
    paths = []
    for cid in client_ids:
        final = token_path(out_dir, cid)
        os.replace(final + SUFFIX, final)
        paths.append(final)
    fsync_dir(out_dir)
    return paths


def discard(out_dir: str, client_ids: Iterable[int]) -> None:
    for cid in client_ids:
        tmp = token_path(out_dir, cid) + SUFFIX
        if os.path.exists(tmp):
            os.remove(tmp)


def add_to_manifest(manifest_path: str, out_dir: str) -> int:
    """New tokens for every client of a manifest; the manifest is rewritten with their hashes
    (writer ids and every other field kept). Token files appear only once the manifest is in."""
    manifest = sf.read_manifest(manifest_path)
    ids = sorted(manifest.clients)
    hashes = stage_tokens(out_dir, ids)
    clients = {cid: dataclasses.replace(manifest.clients[cid], token_hash=hashes[cid])
               for cid in ids}
    try:
        sf.write_manifest(manifest_path, dataclasses.replace(manifest, clients=clients))
    except BaseException:
        discard(out_dir, ids)  # the old tokens still match the old manifest
        raise
    commit(out_dir, ids)
    return len(ids)


def check_files(manifest_path: str, out_dir: str) -> List[str]:
    """Problems with the token files of a manifest that has hashes (missing, wrong, too open)."""
    problems = []
    for cid, e in sorted(sf.load_manifest(manifest_path).items()):
        p = token_path(out_dir, cid)
        if not e.token_hash:
            problems.append(f"client {cid} has no token_hash in {manifest_path} while others do")
        elif not os.path.isfile(p):
            problems.append(f"client {cid}: token file {p} is missing")
        else:
            with open(p, "rb") as f:
                raw = f.read()
            try:
                hashed = token_hash(raw.decode("utf-8").strip())
            except UnicodeDecodeError:
                hashed = None
            if hashed != e.token_hash:
                problems.append(f"client {cid}: {p} does not hash to the manifest's token_hash")
            if os.stat(p).st_mode & 0o077:
                problems.append(f"client {cid}: {p} is readable by others (chmod 600 {p})")
    return problems
