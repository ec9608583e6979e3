"""Streams that have not joined yet, by peer address, and which one gives way at the cap.

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
