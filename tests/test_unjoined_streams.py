"""Which unjoined stream gives way at the cap (``communication/unjoined.py``): hand-worked
cases over several addresses; the real-gRPC flood is in test_transport_hostile.py."""
from dataclasses import dataclass

import pytest

from federatedscope.core.communication.unjoined import UnjoinedStreams, peer_address


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
