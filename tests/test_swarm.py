"""The swarm (harness/swarm.py) against a real server process: 200 sessions, one process."""
import os
import re
import time

from harness.jobs import Job
from harness.procs import wait_all
from harness.swarm import Swarm, SwarmPlan, run_swarm, server_opts, summarize
from harness.swarm_manifest import write_swarm_manifest


def _start_server(tmp_path, manifest, rounds, extra=()):
    job = Job(tmp_path, "", rounds, manifest)
    proc = job.server(server_opts(rounds, extra))
    return proc, job.port, job.log("server")


def _aggregated(log):
    return [int(m) for m in re.findall(r"aggregated (\d+) update", open(log).read())]


def test_swarm_of_200_finishes_a_job_without_losing_a_message(tmp_path):
    n, rounds = 200, 2
    manifest, shards = write_swarm_manifest(str(tmp_path / "shards"), n)
    t0 = time.perf_counter()
    server, port, log = _start_server(tmp_path, manifest, rounds)
    try:
        res = run_swarm(SwarmPlan(f"127.0.0.1:{port}", shards, late_fraction=0.1, late_delay=1.0,
                                  timeout=120))
        assert wait_all([server], 60) == [0], open(log).read()[-3000:]
    finally:
        wait_all([server], 1)
    wall = time.perf_counter() - t0
    s = summarize(res, rounds)
    assert s["errors"] == [] and s["refused"] == 0, s
    assert s["joined"] == n and s["finished"] == n and s["messages_lost"] == 0, s
    assert s["updates_sent"] == n * rounds and s["metrics_sent"] == n, s
    assert _aggregated(log) == [n] * rounds
    assert f"({n} clients, weighted avg)" in open(log).read()
    assert wall < 60, f"{wall:.0f}s"


def test_a_swarm_opening_few_sessions_at_once_still_joins_all_of_them(tmp_path):
    """``max_connecting``: at most that many sessions wait for their join's answer at once (a
    swarm of thousands on one machine cannot answer thousands of nonces in time); the rest
    wait their turn, and every client joins and finishes. Its sessions beat at the interval
    their server asks for (the server's own 7 s here), as real clients do."""
    import asyncio
    n, rounds = 120, 1
    manifest, shards = write_swarm_manifest(str(tmp_path / "shards"), n)
    server, port, log = _start_server(tmp_path, manifest, rounds,
                                      ("distribute.heartbeat_interval", "7"))
    try:
        swarm = Swarm(SwarmPlan(f"127.0.0.1:{port}", shards, timeout=120, max_connecting=8))
        res = asyncio.run(swarm.run())
        assert wait_all([server], 60) == [0], open(log).read()[-3000:]
    finally:
        wait_all([server], 1)
    s = summarize(res, rounds)
    assert s["joined"] == n and s["finished"] == n and s["messages_lost"] == 0, s
    assert s["join_retries"] == 0 and s["errors"] == [], s
    assert 2 <= swarm.peak_connecting <= 8, swarm.peak_connecting
    assert swarm._in_flight == 0                 # every slot given back
    assert swarm.heartbeat_s == 7.0              # the plan's own is 5 s
    assert _aggregated(log) == [n]
    import gc
    assert gc.get_freeze_count() == 0            # the swarm's frozen heap is thawed after it


def test_swarm_droppers_and_stragglers_do_not_stall_the_job(tmp_path):
    n, rounds = 20, 2
    manifest, shards = write_swarm_manifest(str(tmp_path / "shards"), n)
    server, port, log = _start_server(tmp_path, manifest, rounds,
                                      ["federate.round_timeout", "3", "federate.min_clients_threshold",
                                       "10", "distribute.heartbeat_timeout", "30"])
    try:
        res = run_swarm(SwarmPlan(f"127.0.0.1:{port}", shards, drop_fraction=0.1, drop_round=1,
                                  straggler_fraction=0.1, straggler_delay=6.0, timeout=120))
        assert wait_all([server], 60) == [0], open(log).read()[-3000:]
    finally:
        wait_all([server], 1)
    s = summarize(res, rounds)
    assert s["stayed"] == n - 2 and s["finished"] == n - 2, s
    aggregated = _aggregated(log)
    # Round 1 goes on without the 2 droppers and the 2 late stragglers.
    assert aggregated[0] == n - 4, (aggregated, open(log).read()[-2000:])
    assert os.path.getsize(log) > 0


def test_summary_counts_each_error_and_the_messages_lost():
    """In-process: 6 virtual clients over 3 rounds, hand-counted."""
    from harness.swarm import VirtualResult
    rs = {i: VirtualResult(i) for i in range(1, 7)}
    for r in rs.values():
        r.models, r.finished, r.join_latency = [0, 1, 2], True, r.client_id / 10
    rs[2].error, rs[3].error, rs[4].error = "B", "A", "B"
    rs[3].models, rs[3].finished = [0], False          # lost 2 models and its finish
    rs[5].role, rs[5].models, rs[5].finished = "dropper", [0], False   # expected to leave
    s = summarize(rs, 3)
    assert s["errors"] == ["A", "B"] and s["error_counts"] == {"B": 2, "A": 1}
    assert s["messages_lost"] == 3 and s["stayed"] == 5 and s["finished"] == 4
    assert (s["join_p50_s"], s["join_max_s"]) == (0.4, 0.6)
