"""Offline partition of FEMNIST into per-client shards (logic of prepare_femnist_shards.py).

Streaming design, so peak memory is bounded by the largest input file, not the dataset:
1. one parse of the input, one file in memory at a time (``iter_leaf_writers``); each writer's
   uint8 samples are appended to a raw spill file and only labels + offsets stay in memory;
2. writers are assigned to clients (never split) and each writer is split train/val/test with
   the *same* per-writer rule as the FS-style path (``leaf_femnist.split_writer``), applied to
   row numbers, so no pixels move until they are written;
3. each client's shard is written from the spill in bounded windows into ``client_<k>.tmp-<pid>``,
   its ``meta.json`` last, then the directory is renamed to ``client_<k>`` (atomic);
4. ``manifest.json`` is written last. A killed run therefore never leaves a manifest that lists a
   shard failing its checksum; ``--resume`` keeps every shard whose meta verifies for this plan.
"""
import fcntl
import glob
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from federatedscope.core.auxiliaries import manifest_utils as mu
from federatedscope.core.data import shard_io
from federatedscope.core.data.sharding_plan import (Part, Plan, Rows, ShardingError, natural_key,
                                                    assign, plan_id, split_rows,
                                                    subsample_writers, writer_order)

logger = logging.getLogger("federatedscope")
SHAPE = (28, 28)
ROW = 28 * 28
NUM_CLASSES = 62
WINDOW = 4096  # rows per copy window: ~3 MB, big enough for disk speed, small for memory
GAP = 8        # spill rows read through (and dropped) rather than starting a new pread
PACKED = os.path.join("packed", "data.pt")
DATASET = "femnist"


@dataclass
class ShardArgs:
    root: str = "data"
    clients: int = 3
    strategy: str = "sequential"
    assignment: str = ""
    seed: int = 12345
    splits: Tuple[float, float, float] = (0.6, 0.2, 0.2)
    subsample: float = 1.0
    out: str = ""              # default <root>/femnist/shards
    overwrite: bool = False
    resume: bool = False
    link: bool = False
    plot: bool = False
    progress: bool = True


@dataclass
class PrepareSummary:
    out: str
    manifest: str
    clients: int
    samples: int
    bytes: int
    seconds: float
    written: List[int] = field(default_factory=list)
    reused: List[int] = field(default_factory=list)
    plot: str = ""

    @property
    def bytes_per_sample(self) -> float:
        return self.bytes / max(self.samples, 1)

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)

    def line(self) -> str:
        return (f"clients={self.clients} samples={self.samples} bytes/sample="
                f"{self.bytes_per_sample:.1f} seconds={self.seconds:.2f} samples/s="
                f"{self.samples_per_s:.0f} written={len(self.written)} reused={len(self.reused)} "
                f"manifest={self.manifest}")


# ----------------------------------------------------------------------------- input + spill
def find_source(root: str) -> Tuple[str, str, List[str]]:
    """(kind, dir, inputs): LEAF JSON (flat or train/test tree) or FS's processed task dirs."""
    from federatedscope.cv.dataset.leaf_femnist import list_leaf_files
    raw = os.path.join(root, "femnist", "raw")
    files = list_leaf_files(raw) if os.path.isdir(raw) else []
    if files:
        tree = any(os.path.basename(os.path.dirname(f)) == "test" for f in files)
        return ("leaf_train_test" if tree else "leaf_json"), raw, files
    proc = os.path.join(root, "femnist", "processed")
    tasks = [d for d in glob.glob(os.path.join(proc, "task_*")) if os.path.isdir(d)]
    if tasks:
        return "fs_processed", proc, sorted(tasks, key=natural_key)
    raise ShardingError(
        f"no FEMNIST input under {root}: expected LEAF JSON in {raw} (or its train/ and test/ "
        f"folders) or FS's processed tasks {proc}/task_<k>/; make a sample with: python "
        f"scripts/tools/generate_femnist_sample.py --out {raw} --writers 60 --seed 0")


class Spill:
    """Raw uint8 rows of every writer, appended in arrival order; read back in windows."""

    def __init__(self, path: str):
        self.path = path
        self.f = open(path, "w+b")
        self.rows = 0

    def add(self, x: np.ndarray) -> int:
        start = self.rows
        self.f.write(memoryview(np.ascontiguousarray(x, dtype=np.uint8)).cast("B"))
        self.rows += len(x)
        return start

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the given order: one pread per cluster of nearby rows (gaps <= GAP rows are
        read through), so a writer's shuffled split costs a few reads, never one per row, and a
        read never exceeds (GAP + 1) x the window."""
        out = np.empty((len(rows), *SHAPE), np.uint8)
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        cuts = np.flatnonzero(np.diff(srt) > GAP) + 1
        for seg in np.split(np.arange(len(srt)), cuts):
            if not len(seg):
                continue
            lo, hi = int(srt[seg[0]]), int(srt[seg[-1]]) + 1
            span = np.empty((hi - lo, *SHAPE), np.uint8)
            shard_io.pread_exact(self.f.fileno(), span.nbytes, lo * ROW,
                                 memoryview(span.reshape(-1)), self.path)
            out[order[seg]] = span[srt[seg] - lo]
        return out

    def chunks(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        self.f.flush()
        for s in range(0, len(rows), WINDOW):
            yield self.gather(rows[s:s + WINDOW])

    def close(self) -> None:
        self.f.close()
        os.unlink(self.path)


def read_input(kind: str, src_dir: str, inputs: List[str], spill: Spill,
               progress: bool) -> Dict[str, Dict[Optional[str], Part]]:
    """One pass over the input: spill pixels, keep {writer: {leaf split: Part}}."""
    from tqdm import tqdm
    from federatedscope.cv.dataset.leaf_femnist import iter_leaf_writers, read_fs_processed_task
    parts: Dict[str, Dict[Optional[str], Part]] = {}
    total = sum(os.path.getsize(f) for f in inputs) if kind != "fs_processed" else len(inputs)
    bar = tqdm(total=total, unit="B" if kind != "fs_processed" else "task", unit_scale=True,
               desc="reading input", disable=not progress, leave=False)

    def add(wid: str, split: Optional[str], x: np.ndarray, y: np.ndarray, source: str) -> None:
        have = parts.setdefault(wid, {})
        if split in have:
            raise ShardingError(f"writer {wid} appears twice in the {split or 'unsplit'} data: "
                                f"{have[split].source} and {source}")
        have[split] = Part(spill.add(x), np.asarray(y, np.int64), source)

    if kind == "fs_processed":
        for d in inputs:
            for split, (x, y) in read_fs_processed_task(d).items():
                add(os.path.basename(d), split, x.numpy(), y.numpy(), d)
            bar.update(1)
    else:
        current = None
        for ws in iter_leaf_writers(src_dir):
            if ws.source != current:
                bar.update(os.path.getsize(current) if current else 0)
                current = ws.source
            add(ws.writer_id, ws.split, ws.x, ws.y, ws.source)
        bar.update(os.path.getsize(current) if current else 0)
    bar.close()
    return parts


# ----------------------------------------------------------------------------- output dir
# temp names this tool leaves only when killed: shard dirs, spills, atomic-write temp files
_STALE = re.compile(r"client_\d+\.tmp-\d+|\.spill-\d+\.bin|\..+\.tmp")


def _ours(name: str) -> bool:
    return (name in ("manifest.json", "packed", "label_distribution.png")
            or re.fullmatch(r"client_\d+", name) is not None or _STALE.fullmatch(name) is not None)


def prepare_out(args: ShardArgs, cmd: str) -> None:
    """Refuse, clean or keep an existing output; the old manifest always goes first."""
    out = args.out
    existing = sorted(n for n in os.listdir(out) if _ours(n))
    if existing and not (args.overwrite or args.resume):
        raise ShardingError(
            f"{out} already holds shards ({', '.join(existing[:4])}...); to replace them run: "
            f"{cmd} --overwrite   (or finish an interrupted run with: {cmd} --resume)")
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):  # first, so no manifest ever lists a half-rewritten shard
        os.remove(manifest)
        _fsync_dir(out)
    packed_dir = os.path.join(out, "packed")
    stale = [os.path.join(packed_dir, n) for n in os.listdir(packed_dir)
             if _STALE.fullmatch(n)] if os.path.isdir(packed_dir) else []
    stale += [os.path.join(out, n) for n in existing
              if n != "manifest.json" and (args.overwrite or _STALE.fullmatch(n))]
    for path in stale:  # we hold the lock: no other run owns these
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_out(out: str) -> int:
    fd = os.open(os.path.join(out, ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ShardingError(f"another prepare_femnist_shards.py run is writing {out}; wait for "
                            f"it to finish (or stop it) and try again") from None
    return fd


def shard_verifies(shard: str, k: int, writers: List[str], pid: str,
                   packed_sha: Optional[str]) -> bool:
    """A finished shard may be kept by --resume only if it is this plan's and hashes match."""
    try:
        meta = mu.read_meta(os.path.join(shard, "meta.json"))
    except mu.ManifestError:
        return False
    if meta.client_id != k or meta.plan_id != pid or list(meta.writer_ids) != list(writers):
        return False
    if (meta.packed or {}).get("sha256") != packed_sha:
        return False
    for name, e in meta.files.items():
        p = os.path.join(shard, name)
        if not os.path.isfile(p) or os.path.getsize(p) != e.bytes:
            return False
        if shard_io.sha256_file(p) != e.sha256:
            return False
    return True


# ----------------------------------------------------------------------------- shards
def write_shard(out: str, k: int, writers: List[str], rows: Dict[str, Rows], spill: Spill,
                pid: str, dataset: str, packed: Optional[dict]) -> mu.ShardMeta:
    """rows[split] = (spill rows or packed positions, labels); atomic via temp dir + rename."""
    tmp = os.path.join(out, f"client_{k}.tmp-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    files: Dict[str, mu.FileEntry] = {}
    for split in mu.SPLITS:
        r, y = rows[split]
        path = os.path.join(tmp, f"{split}.pt")
        if packed is not None:
            shard_io.write_index(path, r)
        else:
            shard_io.write_split_chunks(path, y, SHAPE, spill.chunks(r))
        files[f"{split}.pt"] = mu.FileEntry(os.path.getsize(path), shard_io.sha256_file(path))
    meta = mu.ShardMeta(
        client_id=k, dataset=dataset, writer_ids=list(writers),
        num_samples={s: int(len(rows[s][1])) for s in mu.SPLITS},
        label_hist={s: np.bincount(rows[s][1], minlength=NUM_CLASSES).tolist() for s in mu.SPLITS},
        files=files, num_classes=NUM_CLASSES, sample_shape=list(SHAPE),
        packed=packed, plan_id=pid, created=mu.now_iso())
    meta.fingerprint = mu.compute_fingerprint(files, packed)
    mu.write_meta(os.path.join(tmp, "meta.json"), meta)
    _fsync_dir(tmp)
    final = os.path.join(out, f"client_{k}")
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(out)
    return meta


def write_packed(out: str, plan: Plan, per_writer: Dict[str, Dict[str, Rows]],
                 spill: Spill) -> dict:
    """--link: one copy of all used samples, client by client, writer by writer, train|val|test.

    That order makes every client split a few contiguous runs, so streaming reads stay cheap.
    """
    rows = [per_writer[w][s] for w, s in _packed_order(plan)]
    all_rows = np.concatenate([r for r, _ in rows]) if rows else np.zeros(0, np.int64)
    all_y = np.concatenate([y for _, y in rows]) if rows else np.zeros(0, np.int64)
    path = os.path.join(out, PACKED)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shard_io.write_split_chunks(path, all_y, SHAPE, spill.chunks(all_rows))
    return _packed_info(out, shard_io.sha256_file(path))


def _packed_order(plan: Plan) -> List[Tuple[str, str]]:
    return [(w, s) for k in sorted(plan.clients) for w in plan.clients[k] for s in mu.SPLITS]


def _packed_positions(plan: Plan, per_writer) -> Dict[Tuple[str, str], np.ndarray]:
    pos, at = {}, 0
    for w, s in _packed_order(plan):
        n = len(per_writer[w][s][0])
        pos[(w, s)] = np.arange(at, at + n, dtype=np.int64)
        at += n
    return pos


def _packed_info(out: str, sha: str) -> dict:
    return {"path": PACKED.replace(os.sep, "/"),
            "bytes": os.path.getsize(os.path.join(out, PACKED)), "sha256": sha}


def plot_partition(path: str, hists: Dict[int, List[int]]) -> str:
    """clients x classes heatmap of train labels; '' (with a log line) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("--plot needs matplotlib, which is not installed here: "
                       "pip install matplotlib (the shards were written without the picture)")
        return ""
    import io
    from federatedscope.core.auxiliaries.utils import atomic_write_bytes
    ids = sorted(hists)
    mat = np.array([hists[k] for k in ids], dtype=float)
    fig = Figure(figsize=(10, 1.5 + 0.25 * min(len(ids), 60)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    im = ax.imshow(mat, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("class (0-9 digits, 10-35 upper, 36-61 lower)")
    ax.set_ylabel("client")
    if len(ids) <= 60:
        ax.set_yticks(range(len(ids)), [str(k) for k in ids])
    ax.set_title("train label distribution per client")
    fig.colorbar(im, ax=ax, label="samples")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def prepare_shards(args: ShardArgs, cmd: str = "") -> PrepareSummary:
    """Run the whole partition; see the module doc for the order of writes."""
    from tqdm import tqdm
    t0 = time.perf_counter()
    args.out = args.out or os.path.join(args.root, "femnist", "shards")
    cmd = cmd or (f"python scripts/tools/prepare_femnist_shards.py --root {args.root} "
                  f"--clients {args.clients} --out {args.out}")
    if args.overwrite and args.resume:
        raise ShardingError("--overwrite and --resume exclude each other: --overwrite starts "
                            "over, --resume keeps the shards that verify")
    kind, src_dir, inputs = find_source(args.root)   # fail on bad input before touching output
    os.makedirs(args.out, exist_ok=True)
    lock = lock_out(args.out)
    spill = None
    try:
        prepare_out(args, cmd)
        spill = Spill(os.path.join(args.out, f".spill-{os.getpid()}.bin"))
        parts = read_input(kind, src_dir, inputs, spill, args.progress)
        plan = _make_plan(args, kind, src_dir, inputs, parts)
        summary = _write_all(args, plan, parts, spill, tqdm)
    finally:
        if spill is not None:
            spill.close()
        os.close(lock)
    summary.seconds = time.perf_counter() - t0
    return summary


def _make_plan(args: ShardArgs, kind: str, src_dir: str, inputs: List[str],
               parts: Dict[str, Dict[Optional[str], Part]]) -> Plan:
    ids = writer_order(parts, natural=kind == "fs_processed")
    chosen = subsample_writers(ids, args.subsample, args.seed, args.strategy)
    clients = assign(chosen, ids, args.clients, args.strategy, args.seed, args.assignment)
    source = {"kind": kind, "path": src_dir, "inputs": len(inputs), "writers": len(ids),
              "writers_used": sum(len(w) for w in clients.values()), "subsample": args.subsample}
    return Plan(clients, source, plan_id(args, kind, src_dir, inputs, clients))


def _resume_keep(args: ShardArgs, plan: Plan) -> Tuple[List[int], Optional[str]]:
    """Shards --resume may keep (and, for --link, the verified packed file's sha256)."""
    if not args.resume:
        return [], None
    sha = None
    if args.link:
        path = os.path.join(args.out, PACKED)
        if not os.path.isfile(path):
            return [], None
        sha = shard_io.sha256_file(path)
    keep = [k for k in sorted(plan.clients) if shard_verifies(
        os.path.join(args.out, f"client_{k}"), k, plan.clients[k], plan.id, sha)]
    return keep, sha


def _write_all(args: ShardArgs, plan: Plan, parts, spill: Spill, tqdm) -> PrepareSummary:
    splits = tuple(args.splits)
    per_writer = {w: split_rows(parts[w], splits, args.seed, w)
                  for ws in plan.clients.values() for w in ws}
    keep, packed_sha = _resume_keep(args, plan)
    packed, pos = None, {}
    if args.link:  # a kept shard proves the packed file is this plan's; else write it anew
        packed = _packed_info(args.out, packed_sha) if keep else \
            write_packed(args.out, plan, per_writer, spill)
        pos = _packed_positions(plan, per_writer)
    shard_packed = dict(packed, path="../" + packed["path"]) if packed else None
    entries: Dict[int, mu.ManifestEntry] = {}
    written = []
    for k in tqdm(sorted(plan.clients), desc="writing shards", disable=not args.progress,
                  leave=False):
        if k in keep:
            meta = mu.read_meta(os.path.join(args.out, f"client_{k}", "meta.json"))
        else:
            rows = {s: _client_rows(plan.clients[k], per_writer, s, pos) for s in mu.SPLITS}
            meta = write_shard(args.out, k, plan.clients[k], rows, spill, plan.id, DATASET,
                               shard_packed)
            written.append(k)
        entries[k] = mu.ManifestEntry(k, f"client_{k}", dict(meta.num_samples), meta.fingerprint,
                                      list(meta.label_hist["train"]))
    manifest = mu.Manifest(dataset=DATASET, strategy=args.strategy, seed=args.seed,
                           splits=list(splits), source=plan.source, clients=entries,
                           num_classes=NUM_CLASSES, sample_type=f"uint8[{SHAPE[0]},{SHAPE[1]}]",
                           packed=packed, created=mu.now_iso())
    man_path = os.path.join(args.out, "manifest.json")
    mu.write_manifest(man_path, manifest)  # last: only now does the partition exist
    plot = plot_partition(os.path.join(args.out, "label_distribution.png"),
                          {k: e.label_hist for k, e in entries.items()}) if args.plot else ""
    samples = sum(sum(e.num_samples.values()) for e in entries.values())
    return PrepareSummary(args.out, man_path, len(entries), samples,
                          _disk_bytes(args.out, entries), 0.0, written, keep, plot)


def _client_rows(writers: List[str], per_writer, split: str, pos) -> Tuple[np.ndarray, np.ndarray]:
    src = [pos[(w, split)] if pos else per_writer[w][split][0] for w in writers]
    ys = [per_writer[w][split][1] for w in writers]
    cat = (lambda a: np.concatenate(a) if a else np.zeros(0, np.int64))
    return cat(src).astype(np.int64), cat(ys).astype(np.int64)


def _disk_bytes(out: str, metas: Dict[int, mu.ManifestEntry]) -> int:
    total = os.path.getsize(os.path.join(out, "manifest.json"))
    for k in metas:
        d = os.path.join(out, f"client_{k}")
        total += sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))
    p = os.path.join(out, PACKED)
    return total + (os.path.getsize(p) if os.path.isfile(p) else 0)
