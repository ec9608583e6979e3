"""Fault injection with real processes and real kill -9 / SIGSTOP: the job survives, loses no round.

Every fault is keyed to STATE, never to a log line: the test waits until the server's checkpoint
(``federate.save_to``, read with ``torch.load(weights_only=True)``) shows enough rounds, then
freezes the server (SIGSTOP, so the round it read cannot move), checks the job is mid-run, injects
the fault and thaws the server. Every wait fails fast with each process's log tail when a process
exits that should not. Each fault runs in the legacy data_idx mode and in shard mode.
"""
import os
import re
import signal
import time

import pytest

from harness.jobs import LIGHT_TRAINING, Job, known_bug
from harness.procs import (checkpoint_round, describe, file_contains, frozen, stop_all, wait_all,
                        wait_for, wait_stopped)

# Enough rounds that a fault injected once round 1 is checkpointed always lands mid-job (a round
# takes ~0.5 s here; the test's poll is 0.1 s); _mid_job asserts it did.
ROUNDS = 5
MODES = ["data_idx", "shard"]
# Liveness fast enough for short tests, slow enough that a loaded 2-core box never trips it.
LIVENESS = ["distribute.heartbeat_interval", "0.5", "distribute.heartbeat_timeout", "6.0"]
# Flip to True when the lead's fixes land (issue 9 item 2 / the stalled-client exit); until then
# the check xfails, and it FAILS the moment the code starts keeping it (strict).
EVAL_LOG_COMPLETE_AFTER_RESTORE = True
STALLED_CLIENT_EXITS_PROMPTLY = True


def _job(mode, request, tmp_path, rounds=ROUNDS, common=()) -> Job:
    manifest = request.getfixturevalue("femnist_shards") if mode == "shard" else None
    return Job(tmp_path, request.getfixturevalue("femnist_root"), rounds=rounds,
               manifest=manifest, common=list(LIVENESS) + list(LIGHT_TRAINING) + list(common))


def _kill9(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _assert_own_data(job, line) -> None:
    """Shard mode: each client evaluated on its own shard (test count = its manifest entry)."""
    if job.manifest is None:
        return
    from federatedscope.core.data.shard_format import load_manifest
    entries = load_manifest(job.manifest)
    for who, res in line["Results_raw"].items():
        k = int(who.split("#")[1])
        assert res["test_total"] == entries[k].num_samples["test"], (who, res)


def _mid_job(job, server) -> int:
    """Called with the server frozen: the rounds it has completed, which must leave work to do."""
    done = checkpoint_round(job.ckpt)
    assert 1 <= done < job.rounds, f"fault must land mid-job; checkpoint says {done}\n" \
                                   f"{describe([server])}"
    return done


@pytest.mark.parametrize("mode", MODES)
def test_dead_client_does_not_hang_the_server(mode, request, tmp_path):
    job = _job(mode, request, tmp_path)
    server = job.server(["federate.min_clients_threshold", "2", "federate.save_to", job.ckpt])
    clients = {k: job.client(k) for k in (1, 2, 3)}
    job.wait_round(1, watch=[server] + list(clients.values()))
    with frozen(server):
        _mid_job(job, server)
        _kill9(clients[3])
    wait_all([server, clients[1], clients[2]], timeout=240, expect=[0, 0, 0])
    assert "client #3 lost" in job.server_log()
    assert job.final()["Round"] == ROUNDS                    # no round lost
    last = [line for line in job.eval_lines() if not line.get("Final")][-1]
    assert sorted(last["Results_raw"]) == ["client #1", "client #2"]
    _assert_own_data(job, job.eval_lines()[0])


@pytest.mark.parametrize("mode", MODES)
def test_restarted_client_rejoins_with_same_id(mode, request, tmp_path):
    """min_clients_threshold = all 3 and a long graceful_termination_timeout: the job cannot end
    (or go on) while client 2 is down, however slowly its replacement starts."""
    job = _job(mode, request, tmp_path)
    server = job.server(["federate.min_clients_threshold", "3", "federate.save_to", job.ckpt,
                         "federate.graceful_termination_timeout", "600"])
    clients = {k: job.client(k) for k in (1, 2, 3)}
    job.wait_round(1, watch=[server] + list(clients.values()))
    with frozen(server):
        _mid_job(job, server)
        _kill9(clients[2])
    clients[2] = job.client(2, name="client_2_restarted")
    wait_all([server] + list(clients.values()), timeout=300, expect=[0, 0, 0, 0])
    assert "client #2 re-joined" in job.server_log()
    assert job.final()["Round"] == ROUNDS
    last = [line for line in job.eval_lines() if not line.get("Final")][-1]
    assert sorted(last["Results_raw"]) == ["client #1", "client #2", "client #3"]
    _assert_own_data(job, last)
    job.assert_eval_complete()


@pytest.mark.parametrize("mode", ["shard"])   # data_idx: same server code; kept cheap
def test_server_kill9_then_restore_finishes_all_rounds(mode, request, tmp_path):
    job = _job(mode, request, tmp_path, common=["distribute.max_reconnect_time", "240"])
    server_args = ["federate.save_to", job.ckpt, "federate.restore_from", job.ckpt]
    server = job.server(server_args)
    clients = [job.client(k) for k in (1, 2, 3)]
    job.wait_round(2, watch=[server] + clients)
    with frozen(server):
        done = _mid_job(job, server)
        _kill9(server)                    # SIGKILL ends a stopped process too
    for k, c in zip((1, 2, 3), clients):
        wait_for(lambda k=k: file_contains(job.log(f"client_{k}"), "lost the server"), 60,
                 f"client {k} to notice the dead server", watch=clients)
    server2 = job.server(server_args, name="server2")
    wait_all([server2] + clients, timeout=300, expect=[0, 0, 0, 0])
    assert f"restored round {done} from" in job.server_log("server2")
    assert job.final()["Round"] == ROUNDS
    rounds = job.eval_rounds()
    assert rounds == sorted(rounds) and rounds[-1] == ROUNDS, rounds
    known_bug(rounds == list(range(1, ROUNDS + 1)), EVAL_LOG_COMPLETE_AFTER_RESTORE,
              f"after kill -9 + restore, eval_results.log must have each round once "
              f"(got rounds {rounds}; issue 9 item 2: a restored server redoes the evaluation "
              f"it owes)")


@pytest.mark.parametrize("mode", ["shard"])
def test_hung_client_is_cut_by_round_timeout(mode, request, tmp_path):
    """A client that stays connected but never answers (SIGSTOP; heartbeat_timeout is set far
    away so only the round timeout can act): ``federate.round_timeout`` stops waiting for it."""
    job = _job(mode, request, tmp_path, rounds=3,
               common=["distribute.heartbeat_timeout", "600.0"])
    server = job.server(["federate.round_timeout", "4.0", "federate.min_clients_threshold", "2",
                         "federate.save_to", job.ckpt])
    clients = {k: job.client(k) for k in (1, 2, 3)}
    job.wait_round(1, watch=[server] + list(clients.values()))
    with frozen(server):
        _mid_job(job, server)
        os.kill(clients[3].pid, signal.SIGSTOP)
        wait_stopped(clients[3].pid)
        before = len(job.server_log())          # only what the server logs from now on counts
    # A slow round on a loaded machine may cut others too: "[2, 3]" counts as well as "[3]".
    cut = re.compile(r"aggregating without \[(\d+, )*3\]")
    try:
        wait_for(lambda: cut.search(job.server_log()[before:]) is not None, 120,
                 "the server to aggregate without the frozen client 3",
                 watch=[server, clients[1], clients[2]])
    finally:
        os.kill(clients[3].pid, signal.SIGCONT)
    wait_all([server] + list(clients.values()), timeout=240, expect=[0, 0, 0, 0])
    assert "timed out after 4s" in job.server_log()
    assert job.final()["Round"] == 3


@pytest.mark.parametrize("mode", ["shard"])
def test_silent_client_is_marked_lost_and_the_job_finishes(mode, request, tmp_path):
    """Heartbeat silence (a frozen host): SIGSTOP client 3 with a short heartbeat_timeout; the
    server marks it lost and finishes with the others. SIGCONT afterwards: the client must
    find out that the job is over and exit on its own."""
    job = _job(mode, request, tmp_path,
               common=["distribute.heartbeat_interval", "0.5", "distribute.heartbeat_timeout", "4.0",
                       "distribute.max_reconnect_time", "8.0"])
    server = job.server(["federate.min_clients_threshold", "2", "federate.save_to", job.ckpt])
    clients = {k: job.client(k) for k in (1, 2, 3)}
    job.wait_round(1, watch=[server] + list(clients.values()))
    with frozen(server):
        _mid_job(job, server)
        os.kill(clients[3].pid, signal.SIGSTOP)
        wait_stopped(clients[3].pid)
    try:
        wait_all([server, clients[1], clients[2]], timeout=240, expect=[0, 0, 0])
    finally:
        os.kill(clients[3].pid, signal.SIGCONT)
    thawed = time.monotonic()
    log = job.server_log()
    assert "client #3 silent for" in log and "distribute.heartbeat_timeout" in log, log[-3000:]
    assert job.final()["Round"] == ROUNDS
    assert sorted([line for line in job.eval_lines() if not line.get("Final")][-1]
                  ["Results_raw"]) == ["client #1", "client #2"]
    # The stalled client cannot tell "job over" from "server restarting"; it must give up by
    # itself once its reconnect budget (distribute.max_reconnect_time, 8 s here) is spent, and say
    # which key that was and that the job may simply have finished.
    try:
        code = clients[3].wait(timeout=20)
    except Exception:
        code = None
    took = time.monotonic() - thawed
    tail = open(job.log("client_3"), errors="replace").read()[-1500:]
    stop_all([clients[3]])
    known_bug(code is not None, STALLED_CLIENT_EXITS_PROMPTLY,
              f"a client thawed after the job ended must exit promptly; still running after "
              f"{took:.0f}s (it retries for distribute.max_reconnect_time=300s). Log tail:\n{tail}")
    assert code == 1, f"exit {code} after {took:.0f}s:\n{tail}"
    assert "distribute.max_reconnect_time" in tail and "job finished" in tail, tail


@pytest.mark.parametrize("mode", ["shard"])
def test_all_clients_dead_server_checkpoints_and_exits_nonzero(mode, request, tmp_path):
    job = _job(mode, request, tmp_path, rounds=5)
    server = job.server(["federate.save_to", job.ckpt, "federate.graceful_termination_timeout", "3.0"])
    clients = [job.client(k) for k in (1, 2, 3)]
    job.wait_round(1, watch=[server] + clients)
    with frozen(server):
        done = _mid_job(job, server)
        for c in clients:
            _kill9(c)
    wait_all([server], timeout=120, expect=[3])
    log = job.server_log()
    assert "gave up after waiting 3s" in log and "restore_from" in log
    # Nothing could run after the freeze: the checkpoint is exactly the round seen then.
    assert checkpoint_round(job.ckpt) == done
    assert [f for f in os.listdir(os.path.dirname(job.ckpt)) if f != "server.pt"] == [], \
        "no temp file may be left beside the checkpoint"
