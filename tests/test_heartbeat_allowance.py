"""How many heartbeats a session may send: each client sets its own distribute.heartbeat_interval,
which the server does not know, so the server's allowance must hold for the fastest interval the
config accepts, and for heartbeats that queued up while the server was not reading."""
import pytest

from federatedscope.core.communication.limits import TokenBucket, derive_limits
from federatedscope.core.configs.config import ConfigError, finalize, get_default_cfg


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
