"""Streams and connections that have not joined yet, by peer address: which stream gives way at
the unjoined cap (``UnjoinedStreams``), and when an address is at its ceiling of connections
(``UnjoinedConnections``, at the end).

Unjoined streams have a cap of their own (``limits.max_unjoined``) so they cannot take the
slots admitted clients need. At the cap a new stream evicts an idle one (a stream whose join the
Server is deciding is never evicted). Evicting the globally oldest would let one host that opens
streams fast push every other host's joins out; so the victim is the oldest idle stream *of the
address holding the most unjoined streams*. A flood from one address then evicts only its own
streams and holds at most one slot more than any other address, while clients on other
addresses keep theirs. With a single address (every client behind one NAT, or a test on
loopback) this is exactly oldest-first. Several addresses under one attacker's control are not
told apart from several honest hosts: the per-address rule bounds one address, not one attacker.
"""
import collections
from typing import Dict, Optional, Protocol


class Stream(Protocol):
    conn_id: int
    peer: str


def peer_address(peer: str) -> str:
    """gRPC's peer text without the port: ``ipv4:10.0.0.5:40123`` -> ``ipv4:10.0.0.5``,
    ``ipv6:[::1]:40123`` -> ``ipv6:[::1]``; any other form (``unix:...``) is its own address."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6") or ":" not in rest:
        return peer
    return f"{kind}:{rest.rsplit(':', 1)[0]}"


class UnjoinedStreams:
    """Idle (no join sent yet) and joining (join handed to the Server) streams, per address."""

    def __init__(self, cap: int):
        self.cap = cap
        self._idle: Dict[str, "collections.OrderedDict[int, Stream]"] = {}
        self._joining: Dict[int, Stream] = {}
        self._per_address: "collections.Counter[str]" = collections.Counter()

    @property
    def idle(self) -> int:
        return sum(map(len, self._idle.values()))

    @property
    def joining(self) -> int:
        return len(self._joining)

    def __len__(self) -> int:
        return sum(self._per_address.values())

    def add(self, stream: Stream) -> None:
        addr = peer_address(stream.peer)
        self._idle.setdefault(addr, collections.OrderedDict())[stream.conn_id] = stream
        self._per_address[addr] += 1

    def victim(self) -> Optional[Stream]:
        """The idle stream to evict for a newcomer, or None when every unjoined stream is
        joining (the newcomer must then be refused). Only asked at the cap."""
        best = None
        for addr, streams in self._idle.items():
            oldest = next(iter(streams.values()))
            key = (self._per_address[addr], -oldest.conn_id)   # most streams, then oldest
            if best is None or key > best[0]:
                best = (key, oldest)
        return None if best is None else best[1]

    def oldest_idle(self, addr: str) -> Optional[Stream]:
        """The oldest idle stream of ``addr`` (its turn to give way at its ceiling), or None."""
        streams = self._idle.get(addr)
        return next(iter(streams.values())) if streams else None

    def joined_in(self, stream: Stream) -> None:
        """Its join went to the Server: it still counts, but can no longer be evicted."""
        if self._pop_idle(stream):
            self._joining[stream.conn_id] = stream

    def remove(self, stream: Stream) -> None:
        """Bound to a client, evicted, timed out or closed."""
        if self._pop_idle(stream) or self._joining.pop(stream.conn_id, None) is not None:
            addr = peer_address(stream.peer)
            self._per_address[addr] -= 1
            if not self._per_address[addr]:
                del self._per_address[addr]

    def _pop_idle(self, stream: Stream) -> bool:
        addr = peer_address(stream.peer)
        streams = self._idle.get(addr)
        if streams is None or streams.pop(stream.conn_id, None) is None:
            return False
        if not streams:
            del self._idle[addr]
        return True


class UnjoinedConnections:
    """Connections that carry streams but no joined client, per peer address, and the ceiling on
    them that a new connection's first stream must fit under.

    The server never sees a TCP connection, only its streams; each stream names its connection
    (gRPC's peer text, one port per connection). A connection counts for its address while it
    has a stream and none of its streams is bound to an admitted client: a joined client's
    connection never counts, and one without streams is the idle-connection limit's to close.
    Honest clients need one connection each until they have joined, so the derived ceiling is
    the expected clients not yet joined plus ``headroom`` (a client reconnecting while the
    server still holds its old session); it shrinks as clients join, so once a job is full an
    address can hold only ``headroom`` such connections. ``fixed`` > 0 replaces the derivation
    (``distribute.grpc_max_connections_per_address``). A new connection at the ceiling makes its
    address's oldest idle stream give way (the transport's choice, ``UnjoinedStreams.oldest_idle``);
    ``refusal`` is the text for when none is idle."""

    def __init__(self, fixed: int, expected: int, headroom: int):
        self.fixed, self.expected, self.headroom = fixed, expected, headroom
        self._streams: Dict[str, list] = {}    # peer -> [open streams, of them bound]
        self._held: "collections.Counter[str]" = collections.Counter()   # address -> counted

    def ceiling(self, bound: int) -> int:
        """With ``bound`` clients joined (all addresses together)."""
        return self.fixed if self.fixed > 0 else max(0, self.expected - bound) + self.headroom

    def held(self, address: str) -> int:
        return self._held.get(address, 0)

    def refusal(self, peer: str, bound: int) -> str:
        """"" when a new stream from ``peer`` fits, else why not: only the first stream of a
        connection whose address is already at the ceiling is over it."""
        addr = peer_address(peer)
        limit = self.ceiling(bound)
        if peer in self._streams or self.held(addr) < limit:
            return ""
        how = "set" if self.fixed else f"derived: the clients not yet joined + {self.headroom}"
        return (f"{addr} already holds {self.held(addr)} connections with streams that have not "
                f"joined (ceiling {limit}, {how}; distribute.grpc_max_connections_per_address); "
                f"retry later")

    def opened(self, peer: str) -> None:
        self._change(peer, 1, 0)

    def bound(self, peer: str) -> None:
        """A stream of ``peer`` was bound to an admitted client."""
        self._change(peer, 0, 1)

    def closed(self, peer: str, was_bound: bool) -> None:
        if peer in self._streams:
            self._change(peer, -1, -int(was_bound))

    def _change(self, peer: str, streams: int, bound: int) -> None:
        counts = self._streams.setdefault(peer, [0, 0])
        before = counts[0] > 0 and not counts[1]
        counts[0] += streams
        counts[1] += bound
        now = counts[0] > 0 and not counts[1]
        if now != before:
            addr = peer_address(peer)
            self._held[addr] += 1 if now else -1
            if not self._held[addr]:
                del self._held[addr]
        if not counts[0]:
            del self._streams[peer]
