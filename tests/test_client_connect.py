"""A client started before its server: it probes the port with plain TCP connects on the gRPC
backoff spec and asks gRPC for the channel only once the port takes connections (gRPC's own
wait polls the channel five times a second, which was most of a waiting client's CPU).

The "server" is a socket bound to port 0: refused while it does not listen, accepting after
``listen()``; the gRPC handshake that follows is replaced by a ready future."""
import queue
import socket
import threading
import time

import pytest

from federatedscope.core.communication import grpc_client
from federatedscope.core.communication.grpc_client import GrpcClientTransport, ServerUnreachable
from federatedscope.core.configs.config import get_default_cfg


class _Ready:
    def result(self, timeout=None):
        return None


@pytest.fixture
def bound():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))            # bound, not listening: connects are refused
    yield s
    s.close()


def _transport(port: int, max_backoff: float = 60.0, proxy: bool = False):
    cfg = get_default_cfg()
    cfg.distribute.server_host, cfg.distribute.server_port = "127.0.0.1", port
    cfg.distribute.reconnect_max_backoff = max_backoff
    cfg.distribute.grpc_enable_http_proxy = proxy
    return GrpcClientTransport(cfg, queue.Queue())


def _record(monkeypatch, transport):
    probes, grpc_waits = [], []
    real = transport._port_accepts

    def probe(timeout):
        ok = real(timeout)
        probes.append((time.monotonic(), ok))
        return ok
    monkeypatch.setattr(transport, "_port_accepts", probe)
    monkeypatch.setattr(grpc_client.grpc, "channel_ready_future",
                        lambda ch: grpc_waits.append(time.monotonic()) or _Ready())
    return probes, grpc_waits


def _wait_in_thread(transport, budget):
    out = {}

    def run():
        try:
            transport.wait_for_server(budget)
            out["ok"] = time.monotonic()
        except ServerUnreachable as e:
            out["error"], out["at"] = str(e), time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_probes_follow_the_backoff_and_grpc_is_asked_only_once_the_port_listens(
        monkeypatch, bound):
    transport = _transport(bound.getsockname()[1])
    probes, grpc_waits = _record(monkeypatch, transport)
    try:
        t, out = _wait_in_thread(transport, 60)
        time.sleep(4.5)                  # probes at ~0, 1, 2.6 (+-20 %), maybe 5.2 s
        refused = list(probes)
        assert grpc_waits == [] and all(not ok for _, ok in refused) and len(refused) >= 3
        gaps = [b[0] - a[0] for a, b in zip(refused, refused[1:])]
        for k, gap in enumerate(gaps):   # 1 s x 1.6^k, jitter +-20 %, capped at 5 s
            nominal = min(1.6 ** k, 5.0)
            assert 0.8 * nominal - 0.05 <= gap <= 1.2 * nominal + 1.0, (k, gaps)
        opened = time.monotonic()
        bound.listen(8)
        t.join(10)
        assert "ok" in out, out
        # the next probe (within one capped step) finds the port, then gRPC is asked once
        assert len(grpc_waits) == 1 and grpc_waits[0] >= opened
        assert out["ok"] - opened <= 1.2 * 5.0 + 1.0
        assert probes[-1][1] is True
    finally:
        transport.close(grace=0.5)


def test_probe_steps_are_capped_at_the_configured_backoff(monkeypatch, bound):
    transport = _transport(bound.getsockname()[1], max_backoff=1.2)
    probes, grpc_waits = _record(monkeypatch, transport)
    try:
        t, out = _wait_in_thread(transport, 4.0)
        t.join(15)
        gaps = [b[0] - a[0] for a, b in zip(probes, probes[1:])]
        # 1 s, then 1.2 s (the cap) for every later step, each +-20 %
        assert gaps and all(g <= 1.2 * 1.2 + 0.5 for g in gaps), gaps
        assert len(probes) >= 3, gaps
        assert grpc_waits == []
        assert "distribute.connect_timeout" in out["error"] and "Is it running?" in out["error"]
    finally:
        transport.close(grace=0.5)


def test_probe_steps_grow_as_grpcs_backoff_and_stop_growing_at_five_seconds(monkeypatch, bound):
    """The waits asked of the closing event, without sleeping through them: 1 s x 1.6^k with
    +-20 % jitter, never above 5 s (a server that comes up is seen within 6 s)."""
    transport = _transport(bound.getsockname()[1], max_backoff=60.0)
    asked = []

    class Clock:
        def wait(self, delay):
            asked.append(delay)
            return len(asked) == 12          # then: "client is shutting down"
    monkeypatch.setattr(transport, "_closing", Clock())
    with pytest.raises(ServerUnreachable, match="shutting down"):
        transport.wait_for_server(3600)
    for k, delay in enumerate(asked):
        nominal = min(1.6 ** k, 5.0)
        assert 0.8 * nominal <= delay <= 1.2 * nominal, (k, asked)
    assert max(asked[5:]) <= 6.0 and min(asked[5:]) >= 4.0, asked
    transport._closing = threading.Event()
    transport.close(grace=0.5)


def test_closing_ends_a_wait_for_a_server_that_is_not_up(monkeypatch, bound):
    transport = _transport(bound.getsockname()[1])
    _record(monkeypatch, transport)
    t, out = _wait_in_thread(transport, 120)
    time.sleep(1.5)
    closed = time.monotonic()
    transport.close(grace=0.5)
    t.join(5)
    assert out.get("error") == "client is shutting down"
    assert out["at"] - closed < 1.0


def test_through_an_http_proxy_only_grpc_knows_the_way(monkeypatch, bound):
    transport = _transport(bound.getsockname()[1], proxy=True)
    monkeypatch.setattr(grpc_client.socket, "create_connection",
                        lambda *a, **k: pytest.fail("probed the server directly"))
    asked = []
    monkeypatch.setattr(grpc_client.grpc, "channel_ready_future",
                        lambda ch: asked.append(ch) or _Ready())
    try:
        transport.wait_for_server(5)
        assert len(asked) == 1
    finally:
        transport.close(grace=0.5)
