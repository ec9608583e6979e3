"""idle_cpu: CPU a process burns while it waits (utime + stime from /proc/<pid>/stat).

Four real processes wait side by side over the same window: a client whose server is not up yet
(gRPC's connection backoff), a shard-mode server no client has joined, a shard-mode server with 1
of its 3 clients joined (heartbeats flowing), and that joined client, waiting for the round.
"""
import time

from bench import common
from bench.common import row
from harness import proc_stats, procs

TITLE = "CPU used while waiting (client waiting for server, server waiting for clients)"
GOAL_PCT = 1.0


def run(ctx) -> dict:
    window = 5.0 if ctx.quick else 10.0
    manifest = common.shards(ctx, common.big_dataset(ctx), 3)
    extra = ["federate.join_timeout", "0.0", "distribute.connect_timeout", "600.0"]
    jobs = [common.BenchJob(ctx, f"x{i}", manifest, 3, 1, extra, measured=False) for i in range(3)]
    jobs[0].port = procs.free_port()  # a port nobody listens on
    specs = [("client, no server yet", lambda: jobs[0].client(1), "connecting to server"),
             ("server, no client yet", lambda: jobs[1].server(), "waiting for"),
             ("server, 1 of 3 clients joined", lambda: jobs[2].server(), "joined"),
             ("client, joined, round not started", lambda: jobs[2].client(1),
              "joined the federation")]
    started = {}
    try:
        for name, launch, _ in specs:
            started[name] = launch()   # the joined client waits for its server's port
        for name, _, ready in specs:
            procs.wait_for(lambda: procs.file_contains(started[name].log_path, ready), 120,
                           f"'{name}' to be waiting", poll=0.05, watch=list(started.values()))
        time.sleep(1.0)  # let start-up work (imports, shard checks) finish
        c0, t0 = {n: proc_stats.cpu_seconds(p.pid) for n, p in started.items()}, time.perf_counter()
        time.sleep(window)
        c1 = {n: proc_stats.cpu_seconds(p.pid) for n, p in started.items()}
        dt = time.perf_counter() - t0
        alive = {n: p.poll() is None for n, p in started.items()}
    finally:
        procs.stop_all(list(started.values()))
    raw = {n: {"cpu_s": c1[n] - c0[n], "window_s": dt, "pct_of_core": 100 * (c1[n] - c0[n]) / dt,
               "alive": alive[n]} for n in started}
    rows = [row(f"{n}: CPU per second of waiting", v["pct_of_core"],
                f"{v['pct_of_core']:.2f} % of a core" + ("" if v["alive"] else " (EXITED)"),
                f"< {GOAL_PCT:g} %", v["alive"] and v["pct_of_core"] < GOAL_PCT)
            for n, v in raw.items()]
    worst = max(rows, key=lambda r: r["value"])
    rows.insert(0, row("worst waiting process: CPU per second", worst["value"],
                       f"{worst['value']:.2f} % of a core ({worst['figure'].split(':')[0]})",
                       f"< {GOAL_PCT:g} %", all(r["met"] for r in rows), headline=True))
    context = [f"Sampled over the same {dt:.1f} s window for all four processes, after each logged "
               f"that it was waiting; 1 clock tick = {100 / proc_stats.CLK_TCK / dt:.2f} % here."]
    return {"rows": rows, "context": context, "raw": raw, "summary": {"worst_pct": worst["value"]}}
