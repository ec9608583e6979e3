"""server_memory: the server's peak RSS above the runtime, shard mode vs FS's data_idx mode.

Both are real 3-client distributed jobs of one round (the jobs ``client_memory`` uses, run once
per suite run). The server's peak is its own private peak at exit; the runtime baseline is the
same idle-import process as for clients. The open audit (``FS_AUDIT_*``,
``federatedscope/core/auditing.py``) lists every file the server opened under the scratch dir.
"""
import os
import threading

from bench import common
from bench.client_memory import baseline_kb, training_extra, training_job
from bench.common import MB, row
from harness import proc_stats

TITLE = "Server memory: shard mode (manifest only) vs data_idx mode; big-model budget"
GOAL_MB = 50
BIG_HIDDEN = 2048     # ConvNet2 hidden 2048: ~26 MB of tensors per model
MODEL_COPIES = 6      # budget: runtime + 6 x the model's raw bytes, any number of clients
ARENA2 = {"MALLOC_ARENA_MAX": "2"}
# (phase, marker, whose log)
PHASES = [("model built, listening", "listening on", "server"),
          ("clients joining", "joined", "server"),
          ("round 1: broadcast to 3 clients, local training", "starting training", "server"),
          ("round 1: updates arriving, aggregation", "round 1 trained", "clients"),
          ("evaluation 1, round 2", "round 1/2 aggregated", "server"),
          ("round 2 aggregated, evaluation 2", "round 2/2 aggregated", "server"),
          ("finishing", "final weighted-avg", "server")]


def _big_model_job(ctx, manifest: str, online: bool, env: dict = None) -> dict:
    """Server + 3 clients at hidden 2048, 2 rounds of 5 batches, evaluation every round; the
    server's VmRSS sampled every 20 ms, so ``timeline`` says in which phase its memory grows."""
    extra = ["model.hidden", str(BIG_HIDDEN), "train.batch_or_epoch", "batch",
             "train.local_update_steps", "5", "federate.online_aggr", str(online)]
    tag = f"h{BIG_HIDDEN}_{'online' if online else 'batch'}{'_arena2' if env else ''}"
    job = common.BenchJob(ctx, tag, manifest, 3, 2, extra).start(env)
    samples = []
    t = threading.Thread(target=lambda: samples.extend(common.sample_procs(
        {"server": job.procs[0]}, lambda pid: proc_stats.status(pid)["VmRSS"], 0.02)), daemon=True)
    t.start()
    res = job.finish(timeout=900)
    t.join()
    starts = sorted(  # a phase starts at the first log line holding its marker
        (min(ts), name) for name, marker, whose in PHASES
        for ts in [[t for k, path in res["logs"].items() if (k == "server") == (whose == "server")
                    for t in common.log_times(path, marker)]] if ts)
    res["timeline"] = []
    for (t0, name), t1 in zip(starts, [t for t, _ in starts[1:]] + [float("inf")]):
        kbs = [s["server"] for ts, s in samples if t0 <= ts < t1 and s["server"] is not None]
        if kbs:
            res["timeline"].append((name, max(kbs) / 1024))
    return common.no_logs(res)


def big_model_rows(ctx, base: float, manifest: str):
    model = common.model_bytes("model.hidden", str(BIG_HIDDEN))
    budget = base + MODEL_COPIES * model
    rows, raw, context, notes = [], {}, [], []
    for online in (True, False):
        job = raw["online" if online else "batch"] = _big_model_job(ctx, manifest, online)
        st = job["server"]["status_kb"]
        peak = proc_stats.private_peak_kb(st) * 1024
        label = "online aggregation" if online else "batch aggregation (the shipped YAML)"
        rows.append(row(
            f"server peak RSS / (runtime + {MODEL_COPIES} × model bytes), ConvNet2 hidden "
            f"{BIG_HIDDEN}, 3 clients, {label}", peak / budget,
            f"{peak / budget:.2f} ({peak / MB:.0f} MB vs {base / MB:.0f} + {MODEL_COPIES} × "
            f"{model / MB:.1f} = {budget / MB:.0f} MB)", "≤ 1", peak <= budget, headline=online))
        context.append(
            f"hidden {BIG_HIDDEN}, {label}: at exit RssAnon {st.get('RssAnon', 0) / 1024:.0f} MB "
            f"(private heap), RssFile {st.get('RssFile', 0) / 1024:.0f} MB (mapped libraries); "
            f"server CPU {job['server']['cpu_s']:.1f} s. Highest VmRSS per phase (20 ms "
            f"samples): " + "; ".join(f"{n} {mb:.0f} MB" for n, mb in job["timeline"]) + ".")
        if online and peak > budget:  # how much is freed memory kept by glibc's per-thread arenas
            ctx.log("  what-if: the hidden-2048 online job again with MALLOC_ARENA_MAX=2")
            a = raw["online_arena2"] = _big_model_job(ctx, manifest, True, env=ARENA2)
            a_peak = proc_stats.private_peak_kb(a["server"]["status_kb"]) * 1024
            notes.append(
                f"Missed at hidden {BIG_HIDDEN}, online aggregation: runtime + "
                f"{(peak - base) / model:.1f} model copies; with MALLOC_ARENA_MAX=2 "
                f"{a_peak / MB:.0f} MB ({(a_peak - base) / model:.1f} copies): "
                f"{(peak - a_peak) / MB:.0f} MB is freed memory kept by glibc's per-thread arenas "
                f"(gRPC's threads).")
    return rows, raw, context, notes


def run(ctx) -> dict:
    base = baseline_kb(ctx)["private_kb"] * 1024
    shard, idx = training_job(ctx, "shard"), training_job(ctx, "data_idx")
    s_peak, i_peak = (proc_stats.private_peak_kb(j["server"]["status_kb"]) * 1024 - base
                      for j in (shard, idx))
    data_files = shard["server_opened_data_files"]
    manifest = common.shards(ctx, common.figures_dataset(ctx), 3)
    others = [p for p in data_files if os.path.basename(p) != "manifest.json"]
    rows = [
        row("shard mode: server peak RSS above runtime", s_peak / MB, f"{s_peak / MB:.1f} MB",
            f"≤ {GOAL_MB} MB", s_peak / MB <= GOAL_MB, headline=True),
        row("shard mode: data files the server opened (besides manifest.json)", len(others),
            f"{len(others)} (opened: " + (", ".join(os.path.relpath(p, ctx.work)
                                                    for p in data_files) or "nothing") + ")",
            "0 (0 samples loaded)", not others),
        row("data_idx mode / shard mode: server peak RSS above runtime", i_peak / max(s_peak, 1),
            f"{i_peak / max(s_peak, 1):.1f}× ({i_peak / MB:.1f} MB vs {s_peak / MB:.1f} MB)",
            "> 1 (shard mode removes the data from the server)", i_peak > s_peak)]
    big_rows, big_raw, big_context, notes = big_model_rows(ctx, base, manifest)
    rows += big_rows
    arena = None
    if s_peak / MB > GOAL_MB and not ctx.quick:  # the same job with glibc's arenas capped
        ctx.log("  what-if: the shard-mode job again with MALLOC_ARENA_MAX=2")
        arena = common.BenchJob(ctx, "arena2", manifest, 3, 1, training_extra(ctx)).start(
            ARENA2).finish()
        a_peak = proc_stats.private_peak_kb(arena["server"]["status_kb"]) * 1024 - base
        notes.append(
            f"Missed: the shard-mode server opened only the manifest; with MALLOC_ARENA_MAX=2 it "
            f"peaks {a_peak / MB:.0f} MB above the runtime: {(s_peak - a_peak) / MB:.0f} MB is "
            f"glibc malloc arenas (one per gRPC thread).")
    elif s_peak / MB > GOAL_MB:
        notes.append("Missed; the full run measures how much of it glibc's per-thread malloc "
                     "arenas account for (a what-if job with MALLOC_ARENA_MAX=2).")
    srv, isrv = shard["server"], idx["server"]
    context = [
        f"Runtime baseline {base / MB:.0f} MB. Server, shard vs data_idx mode: CPU "
        f"{srv['cpu_s']:.1f} vs {isrv['cpu_s']:.1f} s, bytes read (rchar, modules included) "
        f"{srv['io']['rchar'] / MB:.1f} vs {isrv['io']['rchar'] / MB:.1f} MB; manifest "
        f"{os.path.relpath(manifest, ctx.work)}."] + big_context
    return {"rows": rows, "notes": notes, "context": context,
            "raw": {"baseline_bytes": base, "shard_job": common.no_logs(shard),
                    "data_idx_job": common.no_logs(idx),
                    "arena2_job": common.no_logs(arena) if arena else None,
                    "big_model_jobs": big_raw},
            "summary": {"server_above_runtime_mb": s_peak / MB}}
