"""peers: the same FedAvg job run four ways on the same shard files, measured side by side.

1. floor: ``bench/peers/floor.py``, a single-process plain-PyTorch FedAvg loop;
2. this project, standalone (``federate.mode standalone``, one process);
3. this project, distributed shard mode (server + N client processes over loopback gRPC);
4. Flower (pinned in ``bench/peers/requirements-flower.txt``, its own venv ``.venv-peers``) in
   deployment mode: SuperLink + N SuperNodes, each given only its own shard directory (node
   config ``shard-path``), the ServerApp submitted with ``flwr run``.
Same model, initial weights, shards, SGD, batch order and per-round evaluation. Each system runs
alone, one after the other, as a process tree measured by ``harness/proc_tree.py``.
"""
import os
import socket
import subprocess
from typing import Dict, List

from bench import common
from bench.common import median, row
from harness.proc_tree import Tree
from harness import procs

PEERS_VENV = os.path.join(common.ROOT, ".venv-peers")
FLOWER_APP = os.path.join(common.ROOT, "bench", "peers", "flower_app")
FLOOR = os.path.join(common.ROOT, "bench", "peers", "floor.py")
TITLE = "Peers measured: plain-loop floor, this project, Flower, on the same shard files"
CLIENTS = 3
CPU_GOAL = 1.05    # this project's total CPU / the floor's
FLOOR_WALL_GOAL = 1.05  # distributed job wall / (floor CPU / usable cores): training's own bound
FLOWER_WALL_GOAL = 0.5  # distributed job wall / Flower's
SYSTEMS = [("floor", "plain single-process PyTorch FedAvg loop (bench/peers/floor.py)"),
           ("standalone", "this project, standalone (1 process)"),
           ("distributed", f"this project, distributed shard mode (server + {CLIENTS} clients)"),
           ("flower", f"Flower deployment mode (SuperLink + {CLIENTS} SuperNodes + ServerApp)")]


def _measured(t: Tree, rounds_s: List[float], acc, exact_hwm: Dict[int, int] = None) -> dict:
    """The tree's figures; a process's own exit report of its peak beats the 100 ms sample."""
    tr, exact = t.result, exact_hwm or {}
    return {"wall_s": tr.wall_s, "cpu_s": tr.cpu_s, "sampled_cpu_s": tr.sampled_cpu_s,
            "rounds_s": rounds_s, "round_s": median(rounds_s), "final_acc": acc,
            "procs": [{"pid": p.pid, "label": p.label,
                       "peak_rss_mb": exact.get(p.pid, p.hwm_kb) / 1024, "cpu_s": p.cpu_s,
                       "lived_s": p.last - p.first} for p in tr.procs]}


def _floor(ctx, tag: str, prof: dict, manifest: str, rounds: int, only: int = 0):
    """Start floor.py on the shards (``only``: client K alone); returns (process, report path)."""
    out = ctx.tmp(f"{tag}.json")
    return common.spawn([common.PY, FLOOR, "--shards", os.path.dirname(manifest), "--clients",
                         str(CLIENTS), "--rounds", str(rounds), "--hidden", str(prof["hidden"]),
                         "--only", str(only), "--out", out], ctx.tmp(f"{tag}.log")), out


def run_floor(ctx, prof: dict, manifest: str) -> dict:
    with Tree() as t:
        p, out = _floor(ctx, "floor", prof, manifest, prof["rounds"])
        code = procs.wait_all([p], 3600, check=False)[0]
        t.mark_end()
    if code != 0:
        raise procs.ProcessFailed(f"floor exited {code}; log tail:\n{procs.tail(p.log_path)}")
    rep = common.read_json(out)
    return _measured(t, rep["rounds_s"], rep["final_test_acc"], {p.pid: rep["peak_rss_kb"]})


def side_by_side(ctx, prof: dict, manifest: str) -> dict:
    """The floor's own training for one round, CPU of the round only (imports and loading left
    out): its clients in turn in one process, then each in its own process, all at once, as a
    distributed job trains them."""
    def cpu(tag: str, only) -> float:
        started = [_floor(ctx, f"{tag}_{k}", prof, manifest, 1, k) for k in only]
        if any(procs.wait_all([p for p, _ in started], 3600, check=False)):
            raise procs.ProcessFailed(f"floor.py --only failed; see {ctx.tmp(tag + '_*.log')}")
        return sum(common.read_json(out)["rounds_cpu_s"] for _, out in started)
    turn, together = cpu("in_turn", [0]), cpu("side_by_side", range(1, CLIENTS + 1))
    return {"in_turn_cpu_s": turn, "side_by_side_cpu_s": together, "ratio": together / turn}


def run_standalone(ctx, prof: dict, manifest: str) -> dict:
    argv = common.standalone_argv(manifest, ctx.tmp("standalone_exp"), prof["rounds"],
                                  ["model.hidden", str(prof["hidden"])])
    with Tree() as t:
        rep = common.run_child(ctx, "standalone", "main", argv, timeout=3600)
        t.mark_end()
    log = ctx.tmp("standalone.log")
    return _measured(t, common.round_times(log), common.final_acc(log),
                     {rep["pid"]: rep["status_kb"]["VmHWM"]})


def run_distributed(ctx, prof: dict, manifest: str) -> dict:
    with Tree() as t:
        res = common.BenchJob(ctx, "dist", manifest, CLIENTS, prof["rounds"], [
            "model.hidden", str(prof["hidden"])]).start().finish(timeout=3600)
        t.mark_end()
    log = res["logs"]["server"]
    return _measured(t, common.round_times(log), common.final_acc(log), {
        r["pid"]: r["status_kb"]["VmHWM"] for r in [res["server"]] + list(res["clients"].values())})


def flower_bin(name: str) -> str:
    return os.path.join(PEERS_VENV, "bin", name)


def run_flower(ctx, prof: dict, manifest: str) -> dict:
    home, out, log = ctx.tmp("flwr_home"), ctx.tmp("flower_result.json"), ctx.tmp("flwr_run.log")
    os.makedirs(home)
    link = procs.free_port()  # Flower must be told its port in advance
    with open(os.path.join(home, "config.toml"), "w") as f:
        f.write(f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
                f'address = "127.0.0.1:{link}"\ninsecure = true\n')
    # PATH: SuperLink/SuperNode start flower-superexec by name; PYTHONPATH: the apps import
    # bench.peers.floor (model builder, shard reader, training loop) from this checkout.
    env = {"FLWR_HOME": home, "PYTHONPATH": common.ROOT,
           "PATH": os.path.join(PEERS_VENV, "bin") + os.pathsep + os.environ.get("PATH", "")}
    started = []

    def port_open() -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", link)) == 0
    with Tree() as t:
        try:
            started.append(common.spawn([flower_bin("flower-superlink"), "--insecure", "--port",
                                         str(link), "--disable-runtime-dependency-installation"],
                                        ctx.tmp("superlink.log"), env=env))
            procs.wait_for(port_open, 120, "Flower SuperLink's port", watch=started)
            for k in range(1, CLIENTS + 1):
                started.append(common.spawn([
                    flower_bin("flower-supernode"), "--insecure", "--superlink",
                    f"127.0.0.1:{link}", "--port", str(procs.free_port()), "--node-config",
                    f'shard-path="{common.shard_dir(manifest, k)}" cid={k}'],
                    ctx.tmp(f"supernode{k}.log"), env=env))
            started.append(common.spawn([
                flower_bin("flwr"), "run", ".", "bench", "--stream", "--run-config",
                f'num-server-rounds={prof["rounds"]} num-nodes={CLIENTS} hidden={prof["hidden"]} '
                f'out="{out}"'], log, env, cwd=FLOWER_APP))
            code = started[-1].wait(timeout=3600)
            t.mark_end()
            if code != 0 or not os.path.exists(out):
                raise procs.ProcessFailed(f"flwr run exited {code} (result file "
                                          f"{'present' if os.path.exists(out) else 'missing'}); "
                                          f"log tail:\n{procs.tail(log)}")
        finally:
            procs.stop_all(started, grace=10)  # Flower's services stop cleanly on SIGTERM
    rep = common.read_json(out)
    return _measured(t, rep["rounds_s"], rep["final_test_acc"])


def _acc(a) -> str:
    return "—" if a is None else f"{a:.4f}"


def table(res: Dict[str, dict], missing: Dict[str, str]) -> dict:
    """The side-by-side table (rendered by report.py and render_readme.py)."""
    floor, rows = res.get("floor"), []
    for key, title in SYSTEMS:
        r = res.get(key)
        if r is None:
            rows.append([title, "not measured: " + missing.get(key, "?"), "", "", "", "", ""])
            continue
        groups: Dict[str, List[float]] = {}  # peak RSS by program: 'fs-client ×3 603–618 MB'
        for p in r["procs"]:
            groups.setdefault(p["label"], []).append(p["peak_rss_mb"])
        rss = "; ".join(f"{label}{f' ×{len(v)}' if len(v) > 1 else ''} " + (
            f"{min(v):.0f} MB" if round(min(v)) == round(max(v)) else
            f"{min(v):.0f}–{max(v):.0f} MB") for label, v in groups.items())
        rows.append([title, f"{r['wall_s']:.1f} s", f"{r['cpu_s']:.1f} s",
                     f"{r['wall_s'] / floor['wall_s']:.2f} / {r['cpu_s'] / floor['cpu_s']:.2f}"
                     if floor else "—", f"{r['round_s']:.2f} s", rss,
                     _acc(r["final_acc"])])
    return {"title": "Side by side (one run each, same shard files)",
            "header": ["system", "job wall", "total CPU", "wall / CPU vs floor", "median round",
                       "peak RSS per process", "final test acc"], "rows": rows}


def _rows(res: Dict[str, dict], missing: Dict[str, str], cores: int) -> List[dict]:
    f, d, fl = (res.get(k) for k in ("floor", "distributed", "flower"))
    out = []
    # Training bounds the wall: the floor's CPU (training and nothing else) over every core
    bound = f["cpu_s"] / cores if f else None
    if f and d:
        r = d["wall_s"] / bound
        out.append(row(f"distributed shard mode: job wall / (floor CPU ÷ {cores} cores)", r,
                       f"{r:.2f} ({d['wall_s']:.0f} s vs {bound:.0f} s)", f"≤ {FLOOR_WALL_GOAL}",
                       r <= FLOOR_WALL_GOAL, headline=True))
    for key, label, head in (("distributed", "distributed shard mode", True),
                             ("standalone", "standalone", False)):
        if f and key in res:
            r = res[key]["cpu_s"] / f["cpu_s"]
            out.append(row(f"{label}: total CPU / plain-loop floor's", r, f"{r:.2f} "
                           f"({res[key]['cpu_s']:.0f} s vs {f['cpu_s']:.0f} s)", f"≤ {CPU_GOAL}",
                           r <= CPU_GOAL, headline=head))
    if f:
        accs = {k: res[k]["final_acc"] for k in ("standalone", "distributed") if k in res}
        out.append(row("final test accuracy: standalone, distributed vs floor", f["final_acc"],
                       ", ".join(f"{k} {_acc(a)}" for k, a in accs.items())
                       + f" vs floor {f['final_acc']:.4f}", "equal (±0.0001)",
                       all(a is not None and abs(a - f["final_acc"]) <= 1e-4
                           for a in accs.values())))
    for what, key, goal, met in (
            ("job wall", "wall_s", f"≤ {FLOWER_WALL_GOAL}", lambda r: r <= FLOWER_WALL_GOAL),
            ("total CPU", "cpu_s", "< 1", lambda r: r < 1)):
        fig = f"distributed shard mode / Flower deployment mode: {what}"
        r = d[key] / fl[key] if d and fl else None
        out.append(row(fig, r, f"{r:.2f} ({d[key]:.0f} s vs {fl[key]:.0f} s)", goal, met(r),
                       headline=True) if r is not None else
                   row(fig, None, "not measured: " + missing.get("flower", "?"), goal, False,
                       headline=True))
    if f and fl:
        a = fl["final_acc"]
        out.append(row("Flower final test accuracy vs floor (its own FedAvg aggregation)", a,
                       f"{_acc(a)} vs {f['final_acc']:.4f}",
                       "reported, no goal", None))
    return out


def _notes(res: Dict[str, dict], cores: int, side=None) -> List[str]:
    """What side-by-side training costs by itself when the floor's goals are missed, and why the
    wall ratio against Flower stays near training's own bound on this machine."""
    f, d, fl = (res.get(k) for k in ("floor", "distributed", "flower"))
    notes = []
    if side:
        r = side["ratio"]
        notes.append(
            f"Missed against the floor (CPU {d['cpu_s'] / f['cpu_s']:.2f}×, wall "
            f"{d['wall_s'] / (f['cpu_s'] / cores):.2f}× its bound). The floor trains its "
            f"{CLIENTS} clients in turn in one process; a distributed job trains them at once, "
            f"{CLIENTS} processes on {cores} cores. The floor's own training for one round cost "
            f"{side['in_turn_cpu_s']:.1f} CPU-s in turn and {side['side_by_side_cpu_s']:.1f} "
            f"CPU-s as {CLIENTS} processes at once (`floor.py --only`): {r:.2f}×, with no "
            f"framework at all. Against the floor at that rate the distributed job's CPU is "
            f"{d['cpu_s'] / (f['cpu_s'] * r):.2f}× and its wall "
            f"{d['wall_s'] / (f['cpu_s'] * r / cores):.2f}×.")
    if f and d and fl and d["wall_s"] / fl["wall_s"] > FLOWER_WALL_GOAL:
        notes.append(
            f"The wall ratio against Flower is held up by training itself: the floor's "
            f"{f['cpu_s']:.0f} CPU-s over {cores} cores is {f['cpu_s'] / cores:.0f} s, so a job "
            f"with no overhead at all would score {f['cpu_s'] / cores / fl['wall_s']:.2f} against "
            f"Flower's {fl['wall_s']:.0f} s. ≤ {FLOWER_WALL_GOAL} needs Flower at "
            f"{1 / FLOWER_WALL_GOAL:.0f}× that bound or more; it ran at "
            f"{fl['wall_s'] / (f['cpu_s'] / cores):.2f}×.")
    return notes


def run(ctx) -> dict:
    # --quick: hidden 128, 2 rounds on the small data set; full: hidden 2048, 5 rounds, large
    prof = {"hidden": 128, "rounds": 2, "name": "small"} if ctx.quick else \
        {"hidden": 2048, "rounds": 5, "name": "large"}
    manifest = common.shards(ctx, common.figures_dataset(ctx), CLIENTS)
    res, missing, errors = {}, {}, {}
    for key, fn in (("floor", run_floor), ("standalone", run_standalone),
                    ("distributed", run_distributed), ("flower", run_flower)):
        if key == "flower" and not os.path.exists(flower_bin("flower-superlink")):
            missing[key] = (f"{flower_bin('flower-superlink')} not found: run `make bench-peers` "
                            f"(creates .venv-peers)")
            ctx.warn(f"Flower not measured: {missing[key]}")
            continue
        ctx.log(f"  {key}: hidden {prof['hidden']}, {prof['rounds']} rounds, {CLIENTS} clients")
        load = os.getloadavg()[0]
        try:
            res[key] = dict(fn(ctx, prof, manifest), load_at_start=load)
        except procs.ProcessFailed as e:
            missing[key], errors[key] = f"failed ({str(e).splitlines()[0][:200]})", str(e)[-3000:]
            ctx.warn(f"{key} failed: {str(e)[-800:]}")
            continue
        ctx.log(f"    wall {res[key]['wall_s']:.1f} s, CPU {res[key]['cpu_s']:.1f} s, acc "
                f"{res[key]['final_acc']}, {len(res[key]['procs'])} processes")
    cores = len(os.sched_getaffinity(0))
    f, d, side = res.get("floor"), res.get("distributed"), None
    if f and d and (d["cpu_s"] / f["cpu_s"] > CPU_GOAL
                    or d["wall_s"] / (f["cpu_s"] / cores) > FLOOR_WALL_GOAL):
        ctx.log(f"  missed against the floor: its training in turn vs {CLIENTS} at once")
        side = side_by_side(ctx, prof, manifest)
    samples = sum(sum(common.shard_meta(manifest, k).num_samples.values())
                  for k in range(1, CLIENTS + 1))
    context = [
        f"Profile `{prof['name']}`: ConvNet2 hidden {prof['hidden']}, {prof['rounds']} rounds, "
        f"{CLIENTS} clients, {samples:,} samples in their shards; SGD lr 0.01, batch 10, one "
        f"local epoch, clip 5; evaluation on test + val after every round.",
        "Job wall: first process start to the job's result. Total CPU: every process of the job "
        "(getrusage(RUSAGE_CHILDREN), this process as child subreaper, so detached helpers count). "
        "Peak RSS: each process's VmHWM (its exit report, else 100 ms samples). Round: model sent "
        "to replies aggregated, as each system's server times it; median.",
        "Per system: 1-min load at its start, sampled CPU of the processes seen (lower bound) vs "
        "counted, processes: " + "; ".join(
            f"{k} {v['load_at_start']:.1f}, {v['sampled_cpu_s']:.1f} vs {v['cpu_s']:.1f} s, "
            f"{len(v['procs'])}" for k, v in res.items()) + "."]
    if "flower" in res:
        version = subprocess.run([flower_bin("python"), "-c", "import importlib.metadata as m; "
                                  "print(m.version('flwr'))"], capture_output=True, text=True,
                                 timeout=60).stdout.strip() or "?"
        apps = sum(p["label"] == "flwr-clientapp" for p in res["flower"]["procs"])
        context.append(f"Flower: flwr {version}, SuperNodes in `subprocess` isolation: {apps} "
                       f"`flwr-clientapp` processes for {prof['rounds']} rounds × {CLIENTS} nodes "
                       f"× 2 messages; each imports torch and reads its shard split again.")
    return {"rows": _rows(res, missing, cores), "tables": [table(res, missing)],
            "context": context, "notes": _notes(res, cores, side),
            "raw": {"profile": prof, "systems": res, "missing": missing, "errors": errors,
                    "cores": cores, "side_by_side": side},
            "summary": {k: {"wall_s": v["wall_s"], "cpu_s": v["cpu_s"], "final_acc": v["final_acc"]}
                        for k, v in res.items()}}
