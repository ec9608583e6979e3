"""The soak as a test: seeded random ``kill -9`` of the server and of clients across one job.

Each fault is keyed to state (the server's checkpoint round, read while the server is frozen, as
in test_faults.py), the victim and the round are drawn from a seeded RNG, and every victim is
restarted at once: a server with ``federate.restore_from``, a client with its own arguments (it
re-joins under its id; tokens on, so every re-join proves the token on a fresh nonce). The job
must finish every round with ``eval_results.log`` holding each round exactly once, in order.
"""
import os
import random
import signal

import pytest

from harness.jobs import LIGHT_TRAINING, Job
from harness.procs import checkpoint_round, frozen, wait_all

ROUNDS = 6
LIVENESS = ["distribute.heartbeat_interval", "0.5", "distribute.heartbeat_timeout", "6.0",
            "distribute.max_reconnect_time", "240", "distribute.token", "chaos-token"]


@pytest.mark.parametrize("seed", [7])
def test_random_kill9_of_server_and_clients_loses_no_round(femnist_root, femnist_shards,
                                                          tmp_path, seed):
    rng = random.Random(seed)
    job = Job(tmp_path, femnist_root, rounds=ROUNDS, manifest=femnist_shards,
              common=LIVENESS + list(LIGHT_TRAINING))
    server_args = ["federate.save_to", job.ckpt, "federate.restore_from", job.ckpt,
                   "federate.min_clients_threshold", "3",
                   "federate.graceful_termination_timeout", "600"]
    procs = {"server": job.server(server_args)}
    procs.update({k: job.client(k) for k in (1, 2, 3)})
    # Three faults at increasing checkpoint rounds; the victims always include the server once.
    at_rounds = sorted(rng.sample(range(1, ROUNDS - 1), 3))
    victims = ["server"] + rng.sample([1, 2, 3], 2)
    rng.shuffle(victims)
    restarts = {}
    for r, victim in zip(at_rounds, victims):
        job.wait_round(r, watch=list(procs.values()), timeout=240)
        with frozen(procs["server"]):
            done = checkpoint_round(job.ckpt)
            assert done < ROUNDS, f"fault at round {r} came too late (checkpoint {done})"
            os.kill(procs[victim].pid, signal.SIGKILL)   # ends a stopped server too
            procs[victim].wait()
        restarts[victim] = restarts.get(victim, 0) + 1
        if victim == "server":
            procs["server"] = job.server(server_args, name=f"server_r{restarts[victim]}")
        else:
            procs[victim] = job.client(victim, name=f"client_{victim}_r{restarts[victim]}")
    wait_all(list(procs.values()), timeout=300, expect=[0] * len(procs))
    assert restarts == {v: 1 for v in victims}, restarts
    assert "restored round" in job.server_log("server_r1")   # resumed, not started over
    job.assert_eval_complete()             # rounds 1..ROUNDS exactly once, in order; one Final
    assert job.final()["Round"] == ROUNDS
    last = [line for line in job.eval_lines() if not line.get("Final")][-1]
    assert sorted(last["Clients"]) == [1, 2, 3] and not last["Missing"], last
