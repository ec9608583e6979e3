"""The transport with real processes on loopback: floods against a real server, a second server
on a held port, and a client whose sessions are refused on a live channel."""
import queue
import socket
import time
from concurrent import futures

import grpc
import pytest

from harness.jobs import Job
from harness.procs import file_contains, wait_all, wait_for
from harness.raw_peer import RawPeer, health_status
from federatedscope.core.communication.grpc_client import GrpcClientTransport, ServerUnreachable
from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.message import JOIN_IN, Message
from federatedscope.core.communication.transport import Disconnected
from harness.proc_stats import status_kb

MB = 1024 * 1024


def _hwm_mb(pid: int) -> float:
    return status_kb(pid, "VmHWM") / 1024


def _wait_listening(job, proc, name="server"):
    def up():
        assert proc.poll() is None, open(job.log(name)).read()[-3000:]
        return file_contains(job.log(name), "listening on")
    wait_for(up, 120, "server to listen")


def test_floods_and_idle_streams_leave_the_server_serving(femnist_root, femnist_shards, tmp_path):
    job = Job(tmp_path, femnist_root, rounds=1, manifest=femnist_shards,
              common=["distribute.join_deadline", "2.0"])
    server = job.server()
    try:
        _wait_listening(job, server)
        addr = f"127.0.0.1:{job.port}"
        time.sleep(1.0)
        hwm0 = _hwm_mb(server.pid)
        for _ in range(4):                       # 4 x 50 MB before any join
            with RawPeer(addr) as peer:
                peer.send(b"\0" * (50 * MB))
                assert peer.wait_closed(60) and peer.code == "RESOURCE_EXHAUSTED", peer.code
        idle = [RawPeer(addr) for _ in range(40)]   # more than the unjoined cap (32 here)
        try:
            time.sleep(0.5)
            assert health_status(addr) == "SERVING"
            assert all(p.wait_closed(10) for p in idle), "idle streams outlived join_deadline"
        finally:
            for p in idle:
                p.close()
        grew = _hwm_mb(server.pid) - hwm0
        assert grew < 64, f"server peak RSS grew {grew:.0f} MB under pre-join floods"
        assert health_status(addr) == "SERVING"
        clients = [job.client(k) for k in (1, 2, 3)]
        codes = wait_all([server] + clients, timeout=240)
        assert codes == [0, 0, 0, 0], job.server_log()[-3000:]
    finally:
        wait_all([server], 1)
    log = job.server_log()
    assert "distribute.join_deadline" in log and job.final()["Round"] == 1


def _one_error_line(path: str, port: int) -> str:
    text = open(path).read()
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if " ERROR: " in line]
    assert len(errors) == 1, text[-3000:]
    assert f":{port}" in errors[0] and "distribute.server_port" in errors[0], errors[0]
    return errors[0]


def test_second_server_on_a_held_port_exits_1_and_the_first_keeps_its_clients(
        femnist_root, femnist_shards, tmp_path):
    job = Job(tmp_path, femnist_root, rounds=1, manifest=femnist_shards)
    first = job.server()
    procs = [first]
    try:
        _wait_listening(job, first)
        second = job.server(name="server2")
        procs.append(second)
        assert second.wait(120) == 1
        _one_error_line(job.log("server2"), job.port)
        with socket.socket() as s:                   # a port held by another kind of socket
            s.bind(("127.0.0.1", 0))
            s.listen()
            held = s.getsockname()[1]
            third = job.server(["distribute.server_port", str(held)], name="server3")
            procs.append(third)
            assert third.wait(120) == 1
            _one_error_line(job.log("server3"), held)
        clients = [job.client(k) for k in (1, 2, 3)]
        procs += clients
        assert wait_all([first] + clients, timeout=240) == [0, 0, 0, 0], job.server_log()[-3000:]
    finally:
        wait_all(procs, 1)
    assert job.final()["Round"] == 1


class _RefusingServer:
    """A gRPC server whose every session is refused on a live channel (RESOURCE_EXHAUSTED)."""

    def __init__(self):
        self.attempts = []
        self.server = grpc.server(futures.ThreadPoolExecutor(4))

        def session(request_iterator, context):
            self.attempts.append(time.monotonic())
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy (test)")

        handler = grpc.stream_stream_rpc_method_handler(session)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "federatedscope.FLService", {"Session": handler}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def rate(self) -> float:
        span = self.attempts[-1] - self.attempts[0]
        return (len(self.attempts) - 1) / span if span > 0 else float("inf")


@pytest.fixture
def refusing():
    s = _RefusingServer()
    yield s
    s.server.stop(0)


def test_refused_sessions_back_off_and_the_budget_names_its_key(refusing):
    cfg = get_default_cfg()
    cfg.distribute.server_host, cfg.distribute.server_port = "127.0.0.1", refusing.port
    cfg.distribute.max_reconnect_time = 6.0
    inbox: "queue.Queue" = queue.Queue()
    transport = GrpcClientTransport(cfg, inbox)
    join = Message(JOIN_IN, 1, 0, 0, {"client_id": 1})
    transport.wait_for_server(10)
    transport.open_session(join)
    try:
        with pytest.raises(ServerUnreachable, match=r"distribute\.max_reconnect_time"):
            while True:
                event = inbox.get(timeout=30)
                assert isinstance(event, Disconnected) and "RESOURCE_EXHAUSTED" in event.reason
                transport.reconnect(join, event.reason)
    finally:
        transport.close(grace=1.0)
    assert len(refusing.attempts) >= 3
    assert refusing.rate() <= 2.0, f"{refusing.rate():.1f} attempts/s"


def test_real_client_refused_on_a_live_channel_backs_off(femnist_root, femnist_shards,
                                                         tmp_path, refusing):
    job = Job(tmp_path, femnist_root, rounds=1, manifest=femnist_shards)
    job.port = refusing.port
    client = job.client(1, ["distribute.server_port", str(refusing.port),
                            "distribute.max_reconnect_time", "5.0"])
    assert wait_all([client], timeout=120) == [1]
    log = open(job.log("client_1")).read()
    assert "distribute.max_reconnect_time" in log and "RESOURCE_EXHAUSTED" in log, log[-2000:]
    assert "Traceback" not in log
    assert 2 <= len(refusing.attempts) and refusing.rate() <= 2.0, refusing.attempts
