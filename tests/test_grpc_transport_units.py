"""The gRPC transport's own rules, in process: a real ``GrpcServerTransport`` on 127.0.0.1 port 0
with real sessions (``RawPeer``, and the real ``GrpcClientTransport``), and the client's retry
decisions on a fake clock. Server: 8 clients (the job's 4 expected x 2), a 200,000-byte model
(largest message 2 x 200,000 + 1 MiB = 1,448,576 bytes, 65,536 before a join), 32 unjoined
streams (the floor), 40 sessions in all. Every expectation is worked out by hand below."""
import asyncio
import dataclasses
import functools
import logging
import queue
import socket
import threading
import time
import types

import grpc
import pytest
import torch

from harness.raw_peer import RawPeer, health_status, next_incoming
from federatedscope.core.communication import codec, grpc_client, grpc_server
from federatedscope.core.communication.flow import (CHUNK_BYTES, CHUNK_FIRST, GO,
                                                    UPLOAD_CHUNK_HEADER, UPLOAD_GO_HEADER)
from federatedscope.core.communication.grpc_client import (Backoff, GrpcClientTransport,
                                                           ServerUnreachable, signed_join)
from federatedscope.core.communication.grpc_server import BUSY, GrpcServerTransport
from federatedscope.core.communication.health import CappedHealth
from federatedscope.core.communication.intake import CLOSE, Connection
from federatedscope.core.communication.join_proof import NONCE_HEADER, PROOF_KEY, join_proof
from federatedscope.core.communication.limits import HEARTBEAT_HEADER
from federatedscope.core.communication.transport import Disconnected
from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.data.shard_format import token_digest
from federatedscope.core.message import ASSIGN_ID, HEARTBEAT, JOIN_IN, MODEL_PARA, Message

LOGGER = "federatedscope"
MODEL = 200_000
MAX_RECEIVE, PREJOIN = 2 * MODEL + 1024 * 1024, 64 * 1024
LOCAL = "ipv4:127.0.0.1"


def _cfg(join_deadline: float = 5.0, per_address: int = 0, port: int = 0):
    cfg = get_default_cfg()
    cfg.distribute.server_host, cfg.distribute.server_port = "127.0.0.1", port
    cfg.distribute.join_deadline = join_deadline
    cfg.distribute.grpc_max_connections_per_address = per_address
    return cfg


@pytest.fixture
def server():
    made = []

    def make(join_deadline: float = 5.0, per_address: int = 0, max_clients: int = 8, cfg=None):
        inbox: "queue.Queue" = queue.Queue()
        t = GrpcServerTransport(cfg or _cfg(join_deadline, per_address), inbox,
                                max_clients=max_clients, model_bytes=MODEL)
        t.start()
        made.append(t)
        return t, inbox, f"127.0.0.1:{t.port}"
    yield make
    for t in made:
        t.stop(grace=1.0)
        # tasks the tests left waiting (stand-in sessions that never end) are cancelled and the
        # loop closed here: left to the garbage collector, each logs "Task was destroyed but it
        # is pending!" into whichever later test is running, at a moment set by the collector
        if not t._loop.is_running() and not t._loop.is_closed():
            t._loop.run_until_complete(_cancel(asyncio.all_tasks(t._loop)))
            t._loop.close()


async def _cancel(tasks):
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def on_loop(t, fn, *args):
    """``fn(*args)`` run on the transport's event-loop thread (where its state lives)."""
    async def call():
        return fn(*args)
    return t._run(call(), timeout=5.0)


def _joined(t, inbox, peers_by_id):
    """Each peer joins as its id and is bound; returns {id: conn_id}."""
    conns = {}
    for cid, peer in peers_by_id.items():
        peer.join(cid)
        ev = next_incoming(inbox)
        assert ev.msg.content["client_id"] == cid
        t.bind(ev.conn_id, cid)
        conns[cid] = ev.conn_id
    return conns


def _note(text, receiver=0, state=0):
    return Message("evaluate", 0, receiver, state, {"note": text})


def _events(inbox, n, timeout=5.0):
    return [inbox.get(timeout=timeout) for _ in range(n)]


def _errors(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ who is delivered what
def test_each_round_reaches_exactly_its_receivers_and_absent_ids_are_skipped(server, caplog,
                                                                             monkeypatch):
    caplog.set_level(logging.DEBUG, LOGGER)
    t, inbox, addr = server()
    peers = {cid: RawPeer(addr) for cid in (11, 12, 13, 14, 15)}
    encoded = []
    real_encode = codec.encode_parts
    try:
        _joined(t, inbox, peers)
        monkeypatch.setattr(codec, "encode_parts",
                            lambda m: encoded.append(m.state) or real_encode(m))
        # an absent id first: the ids after it are still served
        rounds = {1: [99, 11, 13, 15], 2: [12, 14], 3: [15, 98]}
        for r, receivers in rounds.items():
            t.broadcast(_note(f"round {r}", state=r), receivers)
        t.send(_note("to 12 only", receiver=12, state=4))
        t.broadcast(_note("end", state=5), [11, 12, 13, 14, 15])
        want = {11: ["round 1"], 12: ["round 2", "to 12 only"], 13: ["round 1"],
                14: ["round 2"], 15: ["round 1", "round 3"]}
        for cid, peer in peers.items():
            got = []
            while not got or got[-1] != "end":
                msg = peer.recv(5.0)
                assert msg is not None, (cid, got)
                got.append(msg.content["note"])
            assert got[:-1] == want[cid], cid
        assert encoded == [1, 2, 3, 4, 5]          # one encoding per broadcast
        dropped = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
        assert dropped == ["dropping evaluate: client #99 not connected",
                           "dropping evaluate: client #98 not connected"]
    finally:
        for peer in peers.values():
            peer.close()


def test_a_stream_is_answered_and_closed_by_its_id_before_it_is_bound(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, inbox, addr = server()
    silent = RawPeer(addr)
    silent.metadata()                      # registered first: conn 1
    joiner = RawPeer(addr)
    try:
        joiner.join(4)
        ev = next_incoming(inbox)
        assert ev.conn_id == 2 and ev.peer.startswith(LOCAL + ":")
        t.send_to_conn(999, _note("nobody"))          # no such stream: nothing happens
        t.send_to_conn(2, _note("hello 4"))
        assert joiner.recv(5.0).content["note"] == "hello 4"
        t.close(1)
        t.close(2)
        assert silent.wait_closed(5) and joiner.wait_closed(5)
        assert (silent.code, joiner.code) == ("OK", "OK")
        # the stream that never delivered anything needs no event; the joined one does
        ev = inbox.get(timeout=5)
        assert isinstance(ev, Disconnected)
        assert (ev.conn_id, ev.reason, ev.abuse) == (2, "stream closed by client", False)
        assert inbox.empty()
        assert t.delivered == 1 and not _errors(caplog)
    finally:
        silent.close()
        joiner.close()


def test_an_id_claimed_on_a_second_stream_takes_its_messages_and_keeps_them(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, inbox, addr = server()
    first, second, other = RawPeer(addr), RawPeer(addr), RawPeer(addr)
    try:
        first.join(7)
        a = next_incoming(inbox).conn_id
        second.join(7)
        b = next_incoming(inbox).conn_id
        other.metadata()
        # three connections of 127.0.0.1 without a bound stream
        assert on_loop(t, t._addresses.held, LOCAL) == 3
        t.bind(a, 7)
        assert t.session_counts() == {"open": 3, "bound": 1, "idle_unjoined": 1, "joining": 1}
        assert on_loop(t, t._addresses.held, LOCAL) == 2
        t.send(_note("one", receiver=7))
        assert first.recv(5.0).content["note"] == "one"
        t.bind(b, 7)                       # the same id on the second stream
        t.bind(12345, 9)                   # a stream that is gone: nothing happens
        assert t.session_counts() == {"open": 3, "bound": 1, "idle_unjoined": 1, "joining": 0}
        assert on_loop(t, t._addresses.held, LOCAL) == 1
        t.send(_note("two", receiver=7))
        t.send_to_conn(a, _note("marker"))
        assert second.recv(5.0).content["note"] == "two"
        assert first.recv(5.0).content["note"] == "marker"    # "two" did not go to the first
        t.close(a)
        ev = inbox.get(timeout=5)
        assert isinstance(ev, Disconnected) and ev.conn_id == a
        t.send(_note("three", receiver=7))        # the first stream's end did not unbind #7
        assert second.recv(5.0).content["note"] == "three"
        assert t.session_counts() == {"open": 2, "bound": 1, "idle_unjoined": 1, "joining": 0}
        assert not _errors(caplog)
    finally:
        for p in (first, second, other):
            p.close()


# ------------------------------------------------------------------ size limits
def test_sizes_at_and_over_the_prejoin_and_receive_limits(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, inbox, addr = server()
    assert (t.limits.max_receive, t.limits.prejoin_max) == (MAX_RECEIVE, PREJOIN)
    with RawPeer(addr) as at, RawPeer(addr) as over:
        at.send(b"\0" * PREJOIN)               # at the cap: read (and rejected as no frame)
        over.send(b"\0" * (PREJOIN + 1))       # over it: refused unread, the stream ends
        assert over.wait_closed(5)
        assert (over.code, over.details) == ("RESOURCE_EXHAUSTED", "message too large")
        at.join(3)                             # the stream at the cap still serves
        t.bind(next_incoming(inbox).conn_id, 3)
        at.send(b"\0" * MAX_RECEIVE)           # a bound client's largest message is read
        at.send(Message(HEARTBEAT, 3, 0, 0))
        at.send(b"\0" * (MAX_RECEIVE + 1))     # one byte more: gRPC refuses it itself
        assert at.wait_closed(10) and at.code == "RESOURCE_EXHAUSTED"
    assert t.rejected == 3      # junk at the cap, the unread one, the bound client's junk
    ev = inbox.get(timeout=5)
    assert isinstance(ev, Disconnected) and ev.abuse is False


def _sized(n: int, receiver: int) -> Message:
    """A message whose encoding is exactly ``n`` bytes."""
    pad = n
    for _ in range(3):
        msg = Message("evaluate", 0, receiver, 0, {"pad": "x" * pad})
        pad += n - len(codec.encode(msg))
    msg = Message("evaluate", 0, receiver, 0, {"pad": "x" * pad})
    assert len(codec.encode(msg)) == n
    return msg


def test_messages_from_64_kib_wait_for_a_large_write_slot_smaller_ones_do_not(server):
    t, inbox, addr = server()
    peers = {cid: RawPeer(addr) for cid in (1, 2, 3, 4)}
    try:
        _joined(t, inbox, peers)
        on_loop(t, t._backlog_ok.clear)       # large writes held (as at a full inbox backlog)
        t.send(_sized(64 * 1024, 1))
        t.send(_sized(64 * 1024 - 1, 2))
        got = peers[2].recv_raw(5.0)
        assert len(got) == 64 * 1024 - 1
        assert peers[1].recv_raw(0.3) is None            # held
        big = Message(MODEL_PARA, 0, 0, 2, {}, {"w": torch.arange(30_000, dtype=torch.float32)})
        t.broadcast(big, [2, 3, 4])
        on_loop(t, t._backlog_ok.set)
        assert len(peers[1].recv_raw(5.0)) == 64 * 1024
        for cid in (2, 3, 4):
            assert torch.equal(peers[cid].recv(5.0).tensors["w"], big.tensors["w"])
        t.broadcast(_note("after"), [1, 2, 3, 4])     # a large write leaves the session open
        for cid in (1, 2, 3, 4):
            assert peers[cid].recv(5.0).content["note"] == "after"
    finally:
        for peer in peers.values():
            peer.close()


class _StuckContext:
    def __init__(self, stuck: bool):
        self.stuck, self.written = stuck, []

    async def write(self, item):
        if self.stuck:
            await asyncio.Event().wait()
        self.written.append(item)


def test_a_large_write_not_taken_within_write_timeout_closes_the_session(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, _, _ = server()
    t.limits = dataclasses.replace(t.limits, write_timeout=0.2)
    bound, stranger = Connection(5, "ipv4:10.1.2.3:5555"), Connection(6, "ipv4:10.1.2.4:6666")
    bound.client_id = 17
    item = b"\1" * 70_000
    ok = _StuckContext(False)
    assert t._run(t._timed_write(bound, ok, item), timeout=5) is True and ok.written == [item]
    assert bound.reason == "stream closed by client"
    began = time.monotonic()
    assert t._run(t._timed_write(bound, _StuckContext(True), item), timeout=5) is False
    assert t._run(t._timed_write(stranger, _StuckContext(True), item), timeout=5) is False
    assert 0.4 <= time.monotonic() - began < 3.0
    assert (bound.reason, stranger.reason) == ("stopped reading", "stopped reading")
    assert [r.getMessage() for r in caplog.records] == [
        "Closed the session of client #17: a 70000-byte message was not taken within 0.2s "
        "(stalled reader)",
        "Closed the session of ipv4:10.1.2.4:6666: a 70000-byte message was not taken within "
        "0.2s (stalled reader)"]


# ------------------------------------------------------------------ the reader
class _Frames:
    """A context whose ``read`` hands out frames, then ``end`` (EOF or an exception)."""

    def __init__(self, frames, end=None):
        self.frames, self.end, self.reads = list(frames), end, 0

    async def read(self):
        self.reads += 1
        if self.frames:
            return self.frames.pop(0)
        if isinstance(self.end, BaseException):
            raise self.end
        return grpc.aio.EOF


class _Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE


def test_the_reader_closes_at_sixteen_bad_messages_and_names_each_failure(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, inbox, _ = server()
    bound, stranger = Connection(21, "ipv4:10.9.9.9:1"), Connection(22, "ipv4:10.9.9.8:2")
    bound.client_id = 4
    junk = [b"junk"] * 20
    ctx = _Frames(junk)
    t._run(t._read(bound, ctx), timeout=5)
    assert ctx.reads == 16 and bound.bad == 16      # the 17th frame was never read
    assert (bound.reason, bound.abuse) == ("too many invalid messages", True)
    assert bound.outbox.get_nowait() is CLOSE
    t._run(t._read(stranger, _Frames(junk)), timeout=5)
    assert (stranger.reason, stranger.abuse) == ("too many invalid messages", False)
    closes = [r.getMessage() for r in caplog.records if "Closed the session" in r.getMessage()]
    assert closes == [
        "Closed the session of client #4: 16 invalid or excess messages (limit 16 per session)",
        "Closed the session of ipv4:10.9.9.8:2: 16 invalid or excess messages "
        "(limit 16 per session)"]
    # 15 bad messages, then the end of the stream: closed as the client ended it
    calm = Connection(23, "ipv4:10.9.9.7:3")
    t._run(t._read(calm, _Frames([b"junk"] * 15)), timeout=5)
    assert (calm.bad, calm.reason, calm.abuse) == (15, "stream closed by client", False)
    assert calm.outbox.get_nowait() is CLOSE
    for end, reason in [(_Unavailable(), "stream error: UNAVAILABLE"),
                        (grpc.RpcError("reset"), "stream error: reset"),
                        (ValueError("boom"), "reader failed: ValueError('boom')"),
                        # the repr clipped to 160 characters and a note of its length
                        (ValueError("z" * 300), "reader failed: ValueError('" + "z" * 148
                         + "...[314 chars]")]:
        conn = Connection(24, "ipv4:10.9.9.6:4")
        t._run(t._read(conn, _Frames([], end)), timeout=5)
        assert conn.reason == reason and conn.outbox.get_nowait() is CLOSE
    cancelled = Connection(25, "ipv4:10.9.9.5:5")
    with pytest.raises((asyncio.CancelledError, __import__("concurrent").futures.CancelledError)):
        t._run(t._read(cancelled, _Frames([], asyncio.CancelledError())), timeout=5)
    assert cancelled.outbox.empty()
    assert inbox.empty()


# ------------------------------------------------------------------ join deadline
def test_a_silent_stream_and_an_unanswered_join_are_closed_a_bound_one_stays(server, caplog,
                                                                               monkeypatch):
    caplog.set_level(logging.WARNING, LOGGER)
    monkeypatch.setattr(grpc_server, "JOIN_ANSWER_TIMEOUT", 0.2)
    t, inbox, addr = server(join_deadline=0.3)
    opened = time.monotonic()
    with RawPeer(addr) as silent, RawPeer(addr) as waiting, RawPeer(addr) as member:
        member.join(1)
        kept = next_incoming(inbox).conn_id
        t.bind(kept, 1)
        silent.metadata()
        waiting.join(2)
        unanswered = next_incoming(inbox).conn_id
        assert silent.wait_closed(5)
        assert time.monotonic() - opened >= 0.29
        assert waiting.wait_closed(5)
        assert time.monotonic() - opened >= 0.49         # the deadline, then the answer's wait
        assert (silent.code, waiting.code) == ("OK", "OK")
        ev = inbox.get(timeout=5)
        assert isinstance(ev, Disconnected) and ev.conn_id == unanswered
        assert (ev.reason, ev.abuse) == ("no join_in before distribute.join_deadline", False)
        t.send(_note("still here", receiver=1))
        assert member.recv(5.0).content["note"] == "still here"
        assert t.session_counts() == {"open": 1, "bound": 1, "idle_unjoined": 0, "joining": 0}
        lines = [r.getMessage() for r in caplog.records if "Closed session" in r.getMessage()]
        assert len(lines) == 2
        assert lines[0].startswith(f"Closed session from {LOCAL}:")
        assert lines[0].endswith(": no valid join_in within 0.3s (distribute.join_deadline)")
        assert lines[1].endswith(": its join_in was not answered within 0.2s")
    ev = inbox.get(timeout=5)                    # the member leaving, as a client does
    assert (ev.conn_id, ev.reason) == (kept, "stream closed by client") and inbox.empty()


# ------------------------------------------------------------------ admission of streams
def _frozen(t, now):
    """Run ``fn`` on the loop with the loop's clock reading ``now``."""
    def run(fn, *args):
        async def call():
            real = t._loop.time
            t._loop.time = lambda: now
            try:
                return fn(*args)
            finally:
                t._loop.time = real
        return t._run(call(), timeout=5.0)
    return run


def _forget_all(t):
    def forget():
        for conn in list(t._conns.values()):
            t._forget(conn)
    on_loop(t, forget)


def test_an_address_at_its_ceiling_gives_way_after_a_second_else_is_refused(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, inbox, _ = server(per_address=3)
    start = on_loop(t, t._loop.time)
    at = _frozen(t, start)
    conns = [at(t._open, f"ipv4:10.0.0.5:{1001 + k}") for k in range(3)]
    assert [c.conn_id for c in conns] == [1, 2, 3] and not on_loop(t, t._all_closed.is_set)
    assert at(t._open, "ipv4:10.0.0.5:1002").conn_id == 4     # a connection it already holds
    refusal = _frozen(t, start + 0.999)(t._open, "ipv4:10.0.0.5:1004")
    assert refusal == ("ipv4:10.0.0.5 already holds 3 connections with streams that have not "
                       "joined (ceiling 3, set; distribute.grpc_max_connections_per_address); "
                       "retry later")
    other = at(t._open, "ipv4:10.0.0.6:1")             # another address is not held back
    assert other.conn_id == 5
    newer = _frozen(t, start + 1.0)(t._open, "ipv4:10.0.0.5:1004")
    assert newer.conn_id == 6 and newer.opened == start + 1.0
    # each stream's heartbeat allowance, full from its opening
    bucket = newer.heartbeats
    assert (bucket.capacity, bucket.rate, bucket.level, bucket.stamp) == \
        (t.limits.heartbeat_burst, t.limits.heartbeat_rate, t.limits.heartbeat_burst, start + 1.0)
    assert conns[0].outbox.get_nowait() is CLOSE and conns[1].outbox.empty()
    assert t.evicted == 1
    assert [r.getMessage() for r in caplog.records] == [
        "Closed unjoined session from ipv4:10.0.0.5:1001: ipv4:10.0.0.5 is at its ceiling of "
        "connections not yet joined (distribute.grpc_max_connections_per_address), a newer one "
        "arrived"]
    _forget_all(t)
    assert on_loop(t, t._all_closed.is_set)
    assert inbox.empty()


def test_at_the_unjoined_cap_the_busiest_address_gives_way_and_sessions_are_capped(server,
                                                                                   caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, _, _ = server(per_address=1000)
    assert (t.limits.max_unjoined, t.limits.max_sessions) == (32, 40)
    now = on_loop(t, t._loop.time)
    at = _frozen(t, now)
    a = [at(t._open, f"ipv4:10.0.0.1:{k}") for k in range(20)]
    b = [at(t._open, f"ipv4:10.0.0.2:{k}") for k in range(12)]
    c = at(t._open, "ipv4:10.0.0.3:1")                 # the 33rd: 10.0.0.1's oldest goes
    assert a[0].outbox.get_nowait() is CLOSE and all(x.outbox.empty() for x in a[1:] + b)
    assert t.evicted == 1 and c.conn_id == 33
    d = at(t._open, "ipv4:10.0.0.3:2")                 # and again: 10.0.0.1 still holds 19
    assert a[1].outbox.get_nowait() is CLOSE and t.evicted == 2 and d.conn_id == 34
    assert [r.getMessage() for r in caplog.records] == [
        f"Closed unjoined session from ipv4:10.0.0.1:{k}: 32 unjoined sessions open, a newer "
        f"one arrived (the oldest idle one of the address holding the most goes)" for k in (0, 1)]
    # every unjoined slot holding a join the Server is deciding: a newcomer is refused
    for conn in a[2:] + b + [c, d]:
        on_loop(t, t._unjoined.joined_in, conn)
    assert at(t._open, "ipv4:10.0.0.4:1") == BUSY
    # bound, they leave the unjoined slots; the sessions' cap (40) still counts them
    for k, conn in enumerate(a[2:] + b + [c, d]):
        on_loop(t, t._bind, conn.conn_id, 100 + k)
    more = [at(t._open, f"ipv4:10.0.0.7:{k}") for k in range(6)]   # 34 open + 6 = 40
    assert all(isinstance(x, Connection) for x in more)
    assert at(t._open, "ipv4:10.0.0.8:1") == BUSY
    assert t.session_counts() == {"open": 40, "bound": 32, "idle_unjoined": 6, "joining": 0}
    _forget_all(t)


def test_refused_sessions_are_told_why_and_only_an_address_refusal_is_held(server, caplog,
                                                                           monkeypatch):
    caplog.set_level(logging.WARNING, LOGGER)
    monkeypatch.setattr(grpc_server, "REFUSAL_HOLD", 0.3)
    t, _, addr = server(per_address=1)
    with RawPeer(addr) as holder:
        holder.metadata()
        began = time.monotonic()
        with RawPeer(addr) as refused:
            assert refused.wait_closed(5)
            held = time.monotonic() - began
        assert 0.3 <= held < 2.0
        assert refused.code == "RESOURCE_EXHAUSTED"
        assert refused.details.startswith(f"{LOCAL} already holds 1 connections")
        t.limits = dataclasses.replace(t.limits, max_sessions=1,
                                       connections_per_address=1000)
        t._addresses.fixed = 1000
        monkeypatch.setattr(grpc_server, "REFUSAL_HOLD", 3.0)
        began = time.monotonic()
        with RawPeer(addr) as busy:
            assert busy.wait_closed(5)
            assert time.monotonic() - began < 2.0      # not held
        assert (busy.code, busy.details) == (
            "RESOURCE_EXHAUSTED", "server busy: too many sessions not yet joined; retry later")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Refused")]
    assert len(lines) == 2
    assert lines[0].startswith(f"Refused a session from {LOCAL}:")
    assert lines[0].endswith("; retry later (1 sessions open, cap 40)")
    assert lines[1].endswith(f": {BUSY} (1 sessions open, cap 1)")


# ------------------------------------------------------------------ heartbeat and liveness
def test_heartbeats_stamp_liveness_and_never_reach_the_inbox(server):
    t, inbox, addr = server()
    peers = {cid: RawPeer(addr) for cid in (1, 2, 3, 4)}
    try:
        conns = _joined(t, inbox, peers)
        assert t.last_heard(999) == 0.0
        for cid in (1, 3):
            before = time.monotonic()
            peers[cid].send(Message(HEARTBEAT, cid, 0, 0))
            peers[cid].send(_note("x"))          # not a client message type: rejected
            deadline = time.monotonic() + 5
            while t.rejected < (1 if cid == 1 else 2) and time.monotonic() < deadline:
                peers[cid].recv_raw(0.02)
            heard = t.last_heard(conns[cid])
            assert before <= heard <= time.monotonic()
        assert t.last_heard(conns[2]) == 0.0 and t.last_heard(conns[4]) == 0.0
        conn = on_loop(t, t._conns.get, conns[4])
        conn.queued = True                       # its upload waits for us: heard now
        before = time.monotonic()
        assert before <= t.last_heard(conns[4]) <= time.monotonic()
        conn.queued = False
        assert inbox.empty()
    finally:
        for peer in peers.values():
            peer.close()


def test_health_answers_serving_and_watch_streams_are_capped():
    async def run():
        from grpc_health.v1 import health_pb2

        class Quiet:
            async def write(self, response):
                pass

            def done(self):
                return False
        fresh = CappedHealth()
        assert fresh.watches == 0
        # 16 Watch streams are held open; the 17th is refused
        held = [asyncio.ensure_future(fresh.Watch(health_pb2.HealthCheckRequest(service=""),
                                                  Quiet())) for _ in range(16)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert fresh.watches == 16 and not any(w.done() for w in held)
        for w in held:
            w.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        assert fresh.watches == 0
        h = CappedHealth()
        h.watches = 16

        class Ctx:
            aborted = None

            async def abort(self, code, details):
                self.aborted = (code, details)
                raise RuntimeError("aborted")
        ctx = Ctx()
        with pytest.raises(RuntimeError):
            await h.Watch(None, ctx)
        assert ctx.aborted == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                               "at most 16 health Watch streams; use Check")
        assert h.watches == 16
        h.watches = 15

        class Quiet:
            async def write(self, response):
                pass

            def done(self):
                return False
        from grpc_health.v1 import health_pb2
        watch = asyncio.ensure_future(h.Watch(health_pb2.HealthCheckRequest(service=""), Quiet()))
        for _ in range(20):
            await asyncio.sleep(0)
        assert h.watches == 16          # under the cap: admitted and counted
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch
        assert h.watches == 15
    asyncio.run(run())


# ------------------------------------------------------------------ shutdown
def test_stop_delivers_what_was_queued_then_releases_every_stream(server, caplog):
    caplog.set_level(logging.DEBUG, LOGGER)
    t, inbox, addr = server()
    peers = {cid: RawPeer(addr) for cid in (1, 2, 3, 4)}
    silent, joining = RawPeer(addr), RawPeer(addr)
    try:
        conns = _joined(t, inbox, peers)
        silent.metadata()
        joining.join(9)
        joined = next_incoming(inbox).conn_id
        assert health_status(addr) == "SERVING" and health_status(addr, "federatedscope.FLService") == "SERVING"
        t.broadcast(_note("finish"), [1, 2, 3, 4])
        began = time.monotonic()
        t.stop(grace=3.0)
        assert time.monotonic() - began < 2.5
        for peer in peers.values():
            assert peer.recv(5.0).content["note"] == "finish"
        for peer in list(peers.values()) + [silent, joining]:
            assert peer.wait_closed(5) and peer.code == "OK"
        ends = sorted(ev.conn_id for ev in _events(inbox, 5) if isinstance(ev, Disconnected))
        assert ends == sorted(list(conns.values()) + [joined]) and inbox.empty()
        assert not t._thread.is_alive()
        t.stop(grace=3.0)                  # again: nothing left to stop
        t._loop.close()
        t.send(_note("late", receiver=1))  # after the loop is gone: dropped, no error
        assert caplog.records[-1].getMessage() == "transport stopped; _enqueue dropped"
    finally:
        for peer in list(peers.values()) + [silent, joining]:
            peer.close()


def _fake_sessions(t, n):
    def add():
        made = []
        for k in range(n):
            conn = Connection(1000 + k, f"ipv4:10.3.3.{k}:1")
            t._conns[conn.conn_id] = conn
            made.append(conn)
        t._all_closed.clear()
        return made
    return on_loop(t, add)


def test_stop_waits_while_sessions_keep_ending_and_gives_up_when_they_stall(server, caplog,
                                                                            monkeypatch):
    caplog.set_level(logging.WARNING, LOGGER)
    t, _, _ = server()
    stuck = _fake_sessions(t, 2)         # never end
    stopped = []
    real_stop = t._server.stop
    t._server.stop = lambda grace: stopped.append(grace) or real_stop(grace)
    began = time.monotonic()
    t.stop(grace=0.6)
    assert 0.6 <= time.monotonic() - began < 2.5
    assert stopped == [1.0]              # given up on: the gRPC server stops all the same
    assert all(c.outbox.get_nowait() is CLOSE for c in stuck)
    assert caplog.records[-1].getMessage() == (
        "2 session(s) still open after 1s (none ended in the last 1s, or 60s in all); closing")
    caplog.clear()
    # three sessions ending 0.2 s apart, grace 0.45: each wait sees progress, so all end
    t, _, _ = server()
    ending = _fake_sessions(t, 3)
    for k, conn in enumerate(ending):
        t._loop.call_soon_threadsafe(t._loop.call_later, 0.2 * (k + 1), t._forget, conn)
    began = time.monotonic()
    t.stop(grace=0.45)
    assert 0.55 <= time.monotonic() - began < 2.5
    assert not t._conns and not caplog.records
    # the same with no time left overall: the first wait that times out ends it
    monkeypatch.setattr(grpc_server, "STOP_DRAIN_MAX", 0.0)
    t, _, _ = server()
    ending = _fake_sessions(t, 3)
    t._loop.call_soon_threadsafe(t._loop.call_later, 0.05, t._forget, ending[0])
    t.stop(grace=0.25)
    assert caplog.records[-1].getMessage() == (
        "2 session(s) still open after 0s (none ended in the last 0s, or 0s in all); closing")


def test_a_stop_that_cannot_complete_is_logged_and_the_loop_still_ends(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, _, _ = server()

    real = t._stop

    async def broken(grace):
        await real(grace)                # the server does stop (nothing of it outlives the test)
        raise ValueError("no")
    t._stop = broken
    t.stop(grace=0.1)
    assert caplog.records[-1].getMessage() == (
        "gRPC server did not stop cleanly (ValueError); exiting anyway")
    assert not t._thread.is_alive()


def test_a_port_already_listened_on_is_named_and_the_loop_thread_ends(monkeypatch):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    before = {th for th in threading.enumerate() if th.name == "grpc-aio"}
    try:
        with pytest.raises(OSError) as first:            # refused before gRPC tries
            GrpcServerTransport(_cfg(port=port), queue.Queue(), max_clients=8)
        assert str(first.value) == (
            f"cannot listen on 127.0.0.1:{port}: Address already in use (another server?); "
            f"choose a free port with distribute.server_port (or fix distribute.server_host)")
        monkeypatch.setattr(grpc_server, "probe_bind", lambda host, p: None)   # gRPC's own bind
        with pytest.raises(OSError) as err:
            GrpcServerTransport(_cfg(port=port), queue.Queue(), max_clients=8)
    finally:
        busy.close()
    assert str(err.value) == (
        f"cannot listen on 127.0.0.1:{port}: the port is in use (another server?) or the host "
        f"is not an address of this machine; choose a free port with distribute.server_port "
        f"(or fix distribute.server_host)")
    after = {th for th in threading.enumerate() if th.name == "grpc-aio" and th.is_alive()}
    assert after <= before


# ------------------------------------------------------------------ the client: pure parts
class _Rng:
    def __init__(self, value=1.0):
        self.value, self.asked = value, []

    def uniform(self, a, b):
        self.asked.append((a, b))
        return self.value


def test_backoff_grows_by_1_6_from_1_s_to_its_cap_and_resets():
    rng = _Rng(1.0)
    b = Backoff(4.0, rng=rng)
    assert [b.next() for _ in range(6)] == pytest.approx([1.0, 1.6, 2.56, 4.0, 4.0, 4.0])
    assert rng.asked == [pytest.approx((0.8, 1.2))] * 6
    b.reset()
    assert b.next() == 1.0
    jittered = Backoff(10.0, initial=2.0, factor=3.0, jitter=0.5, rng=_Rng(1.5))
    assert [jittered.next() for _ in range(3)] == pytest.approx([3.0, 9.0, 15.0])
    assert jittered.rng.asked[0] == (0.5, 1.5)
    low = Backoff(0.3, rng=_Rng(1.0))           # a cap below the first step: the first step
    assert [low.next(), low.next()] == [1.0, 1.0]
    spread = [Backoff(60.0).next() for _ in range(200)]
    assert 0.8 <= min(spread) < max(spread) <= 1.2


def test_a_signed_join_carries_a_proof_for_this_nonce_never_the_token():
    nonce = bytes(range(32))
    join = Message(JOIN_IN, 6, 0, 0, {"client_id": 6, "token": "s3cret", "num_samples": 4})
    signed = signed_join(join, nonce.hex())
    assert (signed.msg_type, signed.sender, signed.receiver, signed.state) == (JOIN_IN, 6, 0, 0)
    assert signed.content == {"client_id": 6, "num_samples": 4,
                              PROOF_KEY: join_proof(token_digest("s3cret"), nonce, 6)}
    assert join.content["token"] == "s3cret"          # the caller's message is left alone
    other = signed_join(join, bytes(32).hex()).content[PROOF_KEY]
    assert other != signed.content[PROOF_KEY]
    assert signed_join(join, "zz").content[PROOF_KEY] == join_proof(token_digest("s3cret"), b"", 6)
    assert signed_join(join, None).content == {"client_id": 6, "num_samples": 4}
    no_token = Message(JOIN_IN, 6, 0, 0, {"client_id": 6, "token": ""})
    assert signed_join(no_token, nonce.hex()).content == {"client_id": 6}
    no_key = Message(JOIN_IN, 6, 0, 0, {"client_id": 6})     # a job without tokens
    assert signed_join(no_key, nonce.hex()).content == {"client_id": 6}


def _client(cfg=None, **distribute):
    cfg = cfg or _cfg()
    for k, v in distribute.items():
        setattr(cfg.distribute, k, v)
    return GrpcClientTransport(cfg, queue.Queue())


def test_the_channel_carries_the_configured_backoff_and_proxy_choice(monkeypatch):
    made = []

    def channel(kind):
        def make(address, *args, options, compression):
            made.append((kind, address, args, dict(options), compression))
            return types.SimpleNamespace(stream_stream=lambda *a, **k: made.append((a, k)),
                                         close=lambda: None)
        return make
    monkeypatch.setattr(grpc_client.grpc, "insecure_channel", channel("insecure"))
    monkeypatch.setattr(grpc_client.grpc, "secure_channel", channel("secure"))
    c = _client(reconnect_max_backoff=4.5, grpc_enable_http_proxy=True, server_port=5151,
                grpc_compression="gzip", heartbeat_interval=7)
    kind, address, args, options, comp = made[0]
    assert (kind, address, args, comp) == ("insecure", "127.0.0.1:5151", (), grpc.Compression.Gzip)
    assert (options["grpc.initial_reconnect_backoff_ms"], options["grpc.min_reconnect_backoff_ms"],
            options["grpc.max_reconnect_backoff_ms"], options["grpc.enable_http_proxy"],
            options["grpc.http2.max_frame_size"]) == (1000, 1000, 4500, 1, 1 << 20)
    assert made[1] == (("/federatedscope.FLService/Session",),
                       {"request_serializer": None, "response_deserializer": None})
    assert (c.sender_id, c.upload_chunk, c.upload_go, c.heartbeat_interval) == \
        (-1, CHUNK_BYTES, False, 7.0)
    assert c.backoff.cap == 4.5 and c.backoff.current == 1.0
    creds = object()
    monkeypatch.setattr(grpc_client, "channel_credentials", lambda cfg: creds)
    made.clear()
    _client(reconnect_max_backoff=0.2, server_port=5252, grpc_compression="deflate")
    kind, address, args, options, comp = made[0]
    assert (kind, address, args, comp) == ("secure", "127.0.0.1:5252", (creds,),
                                           grpc.Compression.Deflate)
    assert (options["grpc.max_reconnect_backoff_ms"], options["grpc.enable_http_proxy"]) == (1000, 0)


class _Clock:
    def __init__(self, now=100.0):
        self.now = now

    def monotonic(self):
        return self.now


class _Closing:
    """The client's closing event on a fake clock: a wait advances it (or ends: shutting down)."""

    def __init__(self, clock, stop_after=None):
        self.clock, self.waits, self.stop_after = clock, [], stop_after

    def wait(self, delay):
        self.waits.append(delay)
        assert len(self.waits) < 100, "the wait never ends"
        self.clock.now += delay
        return self.stop_after is not None and len(self.waits) >= self.stop_after


class _Steps:
    """A backoff handing out fixed steps; counts its resets."""

    def __init__(self, steps):
        self.steps, self.resets = list(steps), 0

    def next(self):
        return self.steps.pop(0)

    def reset(self):
        self.resets += 1


def _reconnecting(monkeypatch, steps, budget, clock):
    c = _client(max_reconnect_time=budget, server_port=4242)
    monkeypatch.setattr(grpc_client, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    c._closing = _Closing(clock)
    c.backoff = _Steps(steps)
    c.sender_id = 5
    waited, opened = [], []
    c.wait_for_server = lambda budget, key: waited.append((clock.now, budget, key))
    c.open_session = lambda join: opened.append(join)
    return c, waited, opened


def test_reconnect_waits_each_step_and_gives_up_when_the_next_would_pass_the_budget(
        monkeypatch, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    clock = _Clock(100.0)
    c, waited, opened = _reconnecting(monkeypatch, [1, 2, 4, 3, 4, 4, 1], 19, clock)
    join = Message(JOIN_IN, 5, 0, 0, {"client_id": 5})
    for k in range(6):
        c.reconnect(join, f"UNAVAILABLE: try {k}")
    # failures at 100, 101, 103, 107, 110, 114 (each wait short of the budget's end at 119)
    assert [w[0] for w in waited] == [101, 103, 107, 110, 114, 118]
    assert [w[1] for w in waited] == [18, 16, 12, 9, 5, 1]
    assert {w[2] for w in waited} == {"distribute.max_reconnect_time"}
    assert opened == [join] * 6 and c.backoff.resets == 1
    with pytest.raises(ServerUnreachable) as err:     # at 118: 18 s spent + 1 >= 19
        c.reconnect(join, "RESOURCE_EXHAUSTED: " + "x" * 300)
    reason = "RESOURCE_EXHAUSTED: " + "x" * 300      # 320 characters, clipped to 200
    assert str(err.value) == (
        "no working session with the server at 127.0.0.1:4242 for 18s "
        "(distribute.max_reconnect_time=19s); last failure: " + reason[:200]
        + "...[320 chars]. Check the server's log, or raise "
        "distribute.max_reconnect_time to keep trying longer.")
    # one line at the first failure, the next once 10 s have passed (at 110: 4 failures)
    assert [r.getMessage() for r in caplog.records] == [
        "Client #5: lost the server at 127.0.0.1:4242 (UNAVAILABLE: try 0); retrying in 1.0s "
        "(1 failure(s) since the last line, 0s/19s of distribute.max_reconnect_time)",
        "Client #5: lost the server at 127.0.0.1:4242 (UNAVAILABLE: try 4); retrying in 4.0s "
        "(4 failure(s) since the last line, 10s/19s of distribute.max_reconnect_time)"]


def test_a_session_that_delivered_restarts_the_budget_the_backoff_and_the_count(monkeypatch,
                                                                               caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    clock = _Clock(500.0)
    c, waited, opened = _reconnecting(monkeypatch, [2, 2, 2, 3], 5, clock)
    join = Message(JOIN_IN, 5, 0, 0, {"client_id": 5})
    c.reconnect(join, "a")                 # 0 + 2 < 5: 500 -> 502
    c.reconnect(join, "b")                 # 2 + 2 < 5: 502 -> 504
    c._session_ok = True                   # the reopened session delivered a message
    clock.now = 530.0
    c.reconnect(join, "c")                 # counted from 530: 0 + 2 -> 532
    c._session_ok = False
    with pytest.raises(ServerUnreachable, match=r"for 2s \(distribute.max_reconnect_time=5s\)"):
        c.reconnect(join, "d")             # 2 + 3 >= 5
    assert [(w[0], w[1]) for w in waited] == [(502, 3), (504, 1), (532, 3)]
    assert c.backoff.resets == 2 and len(opened) == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"Client #5: lost the server at 127.0.0.1:4242 ({why}); retrying in 2.0s (1 failure(s) "
        f"since the last line, 0s/5s of distribute.max_reconnect_time)" for why in "ac"]


def test_reconnect_ends_at_once_when_the_client_closes(monkeypatch):
    clock = _Clock(10.0)
    c, waited, opened = _reconnecting(monkeypatch, [3], 60, clock)
    c._closing.stop_after = 1
    with pytest.raises(ServerUnreachable, match="^client is shutting down$"):
        c.reconnect(Message(JOIN_IN, 5, 0, 0, {"client_id": 5}), "x")
    assert c._closing.waits == [3] and waited == [] and opened == []


# ------------------------------------------------------------------ the client: waiting for a server
class _Ready:
    """``grpc.channel_ready_future`` on the fake clock: each wait times out (advancing the
    clock by its timeout) until ``ready_after`` waits have failed."""

    def __init__(self, clock, ready_after=10 ** 9):
        self.clock, self.ready_after, self.timeouts = clock, ready_after, []

    def __call__(self, channel):
        return self

    def result(self, timeout):
        self.timeouts.append(timeout)
        assert len(self.timeouts) < 100, "the wait never ends"
        if len(self.timeouts) > self.ready_after:
            return None
        self.clock.now += timeout
        raise grpc.FutureTimeoutError()


def _waiting(monkeypatch, clock, accepts, ready=None, tls=""):
    """A client whose probes answer ``accepts`` in turn (then the last one for ever)."""
    c = _client(reconnect_max_backoff=60.0, server_port=4343)
    c.cfg.distribute.tls_ca = "ca.pem"        # only named to the TLS check, never opened
    monkeypatch.setattr(grpc_client, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(grpc_client, "Backoff",
                        lambda cap: Backoff(cap, rng=_Rng(1.0)))   # jitter at its middle
    probes, problems = [], []

    def probe(timeout):
        probes.append((clock.now, timeout))
        assert len(probes) < 100, "the wait never ends"
        return accepts[min(len(probes), len(accepts)) - 1]
    c._port_accepts = probe
    c._closing = _Closing(clock)
    ready = ready or _Ready(clock)
    monkeypatch.setattr(grpc_client.grpc, "channel_ready_future", ready)
    monkeypatch.setattr(grpc_client, "tls_problem",
                        lambda *args: problems.append(args) or tls)
    return c, probes, ready, problems


def test_a_server_that_never_listens_is_probed_on_the_backoff_then_named(monkeypatch, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    clock = _Clock(1000.0)
    c, probes, ready, problems = _waiting(monkeypatch, clock, [False])
    caps = []
    monkeypatch.setattr(grpc_client, "Backoff",
                        lambda cap: caps.append(cap) or _Steps([4, 6, 3, 7, 8, 5]))
    with pytest.raises(ServerUnreachable) as err:
        c.wait_for_server(30)
    # probes at 0, 4, 10, 13, 20, 28 s; at 28 only 2 s are left to probe and to wait
    assert caps == [5.0] and c._closing.waits == [4, 6, 3, 7, 8, 2]
    assert probes == [(1000 + at, 5.0) for at in (0, 4, 10, 13, 20)] + [(1028, 2.0)]
    assert ready.timeouts == [] and problems == []
    assert str(err.value) == (
        "could not reach the server at 127.0.0.1:4343 within 30s (distribute.connect_timeout). "
        "Is it running? Start it with `python federatedscope/main.py --cfg <server.yaml>`, or "
        "check distribute.server_host/server_port.")
    # quiet for the first 10 s, then a line each time 10 s more have passed
    assert [r.getMessage() for r in caplog.records] == [
        f"Client: server 127.0.0.1:4343 not reachable yet; retrying with backoff ({w}s/30s)"
        for w in (10, 20)]
    caps.clear()
    c.cfg.distribute.reconnect_max_backoff = 3.0
    with pytest.raises(ServerUnreachable):
        c.wait_for_server(1)
    assert caps == [3.0]              # the probe steps' cap: the configured one when lower


def test_probe_steps_follow_grpc_backoff_up_to_five_seconds(monkeypatch):
    clock = _Clock(0.0)
    c, probes, ready, problems = _waiting(monkeypatch, clock, [False])
    with pytest.raises(ServerUnreachable):
        c.wait_for_server(30)
    # waits 1, 1.6, 2.56, 4.096, then 5 (the probe cap) while time is left, then the rest
    assert c._closing.waits == pytest.approx([1.0, 1.6, 2.56, 4.096, 5.0, 5.0, 5.0, 5.0, 0.744])


def test_a_listening_port_whose_channel_never_gets_ready_asks_once_about_tls(monkeypatch):
    clock = _Clock(0.0)
    c, probes, ready, problems = _waiting(monkeypatch, clock, [True])
    with pytest.raises(ServerUnreachable) as err:
        c.wait_for_server(12, key="distribute.max_reconnect_time")
    assert ready.timeouts == [5.0, 5.0, 2.0] and [p[1] for p in probes] == [5.0, 5.0, 2.0]
    assert problems == [("127.0.0.1", 4343, "ca.pem")]
    assert str(err.value) == (
        "could not reach the server at 127.0.0.1:4343 within 12s (distribute.max_reconnect_time)."
        " It was reachable before: if the job finished while this client was away (stalled or "
        "disconnected), this is expected; otherwise restart the server with "
        "federate.restore_from, or raise distribute.max_reconnect_time.")
    clock = _Clock(0.0)
    c, _, ready, problems = _waiting(monkeypatch, clock, [True], tls="certificate names x, not y")
    with pytest.raises(ServerUnreachable, match="^certificate names x, not y$"):
        c.wait_for_server(60)
    assert ready.timeouts == [5.0] and len(problems) == 1


def test_the_channel_is_asked_once_the_port_listens_and_closing_ends_the_wait(monkeypatch):
    clock = _Clock(0.0)
    c, probes, ready, problems = _waiting(monkeypatch, clock, [False, False, True],
                                          ready=None)
    ready = _Ready(clock, ready_after=1)
    monkeypatch.setattr(grpc_client.grpc, "channel_ready_future", ready)
    c.wait_for_server(20)
    # refused at 0 and 1, listening at 2.6: one wait of 5 s times out, the next is ready
    assert [p[0] for p in probes] == pytest.approx([0.0, 1.0, 2.6, 7.6])
    assert ready.timeouts == [5.0, 5.0] and c._closing.waits == pytest.approx([1.0, 1.6])
    assert len(problems) == 1
    clock = _Clock(0.0)
    c, probes, _, _ = _waiting(monkeypatch, clock, [False])
    c._closing.stop_after = 2
    with pytest.raises(ServerUnreachable, match="^client is shutting down$"):
        c.wait_for_server(100)
    assert len(probes) == 2


def test_the_port_probe_connects_to_the_bare_host_with_at_least_a_tenth_of_a_second(
        monkeypatch):
    tried = []

    class Sock:
        def close(self):
            tried.append("closed")

    def connect(address, timeout):
        tried.append((address, timeout))
        if address[1] == 1:
            raise ConnectionRefusedError
        return Sock()
    monkeypatch.setattr(grpc_client, "socket", types.SimpleNamespace(create_connection=connect))
    c = _client(server_host="[::1]", server_port=4444)
    assert c._port_accepts(0.0) is True and c._port_accepts(3.0) is True
    c.cfg.distribute.server_port = 1
    assert c._port_accepts(2.0) is False
    c.cfg.distribute.server_host = "Xhost"       # only brackets are taken off a host
    assert c._port_accepts(2.0) is False
    assert tried == [(("::1", 4444), 0.1), "closed", (("::1", 4444), 3.0), "closed",
                     (("::1", 1), 2.0), (("Xhost", 1), 2.0)]
    c.close(grace=0.1)


def test_the_port_probe_is_a_plain_connect_skipped_behind_a_proxy():
    listening = socket.create_server(("127.0.0.1", 0))
    bound = socket.socket()
    bound.bind(("127.0.0.1", 0))               # bound, not listening: refused
    try:
        open_ = _client(server_port=listening.getsockname()[1])
        refused = _client(server_port=bound.getsockname()[1])
        proxied = _client(server_port=bound.getsockname()[1], grpc_enable_http_proxy=True)
        v6 = _client(server_port=bound.getsockname()[1], server_host="[127.0.0.1]")
        assert open_._port_accepts(0.0) is True
        assert refused._port_accepts(1.0) is False
        assert proxied._port_accepts(1.0) is True
        assert v6._port_accepts(1.0) is False
        for c in (open_, refused, proxied, v6):
            c.close(grace=0.1)
    finally:
        listening.close()
        bound.close()


# ------------------------------------------------------------------ the client: one stream
class _Outbox:
    """A client outbox whose ``get`` times out ``empties`` times, then hands out ``items``."""

    def __init__(self, items, empties=0):
        self.items, self.empties, self.timeouts = list(items), empties, []

    def get(self, timeout=None):
        self.timeouts.append(timeout)
        if self.empties:
            self.empties -= 1
            raise queue.Empty
        return self.items.pop(0)


def _nonce(value):
    q = queue.Queue(maxsize=1)
    q.put(value)
    return q


def test_the_request_stream_joins_beats_when_quiet_and_holds_continuations_for_go():
    c = _client(join_deadline=2.0)
    c.sender_id, c.heartbeat_interval, c.upload_go = 9, 7.5, True
    join = Message(JOIN_IN, 9, 0, 0, {"client_id": 9, "token": "tk"})
    nonce = bytes(range(32, 64))
    go = threading.Event()
    go.set()                                       # a GO left from an earlier upload
    out = _Outbox([[b"first", b"second", b"third"], [b"whole"], b"plain",
                   grpc_client._END, b"never"], empties=1)
    frames = c._requests(out, join, _nonce(nonce.hex()), go)
    sent = codec.decode(next(frames))
    assert sent.content == {"client_id": 9, PROOF_KEY: join_proof(token_digest("tk"), nonce, 9)}
    beat = codec.decode(next(frames))              # quiet for one interval: a heartbeat
    assert (beat.msg_type, beat.sender, beat.receiver, beat.state) == (HEARTBEAT, 9, 0, 0)
    assert next(frames) == b"first"
    assert not go.is_set()                         # this upload waits for its own GO
    go.set()
    assert [next(frames), next(frames)] == [b"second", b"third"]
    assert next(frames) == b"whole"
    assert go.is_set()                  # one whole frame: no GO is awaited, none is cleared
    assert next(frames) == b"plain"
    with pytest.raises(StopIteration):
        next(frames)
    assert out.timeouts == [7.5] * 5
    c.close(grace=0.1)


def test_without_go_continuations_follow_at_once_and_heartbeats_off_wait_for_ever():
    c = _client(join_deadline=0.3)
    c.sender_id, c.heartbeat_interval, c.upload_go = 9, 0.0, False
    out = _Outbox([[b"a", b"b"], grpc_client._END])
    got = []
    worker = threading.Thread(target=lambda: got.extend(
        c._requests(out, Message(JOIN_IN, 9, 0, 0, {"client_id": 9}), _nonce("00"),
                    threading.Event())), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and got[1:] == [b"a", b"b"]
    assert out.timeouts == [None, None]
    c.heartbeat_interval = 0.5                  # under a second still beats
    half = _Outbox([grpc_client._END])
    list(c._requests(half, Message(JOIN_IN, 9, 0, 0, {"client_id": 9}), _nonce("00"),
                     threading.Event()))
    assert half.timeouts == [0.5]

    class NoNonce:
        asked = []

        def get(self, timeout):
            self.asked.append(timeout)
            raise queue.Empty
    # no nonce within max(1 s, join_deadline): the stream failed, nothing is sent
    assert list(c._requests(out, Message(JOIN_IN, 9, 0, 0), NoNonce(), threading.Event())) == []
    assert list(c._requests(out, Message(JOIN_IN, 9, 0, 0), _nonce(None),
                            threading.Event())) == []
    slow = _client(join_deadline=3.5)
    list(slow._requests(out, Message(JOIN_IN, 9, 0, 0), NoNonce(), threading.Event()))
    assert NoNonce.asked == [1.0, 3.5]
    for x in (c, slow):
        x.close(grace=0.1)


class _Call:
    """A stream call as the reader sees it: its metadata, then frames, then an end."""

    def __init__(self, metadata, frames=(), end=None, metadata_error=None):
        self.metadata, self.frames, self.end = metadata, list(frames), end
        self.metadata_error = metadata_error

    def initial_metadata(self):
        if self.metadata_error:
            raise self.metadata_error
        return self.metadata

    def __iter__(self):
        yield from self.frames
        if self.end:
            raise self.end


class _Refused(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self):
        return "server busy"


def test_the_reader_takes_the_announcements_skips_bad_messages_and_reports_the_end(caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    c = _client(heartbeat_interval=4)
    meta = ((NONCE_HEADER, "ab" * 32), (UPLOAD_CHUNK_HEADER, "131063"),
            (UPLOAD_GO_HEADER, "1"), (HEARTBEAT_HEADER, "9.5"))
    good = Message(ASSIGN_ID, 0, 3, 0, {"client_id": 3})
    frames = [GO, codec.encode(Message(JOIN_IN, 0, 3, 0, {"client_id": 3})), codec.encode(good)]
    nonce, go = queue.Queue(maxsize=1), threading.Event()
    c._read(_Call(meta, frames, _Refused()), nonce, go)
    assert (c.upload_chunk, c.upload_go, c.heartbeat_interval) == (131063, True, 9.5)
    assert nonce.get_nowait() == "ab" * 32 and go.is_set() and c._session_ok
    got = c.inbox.get_nowait()
    assert (got.msg_type, got.content) == (ASSIGN_ID, {"client_id": 3})
    end = c.inbox.get_nowait()
    assert isinstance(end, Disconnected) and (end.conn_id, end.reason) == (
        0, "RESOURCE_EXHAUSTED: server busy")
    assert c.inbox.empty()
    assert [r.getMessage() for r in caplog.records] == [
        "Client: rejected a message from the server: join_in may only come from a client"]
    # an old server: no announcements, so the base sizes; a clean end of the stream
    c2 = _client(heartbeat_interval=4)
    nonce, go = queue.Queue(maxsize=1), threading.Event()
    c2._read(_Call(None, [codec.encode(Message(JOIN_IN, 0, 3, 0))]), nonce, go)
    assert (c2.upload_chunk, c2.upload_go, c2.heartbeat_interval) == (CHUNK_BYTES, False, 4.0)
    assert nonce.get_nowait() is None and go.is_set() and not c2._session_ok
    assert c2.inbox.get_nowait().reason == "server closed the stream"
    # refused before any metadata: the request stream is released with no nonce
    nonce = queue.Queue(maxsize=1)
    c2._read(_Call(None, metadata_error=grpc.RpcError("gone")), nonce, threading.Event())
    assert nonce.get_nowait() is None and c2.inbox.get_nowait().reason == "gone"
    for x in (c, c2):
        x.close(grace=0.1)


def test_send_queues_the_upload_pieces_and_close_cancels_a_reader_that_hangs():
    c = _client()
    c.send(Message(HEARTBEAT, 4, 0, 0))          # no session yet: nothing to queue on
    c.end_session()
    assert c.sender_id == -1
    c._outbox = queue.Queue()
    c.upload_chunk = 100_000
    small = Message("metrics", 4, 0, 2, {"acc": 0.5})
    c.send(small)
    assert c.sender_id == 4 and c._outbox.get_nowait() == [codec.encode(small)]
    big = Message(MODEL_PARA, 6, 0, 2, {"sample_size": 3},
                  {"w": torch.arange(75_000, dtype=torch.float32)})   # 300,000 bytes of tensor
    c.send(big)
    frames = c._outbox.get_nowait()
    whole = codec.encode(big)
    # 4,079 bytes in a first chunk (behind its 12-byte head), then pieces of at most 100,000
    assert c.sender_id == 6 and frames[0][:4] == CHUNK_FIRST
    assert len(frames[0]) == 4 * 1024 - 17 + 12
    assert [len(f) - 4 for f in frames[1:]] == [100_000, 100_000, len(whole) - 4079 - 200_000]

    class Hung:
        joins, alive = [], True

        def join(self, timeout):
            self.joins.append(timeout)

        def is_alive(self):
            return self.alive
    cancelled = []
    c._reader, c._call = Hung(), types.SimpleNamespace(cancel=lambda: cancelled.append(1))
    c.close(grace=0.25)
    assert c._closing.is_set() and c._outbox.get_nowait() is grpc_client._END
    assert Hung.joins == [0.25, 0.25] and cancelled == [1]
    Hung.joins, Hung.alive = [], False
    cancelled.clear()
    c.close(grace=0.5)
    assert Hung.joins == [0.5] and cancelled == []
    Hung.joins = []
    c.close()
    assert Hung.joins == [5.0]


def test_a_real_client_joins_uploads_is_dropped_and_rejoins_on_a_new_stream(server):
    cfg = _cfg()
    cfg.distribute.heartbeat_interval = 12.0      # the server's own, above its derived 10 s
    cfg.distribute.heartbeat_timeout = 60.0       # and below a third of its timeout (20 s)
    t, inbox, addr = server(max_clients=2000, cfg=cfg)
    others = {cid: RawPeer(addr) for cid in (1, 2, 4)}
    c = _client(server_port=t.port, heartbeat_interval=6.0)
    try:
        _joined(t, inbox, others)
        c.wait_for_server(10)
        join = Message(JOIN_IN, 3, 0, 0, {"client_id": 3, "token": "tok-3"})
        c.open_session(join)
        ev = next_incoming(inbox)
        nonce = bytes.fromhex(ev.msg.content["nonce"])
        assert ev.msg.content[PROOF_KEY] == join_proof(token_digest("tok-3"), nonce, 3)
        assert "token" not in ev.msg.content
        t.bind(ev.conn_id, 3)
        assert (c.upload_chunk, c.upload_go, c.heartbeat_interval) == (131_063, True, 12.0)
        assert (c._reader.name, c._reader.daemon) == ("client-reader", True)  # in thread dumps
        t.broadcast(Message(ASSIGN_ID, 0, 0, 1, {"client_id": 0}), [1, 2, 3, 4])
        assert c.inbox.get(timeout=5).msg_type == ASSIGN_ID
        update = Message(MODEL_PARA, 3, 0, 1, {"sample_size": 8},
                         {"w": torch.arange(100_000, dtype=torch.float32)})
        c.send(update)
        got = next_incoming(inbox)
        assert got.conn_id == ev.conn_id and torch.equal(got.msg.tensors["w"],
                                                          update.tensors["w"])
        t.close(ev.conn_id)
        end = c.inbox.get(timeout=5)
        assert isinstance(end, Disconnected) and end.reason == "server closed the stream"
        assert c._session_ok
        c.open_session(join)                      # the rejoin: a new stream, a new nonce
        assert not c._session_ok                  # nothing delivered on this one yet
        again = next_incoming(inbox)
        assert again.conn_id != ev.conn_id and again.msg.content["nonce"] != nonce.hex()
        t.bind(again.conn_id, 3)
        t.send(Message(ASSIGN_ID, 0, 3, 2, {"client_id": 3}))
        assert c.inbox.get(timeout=5).state == 2
    finally:
        c.close(grace=2.0)
        for peer in others.values():
            peer.close()
    assert not c._reader.is_alive()


# ------------------------------------------------------------------ the server: what it is built with
def test_the_server_is_built_with_its_limits_and_every_wait_is_bounded(monkeypatch, caplog):
    """The gRPC server gets the derived limits; each cross-thread wait has its bound: 30 s to
    set up and to start, 10 s for the counts, STOP_DRAIN_MAX (60 s) + grace + 15 s to stop,
    then 1 s for the RPCs still in flight and 10 s for the loop's thread."""
    made = []
    real_server = grpc.aio.server
    monkeypatch.setattr(grpc.aio, "server", lambda **kw: made.append(kw) or real_server(**kw))
    waits = []
    real_run = GrpcServerTransport._run
    monkeypatch.setattr(GrpcServerTransport, "_run",
                        lambda self, coro, timeout: waits.append(timeout)
                        or real_run(self, coro, timeout))
    inbox = grpc_server.ServerInbox()
    t = GrpcServerTransport(_cfg(), inbox)          # the defaults: 64 clients, no model size
    t.start()
    stops, joins = [], []
    real_stop, real_join = t._server.stop, t._thread.join
    t._server.stop = lambda grace: stops.append(grace) or real_stop(grace)
    t._thread.join = lambda timeout: joins.append(timeout) or real_join(timeout)
    assert (t.limits.max_sessions, t.limits.max_receive) == (64 + 32, 300 * 1024 * 1024)
    options = dict(made[0]["options"])
    assert (options["grpc.max_receive_message_length"], options["grpc.max_concurrent_streams"]) \
        == (300 * 1024 * 1024, 4)
    assert made[0]["maximum_concurrent_rpcs"] == 96 + 16 + 16
    assert made[0]["compression"] == grpc.Compression.NoCompression
    assert t.session_counts() == {"open": 0, "bound": 0, "idle_unjoined": 0, "joining": 0}
    assert (t._backlog, t._backlog_ok.is_set(), t._all_closed.is_set()) == (0, True, True)
    assert (t._thread.name, t._thread.daemon) == ("grpc-aio", True)     # in thread dumps
    # an upload's inbox slot comes back when the Server takes it (on the loop's thread)
    t._run(t._heavy.acquire(), timeout=5)
    assert t._heavy.locked()
    inbox.on_heavy_taken()
    assert not on_loop(t, t._heavy.locked)
    with pytest.raises(TimeoutError):
        t._run(asyncio.sleep(0.5), timeout=0.1)      # a wait that takes longer is cut
    t.stop()
    assert asyncio.all_tasks(t._loop) == set()      # the cut wait was cancelled, not left
    assert waits == [30.0, 30.0, 10.0, 5, 5, 0.1, 60.0 + 5.0 + 15.0]
    assert stops == [1.0] and joins == [10.0]
    t._loop.close()
    nameless = functools.partial(print, "never")
    caplog.set_level(logging.DEBUG, LOGGER)
    t._call(nameless)                 # the loop is gone: dropped, and said so by what it was
    assert caplog.records[-1].getMessage() == f"transport stopped; {nameless!r} dropped"


def test_the_join_deadline_check_leaves_bound_and_gone_streams_and_names_its_reason(server,
                                                                                    caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, inbox, _ = server(join_deadline=2.5)
    now = on_loop(t, t._loop.time)
    at = _frozen(t, now)
    bound, gone, idle, asked = (at(t._open, f"ipv4:10.4.4.{k}:1") for k in range(4))
    on_loop(t, t._bind, bound.conn_id, 3)
    on_loop(t, t._forget, gone)
    asked.join_sent = True
    on_loop(t, t._unjoined.joined_in, asked)
    for conn in (bound, gone):
        on_loop(t, t._check_deadline, conn)
        assert conn.outbox.empty()
    on_loop(t, t._check_deadline, idle)
    on_loop(t, t._check_deadline, asked, True)       # its answer's wait is over
    for conn in (idle, asked):
        assert conn.outbox.get_nowait() is CLOSE
        assert conn.reason == "no join_in before distribute.join_deadline"
    assert [r.getMessage() for r in caplog.records] == [
        "Closed session from ipv4:10.4.4.2:1: no valid join_in within 2.5s "
        "(distribute.join_deadline)",
        "Closed session from ipv4:10.4.4.3:1: its join_in was not answered within 60s"]
    assert t.session_counts() == {"open": 3, "bound": 1, "idle_unjoined": 0, "joining": 0}
    _forget_all(t)


def test_a_connection_with_two_streams_counts_for_its_address_until_one_is_bound(server):
    t, _, _ = server()
    at = _frozen(t, on_loop(t, t._loop.time))
    one, two = at(t._open, "ipv4:10.5.5.5:777"), at(t._open, "ipv4:10.5.5.5:777")
    held = lambda: on_loop(t, t._addresses.held, "ipv4:10.5.5.5")   # noqa: E731
    assert held() == 1
    on_loop(t, t._bind, one.conn_id, 2)
    assert held() == 0
    on_loop(t, t._forget, one)        # the bound stream ends: its unbound sibling counts again
    assert held() == 1
    on_loop(t, t._forget, two)
    assert held() == 0
    # 105 characters: clipped to 80 and a note of the length (94 characters), then that again
    conn = at(t._open, "unix:" + "x" * 100)
    assert conn.peer == "unix:" + "x" * 75 + "...[94 chars]"
    _forget_all(t)


class _Refusable:
    def __init__(self, peer):
        self._peer, self.aborted = peer, None

    def peer(self):
        return self._peer

    async def abort(self, code, details):
        self.aborted = (code, details)
        raise RuntimeError("aborted")


def test_a_refused_session_names_its_peer_clipped_and_is_aborted_busy(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, _, _ = server()
    t.limits = dataclasses.replace(t.limits, max_sessions=0)
    ctx = _Refusable("unix:" + "y" * 100)
    with pytest.raises(RuntimeError, match="aborted"):
        t._run(t._session(None, ctx), timeout=5)
    assert ctx.aborted == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                           "server busy: too many sessions not yet joined; retry later")
    assert caplog.records[-1].getMessage() == (
        "Refused a session from unix:" + "y" * 75 + "...[105 chars]: server busy: too many "
        "sessions not yet joined; retry later (0 sessions open, cap 0)")
    caplog.clear()
    t._lines.lines = 20                      # the interval's lines spent: counted by peer
    for peer in ("ipv4:10.6.6.6:1", "ipv4:10.6.6.7:1", "ipv4:10.6.6.7:1"):
        with pytest.raises(RuntimeError, match="aborted"):
            t._run(t._session(None, _Refusable(peer)), timeout=5)
    assert not caplog.records
    on_loop(t, t._lines.flush)
    assert [r.getMessage() for r in caplog.records] == [
        "Rejected 3 more messages from 2 peer(s) in the last 10s (over 20 lines per 10s, not "
        "logged one by one)"]


def test_a_tls_server_serves_a_client_that_trusts_its_ca(server, tmp_path):
    # the throw-away CA and server certificate the session tests embed (SAN 127.0.0.1)
    from test_session_units import CA_CRT, SERVER_CRT, SERVER_KEY
    files = {"ca.crt": CA_CRT, "server.crt": SERVER_CRT, "server.key": SERVER_KEY}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cfg = _cfg()
    cfg.distribute.tls_cert = str(tmp_path / "server.crt")
    cfg.distribute.tls_key = str(tmp_path / "server.key")
    t, inbox, _ = server(cfg=cfg)
    c = _client(server_port=t.port, tls_ca=str(tmp_path / "ca.crt"))
    try:
        c.wait_for_server(10)
        c.open_session(Message(JOIN_IN, 5, 0, 0, {"client_id": 5}))
        ev = next_incoming(inbox)
        assert ev.msg.content["client_id"] == 5
        t.bind(ev.conn_id, 5)
        t.send(Message(ASSIGN_ID, 0, 5, 1, {"client_id": 5}))
        assert c.inbox.get(timeout=5).state == 1
    finally:
        c.close(grace=2.0)


def test_a_new_session_releases_the_previous_request_stream_and_starts_unproven():
    c = _client()
    calls = []
    c._session = lambda requests, metadata: calls.append(requests) or types.SimpleNamespace()
    c._read = lambda call, nonce, go: None
    c.sender_id, c._session_ok = 77, True
    c.open_session(Message(JOIN_IN, 3, 0, 0, {"client_id": 3}))
    first = c._outbox
    assert (c.sender_id, c._session_ok, first.empty()) == (3, False, True)
    c._session_ok = True
    c.open_session(Message(JOIN_IN, 4, 0, 0, {"client_id": 4}))
    assert first.get_nowait() is grpc_client._END and c._outbox is not first
    assert (c.sender_id, c._session_ok, len(calls)) == (4, False, 2)
    c._reader = None
    c.close(grace=0.1)


def test_evictions_over_the_line_budget_are_summed_by_peer(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, _, _ = server(per_address=1000)
    at = _frozen(t, on_loop(t, t._loop.time))
    for k in range(32):
        at(t._open, f"ipv4:10.0.0.1:{k}")
    t._lines.lines = 20                      # this interval's 20 lines are spent
    at(t._open, "ipv4:10.0.0.2:1")
    at(t._open, "ipv4:10.0.0.2:2")           # two evictions, of two streams (peers) of 10.0.0.1
    assert t.evicted == 2 and not caplog.records
    on_loop(t, t._lines.flush)
    assert [r.getMessage() for r in caplog.records] == [
        "Rejected 2 more messages from 2 peer(s) in the last 10s (over 20 lines per 10s, not "
        "logged one by one)"]
    _forget_all(t)


class _Session:
    """A stream's context as ``_session`` sees it: the peer never sends, and never takes a
    write of 64 KiB or more (a stalled reader)."""

    def __init__(self, peer):
        self._peer, self.opened, self.written, self.aborted = peer, threading.Event(), [], None

    def peer(self):
        return self._peer

    async def send_initial_metadata(self, metadata):
        self.metadata = metadata
        self.opened.set()

    def invocation_metadata(self):
        return (("fs-downlink-chunks", "1"),)

    async def read(self):
        await asyncio.Event().wait()

    async def write(self, item):
        if len(item) >= 64 * 1024:
            await asyncio.Event().wait()
        self.written.append(item)

    async def abort(self, code, details):
        self.aborted = (code, details)


def _stand_in_session(server, ctx, write_timeout: float):
    """A server whose write timeout is ``write_timeout`` running one session on the stand-in
    context ``ctx``: (transport, its inbox, the session's Connection, the session's future)."""
    t, inbox, _ = server()
    t.limits = dataclasses.replace(t.limits, write_timeout=write_timeout)
    done = asyncio.run_coroutine_threadsafe(t._session(None, ctx), t._loop)
    assert ctx.opened.wait(5)
    (conn,) = on_loop(t, lambda: list(t._conns.values()))
    return t, inbox, conn, done


def test_a_stalled_reader_loses_its_session_and_a_pending_abort_still_ends_it(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    ctx = _Session("ipv4:10.7.7.7:7")
    t, inbox, conn, done = _stand_in_session(server, ctx, 0.2)
    assert dict(ctx.metadata)[NONCE_HEADER] == conn.nonce.hex() and len(conn.nonce) == 32
    t.bind(conn.conn_id, 5)
    t.send(_note("small", receiver=5))
    conn.abort = (grpc.StatusCode.RESOURCE_EXHAUSTED, "message too large")   # set meanwhile
    t.send(_sized(64 * 1024, 5))
    assert done.result(timeout=5) is None
    assert [codec.decode(w).content["note"] for w in ctx.written] == ["small"]
    assert ctx.aborted == (grpc.StatusCode.RESOURCE_EXHAUSTED, "message too large")
    assert conn.reason == "stopped reading"
    assert caplog.records[-1].getMessage() == (
        "Closed the session of client #5: a 65536-byte message was not taken within 0.2s "
        "(stalled reader)")
    assert t.session_counts()["open"] == 0 and inbox.empty()


class _SlowSession(_Session):
    """Takes every write, each after ``delay`` seconds (a slow reader, not a stopped one)."""
    delay = 0.15

    async def write(self, item):
        await asyncio.sleep(self.delay)
        self.written.append(item)


def test_the_write_timeout_bounds_a_whole_chunked_message_not_each_chunk(server, caplog):
    # 4 downlink chunks at 0.15 s each: every chunk is taken within 0.4 s, the message is not
    caplog.set_level(logging.WARNING, LOGGER)
    ctx = _SlowSession("ipv4:10.7.7.8:7")
    t, inbox, conn, done = _stand_in_session(server, ctx, 0.4)
    assert conn.chunked_down          # the session asked with fs-downlink-chunks: 1
    t.bind(conn.conn_id, 6)
    model = Message("evaluate", 0, 6, 0, {}, {"w": torch.zeros(900_000)})     # 3.6 MB
    frames = len(codec.encode(model)) + len(CHUNK_FIRST) + 8 + 3 * 4
    t.send(model)
    assert done.result(timeout=5) is None
    assert 1 <= len(ctx.written) <= 3 and conn.reason == "stopped reading"
    assert caplog.records[-1].getMessage() == (
        f"Closed the session of client #6: a {frames}-byte message was not taken within 0.4s "
        f"(stalled reader)")


def test_a_bound_client_closed_for_sixteen_bad_messages_is_reported_as_abuse(server):
    t, inbox, addr = server()
    peers = {cid: RawPeer(addr) for cid in (1, 2, 3, 4)}
    try:
        conns = _joined(t, inbox, peers)
        for _ in range(16):
            peers[3].send(b"junk")
        assert peers[3].wait_closed(5) and peers[3].code == "OK"
        ev = inbox.get(timeout=5)
        assert isinstance(ev, Disconnected)
        assert (ev.conn_id, ev.reason, ev.abuse) == (conns[3], "too many invalid messages", True)
        # its id is free again: nothing more is queued for #3
        assert t.session_counts() == {"open": 3, "bound": 3, "idle_unjoined": 0, "joining": 0}
        t.broadcast(_note("still on"), [1, 2, 4])
        assert all(peers[c].recv(5.0).content["note"] == "still on" for c in (1, 2, 4))
    finally:
        for peer in peers.values():
            peer.close()
