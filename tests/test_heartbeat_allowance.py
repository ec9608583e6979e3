"""How many heartbeats a session may send: each client sets its own distribute.heartbeat_interval,
which the server does not know, so the server's allowance must hold for the fastest interval the
config accepts, and for heartbeats that queued up while the server was not reading.

And how many it asks for: each heartbeat costs the server CPU, so a server expecting many
clients announces a longer interval (``heartbeat_interval_for``), which real clients follow."""
import math
import queue
import statistics
import time

import pytest
from hypothesis import given, settings, strategies as st

from harness.raw_peer import RawPeer, next_incoming
from federatedscope.core.communication.flow import ServerInbox
from federatedscope.core.communication.grpc_client import GrpcClientTransport
from federatedscope.core.communication.grpc_server import GrpcServerTransport
from federatedscope.core.communication.limits import (HEARTBEAT_HEADER, HEARTBEATS_PER_S,
                                                      TokenBucket, announced_heartbeat,
                                                      derive_limits, heartbeat_interval_for)
from federatedscope.core.configs.config import ConfigError, finalize, get_default_cfg
from federatedscope.core.message import JOIN_IN, Message


def _limits(*opts):
    cfg = get_default_cfg()
    cfg.merge_from_list(list(opts))
    return derive_limits(cfg, max_clients=8, model_bytes=1 << 20)


def _bucket(limits):
    return TokenBucket(limits.heartbeat_burst, limits.heartbeat_rate, 0.0)


def test_a_client_at_the_fastest_interval_is_never_refused_whatever_the_servers_interval():
    # the server keeps its own 5 s (or 60 s) interval; the client beats every 0.1 s for 10 min
    for server_interval in ("5.0", "60.0"):
        bucket = _bucket(_limits("distribute.heartbeat_interval", server_interval))
        assert all(bucket.take(i * 0.1) for i in range(6000))


def test_heartbeats_queued_behind_a_stalled_server_arrive_at_once_and_pass():
    limits = _limits("distribute.heartbeat_timeout", "60")
    assert limits.heartbeat_rate == 20.0 and limits.heartbeat_burst == 1200.0
    bucket = _bucket(limits)
    # a client at 0.1 s while the server did not read for 60 s: 600 land in one instant, twice
    assert all(bucket.take(60.0) for _ in range(600))
    assert all(bucket.take(120.0) for _ in range(600))


def test_a_flood_is_refused_after_the_burst_and_held_to_the_rate():
    limits = _limits()                       # heartbeat_timeout 30 s: a burst of 20/s x 30 s
    assert limits.heartbeat_burst == 600.0
    bucket = _bucket(limits)
    passed = sum(bucket.take(0.0) for _ in range(5000))
    assert passed == 600
    # afterwards 20 per second pass, and no more: 10 s of flooding adds 200
    passed = sum(bucket.take(t * 0.25) for t in range(1, 41) for _ in range(10))
    assert passed == 200


@pytest.mark.parametrize("value, ok", [("0", True), ("0.1", True), ("2.5", True),
                                       ("0.09", False), ("-1", False)])
def test_the_config_refuses_an_interval_faster_than_servers_allow(value, ok):
    cfg = get_default_cfg()
    cfg.merge_from_list(["distribute.heartbeat_interval", value])
    if ok:
        finalize(cfg)
        return
    with pytest.raises(ConfigError) as e:
        finalize(cfg)
    assert str(e.value) == (f"distribute.heartbeat_interval={float(value)} must be 0 (no "
                            f"heartbeats) or >= 0.1 s (servers take at most 20 per second from "
                            f"a client)")


@pytest.mark.parametrize("expected,own,timeout,asked", [
    (0, 5.0, 30.0, 5.0), (4, 5.0, 30.0, 5.0), (500, 5.0, 30.0, 5.0),
    (800, 5.0, 30.0, 8.0),          # 800 clients / 100 per second
    (1000, 5.0, 30.0, 10.0),        # = a third of the timeout
    (3550, 5.0, 30.0, 10.0),        # capped there: a quiet client shows up 3 times per timeout
    (3550, 5.0, 120.0, 35.5), (3550, 5.0, 0.0, 35.5),   # no timeout: no cap
    (1000, 20.0, 30.0, 20.0),       # never shorter than the server's own interval
    (1000, 0.0, 30.0, 10.0), (250, 0.1, 0.6, 0.2)])
def test_the_server_shares_a_heartbeat_rate_between_its_expected_clients(expected, own, timeout,
                                                                         asked):
    assert heartbeat_interval_for(expected, own, timeout) == pytest.approx(asked)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 20_000), own=st.sampled_from([0.0, 0.1, 1.0, 5.0, 30.0]),
       timeout=st.sampled_from([0.0, 3.0, 30.0, 120.0, 600.0]))
def test_the_asked_interval_bounds_the_rate_or_keeps_three_per_timeout(n, own, timeout):
    asked = heartbeat_interval_for(n, own, timeout)
    assert asked >= own
    assert heartbeat_interval_for(n + 1, own, timeout) >= asked      # more clients, never faster
    if timeout > 0 and own <= timeout / 3:
        assert asked <= timeout / 3 + 1e-12
    if timeout <= 0 or n / HEARTBEATS_PER_S <= timeout / 3:
        assert asked == 0 or n / asked <= HEARTBEATS_PER_S + 1e-9


@pytest.mark.parametrize("value,own,used", [
    (None, 5.0, 5.0), ("", 5.0, 5.0), ("ten", 5.0, 5.0), ("nan", 5.0, 5.0), ("inf", 5.0, 5.0),
    ("-1", 5.0, 5.0), ("2", 5.0, 5.0), ("10", 5.0, 10.0), ("35.5", 5.0, 35.5),
    ("3600", 5.0, 3600.0), ("3601", 5.0, 5.0), ("10", 0.0, 0.0), ("10", 12.0, 12.0),
    ("2", 0.5, 2.0), ("0.25", 0.1, 0.25), ("5", 5.0, 5.0), ("-0.5", 0.5, 0.5)])
def test_a_client_takes_the_longer_of_its_own_and_a_sane_announcement(value, own, used):
    assert announced_heartbeat(value, own) == used


def _server(max_clients: int, *opts) -> GrpcServerTransport:
    cfg = get_default_cfg()
    cfg.distribute.server_host, cfg.distribute.server_port = "127.0.0.1", 0
    cfg.merge_from_list(list(opts))
    t = GrpcServerTransport(cfg, ServerInbox(), max_clients=max_clients)
    t.start()
    return t


@pytest.mark.parametrize("max_clients,opts,header", [
    (8, (), "5"), (2000, (), "10"), (7100, ("distribute.heartbeat_timeout", "120"), "35.5")])
def test_each_stream_is_told_the_interval_its_server_derives(max_clients, opts, header):
    t = _server(max_clients, *opts)         # max_clients is twice the expected clients
    try:
        with RawPeer(f"127.0.0.1:{t.port}") as peer:
            assert peer.metadata()[HEARTBEAT_HEADER] == header
    finally:
        t.stop(grace=1.0)


def test_a_real_client_beats_at_the_announced_interval_not_its_own():
    # 200 expected clients at 100/s ask 2 s, capped at a third of the 3 s timeout: 1 s
    t = _server(400, "distribute.heartbeat_interval", "0.2", "distribute.heartbeat_timeout", "3")
    cfg = get_default_cfg()
    cfg.distribute.server_host, cfg.distribute.server_port = "127.0.0.1", t.port
    cfg.distribute.heartbeat_interval = 0.2
    client = GrpcClientTransport(cfg, queue.Queue())
    try:
        client.wait_for_server(10)
        client.open_session(Message(JOIN_IN, 1, 0, 0, {"client_id": 1}))
        conn = next_incoming(t.inbox).conn_id
        t.bind(conn, 1)
        assert client.heartbeat_interval == 1.0
        stamps, deadline = [t.last_heard(conn)], time.monotonic() + 4.5
        while time.monotonic() < deadline:       # each heartbeat moves the connection's stamp
            heard = t.last_heard(conn)
            if heard != stamps[-1]:
                stamps.append(heard)
            time.sleep(0.02)
        gaps = [b - a for a, b in zip(stamps[1:], stamps[2:])]
        # at its own 0.2 s it would have beaten ~20 times
        assert 3 <= len(stamps) - 1 <= 5, stamps
        assert 0.8 <= statistics.median(gaps) <= 1.6, gaps
        assert not math.isclose(statistics.median(gaps), 0.2, abs_tol=0.3)
    finally:
        client.close(grace=1.0)
        t.stop(grace=1.0)
