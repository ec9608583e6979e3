"""manifest_scale: load + validate manifests of 1k / 10k / 100k clients; N real clients joining.

Part 1 times ``load_manifest`` (read + parse + validate; median over repeats) on the swarm's
synthetic manifests (``harness.swarm_manifest.write_swarm_manifest``: the project's own records and
writer, 62-bin label histograms, sha256 fingerprints). Part 2 starts one shard-mode server, then
N real client processes at once (32; 8 with --quick), each with its own shard, and measures the
time until the server logs that all joined. Most of it is N Python+torch start-ups on 2 cores, so
each client's latency from its "connecting" log line to its "joined" line (the server's part) is
reported too.
"""
import os
import time

from bench import common
from bench.common import median, row, timed
from harness import procs

TITLE = "Manifest load time at scale, and many clients joining one server"
LOAD_GOAL_S = 0.5     # at 10,000 clients
JOIN_LATENCY_GOAL_S = 1.0


def load_times(path: str, repeats: int, n: int) -> list:
    from federatedscope.core.data.shard_format import load_manifest
    sizes = []
    ts = timed(lambda: sizes.append(len(load_manifest(path))), repeats)
    assert sizes == [n] * repeats, (sizes, n)
    return ts


def join_test(ctx, n: int) -> dict:
    root = common.dataset(ctx, f"femnist_join{n}", writers=n, seed=7, mean=24, per_file=50)
    extra = ["train.batch_or_epoch", "batch", "train.local_update_steps", "1",
             "federate.join_timeout", "600.0"]
    job = common.BenchJob(ctx, "join", common.shards(ctx, root, n), n, 1, extra, measured=False)
    slog, done = job.log("server"), "clients joined; starting training"
    try:
        server = job.server()
        procs.wait_for(lambda: procs.file_contains(slog, "waiting for"), 120, "server to listen",
                       poll=0.05, watch=[server])
        t0 = time.time()
        for k in range(1, n + 1):
            job.client(k)
        procs.wait_for(lambda: procs.file_contains(slog, done), 600, f"all {n} clients to join",
                       poll=0.05, watch=[server])
        t_all = common.log_times(slog, done)[0] - t0
        time.sleep(0.5)
        # "none exits" means none failed: a 1-batch job may already have finished cleanly.
        alive = sum(p.poll() is None or p.returncode == 0 for p in job.procs)
    finally:
        procs.stop_all(job.procs)  # the join is what is measured; no need to train
    lat, startup = [], []
    for k in range(1, n + 1):
        conn = common.log_times(job.log(f"client_{k}"), "connecting to server")
        joined = common.log_times(job.log(f"client_{k}"), "joined the federation")
        if conn and joined:
            lat.append(joined[0] - conn[0])
            startup.append(conn[0] - t0)
    return {"clients": n, "all_joined_s": t_all, "alive_after_join": alive,
            "join_latency_s": lat, "startup_s": startup, "refused": sum(
                procs.file_contains(job.log(f"client_{k}"), "refused") for k in range(1, n + 1))}


def run(ctx) -> dict:
    from harness.swarm_manifest import write_swarm_manifest
    repeats = {1_000: 5, 10_000: 5} if ctx.quick else {1_000: 5, 10_000: 5, 100_000: 3}
    raw, rows = {"load": {}}, []
    for n, reps in repeats.items():
        t = time.perf_counter()
        path = write_swarm_manifest(ctx.tmp(f"manifest_{n}"), n, declarations=False)[0]
        raw["load"][n] = {"file_bytes": os.path.getsize(path), "write_s": time.perf_counter() - t,
                          "load_s": load_times(path, reps, n)}
        ctx.log(f"  {n} clients: {raw['load'][n]['file_bytes'] / 1e6:.1f} MB, load "
                f"{median(raw['load'][n]['load_s']):.3f}s")
    t10k = median(raw["load"][10_000]["load_s"])
    rows.append(row("load + validate a 10,000-client manifest", t10k, f"{t10k:.3f} s",
                    f"< {LOAD_GOAL_S} s", t10k < LOAD_GOAL_S, headline=True))
    if 100_000 in raw["load"]:
        t100k = median(raw["load"][100_000]["load_s"])
        rows.append(row("load + validate a 100,000-client manifest (scales linearly)", t100k,
                        f"{t100k:.2f} s ({t100k / t10k:.1f}× the 10k time)",
                        f"< {LOAD_GOAL_S * 10:g} s (10× the 10k goal)", t100k < LOAD_GOAL_S * 10))
    want = 8 if ctx.quick else 32
    avail = common.meminfo_mb().get("MemAvailable", 0)
    n = want if avail >= want * 400 else max(4, int(avail // 400))
    ctx.log(f"  {n} client processes joining one server")
    j = raw["join"] = join_test(ctx, n)
    ok = j["alive_after_join"] == n + 1 and len(j["join_latency_s"]) == n and not j["refused"]
    rows.append(row(f"{n} client processes started at once: time until the server has all joined",
                    j["all_joined_s"], f"{j['all_joined_s']:.1f} s, {'all' if ok else 'NOT all'} "
                    f"joined, {j['refused']} refused", f"all {n} join, 0 refused, none exits", ok))
    lat = j["join_latency_s"] or [float("nan")]
    rows.append(row(f"{n} clients: join latency (client 'connecting' -> 'joined' log lines)",
                    median(lat), f"median {median(lat):.2f} s, max {max(lat):.2f} s",
                    f"median < {JOIN_LATENCY_GOAL_S} s", median(lat) < JOIN_LATENCY_GOAL_S))
    context = [
        "Manifest sizes: " + ", ".join(f"{k:,} clients = {v['file_bytes'] / 1e6:.1f} MB"
                                       for k, v in raw["load"].items())
        + "; median of " + "/".join(map(str, repeats.values())) + " loads"
        + (" (--quick leaves out 100,000)." if ctx.quick else "."),
        f"All-joined time ({j['all_joined_s']:.1f} s, {n} processes, {os.cpu_count()} cores) is "
        f"mostly start-up: the median client logged 'connecting' {median(j['startup_s']):.1f} s "
        f"after launch (imports and its shard, {n} at once)."]
    if n < want:
        context.append(f"Reduced to {n} clients: only {avail:.0f} MB of memory was available.")
    return {"rows": rows, "context": context, "raw": raw,
            "summary": {"load_10k_s": t10k, "all_joined_s": j["all_joined_s"], "join_clients": n}}
