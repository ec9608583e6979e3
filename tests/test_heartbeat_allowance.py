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


TIMEOUT_FIX = ("must be 0 (never mark a silent client lost) or >= 0.3 s (the server asks its "
               "clients to beat three times per timeout, at most every 0.1 s)")
INTERVAL_FIX = ("must be 0 (no heartbeats) or >= 0.1 s (servers take at most 20 per second "
                "from a client)")


@pytest.mark.parametrize("key,value,fix", [
    ("distribute.heartbeat_timeout", "0", None), ("distribute.heartbeat_timeout", "0.3", None),
    ("distribute.heartbeat_timeout", "3", None),
    ("distribute.heartbeat_timeout", "0.29", TIMEOUT_FIX),
    ("distribute.heartbeat_timeout", "-1", TIMEOUT_FIX),
    ("distribute.heartbeat_interval", "0", None), ("distribute.heartbeat_interval", "0.1", None),
    ("distribute.heartbeat_interval", "2.5", None),
    ("distribute.heartbeat_interval", "0.09", INTERVAL_FIX),
    ("distribute.heartbeat_interval", "-1", INTERVAL_FIX)])
def test_the_config_refuses_heartbeats_faster_than_servers_allow_or_no_interval_can_keep(
        key, value, fix):
    cfg = get_default_cfg()
    cfg.merge_from_list([key, value])
    if fix is None:
        finalize(cfg)
        return
    with pytest.raises(ConfigError) as e:
        finalize(cfg)
    assert str(e.value) == f"{key}={float(value)} {fix}"


@pytest.mark.parametrize("expected,own,timeout,asked", [
    (0, 5.0, 30.0, 5.0), (4, 5.0, 30.0, 5.0), (500, 5.0, 30.0, 5.0),
    (800, 5.0, 30.0, 8.0),          # 800 clients / 100 per second
    (1000, 5.0, 30.0, 10.0),        # = a third of the timeout
    (3550, 5.0, 30.0, 10.0),        # capped there: a quiet client shows up 3 times per timeout
    (3550, 5.0, 120.0, 35.5), (3550, 5.0, 0.0, 35.5),   # no timeout: no cap
    (400, 20.0, 90.0, 20.0),        # never shorter than the server's own interval ...
    (1000, 20.0, 30.0, 10.0),       # ... unless the timeout needs it: three beats per timeout
    (4, 5.0, 3.0, 1.0),             # a 3 s timeout with the default 5 s interval: every 1 s
    (4, 5.0, 0.3, 0.1),             # the shortest timeout the config takes: the floor
    (0, 0.0, 30.0, 0.0),            # nothing to share, nothing of its own: no ask
    (1000, 0.0, 30.0, 10.0), (250, 0.1, 0.6, 0.2)])
def test_the_server_shares_a_heartbeat_rate_between_its_expected_clients(expected, own, timeout,
                                                                         asked):
    assert heartbeat_interval_for(expected, own, timeout) == pytest.approx(asked)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 20_000), own=st.sampled_from([0.0, 0.1, 1.0, 5.0, 30.0]),
       timeout=st.sampled_from([0.0, 3.0, 30.0, 120.0, 600.0]))
def test_the_asked_interval_bounds_the_rate_or_keeps_three_per_timeout(n, own, timeout):
    asked = heartbeat_interval_for(n, own, timeout)
    assert asked >= (min(own, timeout / 3) if timeout > 0 else own)
    assert asked == 0 or asked >= 0.1                                 # the config's floor
    assert heartbeat_interval_for(n + 1, own, timeout) >= asked      # more clients, never faster
    if timeout > 0:
        assert asked <= max(timeout / 3, 0.1) + 1e-12                # three beats per timeout
    if timeout <= 0 or n / HEARTBEATS_PER_S <= timeout / 3:
        assert asked == 0 or n / asked <= HEARTBEATS_PER_S + 1e-9


@pytest.mark.parametrize("value,own,used", [
    (None, 5.0, 5.0), ("", 5.0, 5.0), ("ten", 5.0, 5.0), ("nan", 5.0, 5.0), ("inf", 5.0, 5.0),
    ("-1", 5.0, 5.0), ("2", 5.0, 2.0), ("10", 5.0, 10.0), ("35.5", 5.0, 35.5),
    ("3600", 5.0, 3600.0), ("3601", 5.0, 5.0), ("10", 0.0, 0.0), ("10", 12.0, 10.0),
    ("2", 0.5, 2.0), ("0.25", 0.1, 0.25), ("5", 5.0, 5.0), ("-0.5", 0.5, 0.5),
    ("0.1", 5.0, 0.1), ("0.09", 5.0, 5.0), ("0", 5.0, 5.0)])
def test_a_client_follows_a_sane_announcement_shorter_or_longer_than_its_own(value, own, used):
    """Shorter: the server's heartbeat_timeout (which the client cannot know) needs it; longer:
    a large server saves CPU. Below the config's floor or above an hour: the client's own."""
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


@pytest.mark.parametrize("max_clients,server_own,own", [
    (400, "0.2", 0.2),   # 200 expected clients at 100/s ask 2 s, capped at 3 s / 3: slower
    (8, "5", 5.0),       # the defaults' 5 s against a 3 s timeout: the timeout's 1 s, faster
])
def test_a_real_client_beats_at_the_announced_interval_not_its_own(max_clients, server_own, own):
    t = _server(max_clients, "distribute.heartbeat_interval", server_own,
                "distribute.heartbeat_timeout", "3")
    cfg = get_default_cfg()
    cfg.distribute.server_host, cfg.distribute.server_port = "127.0.0.1", t.port
    cfg.distribute.heartbeat_interval = own
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
        # at its own 0.2 s it would have beaten ~20 times; at 5 s, not once after the first
        assert 3 <= len(stamps) - 1 <= 5, stamps
        assert 0.8 <= statistics.median(gaps) <= 1.6, gaps
        assert not math.isclose(statistics.median(gaps), own, abs_tol=0.3)
    finally:
        client.close(grace=1.0)
        t.stop(grace=1.0)
