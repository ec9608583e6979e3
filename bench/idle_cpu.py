"""idle_cpu: CPU a process burns while it waits (utime + stime from /proc/<pid>/stat).

Four real processes wait side by side over the same window:
* a client whose server is not up yet (it retries with gRPC's connection backoff);
* a shard-mode server that no client has joined;
* a shard-mode server with 1 of its 3 clients joined (heartbeats flowing) ...
* ... and that joined client, waiting for the round to start.
"""
import time

from bench import common
from bench.common import row

TITLE = "CPU used while waiting (client waiting for server, server waiting for clients)"
GOAL_PCT = 1.0


def run(ctx) -> dict:
    window = 5.0 if ctx.quick else 10.0
    manifest = common.shards(ctx, common.big_dataset(ctx), 3)
    extra = ["federate.join_timeout", "0.0", "distribute.connect_timeout", "600.0"]
    jobs = [common.BenchJob(ctx, f"x{i}", manifest, 3, 1, extra, measured=False) for i in range(3)]
    jobs[0].port = common.free_port()  # a port nobody listens on
    specs = {  # name -> how it starts
        "client, no server yet": lambda: jobs[0].client(1),
        "server, no client yet": lambda: jobs[1].server(),
        "server, 1 of 3 clients joined": lambda: jobs[2].server(),
        "client, joined, round not started": lambda: jobs[2].client(1),
    }
    ready = {"client, no server yet": "connecting to server",
             "server, no client yet": "waiting for",
             "server, 1 of 3 clients joined": "joined",
             "client, joined, round not started": "joined the federation"}
    procs, logs = {}, {}
    try:
        for name, launch in specs.items():
            procs[name] = launch()   # the joined client waits for its server's port
            logs[name] = procs[name].log_path
        for name in specs:
            common.wait_for(lambda n=name: common.file_has(logs[n], ready[n]), 120,
                            f"'{name}' to be waiting", list(procs.values()))
        time.sleep(1.0)  # let start-up work (imports, shard checks) finish
        c0 = {n: common.cpu_seconds(p.pid) for n, p in procs.items()}
        t0 = time.perf_counter()
        time.sleep(window)
        c1 = {n: common.cpu_seconds(p.pid) for n, p in procs.items()}
        dt = time.perf_counter() - t0
        alive = {n: p.poll() is None for n, p in procs.items()}
    finally:
        common.kill_all(list(procs.values()))
    raw = {n: {"cpu_s": c1[n] - c0[n], "window_s": dt, "pct_of_core": 100 * (c1[n] - c0[n]) / dt,
               "alive": alive[n]} for n in specs}
    tick_pct = 100 / common.CLK_TCK / dt
    rows = []
    for n, v in raw.items():
        ok = v["alive"] and v["pct_of_core"] < GOAL_PCT
        rows.append(row(f"{n}: CPU per second of waiting", v["pct_of_core"],
                        f"{v['pct_of_core']:.2f} % of a core" + ("" if v["alive"] else " (EXITED)"),
                        f"< {GOAL_PCT:g} %", ok))
    worst = max(rows, key=lambda r: r["value"])
    rows.insert(0, dict(row("worst waiting process: CPU per second", worst["value"],
                            f"{worst['value']:.2f} % of a core ({worst['figure'].split(':')[0]})",
                            f"< {GOAL_PCT:g} %", all(r["met"] for r in rows)), headline=True))
    context = [f"Sampled over the same {dt:.1f} s window for all four processes, after each "
               f"logged that it was waiting; resolution 1 clock tick = {tick_pct:.2f} % here."]
    return {"rows": rows, "context": context, "raw": raw,
            "summary": {"worst_pct": worst["value"]}}
