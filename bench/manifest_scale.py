"""manifest_scale: load + validate manifests of 1k / 10k / 100k clients; N real clients joining.

Part 1 synthesises ``manifest.json`` files (``harness.swarm.write_swarm_manifest``: the project's
own dataclasses and writer, 62-bin label histograms, sha256 fingerprints) and times
``load_manifest`` (read + parse + validate), median over repeats.

Part 2 starts one shard-mode server and then N real client processes at once (32; 8 with
--quick), each with its own shard, and measures the time until the server logs that all N joined.
Most of it is N Python+torch start-ups on 2 cores, so the per-client latency from a client's
"connecting" log line to its "joined" line is reported too: that part is the server's.
"""
import os
import time

from bench import common
from bench.common import median, row

TITLE = "Manifest load time at scale, and many clients joining one server"
LOAD_GOAL_S = 0.5     # at 10,000 clients
JOIN_LATENCY_GOAL_S = 1.0


def synth_manifest(out_dir: str, n: int) -> "tuple[str, int]":
    """The swarm's synthetic manifest of ``n`` clients (62-bin label histograms, sha256
    fingerprints and token hashes, like a real partition): (path, file bytes)."""
    from harness.swarm import write_swarm_manifest
    path = write_swarm_manifest(out_dir, n, declarations=False)[0]
    return path, os.path.getsize(path)


def load_times(path: str, repeats: int, n: int):
    from federatedscope.core.data.shard_format import load_manifest
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        entries = load_manifest(path)
        ts.append(time.perf_counter() - t)
        assert len(entries) == n
    return ts


def join_test(ctx, n: int) -> dict:
    root = common.dataset(ctx, f"femnist_join{n}", writers=n, seed=7, mean=24, per_file=50)
    manifest = common.shards(ctx, root, n)
    extra = ["train.batch_or_epoch", "batch", "train.local_update_steps", "1",
             "federate.join_timeout", "600.0"]
    job = common.BenchJob(ctx, "join", manifest, n, 1, extra, measured=False)
    slog = job.log("server")
    procs = []
    try:
        procs.append(job.server())
        common.wait_for(lambda: common.file_has(slog, "waiting for"), 120, "server to listen", procs)
        t0_wall = time.time()
        for k in range(1, n + 1):
            procs.append(job.client(k))
        common.wait_for(lambda: common.file_has(slog, "clients joined; starting training"), 600,
                        f"all {n} clients to join", procs[:1])
        t_all = common.log_times(slog, "clients joined; starting training")[0] - t0_wall
        time.sleep(0.5)
        # "none exits" means none failed: a 1-batch job may already have finished cleanly.
        alive = sum(p.poll() is None or p.returncode == 0 for p in procs)
    finally:
        common.kill_all(procs)  # the join is what is measured; no need to train
    lat, startup = [], []
    for k in range(1, n + 1):
        log = job.log(f"client_{k}")
        conn = common.log_times(log, "connecting to server")
        joined = common.log_times(log, "joined the federation")
        if conn and joined:
            lat.append(joined[0] - conn[0])
            startup.append(conn[0] - t0_wall)
    return {"clients": n, "all_joined_s": t_all, "alive_after_join": alive,
            "join_latency_s": lat, "startup_s": startup,
            "refused": sum(common.file_has(job.log(f"client_{k}"), "refused") for k in range(1, n + 1))}


def run(ctx) -> dict:
    sizes = (1_000, 10_000) if ctx.quick else (1_000, 10_000, 100_000)
    repeats = {1_000: 5, 10_000: 5, 100_000: 3}
    raw, rows = {"load": {}}, []
    for n in sizes:
        t = time.perf_counter()
        path, size = synth_manifest(ctx.tmp(f"manifest_{n}"), n)
        write_s = time.perf_counter() - t
        ts = load_times(path, repeats[n], n)
        raw["load"][n] = {"file_bytes": size, "write_s": write_s, "load_s": ts}
        ctx.log(f"  {n} clients: {size / 1e6:.1f} MB, load {median(ts):.3f}s")
    t10k = median(raw["load"][10_000]["load_s"])
    rows.append(dict(row("load + validate a 10,000-client manifest", t10k, f"{t10k:.3f} s",
                         f"< {LOAD_GOAL_S} s", t10k < LOAD_GOAL_S), headline=True))
    if 100_000 in raw["load"]:
        t100k = median(raw["load"][100_000]["load_s"])
        rows.append(row("load + validate a 100,000-client manifest (scales linearly)", t100k,
                        f"{t100k:.2f} s ({t100k / t10k:.1f}× the 10k time)",
                        f"< {LOAD_GOAL_S * 10:g} s (10× the 10k goal)", t100k < LOAD_GOAL_S * 10))
    n = 8 if ctx.quick else 32
    avail = common.meminfo_mb().get("MemAvailable", 0)
    if avail < n * 400:
        n = max(4, int(avail // 400))
    ctx.log(f"  {n} client processes joining one server")
    j = join_test(ctx, n)
    raw["join"] = j
    ok = j["alive_after_join"] == n + 1 and len(j["join_latency_s"]) == n and not j["refused"]
    rows.append(row(f"{n} client processes started at once: time until the server has all joined",
                    j["all_joined_s"], f"{j['all_joined_s']:.1f} s, {'all' if ok else 'NOT all'} "
                    f"joined, {j['refused']} refused", f"all {n} join, 0 refused, none exits", ok))
    lat_med = median(j["join_latency_s"]) if j["join_latency_s"] else float("nan")
    lat_max = max(j["join_latency_s"]) if j["join_latency_s"] else float("nan")
    rows.append(row(f"{n} clients: join latency (client 'connecting' -> 'joined' log lines)",
                    lat_med, f"median {lat_med:.2f} s, max {lat_max:.2f} s",
                    f"median < {JOIN_LATENCY_GOAL_S} s", lat_med < JOIN_LATENCY_GOAL_S))
    context = [
        "Manifest sizes: " + ", ".join(f"{k:,} clients = {v['file_bytes'] / 1e6:.1f} MB"
                                        for k, v in raw["load"].items()) + "; median of "
        + "/".join(str(repeats[k]) for k in sizes) + " loads" + (
            " (--quick leaves out 100,000)." if ctx.quick else "."),
        f"Time to all-joined ({j['all_joined_s']:.1f} s for {n} processes on "
        f"{os.cpu_count()} cores) is mostly process start-up: the median client logged "
        f"'connecting' {median(j['startup_s']):.1f} s after launch (Python + torch + grpc imports "
        f"and loading its shard, {n} at once).",
    ]
    if n < (8 if ctx.quick else 32):
        context.append(f"Reduced to {n} clients: only {avail:.0f} MB of memory was available.")
    return {"rows": rows, "context": context, "raw": raw,
            "summary": {"load_10k_s": t10k, "all_joined_s": j["all_joined_s"], "join_clients": n}}
