"""Output side of the sharding tool: nothing of an existing set changes until the new one is whole.

Every run builds its shards, packed file and manifest in ``<out>/.staging/``; ``swap_in`` verifies
the staged set (manifest parses, every shard's meta matches its entry, every file's size and
sha256: ``verify_shard``) and only then swaps it in, so no caller can swap an unverified set: the old manifest goes first (so no manifest ever lists a half-swapped
set), the old entries move to a trash folder, the new ones move in with the manifest last. A run
that fails before the swap (bad input, bad options, too many clients, a kill) leaves the old set
byte-identical. Files the tool does not own (a ``tokens/`` folder, notes) are never touched.

``--resume`` finishes what ``.staging/`` holds, or re-verifies a complete set; it refuses options
that differ from the set it would finish (every option; one that set did not record counts as
different), naming each option and the command to run instead. Without ``--resume`` an old
``.staging/`` is deleted before anything is written.
"""
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from federatedscope.core.auxiliaries.utils import atomic_write_bytes, fsync_dir, sync_tree
from federatedscope.core.data import shard_format as sf
from federatedscope.core.data.distributed_loader import file_problem, verify_shard
from federatedscope.core.data.sharding_plan import ShardingError

logger = logging.getLogger("federatedscope")
STAGE = ".staging"
OPTIONS = "options.json"
# temp names this tool leaves only when killed: shard dirs, spills (its own and its reading
# workers'), atomic-write temp files, the trash of a swap that was cut short
_STALE = re.compile(r"client_\d+\.tmp-\d+|\.spill-\d+(-\d+)?\.bin|\..+\.tmp|\.old-\d+")


def owned(name: str) -> bool:
    """Entries of a shard set (what a swap moves); everything else in ``out`` is left alone."""
    return (name in ("manifest.json", "packed", "label_distribution.png")
            or re.fullmatch(r"client_\d+", name) is not None)


def lock_out(out: str) -> int:
    fd = os.open(os.path.join(out, ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ShardingError(f"another prepare_shards.py run is writing {out}; wait for "
                            f"it to finish (or stop it) and try again") from None
    return fd


# ----------------------------------------------------------------------------- options
def run_options(args: Any) -> Dict[str, Any]:
    """The options that decide a partition (recorded in the manifest and in ``.staging``)."""
    sha = ""
    if args.assignment and os.path.isfile(args.assignment):
        with open(args.assignment, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
    return {"dataset": args.dataset, "clients": int(args.clients), "strategy": args.strategy,
            "assignment_sha256": sha,
            "seed": int(args.seed), "splits": [float(s) for s in args.splits],
            "subsample": float(args.subsample), "link": bool(args.link),
            # only 'lda' reads --alpha: other runs keep the options their manifests recorded
            **({"alpha": float(args.alpha)} if args.strategy == "lda" else {}),
            **({"consistent": True} if getattr(args, "consistent", False) else {})}


def _options_of_manifest(m: sf.Manifest) -> Dict[str, Any]:
    got = m.source.get("options")
    if isinstance(got, dict):
        return got
    # a manifest from before options were recorded: what its fields still tell (the rest,
    # missing, counts as different)
    return {"dataset": m.dataset, "clients": m.total_clients, "strategy": m.strategy,
            "seed": m.seed, "splits": list(m.splits), "link": m.packed is not None}


_FLAG = {"dataset": "--dataset", "clients": "--clients", "strategy": "--strategy", "assignment_sha256": "--assignment",
         "seed": "--seed", "splits": "--splits", "subsample": "--subsample", "link": "--link", "alpha": "--alpha",
         "consistent": "--consistent-label-distribution"}


def _differences(have: Dict[str, Any], want: Dict[str, Any]) -> List[str]:
    out = []
    for k, flag in _FLAG.items():
        if k not in have and k not in want:  # an option neither run uses (--alpha without lda)
            continue
        if k not in have:
            out.append(f"{flag}: that run did not record it, so it cannot be shown to be the same")
        elif have[k] != want.get(k):
            if k == "assignment_sha256":
                out.append("--assignment: the file's content differs from the one used")
            else:
                out.append(f"{flag} is {_show(have[k])} there, {_show(want[k])} here")
    return out


def _show(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(f"{x:g}" for x in v)
    return str(v)


# ----------------------------------------------------------------------------- existing set
@dataclass
class Existing:
    names: List[str]                 # owned entries of a complete (or older) set in ``out``
    manifest: Optional[sf.Manifest]  # None when absent or unreadable
    staged: Optional[Dict[str, Any]]  # options of an interrupted run's ``.staging``


def look(out: str) -> Existing:
    names = sorted(n for n in os.listdir(out) if owned(n))
    manifest = None
    path = os.path.join(out, "manifest.json")
    if os.path.exists(path):
        try:
            manifest = sf.read_manifest(path)
        except sf.ManifestError as e:
            logger.warning("the existing %s is unreadable (%s); it is not kept", path, e)
    staged = None
    opt = os.path.join(out, STAGE, OPTIONS)
    if os.path.isfile(opt):
        try:
            with open(opt, encoding="utf-8") as f:
                staged = json.load(f)
        except ValueError:  # torn: unknown options, so --resume refuses (every one differs)
            staged = {}
    return Existing(names, manifest, staged)


def check_flags(args: Any, ex: Existing, cmd: str) -> None:
    """Refuse an existing output without a flag, and ``--resume`` with changed options."""
    stage_exists = os.path.isdir(os.path.join(args.out, STAGE))
    if (ex.names or stage_exists) and not (args.overwrite or args.resume):
        what = ", ".join(ex.names[:4]) or "an interrupted run's .staging/"
        raise ShardingError(
            f"{args.out} already holds shards ({what}...); to replace them run: "
            f"{cmd} --overwrite   (or finish an interrupted run with: {cmd} --resume)")
    if not args.resume:
        return
    have = ex.staged if ex.staged is not None else (
        _options_of_manifest(ex.manifest) if ex.manifest is not None else None)
    if have is None:
        return
    diff = _differences(have, run_options(args))
    if diff:
        target = "the interrupted run in .staging/" if ex.staged is not None else \
            "the partition in " + args.out
        raise ShardingError(
            f"--resume would change {target}: {'; '.join(diff)}. Nothing was changed. To finish "
            f"it, repeat its options with --resume; to re-cut with the new options run: "
            f"{cmd} --overwrite")


def carry_tokens(args: Any, ex: Existing, cmd: str) -> Dict[int, str]:
    """token_hash per client id kept across a re-cut, or a refusal saying how to proceed."""
    if args.tokens or ex.manifest is None:
        return {}
    old = {k: e.token_hash for k, e in ex.manifest.clients.items() if e.token_hash}
    if not old:
        return {}
    missing = [k for k in range(1, int(args.clients) + 1) if k not in old]
    if missing:
        raise ShardingError(
            f"{args.out}/manifest.json gives its clients tokens (token_hash), but client(s) "
            f"{_ids(missing)} of the new partition would have none, and the server would admit "
            f"them without one. Nothing was changed. Re-cut and give every client a new token: "
            f"{cmd} --overwrite --tokens {os.path.join(args.out, 'tokens')}")
    return old


def _ids(ids: List[int]) -> str:
    return ", ".join(map(str, ids[:8])) + (" ..." if len(ids) > 8 else "")


# ----------------------------------------------------------------------------- staging
def open_stage(args: Any) -> str:
    """``<out>/.staging``: kept for ``--resume`` (options already checked), else started anew."""
    stage = os.path.join(args.out, STAGE)
    for n in os.listdir(args.out):  # a killed run's temp names (we hold the lock)
        if _STALE.fullmatch(n):
            p = os.path.join(args.out, n)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    if os.path.isdir(stage) and not args.resume:
        shutil.rmtree(stage)
    os.makedirs(stage, exist_ok=True)
    for n in os.listdir(stage):
        p = os.path.join(stage, n)
        if _STALE.fullmatch(n) or n == "manifest.json":
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    packed = os.path.join(stage, "packed")
    for n in os.listdir(packed) if os.path.isdir(packed) else []:
        if _STALE.fullmatch(n):
            os.remove(os.path.join(packed, n))
    atomic_write_bytes(os.path.join(stage, OPTIONS),
                          json.dumps(run_options(args), sort_keys=True).encode("utf-8"))
    return stage


def drop_stage_if_empty(out: str) -> None:
    """Remove a ``.staging`` that holds no finished shard (nothing there for --resume)."""
    stage = os.path.join(out, STAGE)
    if os.path.isdir(stage) and not any(re.fullmatch(r"client_\d+", n) for n in os.listdir(stage)):
        shutil.rmtree(stage)


def adopt(src: str, dst: str) -> None:
    """Give ``dst`` the files of a verified ``src`` (hard links: the old set is not modified,
    and a later atomic write replaces a link rather than writing through it)."""
    tmp = dst + f".tmp-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    for n in os.listdir(src):
        try:
            os.link(os.path.join(src, n), os.path.join(tmp, n))
        except OSError:  # a filesystem without hard links: copy
            shutil.copy2(os.path.join(src, n), os.path.join(tmp, n))
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.rename(tmp, dst)


def adopt_file(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ----------------------------------------------------------------------------- verify + swap
def verify_staged(stage: str) -> sf.Manifest:
    """The staged set as a client and the server would check it, with every sha256 re-read."""
    path = os.path.join(stage, "manifest.json")
    man = sf.read_manifest(path)
    memo: Dict[str, str] = {}  # the --link packed file is hashed once, not once per shard
    if man.packed is not None:
        bad = file_problem(os.path.normpath(os.path.join(stage, man.packed["path"])),
                              sf.FileEntry(man.packed["bytes"], man.packed["sha256"]), True, memo)
        if bad:
            raise ShardingError(f"the new packed file did not verify ({bad}); the old set was "
                                f"left as it was")
    base = sf.manifest_base(path)
    for cid, entry in sorted(man.clients.items()):
        try:
            verify_shard(sf.shard_dir(path, entry, base), entry=entry, sha_memo=memo)
        except sf.ShardError as e:
            raise ShardingError(f"the new client_{cid} did not verify ({e}); the old set was "
                                f"left as it was") from None
    return man


def swap_in(out: str, stage: str) -> None:
    """Make the staged set durable (its files were written without an fsync each) and verify it,
    then: old manifest out first, new manifest in last (module doc)."""
    sync_tree(stage)
    verify_staged(stage)
    trash = os.path.join(out, f".old-{os.getpid()}")
    os.makedirs(trash)
    old = [n for n in os.listdir(out) if owned(n)]
    for n in sorted(old, key=lambda n: n != "manifest.json"):
        os.rename(os.path.join(out, n), os.path.join(trash, n))
    fsync_dir(out)
    new = [n for n in os.listdir(stage) if owned(n)]
    for n in sorted(new, key=lambda n: n == "manifest.json"):
        os.rename(os.path.join(stage, n), os.path.join(out, n))
    fsync_dir(out)
    shutil.rmtree(trash)
    shutil.rmtree(stage)
