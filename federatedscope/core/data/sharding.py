"""Offline partition of a registered dataset into per-client shards (logic of prepare_shards.py).

The input is read only through the dataset's registered ``DatasetSpec`` (``--dataset`` = FS's
``data.type``): its reader, sample dtype/shape and class count. Streaming design, so peak memory
is bounded by the largest input file, not the dataset:
1. one parse of the input (``sharding_input``; its pieces in ``--workers`` processes when the
   spec has pieces): samples to a spill file, labels + offsets in memory;
2. writers are assigned to clients (never split) and each writer is split train/val/test with
   THE per-writer rule (``sharding_plan.writer_split``, the FS-style reader's too), applied to
   row numbers, so no samples move until they are written (``sharding_plan``);
3. each client's shard is written from the spill in bounded windows into
   ``<out>/.staging/client_<k>.tmp-<pid>``, its ``meta.json`` last, then renamed to ``client_<k>``
   (no fsync per file: the staged set is made durable at once by ``swap_in``);
4. the staged ``manifest.json`` is written last; ``swap_in`` syncs and verifies the staged set
   and only then swaps it in (``sharding_output``): a failed or killed run leaves an existing set
   byte-identical, and ``--resume`` keeps every shard that verifies for this plan (a shard torn
   by a crash before the sync fails its sha256 and is written again).
"""
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from federatedscope.core.auxiliaries import client_tokens
from federatedscope.core.data import shard_format as sf
from federatedscope.core.data import sharding_output as so
from federatedscope.core.data.dataset_spec import DatasetSpec, get_spec
from federatedscope.core.data.distributed_loader import verify_shard
from federatedscope.core.data.shard_format import split_file
from federatedscope.core.data.sharding_input import (Spill, auto_workers, deal_parts, find_inputs,
                                                     progress_bar, read_input)
from federatedscope.core.data.sharding_plan import (SAMPLE_STRATEGIES, Plan, Rows,  # noqa: F401
                                                    ShardingError, assign,
                                                    plan_id, split_rows, subsample_writers,
                                                    writer_order)
from federatedscope.core.data.sharding_plot import plot_partition
from federatedscope.core.data.spec_data import kept_writers

PACKED = os.path.join("packed", "data.pt")


@dataclass
class ShardArgs:
    dataset: str = ""          # FS's data.type; its DatasetSpec must be registered
    root: str = "data"
    clients: int = 3
    strategy: str = "sequential"  # or FS's splitters 'lda' / 'iid' (samples, not writers)
    assignment: str = ""
    alpha: float = 0.5         # the 'lda' splitter's Dirichlet concentration
    consistent: bool = False   # FS's data.consistent_label_distribution (lda: test follows train)
    seed: int = 12345
    splits: Tuple[float, float, float] = (0.6, 0.2, 0.2)
    subsample: float = 1.0
    out: str = ""              # default <root>/<dataset>/shards
    overwrite: bool = False
    resume: bool = False
    link: bool = False
    plot: bool = False
    progress: bool = True
    tokens: str = ""           # folder for new client_<k>.token files (manifest keeps hashes)
    allow_empty_train: bool = False  # accept clients whose train split is empty
    workers: int = 0           # processes parsing the input (0: 2 for a large input, else 1)


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


def shard_verifies(shard: str, k: int, writers: List[str], pid: str,
                   packed_sha: Optional[str]) -> bool:
    """A finished shard may be kept by --resume only if it is this plan's and hashes match."""
    try:
        meta = verify_shard(shard, client_id=k)
    except sf.ShardError:
        return False
    return (meta.plan_id == pid and list(meta.writer_ids) == list(writers)
            and (meta.packed or {}).get("sha256") == packed_sha)


# ----------------------------------------------------------------------------- shards
def write_shard(out: str, k: int, writers: List[str], rows: Dict[str, Rows], spill: Spill,
                pid: str, spec: DatasetSpec, packed: Optional[dict]) -> sf.ShardMeta:
    """rows[split] = (spill rows or packed positions, labels); atomic via temp dir + rename."""
    tmp = os.path.join(out, f"client_{k}.tmp-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    files: Dict[str, sf.FileEntry] = {}
    for split in sf.SPLITS:
        r, y = rows[split]
        path = os.path.join(tmp, f"{split}.pt")
        # tmp is this run's own directory, published by its rename below: no temp file per split
        if packed is not None:
            sha = split_file.write_index(path, r, durable=False, private=True)
        else:
            sha = split_file.write_split_chunks(path, y, spec.sample_shape, spill.chunks(r),
                                                spec.sample_dtype, durable=False, private=True)
        files[f"{split}.pt"] = sf.FileEntry(os.path.getsize(path), sha)
    ncls = spec.num_classes
    meta = sf.ShardMeta(
        client_id=k, dataset=spec.name, writer_ids=list(writers),
        num_samples={s: int(len(rows[s][1])) for s in sf.SPLITS},
        label_hist={s: np.bincount(rows[s][1], minlength=ncls).tolist() for s in sf.SPLITS},
        files=files, num_classes=ncls, sample_shape=list(spec.sample_shape),
        sample_dtype=spec.sample_dtype, packed=packed, plan_id=pid, created=sf.now_iso())
    meta.fingerprint = sf.compute_fingerprint(files, packed)
    sf.write_meta(os.path.join(tmp, "meta.json"), meta, durable=False)
    final = os.path.join(out, f"client_{k}")
    if os.path.exists(final):
        shutil.rmtree(final)
    os.rename(tmp, final)
    return meta


def write_packed(out: str, plan: Plan, per_writer: Dict[str, Dict[str, Rows]],
                 spill: Spill, spec: DatasetSpec) -> dict:
    """--link: one copy of all used samples, client by client, writer by writer, train|val|test.

    That order makes every client split a few contiguous runs, so streaming reads stay cheap.
    """
    rows = [per_writer[w][s] for w, s in _packed_order(plan)]
    all_rows = np.concatenate([r for r, _ in rows]) if rows else np.zeros(0, np.int64)
    all_y = np.concatenate([y for _, y in rows]) if rows else np.zeros(0, np.int64)
    path = os.path.join(out, PACKED)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return _packed_info(out, split_file.write_split_chunks(
        path, all_y, spec.sample_shape, spill.chunks(all_rows), spec.sample_dtype, durable=False))


def _packed_order(plan: Plan) -> List[Tuple[str, str]]:
    return [(w, s) for k in sorted(plan.clients) for w in plan.clients[k] for s in sf.SPLITS]


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


def prepare_shards(args: ShardArgs, cmd: str = "") -> PrepareSummary:
    """Run the whole partition; see the module doc for the order of writes."""
    t0 = time.perf_counter()
    try:
        spec = get_spec(args.dataset)
    except ValueError as e:
        raise ShardingError(f"--dataset {args.dataset!r}: {e}") from None
    args.dataset = spec.name
    args.out = args.out or os.path.join(args.root, spec.name, "shards")
    cmd = cmd or sf.recreate_command(args.out, spec.name, args.clients, root=args.root)
    if args.overwrite and args.resume:
        raise ShardingError("--overwrite and --resume exclude each other: --overwrite starts "
                            "over, --resume keeps the shards that verify")
    src_dir, inputs = find_inputs(spec, args.root)  # fail on bad input before touching output
    os.makedirs(args.out, exist_ok=True)
    lock = so.lock_out(args.out)
    spill, staged_tokens, fresh = None, [], False
    try:
        ex = so.look(args.out)
        so.check_flags(args, ex, cmd)
        hashes = so.carry_tokens(args, ex, cmd)
        fresh = args.overwrite or not os.path.isdir(os.path.join(args.out, so.STAGE))
        stage = so.open_stage(args)
        spill = Spill(os.path.join(stage, f".spill-{os.getpid()}.bin"), spec)
        workers = args.workers or auto_workers(
            sum(os.path.getsize(p) for p in inputs if os.path.isfile(p)))
        parts, kind = read_input(spec, args.root, inputs, spill, args.progress, workers)
        parts = _by_splitter(args, spec, parts, spill)
        plan = _make_plan(args, kind, src_dir, inputs, parts)
        if args.tokens:
            staged_tokens = sorted(plan.clients)
            hashes = client_tokens.stage_tokens(args.tokens, staged_tokens)
        # --resume finishes or re-verifies the same partition: keep its creation time, so a
        # resume that had nothing to redo leaves manifest.json byte-identical
        created = ex.manifest.created if (args.resume and ex.manifest is not None
                                          and ex.manifest.created) else sf.now_iso()
        summary = _write_all(args, spec, plan, parts, spill, stage, hashes, created)
        spill.close()
        spill = None
        so.swap_in(args.out, stage)  # verifies the staged set first
        if staged_tokens:
            client_tokens.commit(args.tokens, staged_tokens)
            staged_tokens = []
    except BaseException:
        if spill is not None:
            spill.close()
            spill = None
        if fresh:  # a refused or failed run leaves no .staging that would block the next one
            so.drop_stage_if_empty(args.out)
        raise
    finally:
        if spill is not None:
            spill.close()
        if staged_tokens:
            client_tokens.discard(args.tokens, staged_tokens)
        os.close(lock)
    summary.bytes = _disk_bytes(args.out, summary.written + summary.reused)
    if summary.plot:
        summary.plot = os.path.join(args.out, os.path.basename(summary.plot))
    summary.seconds = time.perf_counter() - t0
    return summary


def _make_plan(args: ShardArgs, kind: str, src_dir: str, inputs: List[str], parts) -> Plan:
    ids = writer_order(list(parts))
    # a splitter made one writer per client already (client_1..N, in that order), from the
    # writers --subsample kept
    sampled = args.strategy in SAMPLE_STRATEGIES
    chosen = ids if sampled else subsample_writers(ids, args.subsample, args.seed, args.strategy)
    by_writer = "sequential" if sampled else args.strategy
    clients = assign(chosen, ids, args.clients, by_writer, args.seed, args.assignment)
    options = so.run_options(args)
    source = {"kind": kind, "root": os.path.abspath(args.root), "path": src_dir,
              "inputs": len(inputs), "writers": len(ids),
              "writers_used": sum(len(w) for w in clients.values()), "subsample": args.subsample,
              "options": options}
    return Plan(clients, source, plan_id(options, args.dataset, src_dir, inputs, clients))


def _by_splitter(args: ShardArgs, spec: DatasetSpec, parts, spill: Spill):
    """--strategy lda/iid: the samples dealt by FS's splitter (one writer per client); a dataset
    without writers needs one."""
    if args.strategy not in SAMPLE_STRATEGIES:
        if not spec.has_writers:
            raise ShardingError(f"--dataset {spec.name} has no writers to assign to clients; deal "
                                f"its samples with --strategy lda --alpha 0.5 (FS's baseline "
                                f"splitter) or --strategy iid")
        return parts
    if args.subsample < 1.0:
        if not spec.has_writers:
            raise ShardingError(f"--subsample {args.subsample} chooses writers, and --dataset "
                                f"{spec.name} has none: drop --subsample")
        parts = kept_writers(parts, args.subsample, args.seed)   # as data.subsample does
    if args.strategy == "lda" and not args.alpha > 0:
        # the splitter's own message names FS's config key, not the flag the user typed
        raise ShardingError(f"--alpha {args.alpha} must be > 0 (the Dirichlet concentration of "
                            f"--strategy lda; FS's baseline is 0.5)")
    # imported when called: the splitters' registry loads the domain packages (see spec_data)
    from federatedscope.core.auxiliaries.splitter_builder import build_splitter
    try:
        splitter = build_splitter(args.strategy, args.clients,
                                  [{"alpha": args.alpha}] if args.strategy == "lda" else [])
    except ValueError as e:
        raise ShardingError(f"--strategy {args.strategy}: {e}") from None
    return deal_parts(parts, spill, splitter, args.seed, args.consistent)


def _check_train(args: ShardArgs, plan: Plan, per_writer) -> None:
    """A client with no train samples trains nothing but still counts: refuse it up front."""
    if args.allow_empty_train:
        return
    empty = [k for k, ws in sorted(plan.clients.items())
             if sum(len(per_writer[w]["train"][1]) for w in ws) == 0]
    if empty:
        raise ShardingError(
            f"client(s) {', '.join(map(str, empty[:8]))}{' ...' if len(empty) > 8 else ''} would "
            f"have 0 train samples (--splits {','.join(f'{v:g}' for v in args.splits)}); they "
            f"would train on nothing every round. Nothing was changed. Give train a larger "
            f"fraction (e.g. --splits 0.6,0.2,0.2) or fewer --clients, or pass "
            f"--allow-empty-train if this is intended")


def _candidates(args: ShardArgs, stage: str, k: int) -> List[str]:
    return [os.path.join(stage, f"client_{k}"), os.path.join(args.out, f"client_{k}")]


def _packed_candidate(args: ShardArgs, stage: str) -> Tuple[str, Optional[str]]:
    for p in (os.path.join(stage, PACKED), os.path.join(args.out, PACKED)):
        if os.path.isfile(p):
            return p, split_file.sha256_file(p)
    return "", None


def _resume_keep(args: ShardArgs, plan: Plan, stage: str) -> Tuple[List[int], Optional[str]]:
    """Shards --resume keeps (adopted into the stage), and for --link the packed file's sha."""
    if not args.resume:
        return [], None
    path, sha = _packed_candidate(args, stage) if args.link else ("", None)
    if args.link and not path:
        return [], None
    keep = []
    for k in sorted(plan.clients):
        for cand in _candidates(args, stage, k):
            if shard_verifies(cand, k, plan.clients[k], plan.id, sha):
                if cand != _candidates(args, stage, k)[0]:
                    so.adopt(cand, os.path.join(stage, f"client_{k}"))
                keep.append(k)
                break
    if keep and path and path != os.path.join(stage, PACKED):
        so.adopt_file(path, os.path.join(stage, PACKED))
    return keep, sha


def _write_all(args: ShardArgs, spec: DatasetSpec, plan: Plan, parts, spill: Spill, stage: str,
               hashes: Dict[int, str], created: str) -> PrepareSummary:
    splits = tuple(args.splits)
    per_writer = {w: split_rows(parts[w], splits, args.seed, w)
                  for ws in plan.clients.values() for w in ws}
    _check_train(args, plan, per_writer)
    keep, packed_sha = _resume_keep(args, plan, stage)
    packed, pos = None, {}
    if args.link:  # a kept shard proves the packed file is this plan's; else write it anew
        packed = _packed_info(stage, packed_sha) if keep else \
            write_packed(stage, plan, per_writer, spill, spec)
        pos = _packed_positions(plan, per_writer)
    shard_packed = dict(packed, path="../" + packed["path"]) if packed else None
    entries: Dict[int, sf.ManifestEntry] = {}
    written = []
    bar = progress_bar(args.progress, total=len(plan.clients), desc="writing shards",
                       leave=False)
    for k in sorted(plan.clients):
        if k in keep:
            meta = sf.read_meta(os.path.join(stage, f"client_{k}", "meta.json"))
        else:
            rows = {s: _client_rows(plan.clients[k], per_writer, s, pos) for s in sf.SPLITS}
            meta = write_shard(stage, k, plan.clients[k], rows, spill, plan.id, spec,
                               shard_packed)
            written.append(k)
        entries[k] = sf.ManifestEntry(k, f"client_{k}", dict(meta.num_samples), meta.fingerprint,
                                      list(meta.label_hist["train"]), hashes.get(k, ""))
        bar.update(1)
    bar.close()
    manifest = sf.Manifest(dataset=spec.name, strategy=args.strategy, seed=args.seed,
                           splits=list(splits), source=plan.source, clients=entries,
                           num_classes=spec.num_classes, sample_type=spec.sample_type,
                           packed=packed, created=created, writer_ids=dict(plan.clients))
    # last: only now does the partition exist
    sf.write_manifest(os.path.join(stage, "manifest.json"), manifest)
    plot = plot_partition(os.path.join(stage, "label_distribution.png"),
                          {k: e.label_hist for k, e in entries.items()}) if args.plot else ""
    samples = sum(sum(e.num_samples.values()) for e in entries.values())
    return PrepareSummary(args.out, os.path.join(args.out, "manifest.json"), len(entries),
                          samples, 0, 0.0, written, keep, plot)


def _client_rows(writers: List[str], per_writer, split: str, pos) -> Tuple[np.ndarray, np.ndarray]:
    src = [pos[(w, split)] if pos else per_writer[w][split][0] for w in writers]
    ys = [per_writer[w][split][1] for w in writers]
    cat = (lambda a: np.concatenate(a) if a else np.zeros(0, np.int64))
    return cat(src).astype(np.int64), cat(ys).astype(np.int64)


def _disk_bytes(out: str, ids: List[int]) -> int:
    total = os.path.getsize(os.path.join(out, "manifest.json"))
    for k in ids:
        d = os.path.join(out, f"client_{k}")
        total += sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))
    p = os.path.join(out, PACKED)
    return total + (os.path.getsize(p) if os.path.isfile(p) else 0)
