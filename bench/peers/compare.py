"""peers: the same FedAvg job run four ways on the same shard files, measured side by side.

1. floor: ``bench/peers/floor.py``, a single-process plain-PyTorch FedAvg loop;
2. this project, standalone (``federate.mode standalone``, one process);
3. this project, distributed shard mode (server + N client processes over loopback gRPC);
4. Flower (``flwr`` pinned in ``bench/peers/requirements-flower.txt``, its own venv
   ``.venv-peers``) in deployment mode: SuperLink + N SuperNodes, each SuperNode given only its
   own shard directory (node config ``shard-path``), and the ServerApp submitted with ``flwr run``.

Same model (ConvNet2), same initial weights, same shards, same SGD (lr 0.01, batch 10, one
epoch, clip 5), same batch order, evaluation (test + val) after every round. Each system runs
alone, one after the other, as a process tree measured by ``bench/peers/tree.py``: job wall
(start of the first process to the result), total CPU (every process, children and orphans
included), every process's peak RSS (VmHWM), seconds per round (from sending the model to
having aggregated, as each system's server times it) and the final test accuracy.
"""
import json
import os
import socket
import subprocess
from typing import Dict, List

from bench import common
from bench.common import median, row
from bench.peers.tree import Tree, TreeResult

ROOT = common.ROOT
PEERS_VENV = os.path.join(ROOT, ".venv-peers")
FLOWER_APP = os.path.join(ROOT, "bench", "peers", "flower_app")
FLOOR = os.path.join(ROOT, "bench", "peers", "floor.py")
FIX = "make bench-peers"  # builds .venv-peers and runs this benchmark
CLIENTS = 3
CPU_GOAL = 1.1  # distributed total CPU / floor's


def profile(ctx) -> dict:
    """--quick: hidden 128, 2 rounds on the small data set; full: hidden 2048, 5 rounds, large."""
    if ctx.quick:
        return {"hidden": 128, "rounds": 2, "data": common.big_dataset(ctx), "name": "small"}
    return {"hidden": 2048, "rounds": 5, "data": common.large_dataset(ctx), "name": "large"}


def _measured(tr: TreeResult, rounds_s: List[float], acc, exact_hwm: Dict[str, int] = None) -> dict:
    procs = [{"pid": p.pid, "label": p.label, "peak_rss_mb": p.hwm_kb / 1024, "cpu_s": p.cpu_s,
              "lived_s": p.last - p.first} for p in tr.procs]
    for p in procs:  # a process's own exit report beats the 100 ms sample
        if exact_hwm and p["pid"] in exact_hwm:
            p["peak_rss_mb"] = exact_hwm[p["pid"]] / 1024
    return {"wall_s": tr.wall_s, "cpu_s": tr.cpu_s, "sampled_cpu_s": tr.sampled_cpu_s,
            "rounds_s": rounds_s, "round_s": median(rounds_s), "final_acc": acc, "procs": procs}


def run_floor(ctx, prof: dict, shards: str) -> dict:
    out, log = ctx.tmp("floor.json"), ctx.tmp("floor.log")
    with Tree() as t:
        p = common.spawn([common.PY, FLOOR, "--shards", shards, "--clients", str(CLIENTS),
                          "--rounds", str(prof["rounds"]), "--hidden", str(prof["hidden"]),
                          "--out", out], log)
        code = common.wait_all([p], 3600)[0]
        t.mark_end()
    if code != 0:
        raise common.ChildFailed(f"floor exited {code}; log tail:\n{common._tail(log)}")
    with open(out) as f:
        rep = json.load(f)
    return _measured(t.result, rep["rounds_s"], rep["final_test_acc"], {p.pid: rep["peak_rss_kb"]})


def _fs_opts(prof: dict) -> List[str]:
    return ["model.hidden", str(prof["hidden"])]


def run_standalone(ctx, prof: dict, manifest: str) -> dict:
    rep_path, log = ctx.tmp("standalone.json"), ctx.tmp("standalone.log")
    with Tree() as t:
        p = common.spawn_child(rep_path, "main", common.standalone_argv(
            manifest, ctx.tmp("standalone_exp"), prof["rounds"], _fs_opts(prof)), log)
        code = common.wait_all([p], 3600)[0]
        t.mark_end()
    rep = common._checked(ctx, "standalone", code, rep_path, log)
    return _measured(t.result, common.round_times(log), common.final_acc(log),
                     {rep["pid"]: rep["status_kb"]["VmHWM"]})


def run_distributed(ctx, prof: dict, manifest: str) -> dict:
    with Tree() as t:
        job = common.start_job(ctx, "dist", manifest, CLIENTS, prof["rounds"], _fs_opts(prof))
        res = common.finish_job(job, timeout=3600)
        t.mark_end()
    reps = [res["server"]] + list(res["clients"].values())
    return _measured(t.result, common.round_times(res["logs"]["server"]),
                     _final_acc(res["logs"]["server"]),
                     {r["pid"]: r["status_kb"]["VmHWM"] for r in reps})


def flower_bin(name: str) -> str:
    return os.path.join(PEERS_VENV, "bin", name)


def flower_missing() -> str:
    """'' when Flower's venv is usable, else why not (with the command that fixes it)."""
    if not os.path.exists(flower_bin("flower-superlink")):
        return f"{flower_bin('flower-superlink')} not found: run `{FIX}` (creates .venv-peers)"
    return ""


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_flower(ctx, prof: dict, manifest: str) -> dict:
    home, out = ctx.tmp("flwr_home"), ctx.tmp("flower_result.json")
    os.makedirs(home)
    link = common.free_port()
    with open(os.path.join(home, "config.toml"), "w") as f:
        f.write(f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
                f'address = "127.0.0.1:{link}"\ninsecure = true\n')
    # PATH: SuperLink/SuperNode start flower-superexec by name; PYTHONPATH: the apps import
    # bench.peers.floor (model builder, shard reader, training loop) from this checkout.
    env = {"FLWR_HOME": home, "PYTHONPATH": ROOT,
           "PATH": os.path.join(PEERS_VENV, "bin") + os.pathsep + os.environ.get("PATH", "")}
    procs = []
    with Tree() as t:
        try:
            procs.append(common.spawn([flower_bin("flower-superlink"), "--insecure", "--port",
                                       str(link), "--disable-runtime-dependency-installation"],
                                      ctx.tmp("superlink.log"), env=env))
            common.wait_for(lambda: _port_open(link), 120, "Flower SuperLink's port", procs)
            for k in range(1, CLIENTS + 1):
                cfg = f'shard-path="{common.shard_dir(manifest, k)}" cid={k}'
                procs.append(common.spawn([flower_bin("flower-supernode"), "--insecure",
                                           "--superlink", f"127.0.0.1:{link}", "--port",
                                           str(common.free_port()), "--node-config", cfg],
                                          ctx.tmp(f"supernode{k}.log"), env=env))
            run_cfg = (f'num-server-rounds={prof["rounds"]} num-nodes={CLIENTS} '
                       f'hidden={prof["hidden"]} out="{out}"')
            log = ctx.tmp("flwr_run.log")
            runner = common.procs.start([flower_bin("flwr"), "run", ".", "bench", "--stream",
                                         "--run-config", run_cfg], log, env, cwd=FLOWER_APP)
            procs.append(runner)
            code = runner.wait(timeout=3600)
            t.mark_end()
            if code != 0 or not os.path.exists(out):
                raise common.ChildFailed(f"flwr run exited {code} (result file "
                                         f"{'present' if os.path.exists(out) else 'missing'}); "
                                         f"log tail:\n{common._tail(log)}")
        finally:
            common.procs.stop_all(procs, grace=10)  # Flower's services stop cleanly on SIGTERM
    with open(out) as f:
        rep = json.load(f)
    return _measured(t.result, rep["rounds_s"], rep["final_test_acc"])


SYSTEMS = [("floor", "plain single-process PyTorch FedAvg loop (bench/peers/floor.py)"),
           ("standalone", "this project, standalone (1 process)"),
           ("distributed", f"this project, distributed shard mode (server + {CLIENTS} clients)"),
           ("flower", f"Flower deployment mode (SuperLink + {CLIENTS} SuperNodes + ServerApp)")]


def _rss_summary(procs: List[dict]) -> str:
    """'fs-server 757 MB; fs-client ×3 603–618 MB' (grouped by program)."""
    groups: Dict[str, List[float]] = {}
    for p in procs:
        groups.setdefault(p["label"], []).append(p["peak_rss_mb"])
    parts = []
    for label, mbs in groups.items():
        lo, hi = min(mbs), max(mbs)
        span = f"{lo:.0f} MB" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f} MB"
        parts.append(f"{label}{f' ×{len(mbs)}' if len(mbs) > 1 else ''} {span}")
    return "; ".join(parts)


def table(res: Dict[str, dict], missing: Dict[str, str]) -> dict:
    """The side-by-side table (rendered by report.py and render_readme.py)."""
    floor = res.get("floor")
    rows = []
    for key, title in SYSTEMS:
        r = res.get(key)
        if r is None:
            rows.append([title, "not measured: " + missing.get(key, "?"), "", "", "", "", ""])
            continue
        ratio = (f"{r['wall_s'] / floor['wall_s']:.2f} / {r['cpu_s'] / floor['cpu_s']:.2f}"
                 if floor else "—")
        acc = "—" if r["final_acc"] is None else f"{r['final_acc']:.4f}"
        rows.append([title, f"{r['wall_s']:.1f} s", f"{r['cpu_s']:.1f} s", ratio,
                     f"{r['round_s']:.2f} s", _rss_summary(r["procs"]), acc])
    return {"title": "Side by side (one run each, same shard files)",
            "header": ["system", "job wall", "total CPU", "wall / CPU vs floor", "median round",
                       "peak RSS per process", "final test acc"], "rows": rows}


def _rows(res: Dict[str, dict], missing: Dict[str, str]) -> List[dict]:
    f, s, d, fl = (res.get(k) for k in ("floor", "standalone", "distributed", "flower"))
    out = []
    if f and d:
        r = d["cpu_s"] / f["cpu_s"]
        out.append(dict(row("distributed shard mode: total CPU / plain-loop floor's", r,
                            f"{r:.2f} ({d['cpu_s']:.0f} s vs {f['cpu_s']:.0f} s)", f"≤ {CPU_GOAL}",
                            r <= CPU_GOAL), headline=True))
    if f and s:
        r = s["cpu_s"] / f["cpu_s"]
        out.append(row("standalone: total CPU / plain-loop floor's", r,
                       f"{r:.2f} ({s['cpu_s']:.0f} s vs {f['cpu_s']:.0f} s)", f"≤ {CPU_GOAL}",
                       r <= CPU_GOAL))
    if f:
        accs = {k: res[k]["final_acc"] for k in ("standalone", "distributed") if k in res}
        ok = all(a is not None and abs(a - f["final_acc"]) <= 1e-4 for a in accs.values())
        out.append(row("final test accuracy: standalone, distributed vs floor", f["final_acc"],
                       ", ".join(f"{k} {'—' if a is None else f'{a:.4f}'}" for k, a in accs.items())
                       + f" vs floor {f['final_acc']:.4f}", "equal (±0.0001)", ok))
    for what, key in (("job wall", "wall_s"), ("total CPU", "cpu_s")):
        fig = f"distributed shard mode / Flower deployment mode: {what}"
        if d and fl:
            r = d[key] / fl[key]
            out.append(dict(row(fig, r, f"{r:.2f} ({d[key]:.0f} s vs {fl[key]:.0f} s)", "< 1",
                                r < 1), headline=True))
        else:
            out.append(dict(row(fig, None, "not measured: " + missing.get("flower", "?"), "< 1",
                                False), headline=True))
    if f and fl:
        a = fl["final_acc"]
        out.append(row("Flower final test accuracy vs floor (its own FedAvg aggregation)", a,
                       f"{'—' if a is None else f'{a:.4f}'} vs {f['final_acc']:.4f}",
                       "reported, no goal", None))
    return out


def run(ctx) -> dict:
    prof = profile(ctx)
    manifest = common.shards(ctx, prof["data"], CLIENTS)
    shards = os.path.dirname(manifest)
    res, missing, raw_err = {}, {}, {}
    runners = [("floor", run_floor), ("standalone", run_standalone),
               ("distributed", run_distributed), ("flower", run_flower)]
    for key, fn in runners:
        if key == "flower" and flower_missing():
            missing[key] = flower_missing()
            ctx.warn(f"Flower not measured: {missing[key]}")
            continue
        ctx.log(f"  {key}: hidden {prof['hidden']}, {prof['rounds']} rounds, {CLIENTS} clients")
        load = os.getloadavg()[0]
        try:
            res[key] = fn(ctx, prof, shards if key == "floor" else manifest)
            res[key]["load_at_start"] = load
        except common.ChildFailed as e:
            missing[key] = f"failed ({str(e).splitlines()[0][:200]})"
            raw_err[key] = str(e)[-3000:]
            ctx.warn(f"{key} failed: {str(e)[-800:]}")
            continue
        r = res[key]
        ctx.log(f"    wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, round {r['round_s']:.2f} s, "
                f"acc {r['final_acc']}, {len(r['procs'])} processes")
    from federatedscope.core.data.shard_format import read_meta
    samples = sum(sum(read_meta(common.shard_dir(manifest, k)).num_samples.values())
                  for k in range(1, CLIENTS + 1))
    context = [
        f"Profile `{prof['name']}`: ConvNet2 hidden {prof['hidden']}, {prof['rounds']} rounds, "
        f"{CLIENTS} clients, {samples:,} samples in their shards "
        f"({os.path.relpath(shards, ctx.work)}); SGD lr 0.01, batch 10, one local epoch, clip 5; "
        f"evaluation on test + val after every round. Each system ran alone, one after the other.",
        "Job wall: from starting the first process to the job's result (Flower: SuperLink start "
        "to `flwr run --stream` returning). Total CPU: user + system seconds of every process of "
        "the job, from getrusage(RUSAGE_CHILDREN) with this process as child subreaper (Flower's "
        "detached helpers included). Peak RSS: each process's VmHWM (its own exit report where "
        "it has one, else sampled every 100 ms). Round: from sending the model to aggregating the "
        "replies, as each system's server times it; median over rounds.",
    ]
    if "flower" in res:
        apps = sum(1 for p in res["flower"]["procs"] if p["label"] == "flwr-clientapp")
        context.append(
            f"Flower: flwr {_flower_version()}, SuperNodes in their default `subprocess` isolation: "
            f"{apps} `flwr-clientapp` processes were started for {prof['rounds']} rounds × "
            f"{CLIENTS} nodes × 2 messages (train, evaluate); each imports torch and reads its "
            f"shard split again.")
    context.append("1-min load average when each system started (the machine is shared; wall "
                   "times move with it, CPU seconds much less): " + ", ".join(
                       f"{k} {v['load_at_start']:.1f}" for k, v in res.items()) + ".")

    for key in res:
        context.append(f"{key}: sampled CPU of the processes seen {res[key]['sampled_cpu_s']:.1f} s "
                       f"(lower bound) vs {res[key]['cpu_s']:.1f} s counted; "
                       f"{len(res[key]['procs'])} processes.")
    return {"rows": _rows(res, missing), "tables": [table(res, missing)], "context": context,
            "notes": [], "raw": {"profile": {k: v for k, v in prof.items() if k != "data"},
                                 "systems": res, "missing": missing, "errors": raw_err},
            "summary": {k: {"wall_s": v["wall_s"], "cpu_s": v["cpu_s"], "final_acc": v["final_acc"]}
                        for k, v in res.items()}}


def _flower_version() -> str:
    py = os.path.join(PEERS_VENV, "bin", "python")
    if not os.path.exists(py):
        return "not installed"
    try:
        return subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('flwr'))"],
                              capture_output=True, text=True, timeout=60).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"
