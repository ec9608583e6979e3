"""Per-client secret tokens: made with the shards, files mode 0600, the manifest keeps hashes.

A token file is written to a 0600 temp file beside it and renamed in place only by ``commit``,
so the sharding tool can stage new tokens and swap them in together with the new manifest: a
failed re-cut leaves both the old tokens and the old hashes as they were.
"""
import hashlib
import os
import secrets
from typing import Dict, Iterable, List

SUFFIX = ".new"


def token_hash(token: str) -> str:
    """What the manifest stores (the server compares the sha256 of what a client presents)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return paths


def discard(out_dir: str, client_ids: Iterable[int]) -> None:
    for cid in client_ids:
        tmp = token_path(out_dir, cid) + SUFFIX
        if os.path.exists(tmp):
            os.remove(tmp)
