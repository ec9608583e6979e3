"""The one shard check (exists / size / sha256) and the one declaration-vs-manifest comparison.

``verify_shard`` is what the loader runs before it reads a shard, what the tool runs on a shard
``--resume`` wants to keep and on every staged shard before the swap, and what the launcher's
pre-flight runs before it starts anything; they differ only in their arguments, so they can
never disagree about what a good shard is.
"""
import os
from typing import Dict, List, Optional, Tuple

from federatedscope.core.data.shard_format.checks import (SPLITS, ManifestError, ShardError,
                                                          recreate_message, sha256_file, shard_fix)
from federatedscope.core.data.shard_format.files import read_meta
from federatedscope.core.data.shard_format.records import (FileEntry, ManifestEntry,
                                                           ShardDeclaration, ShardMeta)


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
    if meta is None:
        try:
            meta = read_meta(os.path.join(shard, "meta.json"), fix=fix)
        except ManifestError as e:
            raise ShardError(str(e)) from None
    meta_path = os.path.join(shard, "meta.json")
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
