"""client_memory: what a client process holds and reads, shard mode vs FS's data_idx mode.

Generated FEMNIST, N = 3 and 10 clients. Each load is its own child process (``bench/child.py
load``) with its files evicted from the page cache first, so ``read_bytes`` is what a cold start
reads. Peak above runtime is the process's private peak minus that of the runtime baseline (idle
processes importing torch + grpc + federatedscope only). The training figure, a real 3-client
job, is the whole VmHWM.
"""
import json
import os
import shutil
import statistics

from bench import common
from bench.common import MB, median, row
from harness import proc_stats

TITLE = "Client memory, bytes read and load time: shard mode vs data_idx mode"
SHARD_GOAL = 1.5          # peak above runtime <= 1.5 x the shard's tensor bytes
TRAIN_GOAL_MB = 350       # a 60-writer client, total, while training
DATA_IDX_FACTOR = 0.7     # data_idx costs >= 0.7 N x shard mode ("~ N x")
NS = (3, 10)
# main.py re-executes itself with glibc's huge-page tunable (malloc_tuning.reexec_with_hugepages):
# the heap then grows by 2 MiB huge pages, a fixed cost that a shard of a few MB cannot hide.
# The smallest shards are loaded once more without it, so a miss can say how much is the loader's.
NO_HUGEPAGES = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}


def baseline_kb(ctx, env=None) -> dict:
    """Peak RSS of idle processes that import torch + grpc + federatedscope only, median over
    repeats: VmHWM and the private peak; memoised, so every memory benchmark subtracts the same
    runtime (``env``: the baseline of processes started with it)."""
    def measure():
        st = [common.run_child(ctx, f"baseline{i}{'_env' if env else ''}", "baseline", [],
                               env=env)["status_kb"] for i in range(1 if ctx.quick else 3)]
        hwm, private = [s["VmHWM"] for s in st], [proc_stats.private_peak_kb(s) for s in st]
        ctx.log(f"  runtime baseline: VmHWM {median(hwm) / 1024:.0f} MB, private "
                f"{median(private) / 1024:.0f} MB (n={len(st)})")
        return {"vmhwm_kb": median(hwm), "private_kb": median(private), "samples_kb": hwm}
    return ctx.memo(f"baseline{sorted((env or {}).items())}", measure)


def data_idx_load_spec(data_root: str, k: int) -> str:
    return json.dumps({"cfg": common.CLIENT_YAML, "opts": [
        "distributed_data.enabled", "False", "data.root", data_root, "data.subsample", "1.0",
        "distribute.data_idx", str(k), "distribute.client_id", str(k)]})


def fs_cache(ctx, data_root: str) -> dict:
    """FS's data_idx path parses the raw JSON once and caches it (femnist/processed); build that
    cache once (a fixture) so data_idx processes are measured in their steady state. Returns the
    report of the load that built it."""
    def build():
        stamp = os.path.join(data_root, "fs_cache_build.json")
        processed = os.path.join(data_root, "femnist", "processed")
        if os.path.isdir(processed) and os.listdir(processed) and os.path.exists(stamp):
            return common.read_json(stamp)
        shutil.rmtree(processed, ignore_errors=True)
        rep = common.run_child(ctx, "fs_cache_build", "load", [data_idx_load_spec(data_root, 1)])
        ctx.log(f"  FS data_idx cache built in {rep['work_s']:.1f}s")
        common.write_json(stamp, rep)
        return rep
    return ctx.memo(f"fs_cache:{data_root}", build)


def training_extra(ctx) -> list:
    """Full runs train one epoch per round (the shipped config); --quick trains 20 batches."""
    return ["train.batch_or_epoch", "batch", "train.local_update_steps", "20"] if ctx.quick else []


def training_job(ctx, mode: str) -> dict:
    """Server + 3 clients (60 writers each), 1 round, shard mode or FS's data_idx mode; the
    server runs with the open audit (``FS_AUDIT_*``) listing the files it opens under the
    scratch dir. Shared by client_memory and server_memory (run once per suite run)."""
    def job():
        big = common.figures_dataset(ctx)
        manifest = common.shards(ctx, big, 3)
        if mode == "data_idx":
            fs_cache(ctx, big)
        audit, n_warn = ctx.tmp(f"job_{mode}_server_opens.txt"), len(ctx.warnings)
        ctx.log(f"  distributed job, {mode} mode: server + 3 clients, 1 round")
        res = common.BenchJob(ctx, f"job_{mode}", manifest if mode == "shard" else None, 3, 1,
                              training_extra(ctx), data_root=big).start(server_env={
                                  "FS_AUDIT_OPEN_LOG": audit, "FS_AUDIT_ROOT": ctx.work}).finish()
        opened = set()
        if os.path.exists(audit):
            with open(audit) as f:
                opened = {line.strip() for line in f if line.strip()}
        data_dirs = tuple(os.path.join(ctx.work, d) + os.sep for d in ("data", "shards"))
        res["server_opened_data_files"] = sorted(p for p in opened if p.startswith(data_dirs))
        res.update(mode=mode, extra=training_extra(ctx), warnings=ctx.warnings[n_warn:],
                   made_by=ctx.bench)
        return res
    res = ctx.memo(f"job:{mode}", job)
    if res["made_by"] != ctx.bench:  # a job shared with an earlier benchmark: repeat its warnings
        for w in res["warnings"]:
            ctx.warn(w)
    return res


def run(ctx) -> dict:
    big = common.figures_dataset(ctx)
    base = baseline_kb(ctx)["private_kb"]
    manifests = {n: common.shards(ctx, big, n) for n in NS}
    first = fs_cache(ctx, big)
    loads, idx_loads = {n: {} for n in NS}, []

    def load(tag: str, spec: str, evict, env=None) -> dict:
        common.drop_page_cache(evict)
        rep = common.run_child(ctx, tag, "load", [spec], env=env)
        return dict(rep, above_baseline_bytes=(
            proc_stats.private_peak_kb(rep["status_kb"]) - baseline_kb(ctx, env)["private_kb"])
            * 1024)

    def shard_load(n: int, k: int, env=None) -> dict:
        rep = load(f"shard_n{n}_c{k}{'_env' if env else ''}",
                   common.shard_load_spec(manifests[n], k), [common.shard_dir(manifests[n], k)],
                   env)
        return dict(rep, shard_tensor_bytes=common.shard_tensor_bytes(manifests[n], k))
    for n in NS:
        for k in [1] if ctx.quick else range(1, n + 1):
            loads[n][k] = shard_load(n, k)
        if not idx_loads or not ctx.quick:  # data_idx does not depend on N: all load everything
            k = len(idx_loads) + 1
            idx_loads.append(load(f"data_idx_c{k}", data_idx_load_spec(big, k),
                                  [os.path.join(big, "femnist", "processed")]))
    job = training_job(ctx, "shard")
    spec = common.shard_load_spec(manifests[3], 1, extra=training_extra(ctx))
    phases = common.run_child(ctx, "phases", "phases", [spec])["phases"]

    def med(reps, key, scale=1.0):
        return median((r[key] if isinstance(key, str) else key(r)) for r in reps) / scale
    idx_peak, idx_read = med(idx_loads, "above_baseline_bytes"), \
        med(idx_loads, lambda r: r["io_during_work"]["read_bytes"])
    rows, summary, per_n = [], {}, {}
    for n in NS:
        reps = list(loads[n].values())
        worst = max(reps, key=lambda r: r["above_baseline_bytes"] / r["shard_tensor_bytes"])
        factor = worst["above_baseline_bytes"] / worst["shard_tensor_bytes"]
        p = per_n[n] = {"peak": med(reps, "above_baseline_bytes"),
                        "read": med(reps, lambda r: r["io_during_work"]["read_bytes"]),
                        "tensor": med(reps, "shard_tensor_bytes")}
        rows.append(row(
            f"N={n}, shard mode: peak RSS above runtime / shard tensor bytes (worst of "
            f"{len(reps)} client{'s' if len(reps) > 1 else ''})", factor,
            f"{factor:.2f} ({worst['above_baseline_bytes'] / MB:.1f} MB for a "
            f"{worst['shard_tensor_bytes'] / MB:.1f} MB shard)", f"≤ {SHARD_GOAL}",
            factor <= SHARD_GOAL, headline=n == NS[-1]))
        for what, i, s in (("peak RSS above runtime", idx_peak, p["peak"]),
                           ("bytes read from disk", idx_read, max(p["read"], 1))):
            rows.append(row(f"N={n}: data_idx / shard mode, {what}", i / s,
                            f"{i / s:.2f}× ({i / MB:.1f} MB vs {s / MB:.1f} MB)",
                            f"≈ N = {n} (≥ {DATA_IDX_FACTOR * n:.1f})",
                            i / s >= DATA_IDX_FACTOR * n))
        summary[f"shard_factor_n{n}"] = factor
    small = [shard_load(NS[-1], k, NO_HUGEPAGES) for k in loads[NS[-1]]]
    plain = max(r["above_baseline_bytes"] / r["shard_tensor_bytes"] for r in small)
    rows.append(row(f"N={NS[-1]}, the same loads with glibc's huge pages off "
                    f"(GLIBC_TUNABLES=glibc.malloc.hugetlb=0): worst peak above runtime / shard "
                    f"tensor bytes", plain, f"{plain:.2f}", "(context: the loader's own cost)",
                    None))
    # marginal cost: least-squares line through (shard bytes, peak above runtime) of every load
    every = [r for n in NS for r in loads[n].values()]
    slope, fixed = statistics.linear_regression([r["shard_tensor_bytes"] for r in every],
                                                [r["above_baseline_bytes"] for r in every])
    rows.append(row(f"shard mode: marginal peak RSS per shard byte (line through {len(every)} "
                    f"loads)", slope, f"{slope:.2f} (+ a fixed {fixed / MB:.1f} MB)",
                    f"≤ {SHARD_GOAL}", slope <= SHARD_GOAL))
    worst_st = max((r["status_kb"] for r in job["clients"].values()), key=lambda s: s["VmHWM"])
    train_peak, train_file = worst_st["VmHWM"] * 1024, worst_st.get("RssFile", 0) * 1024
    writers = min(len(common.shard_meta(manifests[3], k).writer_ids) for k in (1, 2, 3))
    private = train_peak - train_file
    rows.append(row(f"{writers}-writer client, total peak RSS while training (1 round, worst of 3)",
                    train_peak / MB, f"{train_peak / MB:.0f} MB ({private / MB:.0f} MB private, "
                    f"{train_file / MB:.0f} MB file-backed)", f"≤ {TRAIN_GOAL_MB} MB",
                    train_peak / MB <= TRAIN_GOAL_MB, headline=True))
    summary.update(marginal_factor=slope, train_peak_mb=train_peak / MB)
    ph = [(p["phase"], p["status_kb"]["VmHWM"] / 1024, p["status_kb"]["VmRSS"] / 1024,
           p["modules"]) for p in phases]

    def each(fn, unit=" MB", digits=1):
        return ", ".join(f"N={n} {fn(list(loads[n].values())):.{digits}f}{unit}" for n in NS) + \
            f", data_idx {fn(idx_loads):.{digits}f}{unit}"
    context = [
        f"Runtime baseline (imports only): {base / 1024:.0f} MB private peak "
        f"({baseline_kb(ctx)['vmhwm_kb'] / 1024:.0f} MB VmHWM), median of "
        f"{len(baseline_kb(ctx)['samples_kb'])}. data_idx keeps FS's semantics (every "
        f"client loads all writers), so it is measured once per run (twice in full runs) and "
        f"compared with each N.",
        "Load time (get_data, cold page cache): " + each(lambda rs: med(rs, "work_s"), " s", 2)
        + f" (data_idx from FS's processed cache; building it took {first['work_s']:.1f} s).",
        "Peak above runtime, same process (peak reset after imports): "
        + each(lambda rs: med(rs, "peak_above_start_kb", 1024)) + ".",
        "Bytes requested (rchar, includes the checksum pass): "
        + each(lambda rs: med(rs, lambda r: r["io_during_work"]["rchar"], MB)) + ".",
        f"Training job: {'20 batches' if ctx.quick else 'one epoch'}, 1 round; client peaks "
        + ", ".join(f"#{k} {r['status_kb']['VmHWM'] / 1024:.0f} MB"
                    for k, r in job["clients"].items()) + ".",
        "A training client's memory by phase (peak reset before each; peak / resident MB, modules "
        "imported): " + "; ".join(f"{n}: {h:.0f} / {r:.0f} MB, {m} modules" for n, h, r, m in ph)
        + "."]
    notes = []
    if any(r["met"] is False and "shard tensor bytes" in r["figure"] for r in rows):
        growth = {k: med(every, f"{k}_growth_kb", 1024) for k in ("RssAnon", "RssFile")}
        notes.append(
            f"Missed for small shards: peak above runtime = {slope:.2f} × shard bytes + a fixed "
            f"{fixed / MB:.1f} MB ({growth['RssFile']:.1f} MB file-backed library pages, "
            f"{growth['RssAnon']:.1f} MB private while loading), which dominates a "
            f"{per_n[NS[-1]]['tensor'] / MB:.1f} MB shard; the marginal cost per byte is what the "
            f"design controls. The data_idx/shard RSS ratios fall short of N for the same reason. "
            f"Loaded again without glibc's huge pages, the same shards peak at {plain:.2f} × "
            f"their bytes at worst: the rest is the heap growing by 2 MiB huge pages, which "
            f"main.py asks for because a model-sized buffer is then faulted in 2 MiB at a time "
            f"(malloc_tuning: a 25 MB frame joined in 6 ms instead of 23 ms).")
    if train_peak / MB > TRAIN_GOAL_MB:
        notes.append(f"Missed: a training client peaks at {train_peak / MB:.0f} MB, of which "
                     f"{train_file / MB:.0f} MB are file-backed pages (library code, shared and "
                     f"reclaimable; the runtime baseline itself had "
                     f"{baseline_kb(ctx)['vmhwm_kb'] / 1024 - base / 1024:.0f} MB); the phases "
                     f"above say where the rest goes.")

    def draw(ax):
        ax.bar([f"shard, N={n}" for n in NS] + ["data_idx (any N)"],
               [per_n[n]["peak"] / MB for n in NS] + [idx_peak / MB],
               color=["tab:green"] * len(NS) + ["tab:red"])
        for i, n in enumerate(NS):
            ax.plot([i - 0.4, i + 0.4], [SHARD_GOAL * per_n[n]["tensor"] / MB] * 2, "k--", lw=1)
        ax.set_ylabel("peak RSS above runtime (MB)")
        ax.set_title(f"Client data memory (runtime {base / 1024:.0f} MB not shown;\n"
                     f"dashed: goal = 1.5 × shard tensor bytes)", fontsize=9)
    return {"rows": rows, "notes": notes, "context": context,
            "plots": common.save_plot(ctx, "client_memory.png", draw, (6, 3.2)),
            "raw": {"baseline_kb": baseline_kb(ctx), "shard_loads": loads,
                    "no_hugepages": {"baseline_kb": baseline_kb(ctx, NO_HUGEPAGES),
                                     "shard_loads": small},
                    "data_idx_loads": idx_loads, "fs_cache_first_load": first,
                    "training_job": common.no_logs(job), "phases": phases},
            "summary": summary}
