"""round_time: wall time per FedAvg round, distributed (server + 3 clients over gRPC) vs standalone.

Same 3 shards (60 writers each), same config, same seeds. Standalone (``federate.mode standalone``
with ``distributed_data.manifest``) runs the same Server/Client objects over an in-process queue.
Per-round time is the server's own "round i/N aggregated ... in X s" log line in both modes
(broadcast, local training, upload, aggregation); medians over rounds 2..R and repeats. Every
process first does torch's lazy first-optimizer-step imports (``BENCH_WARM_TORCH``), so round 1
is not a start-up measurement. CPU seconds per round (all processes of a mode summed, sampled
from /proc every 50 ms) are reported too: on a shared machine they are the steadier figure.

This machine has 2 cores, fewer than the 4 processes, so two set-ups are measured:
* transport: 1 of the 3 clients sampled per round (``federate.sample_client_num 1``, same sampled
  client in both modes): one trainer at a time in each mode, so the ratio is the price of
  processes + gRPC over an in-process queue. The standalone and the distributed job run at the
  same time, one trainer each on the 2 cores, so the machine's noise (other users) hits both;
  only rounds that both modes ran side by side count (neither shares the machine with the
  other's start-up or final evaluation);
* one core (full runs): all 3 clients every round, every process of both modes pinned to the same
  CPU: equal compute, but 3 training processes time-slice one core.
"""
import os
import re
import time

from bench import common
from bench.common import median, row

TITLE = "Time per FedAvg round: distributed over gRPC vs standalone, same shards"
GOAL = 1.1
_TRAINED = re.compile(r"Client #(\d+): round (\d+) trained")
_AGG = re.compile(r"round (\d+)/\d+ aggregated")


def _tail_gaps(logs) -> list:
    """Per round: the server's 'aggregated' time minus the last client's 'trained' time
    (upload + decode + aggregation), from the log timestamps."""
    trained, agg = {}, {}
    for log in logs:
        for t, line in common.log_lines(log):
            m = _TRAINED.search(line)
            if m:
                trained[int(m.group(2))] = max(trained.get(int(m.group(2)), 0), t)
            m = _AGG.search(line)
            if m:
                agg[int(m.group(1))] = t
    return [agg[r] - trained[r] for r in sorted(agg) if r in trained]


def _round_cpu(series, names, bounds) -> list:
    """CPU seconds the processes ``names`` used between consecutive times in ``bounds``."""
    def at(t):
        last = None
        for ts, sample in series:
            if ts > t:
                break
            last = sample
        return sum((last or {}).get(n) or 0.0 for n in names)
    return [at(b) - at(a) for a, b in zip(bounds, bounds[1:])]


def _bounds(log: str) -> list:
    """Start of round 1 and the end of every round, from the server's log timestamps."""
    start = common.log_times(log, "starting training")[:1]
    return start + [t for t, line in common.log_lines(log) if _AGG.search(line)]


def _pair(ctx, tag: str, manifest: str, rounds: int, extra, cpus=None, together=False) -> dict:
    """Standalone and distributed runs of the same job; ``together`` runs them at the same time
    (so the shared machine's noise hits both alike), else one after the other. The CPU time of
    every process is sampled every 50 ms, so CPU seconds per round can be read off too."""
    warm = {"BENCH_WARM_TORCH": "1"}
    slog, srep = ctx.tmp(f"{tag}_standalone.log"), ctx.tmp(f"{tag}_standalone.json")
    series = []

    def watch(named):
        while any(p.poll() is None for p in named.values()):
            sample = {}
            for n, p in named.items():
                try:
                    sample[n] = common.cpu_seconds(p.pid)
                except (OSError, IndexError, ValueError):
                    sample[n] = None
            series.append((time.time(), sample))
            time.sleep(0.05)

    standalone = common.spawn_child(srep, "main", common.standalone_argv(
        manifest, ctx.tmp(f"{tag}_standalone_exp"), rounds, extra), slog, env=warm, cpus=cpus)
    job = None
    try:
        if not together:
            watch({"standalone": standalone})
        job = common.start_job(ctx, f"{tag}_dist", manifest, 3, rounds, extra, cpus=cpus, env=warm)
        named = {"server": job["procs"][0], 1: job["procs"][1], 2: job["procs"][2],
                 3: job["procs"][3]}
        if together:
            named["standalone"] = standalone
        watch(named)
        res = common.finish_job(job, timeout=60)
        if common.wait_all([standalone], 60)[0] != 0:
            raise common.ChildFailed(f"standalone run failed; see {slog}")
    finally:
        common.kill_all([standalone] + (job["procs"] if job else []))
    rep = common.load_report(srep, slog)
    dlog = res["logs"]["server"]
    preempted = {"standalone": rep["ctxt_switches"]["nonvoluntary_ctxt_switches"],
                 "dist": sum(r["ctxt_switches"]["nonvoluntary_ctxt_switches"]
                             for r in [res["server"]] + list(res["clients"].values()))}
    logs = [dlog] + [res["logs"][k] for k in (1, 2, 3)]
    out = {"together": together,
           "standalone": {"rounds_s": common.round_times(slog), "wall_s": rep["wall_s"],
                          "final_acc": common.final_acc(slog), "tail_s": _tail_gaps([slog]),
                          "preempted": preempted["standalone"], "bounds": _bounds(slog),
                          "cpu_s": _round_cpu(series, ["standalone"], _bounds(slog))},
           "dist": {"rounds_s": common.round_times(dlog), "wall_s": res["wall_s"],
                    "final_acc": common.final_acc(dlog), "tail_s": _tail_gaps(logs),
                    "preempted": preempted["dist"], "bounds": _bounds(dlog),
                    "cpu_s": _round_cpu(series, ["server", 1, 2, 3], _bounds(dlog))}}
    _select(out)
    return out


def _select(pair: dict) -> None:
    """Rounds 2.. of each mode; when the two ran at the same time, only the rounds that ran
    while the other mode was in its rounds too (not starting up, not evaluating at the end),
    so neither side's rounds share the machine with the other's start-up."""
    for m in ("dist", "standalone"):
        pair[m]["used"] = list(range(1, len(pair[m]["rounds_s"])))
    if not pair["together"]:
        return
    d, s = pair["dist"]["bounds"], pair["standalone"]["bounds"]
    if any(len(pair[m]["bounds"]) != len(pair[m]["rounds_s"]) + 1 for m in ("dist", "standalone")):
        return  # log lines not as expected: keep rounds 2..
    lo, hi = max(d[0], s[0]), min(d[-1], s[-1])
    for m in ("dist", "standalone"):
        b = pair[m]["bounds"]
        inside = [i for i in range(1, len(b) - 1) if b[i] >= lo and b[i + 1] <= hi]
        if len(inside) >= 2:
            pair[m]["used"] = inside


def _ratio(pairs, key="rounds_s") -> tuple:
    d = median(p["dist"][key][i] for p in pairs for i in p["dist"]["used"])
    s = median(p["standalone"][key][i] for p in pairs for i in p["standalone"]["used"])
    return d / s, d, s


def _model_mb(hidden: int) -> float:
    """Raw tensor bytes (parameters + buffers) of ConvNet2 at ``hidden``, in MB."""
    from federatedscope.cv.model.cnn import ConvNet2
    m = ConvNet2(in_channels=1, hidden=hidden, class_num=62)
    return sum(t.numel() * t.element_size() for t in m.state_dict().values()) / common.MB


def _transport_only(ctx, n: int, rounds: int, hidden: int) -> dict:
    """Standalone, then distributed, with no local training (``local_update_steps 0``: a client
    answers with the state it received): what is left of a round is broadcast, state copy,
    upload, decode and FedAvg, so the per-round difference is the transport's own cost
    (processes + gRPC vs an in-process queue) and not how training parallelises."""
    manifest = common.shards(ctx, common.figures_dataset(ctx), n)
    extra = ["train.batch_or_epoch", "batch", "train.local_update_steps", "0", "model.hidden",
             str(hidden), "eval.freq", "100000", "eval.split", "['test']"]
    warm = {"BENCH_WARM_TORCH": "1"}
    slog = ctx.tmp(f"tn{n}_standalone.log")
    common.run_child(ctx, f"tn{n}_standalone", "main", common.standalone_argv(
        manifest, ctx.tmp(f"tn{n}_standalone_exp"), rounds, extra), env=warm, timeout=900)
    dist = common.run_job(ctx, f"tn{n}_dist", manifest, n, rounds, extra, env=warm, timeout=900)
    s = median(common.round_times(slog)[1:])
    d = median(common.round_times(dist["logs"]["server"])[1:])
    return {"clients": n, "standalone_round_s": s, "dist_round_s": d,
            "overhead_ms": (d - s) * 1000, "standalone_rounds": common.round_times(slog),
            "dist_rounds": common.round_times(dist["logs"]["server"])}


def run(ctx) -> dict:
    manifest = common.shards(ctx, common.figures_dataset(ctx), 3)
    # rounds are what is timed: evaluate only at the end, on the test split only
    base = ["train.batch_or_epoch", "batch", "eval.freq", "100000", "eval.split", "['test']"]
    rounds, repeats, steps = (8, 1, 20) if ctx.quick else (12, 2, 40)
    sampled = base + ["train.local_update_steps", str(steps), "federate.sample_client_num", "1"]
    raw = {"transport": [], "one_core": []}
    for i in range(repeats):
        ctx.log(f"  transport set-up, repeat {i + 1}/{repeats}: standalone and distributed at once")
        raw["transport"].append(_pair(ctx, f"t{i}", manifest, rounds, sampled, together=True))
    ratio, d, s = _ratio(raw["transport"])
    cratio, cd, cs = _ratio(raw["transport"], "cpu_s")
    load = os.getloadavg()[0]
    rows = [dict(row("distributed / standalone: median wall time per round (1 sampled client per "
                     "round; training dilutes the transport: see the transport-only rows)",
                     ratio, f"{ratio:.3f} ({d:.2f} s vs {s:.2f} s)",
                     f"≤ {GOAL}", ratio <= GOAL), headline=True),
            dict(row("distributed / standalone: median CPU seconds per round, all processes summed",
                     cratio, f"{cratio:.3f} ({cd:.2f} s vs {cs:.2f} s)", f"≤ {GOAL}",
                     cratio <= GOAL), headline=True)]
    tails = [t for p in raw["transport"] for t in p["dist"]["tail_s"][1:]]
    context = [
        f"Transport set-up: {rounds} rounds × {repeats} run(s) per mode, {steps} local batches of "
        f"10 per round, ConvNet2 hidden 128 (1.85 MB per model message); medians over the "
        f"rounds both modes ran side by side ("
        + ", ".join(f"{len(p['dist']['used'])}+{len(p['standalone']['used'])}" for p in raw["transport"])
        + " rounds used). Last client's update "
        f"logged → server's aggregation logged: median {median(tails) * 1000:.0f} ms distributed "
        f"(upload, decode, FedAvg) vs "
        f"{median(t for p in raw['transport'] for t in p['standalone']['tail_s'][1:]) * 1000:.0f} ms "
        f"standalone.",
        f"Whole job (start-up, rounds, final evaluation): distributed "
        f"{median(p['dist']['wall_s'] for p in raw['transport']):.1f} s (4 processes) vs standalone "
        f"{median(p['standalone']['wall_s'] for p in raw['transport']):.1f} s (1 process).",
        f"Final weighted test accuracy (same seeds, same shards): distributed "
        f"{[p['dist']['final_acc'] for p in raw['transport']]} vs standalone "
        f"{[p['standalone']['final_acc'] for p in raw['transport']]}.",
    ]
    hidden, t_rounds = 2048, (6 if ctx.quick else 12)
    mb = _model_mb(hidden)
    raw["transport_only"] = []
    for n in (1, 3, 10):
        ctx.log(f"  transport only: {n} client(s), hidden {hidden}, no local training")
        t = _transport_only(ctx, n, t_rounds, hidden)
        raw["transport_only"].append(t)
        per_mb = t["overhead_ms"] / mb
        rows.append(row(f"transport-only overhead per round, {n} client{'s' if n > 1 else ''}: "
                        f"(distributed − standalone round) per MB of model", per_mb,
                        f"{per_mb:.2f} ms/MB ({t['dist_round_s'] * 1000:.0f} vs "
                        f"{t['standalone_round_s'] * 1000:.0f} ms per round, {mb:.1f} MB model)",
                        "reported (no goal set)", None))
    context.append(f"Transport-only set-up: ConvNet2 hidden {hidden} ({mb:.1f} MB of tensors per "
                   f"message), no local training (`train.local_update_steps 0`), {t_rounds} rounds, "
                   f"evaluation only at the end; medians over rounds 2..{t_rounds}, standalone "
                   f"then distributed, one run each. A distributed round sends the model to N "
                   f"clients and gets N updates back; standalone hands the same tensors over in "
                   f"memory.")
    notes = []
    share = {"dist": cd / d, "standalone": cs / s}  # CPU seconds per wall second of a round
    if abs(ratio / cratio - 1) > 0.1:
        notes.append(
            f"Wall and CPU ratios disagree ({ratio:.2f} vs {cratio:.2f}): during the rounds the "
            f"distributed job got {share['dist'] * 100:.0f} % of a core and standalone "
            f"{share['standalone'] * 100:.0f} % (load {load:.1f} on {os.cpu_count()} cores), so "
            f"the wall ratio measures scheduling luck; the CPU ratio counts each mode's work "
            f"per round and is the figure to trust here: "
            + ("by it the goal is met." if cratio <= GOAL else "by it the goal is missed too."))
    if not ctx.quick:
        cpu = sorted(os.sched_getaffinity(0))[-1]
        ctx.log(f"  one-core set-up: all 3 clients per round, everything pinned to CPU {cpu}")
        raw["one_core"].append(_pair(ctx, "c0", manifest, 6, base + ["train.local_update_steps", "30"],
                                     cpus=[cpu]))
        r1, d1, s1 = _ratio(raw["one_core"])
        c1 = _ratio(raw["one_core"], "cpu_s")[0]
        rows.append(row("distributed / standalone: median time per round, 3 clients, all on one CPU",
                        r1, f"{r1:.3f} ({d1:.2f} s vs {s1:.2f} s)", f"≤ {GOAL}", r1 <= GOAL))
        tail1 = median(t for p in raw["one_core"] for t in p["dist"]["tail_s"][1:])
        pre = {m: median(p[m]["preempted"] for p in raw["one_core"]) for m in ("dist", "standalone")}
        if r1 > GOAL:
            notes.append(
                f"Missed on one core: a distributed round takes {r1:.2f}× the standalone round "
                f"({c1:.2f}× its CPU seconds) with all 3 clients training and 4 processes pinned to "
                f"one CPU. Not the transport: the last update is aggregated {tail1 * 1000:.0f} ms "
                f"after its client finishes training, and with one trainer at a time the CPU ratio "
                f"is {cratio:.2f}×. The extra CPU is 3 trainers time-slicing one core (preempted "
                f"{pre['dist']:,} times vs {pre['standalone']:,} standalone, cold caches each "
                f"time); a core per client does not time-slice.")
    return {"rows": rows, "notes": notes, "context": context, "raw": raw,
            "summary": {"ratio": ratio}}
