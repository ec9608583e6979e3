"""Fault injection with real processes and real kill -9: the job survives and loses no round."""
import os
import signal

from fl_job import Job
from proc_utils import file_contains, wait_all, wait_for

FAST_LIVENESS = ["distribute.heartbeat_interval", "0.5", "distribute.heartbeat_timeout", "3.0"]


def _kill9(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_dead_client_does_not_hang_the_server(femnist_root, tmp_path):
    job = Job(tmp_path, femnist_root, rounds=4, common=FAST_LIVENESS)
    server = job.server(["federate.min_clients_threshold", "2"])
    clients = {k: job.client(k) for k in (1, 2, 3)}
    wait_for(lambda: file_contains(job.log("server"), "round 1/4 aggregated"), 120, "round 1")
    _kill9(clients[3])
    codes = wait_all([server, clients[1], clients[2]], timeout=180)
    assert codes == [0, 0, 0], job.server_log()[-3000:]
    log = job.server_log()
    assert "client #3 lost" in log
    final = job.final()
    assert final["Round"] == 4                       # no round lost
    assert final["Results_weighted_avg"]["test_total"] > 0


def test_restarted_client_rejoins_with_same_id(femnist_root, tmp_path):
    job = Job(tmp_path, femnist_root, rounds=4, common=FAST_LIVENESS)
    server = job.server()
    clients = {k: job.client(k) for k in (1, 2, 3)}
    wait_for(lambda: file_contains(job.log("server"), "round 1/4 aggregated"), 120, "round 1")
    _kill9(clients[2])
    clients[2] = job.client(2, name="client_2_restarted")
    codes = wait_all([server] + list(clients.values()), timeout=180)
    assert codes == [0, 0, 0, 0], job.server_log()[-3000:]
    assert "client #2 re-joined" in job.server_log()
    final = job.final()
    assert final["Round"] == 4
    last_eval = [line for line in job.eval_lines() if not line.get("Final")][-1]
    assert sorted(last_eval["Results_raw"]) == ["client #1", "client #2", "client #3"]


def test_server_kill9_then_restore_finishes_all_rounds(femnist_root, tmp_path):
    ckpt = str(tmp_path / "ckpt" / "server.pt")
    job = Job(tmp_path, femnist_root, rounds=4,
              common=FAST_LIVENESS + ["distribute.max_reconnect_time", "120"])
    server_args = ["federate.save_to", ckpt, "federate.restore_from", ckpt]
    server = job.server(server_args)
    clients = [job.client(k) for k in (1, 2, 3)]
    wait_for(lambda: file_contains(job.log("server"), "round 2/4 aggregated"), 120, "round 2")
    _kill9(server)
    assert os.path.exists(ckpt)
    for k in (1, 2, 3):
        wait_for(lambda k=k: file_contains(job.log(f"client_{k}"), "lost the server"), 60,
                 f"client {k} to notice")
    server2 = job.server(server_args, name="server2")
    codes = wait_all([server2] + clients, timeout=240)
    log2 = open(job.log("server2")).read()
    assert codes == [0, 0, 0, 0], log2[-3000:]
    assert "restored round 2" in log2 or "restored round 3" in log2
    final = job.final()
    assert final["Round"] == 4


def test_hung_client_is_cut_by_round_timeout(femnist_root, tmp_path):
    """A client that is connected (its heartbeats are fine) but never answers: SIGSTOP."""
    job = Job(tmp_path, femnist_root, rounds=3,
              common=["distribute.heartbeat_timeout", "600.0"])
    server = job.server(["federate.round_timeout", "4.0", "federate.min_clients_threshold", "2"])
    clients = {k: job.client(k) for k in (1, 2, 3)}
    wait_for(lambda: file_contains(job.log("server"), "round 1/3 aggregated"), 120, "round 1")
    os.kill(clients[3].pid, signal.SIGSTOP)
    try:
        wait_for(lambda: file_contains(job.log("server"), "timed out after 4s"), 60, "round timeout")
    finally:
        os.kill(clients[3].pid, signal.SIGCONT)
    assert wait_all([server] + list(clients.values()), timeout=240) == [0, 0, 0, 0]
    assert job.final()["Round"] == 3


def test_all_clients_dead_server_checkpoints_and_exits_nonzero(femnist_root, tmp_path):
    ckpt = str(tmp_path / "server.pt")
    job = Job(tmp_path, femnist_root, rounds=5, common=FAST_LIVENESS)
    server = job.server(["federate.save_to", ckpt, "federate.graceful_termination_timeout", "3.0"])
    clients = [job.client(k) for k in (1, 2, 3)]
    wait_for(lambda: file_contains(job.log("server"), "round 1/5 aggregated"), 120, "round 1")
    for c in clients:
        _kill9(c)
    assert wait_all([server], timeout=120) == [3]
    log = job.server_log()
    assert "gave up after waiting 3s" in log and "restore_from" in log
    import torch
    assert torch.load(ckpt, weights_only=True)["round"] >= 1
