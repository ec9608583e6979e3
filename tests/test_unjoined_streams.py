"""Which unjoined stream gives way at the cap (``communication/unjoined.py``): hand-worked
cases over several addresses; the real-gRPC flood is in test_transport_hostile.py."""
from dataclasses import dataclass

import pytest

from federatedscope.core.communication.unjoined import (UnjoinedConnections, UnjoinedStreams,
                                                        peer_address)


@dataclass
class S:
    conn_id: int
    peer: str


def _fill(streams, spec):
    """spec: [(conn_id, address)] in arrival order."""
    made = {}
    for cid, ip in spec:
        made[cid] = S(cid, f"ipv4:{ip}:{40000 + cid}")
        streams.add(made[cid])
    return made


@pytest.mark.parametrize("peer,addr", [
    ("ipv4:10.0.0.5:40123", "ipv4:10.0.0.5"),
    ("ipv6:[::1]:5", "ipv6:[::1]"),
    ("ipv6:[fe80::1:2]:40123", "ipv6:[fe80::1:2]"),
    ("unix:/tmp/s.sock", "unix:/tmp/s.sock"),
    ("ipv4:nohost", "ipv4:nohost"),
])
def test_peer_address_drops_only_the_port(peer, addr):
    assert peer_address(peer) == addr


def test_the_address_holding_most_gives_its_oldest_idle_stream():
    u = UnjoinedStreams(cap=7)
    s = _fill(u, [(1, "10.0.0.2"), (2, "10.0.0.1"), (3, "10.0.0.1"), (4, "10.0.0.3"),
                  (5, "10.0.0.1"), (6, "10.0.0.3"), (7, "10.0.0.4")])
    assert (len(u), u.idle, u.joining) == (7, 7, 0)
    assert u.victim() is s[2]                # .1 holds 3: its oldest, not the global oldest (1)
    u.remove(s[2])
    # .1 and .3 now hold 2 each: the older of their oldest streams (3 before 4)
    assert u.victim() is s[3]
    u.remove(s[3])
    assert u.victim() is s[4]                # .3 holds 2 (4, 6), the rest 1
    u.remove(s[4])
    assert u.victim() is s[1]                # all hold 1: oldest first, as without addresses
    assert len(u) == 4


def test_joining_streams_count_for_their_address_but_are_never_evicted():
    u = UnjoinedStreams(cap=6)
    s = _fill(u, [(1, "10.0.0.9"), (2, "10.0.0.9"), (3, "10.0.0.9"), (4, "10.0.0.7"),
                  (5, "10.0.0.7"), (6, "10.0.0.8")])
    u.joined_in(s[1])
    u.joined_in(s[2])
    assert (len(u), u.idle, u.joining) == (6, 4, 2)
    assert u.victim() is s[3]                # .9 still holds 3 (2 joining): its only idle one
    u.joined_in(s[3])
    assert u.victim() is s[4]                # .9 has nothing idle left; .7 holds 2
    for x in (s[4], s[5], s[6]):
        u.joined_in(x)
    assert u.victim() is None                # every slot is a join the Server is deciding
    u.remove(s[2])                           # bound (or closed) while joining
    u.remove(s[2])                           # a second remove is a no-op
    assert (len(u), u.idle, u.joining) == (5, 0, 5)


def test_one_flooding_address_cannot_push_out_four_other_hosts():
    """At the cap, every new stream of one host evicts per the rule; the 4 hosts that came first
    keep all their streams however long the flood lasts."""
    cap = 32
    u = UnjoinedStreams(cap)
    honest = _fill(u, [(k, f"10.1.0.{k}") for k in range(1, 5)])
    evicted = []
    for cid in range(5, 5 + 200):
        if len(u) >= cap:
            v = u.victim()
            u.remove(v)
            evicted.append(v.conn_id)
        u.add(S(cid, f"ipv4:10.9.9.9:{cid}"))
    assert len(u) == cap and len(evicted) == 200 - (cap - 4)
    assert not set(evicted) & set(honest)
    assert evicted == list(range(5, 5 + len(evicted)))      # the flooder's own, oldest first


# ---------------------------------------------------------------- connections per address
def _conn(ip: str, port: int) -> str:
    return f"ipv4:{ip}:{port}"


def _open_all(c: UnjoinedConnections, ip: str, ports, bound: int) -> list:
    """Each port a new connection with one stream; returns the refusals ("" = admitted)."""
    out = []
    for port in ports:
        why = c.refusal(_conn(ip, port), bound)
        if not why:
            c.opened(_conn(ip, port))
        out.append(why)
    return out


def test_a_new_connection_is_refused_exactly_at_its_address_ceiling():
    """4 expected clients, headroom 8: nobody joined, each address may hold 12 connections with
    unjoined streams; the 13th of one address is refused while other addresses are not."""
    c = UnjoinedConnections(fixed=0, expected=4, headroom=8)
    assert c.ceiling(0) == 12 and c.ceiling(3) == 9 and c.ceiling(4) == 8 and c.ceiling(9) == 8
    got = _open_all(c, "10.0.0.1", range(40001, 40014), bound=0)
    assert got[:12] == [""] * 12 and got[12], got
    assert c.held("ipv4:10.0.0.1") == 12
    assert "ipv4:10.0.0.1 already holds 12" in got[12] and "ceiling 12" in got[12]
    assert "distribute.grpc_max_connections_per_address" in got[12]
    assert "not yet joined + 8" in got[12]
    # a second stream on a connection already counted is not a new connection
    assert c.refusal(_conn("10.0.0.1", 40001), 0) == ""
    c.opened(_conn("10.0.0.1", 40001))
    assert c.held("ipv4:10.0.0.1") == 12
    assert _open_all(c, "10.0.0.2", range(50001, 50013), bound=0) == [""] * 12
    assert _open_all(c, "10.0.0.3", [1, 2, 3, 4], bound=0) == [""] * 4
    assert c.held("ipv4:10.0.0.2") == 12 and c.held("ipv4:10.0.0.3") == 4


def test_the_derived_ceiling_shrinks_as_clients_join_and_counted_connections_stay():
    c = UnjoinedConnections(fixed=0, expected=4, headroom=8)
    _open_all(c, "10.0.0.1", range(1, 11), bound=0)            # 10 held, under 12
    _open_all(c, "10.0.0.5", range(1, 5), bound=0)             # the 4 real clients
    for port in range(1, 4):
        c.bound(_conn("10.0.0.5", port))                       # 3 of them join
    assert c.held("ipv4:10.0.0.5") == 1 and c.ceiling(3) == 9
    # .1 holds 10 > 9: nothing of it is closed, but its next connection is refused ...
    assert c.held("ipv4:10.0.0.1") == 10 and c.refusal(_conn("10.0.0.1", 99), 3)
    for port in (1, 2):
        c.closed(_conn("10.0.0.1", port), was_bound=False)      # the join deadline closes two
    assert c.held("ipv4:10.0.0.1") == 8
    got = _open_all(c, "10.0.0.1", [97, 98], bound=3)          # one more fits, exactly to 9
    assert got[0] == "" and "already holds 9" in got[1] and "ceiling 9" in got[1], got
    assert c.held("ipv4:10.0.0.1") == 9
    # ... and the 4th real client, on an address of its own, is never refused
    assert c.refusal(_conn("10.0.0.6", 7), 3) == ""


def test_a_joined_clients_connection_never_counts():
    c = UnjoinedConnections(fixed=0, expected=4, headroom=8)
    joined = _conn("10.0.0.7", 41000)
    c.opened(joined)
    assert c.held("ipv4:10.0.0.7") == 1
    c.bound(joined)
    c.opened(joined)           # a second stream (a reconnect) on the joined client's connection
    assert c.held("ipv4:10.0.0.7") == 0
    c.closed(joined, was_bound=True)      # the old session ends: the new stream has not joined
    assert c.held("ipv4:10.0.0.7") == 1
    c.closed(joined, was_bound=False)
    c.closed(joined, was_bound=False)     # gone already: a no-op
    assert c.held("ipv4:10.0.0.7") == 0 and c.refusal(joined, 0) == ""


def test_a_fixed_ceiling_does_not_depend_on_joins():
    c = UnjoinedConnections(fixed=5, expected=4, headroom=8)
    assert c.ceiling(0) == c.ceiling(100) == 5
    got = _open_all(c, "10.0.0.1", range(1, 7), bound=2)
    assert got[:5] == [""] * 5 and "ceiling 5, set;" in got[5], got


def test_the_loopback_swarm_is_never_refused():
    """3,550 clients on 127.0.0.1 (bench/scale.py's largest swarm), all connecting before any
    joins, then joining one by one while the rest reconnect once each: nothing is refused."""
    n = 3550
    c = UnjoinedConnections(fixed=0, expected=n, headroom=8)
    assert _open_all(c, "127.0.0.1", range(10000, 10000 + n), bound=0) == [""] * n
    for i, port in enumerate(range(10000, 10000 + n)):
        if i % 2:                              # half drop their stream and come back on a new one
            c.closed(_conn("127.0.0.1", port), was_bound=False)
            assert c.refusal(_conn("127.0.0.1", port + n), i) == ""
            c.opened(_conn("127.0.0.1", port + n))
            port += n
        c.bound(_conn("127.0.0.1", port))
    assert c.held("ipv4:127.0.0.1") == 0 and c.ceiling(n) == 8


def test_the_key_sets_the_ceiling_and_a_negative_one_is_refused_by_name():
    from federatedscope.core.communication.limits import derive_limits
    from federatedscope.core.configs.config import ConfigError, get_default_cfg
    cfg = get_default_cfg()
    assert derive_limits(cfg, 8, 0).connections_per_address == 0
    assert derive_limits(cfg, 8, 0).expected_clients == 4
    cfg.distribute.grpc_max_connections_per_address = 20
    assert derive_limits(cfg, 8, 0).connections_per_address == 20
    cfg.distribute.grpc_max_connections_per_address = -1
    with pytest.raises(ConfigError, match="distribute.grpc_max_connections_per_address=-1"):
        derive_limits(cfg, 8, 0)


def test_at_an_address_ceiling_its_own_oldest_idle_stream_gives_way():
    """The stream that makes way for a newcomer over its address's ceiling: that address's
    oldest idle one, never another address's nor one whose join the Server is deciding."""
    u = UnjoinedStreams(cap=64)
    streams = [S(i, f"ipv4:10.0.0.{1 + i % 2}:{4000 + i}") for i in range(1, 9)]
    for s in streams:
        u.add(s)
    assert u.oldest_idle("ipv4:10.0.0.2").conn_id == 1      # odd ids are .2's
    assert u.oldest_idle("ipv4:10.0.0.1").conn_id == 2
    u.joined_in(streams[0])                                 # 1's join is with the Server
    assert u.oldest_idle("ipv4:10.0.0.2").conn_id == 3
    for s in streams[2:8:2]:                                # 3, 5, 7 go: only joining 1 left
        u.remove(s)
    assert u.oldest_idle("ipv4:10.0.0.2") is None and u.oldest_idle("ipv4:10.0.0.9") is None
    assert len(u) == 5
