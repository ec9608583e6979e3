"""The server transport's reading half (``intake.StreamIntake``), in-process: frames go straight
into ``_on_frame`` on a fresh event loop, with the transport's real inbox, unjoined-stream table
and line budget; the clock and timers are a fake the test turns, so every rule is checked against
hand-computed numbers without a gRPC server (the real-process tests cover the wire around it)."""
import asyncio
import dataclasses
import functools
import itertools
import logging
import queue
import time

import grpc
import pytest
import torch

from federatedscope.core import message
from federatedscope.core.communication import codec
from federatedscope.core.communication.flow import (CHUNK_FIRST, CHUNK_MORE, FIRST_CHUNK_BYTES,
                                                    GO, HEAVY_IN_INBOX, HeavyIncoming,
                                                    ServerInbox, upload_frames)
from federatedscope.core.communication.intake import (CLOSE, Connection, LineBudget, LoopCalls,
                                                      StreamIntake)
from federatedscope.core.communication.join_proof import NONCE_KEY
from federatedscope.core.communication.limits import (BIG_MESSAGE, LOG_INTERVAL,
                                                      LOG_LINES_PER_INTERVAL, MAX_BACKLOG,
                                                      TokenBucket, derive_limits)
from federatedscope.core.communication.transport import Incoming
from federatedscope.core.communication.unjoined import UnjoinedStreams
from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.message import HEARTBEAT, JOIN_IN, METRICS, MODEL_PARA, Message

# 2,000 clients: continuations of 128 KiB less our magic and gRPC's prefix (not the 1 MiB of a
# small job); a 200,000-byte model: the largest message is 2 x 200,000 + 1 MiB.
LIMITS = derive_limits(get_default_cfg(), 2000, 200_000)
CHUNK, MAX_RECEIVE, PREJOIN = 131_063, 1_448_576, 65_536
assert (LIMITS.upload_chunk, LIMITS.max_receive, LIMITS.prejoin_max, LIMITS.assembly_timeout,
        HEAVY_IN_INBOX, LOG_LINES_PER_INTERVAL, LOG_INTERVAL, MAX_BACKLOG) == \
    (CHUNK, MAX_RECEIVE, PREJOIN, 30.0, 1, 20, 10.0, 8)


class Timer:
    def __init__(self, when, fn, args):
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False

    def cancel(self):
        self.cancelled = True


class FakeLoop:
    """The transport loop's clock and timers, turned by the test."""

    def __init__(self, now=1000.0):
        self.now, self.timers = now, []

    def time(self):
        return self.now

    def call_at(self, when, fn, *args):
        self.timers.append(Timer(when, fn, args))
        return self.timers[-1]

    def call_later(self, delay, fn, *args):
        return self.call_at(self.now + delay, fn, *args)

    def call_soon_threadsafe(self, fn, *args):
        return self.call_at(self.now, fn, *args)

    def fire(self, timer):
        self.now, timer.cancelled = timer.when, True     # fired: no longer pending
        timer.fn(*timer.args)


class Host(StreamIntake):
    """What ``GrpcServerTransport`` gives the mixin, built as its ``__init__``/``_setup`` do."""

    def __init__(self, inbox=None, limits=LIMITS):
        self.limits, self.inbox = limits, ServerInbox() if inbox is None else inbox
        self._heavy = asyncio.Semaphore(HEAVY_IN_INBOX)
        if isinstance(self.inbox, ServerInbox):     # same thread here: no hop to the loop
            self.inbox.on_heavy_taken = self._heavy.release
        self._backlog, self._backlog_ok = 0, asyncio.Event()
        self._backlog_ok.set()
        self._unjoined = UnjoinedStreams(limits.max_unjoined)
        self._loop = FakeLoop()
        self._lines = LineBudget(self._loop)
        self.rejected = self.delivered = 0
        self._ids = itertools.count(11)

    def open(self, client_id=None, heartbeats=None):
        n = next(self._ids)
        conn = Connection(n, f"ipv4:10.0.0.{n}:{40000 + n}", bytes([n]) * 32, heartbeats)
        self._unjoined.add(conn)
        conn.client_id = client_id
        return conn

    async def feed(self, conn, frames):
        return [await self._on_frame(conn, f) for f in frames]

    def stall_timers(self):
        return [t for t in self._loop.timers if not t.cancelled and t.fn == self._check_assembly]


def in_loop(test):
    """Each test on a fresh event loop (the queues, semaphore and event bind to it); a wait that
    never ends (a slot never given back) fails in 2 s instead of hanging the run."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(test(*args, **kwargs), 2.0))
    return run


def join(cid):
    return Message(JOIN_IN, -1, 0, content={"client_id": cid, NONCE_KEY: "forged"})


def metrics(sender, msg_type=METRICS):
    return Message(msg_type, sender, 0, state=2, content={"results": {"acc": 0.75}})


def model(sender, floats=100_000):
    return Message(MODEL_PARA, sender, 0, state=3, content={"sample_size": 40},
                   tensors={"w": torch.arange(floats, dtype=torch.float32)})


def sized(msg, size):
    """``msg`` encoded to exactly ``size`` bytes (a content string pads it)."""
    msg.content["pad"] = ""
    for _ in range(4):
        if len(data := codec.encode(msg)) == size:
            return data
        msg.content["pad"] = "p" * (len(msg.content["pad"]) + size - len(data))
    raise AssertionError(f"cannot pad to {size}")


def upload(msg_or_frame):
    parts = ([memoryview(msg_or_frame)] if isinstance(msg_or_frame, bytes)
             else codec.encode_parts(msg_or_frame))
    return upload_frames(parts, CHUNK)


def first_chunk(total, body=b""):
    return CHUNK_FIRST + total.to_bytes(8, "little") + body


def drain(q):
    return [q.get_nowait() for _ in range(q.qsize())]


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "federatedscope"]


def rejected(conn, why):
    return f"Rejected message from {conn.peer}: {why}"


@pytest.fixture(autouse=True)
def _log(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("federatedscope"), "propagate", True)
    caplog.set_level(logging.INFO, logger="federatedscope")


def test_a_new_connection_starts_unbound_clean_and_with_its_peer_clipped():
    conn = Connection(5, "ipv6:[" + "f" * 100 + "]:1")
    assert conn.peer == "ipv6:[" + "f" * 74 + "...[109 chars]" and conn.nonce == b""
    assert (conn.conn_id, conn.opened, conn.heartbeats, conn.bad, conn.client_id, conn.join_sent,
            conn.delivered, conn.abuse, conn.abort, conn.assembly, conn.reason, conn.last_heard,
            conn.queued) == (5, 0.0, None, 0, None, False, False, False, None, None,
                             "stream closed by client", 0.0, False)


@in_loop
async def test_whole_frames_from_bound_clients_reach_the_inbox_as_incoming_and_are_heard():
    host = Host()
    a, b, stranger = host.open(3), host.open(8), host.open()
    sent = [metrics(3), model(8, 1000)]
    t0 = time.monotonic()
    assert await host.feed(a, [codec.encode(sent[0])]) == [True]
    assert await host.feed(b, [codec.encode(sent[1])]) == [True]
    assert a.last_heard >= t0 and b.last_heard >= a.last_heard
    assert await host.feed(stranger, [codec.encode(join(4))]) == [True]
    assert stranger.last_heard == 0.0          # liveness is the bound clients' only
    got = drain(host.inbox)
    assert [type(i) for i in got] == [Incoming] * 3    # small: no inbox slot taken
    assert [(i.conn_id, i.peer) for i in got] == [(a.conn_id, a.peer), (b.conn_id, b.peer),
                                                  (stranger.conn_id, stranger.peer)]
    assert [codec.encode(i.msg) for i in got[:2]] == [codec.encode(m) for m in sent]
    assert (host.delivered, host.rejected, a.delivered, b.delivered) == (3, 0, True, True)


@in_loop
async def test_a_join_carries_its_own_streams_nonce_and_the_stream_waits_for_the_answer(caplog):
    host = Host()
    s1, s2 = host.open(), host.open()
    assert await host.feed(s1, [codec.encode(join(4))]) == [True]
    assert await host.feed(s2, [codec.encode(join(5))]) == [True]
    got = drain(host.inbox)
    # whatever the peer put there is overwritten with the nonce THIS stream was sent
    assert [(i.msg.content[NONCE_KEY], i.msg.content["client_id"]) for i in got] == \
        [("0b" * 32, 4), ("0c" * 32, 5)]
    assert (s1.join_sent, s1.delivered, host._unjoined.joining, host._unjoined.idle) == \
        (True, True, 2, 0)
    # a second message (even a join) before the server answered: rejected, stream kept
    assert await host.feed(s1, [codec.encode(join(4)), codec.encode(metrics(4))]) == [True, True]
    assert (host.inbox.qsize(), host.delivered, host.rejected, s1.bad, s2.bad) == (0, 2, 2, 2, 0)
    assert lines(caplog) == [rejected(s1, "message before the server answered this stream's "
                                          "join_in")] * 2


@in_loop
async def test_an_unbound_stream_may_send_only_a_join_and_a_bound_one_only_as_itself(
        caplog, monkeypatch):
    host = Host()
    stranger, bound = host.open(), host.open(4)
    long_type = "custom_" + "t" * 70           # a user's registered type: clipped in the line
    monkeypatch.setitem(message._SCHEMA, long_type, {"from": "client", "content": {}})
    frames = [codec.encode(metrics(4)), b"FSW1junk", codec.encode(metrics(4, long_type))]
    assert await host.feed(stranger, frames) == [True] * 3
    assert await host.feed(bound, [codec.encode(metrics(5)), codec.encode(metrics(4, "x" * 400))])
    assert (host.inbox.qsize(), host.delivered, host.rejected) == (0, 0, 5)
    assert (stranger.bad, bound.bad, stranger.join_sent, bound.delivered) == (3, 2, False, False)
    said = lines(caplog)
    assert [said[0], said[2], said[3]] == [
        rejected(stranger, "metrics before join_in"),
        rejected(stranger, f"{long_type[:60]}...[77 chars] before join_in"),
        rejected(bound, "connection of client #4 sent as #5")]
    # a peer's text in a line is cut at 300 characters
    why = f"unknown msg_type {'x' * 400!r}"
    assert said[4] == rejected(bound, f"{why[:300]}...[{len(why)} chars]")


@in_loop
async def test_heartbeats_within_the_bucket_only_move_last_heard_and_beyond_it_are_rejected(
        caplog):
    host = Host()
    # 3 at once, then one every 2 s (rate 0.5/s), read on the transport loop's clock
    beater = host.open(6, TokenBucket(3, 0.5, host._loop.now))
    free = host.open(7)                             # no bucket: no limit
    beat = codec.encode(Message(HEARTBEAT, 6, 0))
    t0 = time.monotonic()
    assert await host.feed(beater, [beat] * 4) == [True] * 4
    assert beater.last_heard >= t0
    assert (host.rejected, beater.bad, host.delivered, beater.delivered) == (1, 1, 0, False)
    host._loop.now += 1.9                       # 0.95 of a token: still none
    assert await host.feed(beater, [beat]) == [True] and host.rejected == 2
    host._loop.now += 0.2                       # 0.1 token more: one beat, not two
    assert await host.feed(beater, [beat, beat]) == [True, True] and host.rejected == 3
    assert await host.feed(free, [codec.encode(Message(HEARTBEAT, 7, 0))] * 5) == [True] * 5
    assert (host.inbox.qsize(), host.delivered, host.rejected) == (0, 0, 3)
    assert lines(caplog) == [rejected(beater, "heartbeats faster than "
                                              "distribute.heartbeat_interval allows")] * 3


@in_loop
async def test_a_message_over_its_streams_size_limit_is_refused_unread(caplog):
    host = Host()
    # before the stream is bound: prejoin_max, not abuse (a stranger has no id to cool off);
    # bound: max_receive, abuse. Whole or by a first chunk's declared total, never read.
    over = [(host.open(), sized(join(4), PREJOIN + 1)), (host.open(), first_chunk(PREJOIN + 1)),
            (host.open(3), b"\0" * (MAX_RECEIVE + 1)), (host.open(4), first_chunk(MAX_RECEIVE + 1))]
    for conn, frame in over:
        assert await host.feed(conn, [frame]) == [False]
        assert (conn.abort, conn.abuse, conn.reason, conn.delivered) == (
            (grpc.StatusCode.RESOURCE_EXHAUSTED, "message too large"),
            conn.client_id is not None, "oversized message", False)
    assert lines(caplog) == [rejected(c, w) for c, w in zip(
        [c for c, _ in over], ["65537-byte message refused unread (limit 65536 bytes until "
                               "joined)"] * 2 + ["1448577-byte message refused unread (limit "
                                                 "1448576 bytes)"] * 2)]
    # exactly at the limit: read, whole or in chunks
    exact = upload(sized(join(9), PREJOIN))
    assert len(exact) == 2 and int.from_bytes(exact[0][4:12], "little") == PREJOIN
    assert await host.feed(host.open(), exact) == [True, True]
    assert await host.feed(host.open(), [sized(join(5), PREJOIN)]) == [True]
    assert (host.delivered, host._heavy._value) == (2, 1)    # a stranger takes no inbox slot
    # bound, whole: read, then undecodable, and its inbox slot goes back
    mid, at_limit = host.open(5), host.open(6)
    assert await host.feed(mid, [b"\0" * MAX_RECEIVE]) == [True]
    assert (mid.abort, mid.bad, host._heavy._value, host._backlog) == (None, 1, 1, 0)
    assert await host.feed(at_limit, [first_chunk(MAX_RECEIVE, b"x")]) == [True]
    assert at_limit.assembly.filled == 1 and drain(at_limit.outbox) == [GO]
    assert (at_limit.abort, host._heavy._value) == (None, 0)


@in_loop
async def test_a_message_in_several_chunks_is_delivered_once_and_byte_identical():
    host = Host(queue.Queue())     # a plain queue: no inbox budget
    a, b = host.open(3), host.open(8)
    msgs = [model(3), model(8, 70_000)]
    fa, fb = upload(msgs[0]), upload(msgs[1])
    # 400,000 bytes of tensor (+ header): 4,079 first, then 131,063-byte continuations
    assert [len(f) for f in fa[:-1]] == [FIRST_CHUNK_BYTES + 12] + [CHUNK + 4] * 3
    assert (len(fa), len(fb)) == (5, 4) and len(fb[-1]) < CHUNK + 4
    keep = [await host._on_frame(a, fa[0]), await host._on_frame(b, fb[0])]
    assert drain(a.outbox) == [GO] and drain(b.outbox) == [GO]      # the senders may go on
    for x, y in itertools.zip_longest(fa[1:], fb[1:]):              # two streams interleaved
        keep += [await host._on_frame(a, x)] + ([await host._on_frame(b, y)] if y else [])
        assert host.inbox.qsize() == (x is fa[-1]) + (y in (fb[-1], None))   # on its last
    assert keep == [True] * 9 and host.delivered == 2 and host.rejected == 0
    got = drain(host.inbox)
    assert [(type(i), i.conn_id) for i in got] == [(Incoming, b.conn_id), (Incoming, a.conn_id)]
    assert [codec.encode(i.msg) for i in got] == [codec.encode(m) for m in msgs[::-1]]
    # nor does an upload into a plain queue: nothing would give the slot back
    assert (a.assembly, b.assembly, host.stall_timers(), host._heavy._value) == (None, None, [], 1)


@in_loop
async def test_broken_chunk_sequences_are_rejected_and_the_stream_kept(caplog):
    host = Host()
    c = host.open(3)
    frames = upload(model(3))
    assert await host.feed(c, [frames[1]]) == [True]         # no first chunk
    # exactly the announced size is fine; one byte more drops the assembly
    assert await host.feed(c, frames[:2] + [CHUNK_MORE + b"\0" * (CHUNK + 1)]) == [True] * 3
    assert (c.assembly, host.stall_timers(), host._heavy._value) == (None, [], 1)
    # past the declared total: in a continuation, or already in the (model-sized) first chunk
    assert await host.feed(c, [first_chunk(BIG_MESSAGE, b"ab"), CHUNK_MORE + b"\0" * 65_535,
                               first_chunk(BIG_MESSAGE, b"\0" * 65_537)]) == [True] * 3
    assert c.assembly is None and host._heavy._value == 1
    assert await host.feed(c, [CHUNK_FIRST + b"\0" * 7]) == [True]
    assert (host.rejected, c.bad, host.delivered, host.inbox.qsize()) == (5, 5, 0, 0)
    assert lines(caplog) == [rejected(c, w) for w in (
        "continuation chunk without a first chunk",
        "continuation chunk of 131064 bytes, over the announced 131063",
        "chunks exceed the declared 65536 bytes", "chunks exceed the declared 65536 bytes",
        "truncated first chunk")]


@in_loop
async def test_a_new_message_before_the_chunked_one_is_complete_drops_it(caplog):
    host = Host()
    c = host.open(3)
    assert await host.feed(c, [upload(model(3))[0], codec.encode(metrics(3))]) == [True, True]
    assert (c.assembly, host.stall_timers(), host._heavy._value) == (None, [], 1)
    assert [i.msg.msg_type for i in drain(host.inbox)] == [METRICS]   # the new one is read
    # a new first chunk likewise: it begins the next assembly
    second = upload(model(3, 20_000))
    assert await host.feed(c, [upload(model(3))[0], second[0]]) == [True, True]
    assert c.assembly.filled == FIRST_CHUNK_BYTES and host._heavy._value == 0
    assert await host.feed(c, second[1:]) == [True] * (len(second) - 1)
    assert (host.rejected, host.delivered, type(host.inbox.get_nowait())) == (2, 2, HeavyIncoming)
    assert lines(caplog) == [rejected(c, "a new message began before the chunked one was "
                                         "complete")] * 2


@in_loop
async def test_a_bound_clients_model_sized_upload_holds_one_inbox_slot_until_it_is_gone():
    host = Host()
    c = host.open(3)
    exact = upload(sized(model(3, 16_000), BIG_MESSAGE))
    assert await host.feed(c, exact[:1]) == [True] and host._heavy._value == 0
    assert await host.feed(c, exact[1:]) == [True] and host._heavy._value == 0
    assert type(host.inbox.get_nowait()) is HeavyIncoming and host._heavy._value == 1   # taken
    below = upload(sized(model(3, 16_000), BIG_MESSAGE - 1))
    assert await host.feed(c, below) == [True, True] and host._heavy._value == 1
    assert type(host.inbox.get_nowait()) is Incoming
    # rejected when complete (sent as another client): the slot goes back at once
    assert await host.feed(c, upload(model(9))) == [True] * 5 and host._heavy._value == 1
    # whole, or a first chunk holding the whole message: delivered at once, with its slot
    whole = exact[0][12:] + exact[1][4:]
    for frame in (first_chunk(len(whole), whole), whole):
        assert await host.feed(c, [frame]) == [True] and host._heavy._value == 0
        assert type(host.inbox.get_nowait()) is HeavyIncoming
    assert drain(c.outbox) == [GO] * 3       # one per chunked upload that was not whole
    assert (host.delivered, host.rejected, host.stall_timers()) == (4, 1, [])


@in_loop
async def test_an_upload_waiting_for_its_slot_is_queued_and_heard_and_gets_go_when_read():
    host = Host()
    await host._heavy.acquire()               # another upload holds the one slot
    c = host.open(3)
    task = asyncio.ensure_future(host._on_frame(c, upload(model(3))[0]))
    await asyncio.sleep(0)
    assert (c.queued, host._backlog, c.assembly, c.outbox.qsize()) == (True, 1, None, 0)
    released = time.monotonic()
    host._heavy.release()
    assert await task is True
    assert (c.queued, host._backlog, c.last_heard >= released) == (False, 0, True)
    assert drain(c.outbox) == [GO] and host._heavy._value == 0


@in_loop
async def test_a_whole_model_sized_frame_waiting_for_its_slot_is_queued_and_heard_too():
    """A peer may send a model-sized message as one frame (no chunks): its wait for the inbox is
    the server's doing just the same, so it must not count against the peer's liveness."""
    host = Host()
    await host._heavy.acquire()
    c = host.open(3)
    task = asyncio.ensure_future(host._on_frame(c, codec.encode(model(3))))
    await asyncio.sleep(0)
    assert (c.queued, host._backlog, host.delivered) == (True, 1, 0)
    released = time.monotonic()
    host._heavy.release()
    assert await task is True
    assert (c.queued, c.last_heard >= released, host.delivered) == (False, True, 1)


@in_loop
async def test_a_stalled_assembly_is_dropped_and_its_stream_closed(caplog):
    host = Host()
    c, idle = host.open(3), host.open(4)
    await host.feed(idle, [first_chunk(60_000, b"x")])      # small: no inbox slot
    host._loop.now = 1001.0
    assert await host.feed(c, [upload(model(3))[0]]) == [True] and host._heavy._value == 0
    t = host.stall_timers()[-1]           # every min(30, STALL_SECONDS) s
    assert (t.when, t.args) == (1011.0, (c, c.assembly, FIRST_CHUNK_BYTES, 1001.0))
    host._loop.fire(t)                    # no progress in 10 s (well within the 30 s overall)
    assert (c.assembly, host._heavy._value, drain(c.outbox)) == (None, 1, [GO, CLOSE])
    assert c.reason == "stalled in the middle of a message" and c.bad == 1
    assert lines(caplog) == [rejected(c, "chunked message stalled (no progress in 10s, or "
                                         "incomplete after 30s); closing the stream")]
    assert idle.assembly is not None and idle.reason == "stream closed by client"
    host._loop.fire(t)                    # a timer for an assembly that is gone: nothing
    assert host.rejected == 1


@in_loop
async def test_an_assembly_making_progress_is_rechecked_until_its_overall_timeout():
    host = Host(limits=dataclasses.replace(LIMITS, assembly_timeout=20.0))
    c = host.open(3)
    frames = upload(model(3))
    await host.feed(c, frames[:1])
    for step, now in enumerate((1010.0, 1020.0)):
        await host.feed(c, [frames[1 + step]])            # progress since the last check
        (t,) = host.stall_timers()
        assert (t.when, t.args[2:]) == (now, (FIRST_CHUNK_BYTES + step * CHUNK, 1000.0))
        host._loop.fire(t)
    # re-armed at 10 s (progress, 10 s < 20 s); at 20 s it is over the overall timeout
    assert (c.assembly, drain(c.outbox), host.rejected) == (None, [GO, CLOSE], 1)
    # a timeout under STALL_SECONDS is the step; a completed upload leaves no timer
    host = Host(limits=dataclasses.replace(LIMITS, assembly_timeout=4.0))
    c = host.open(3)
    await host.feed(c, frames[:1])
    assert host.stall_timers()[0].when == 1004.0
    await host.feed(c, frames[1:])
    assert host.stall_timers() == [] and host.delivered == 1


@in_loop
async def test_rejections_over_the_line_budget_are_counted_per_peer(caplog):
    host = Host()
    conns = [host.open() for _ in range(3)]
    for _ in range(10):                    # 30 junk frames, round robin: 20 lines, 10 counted
        assert [await host._on_frame(c, b"junk") for c in conns] == [True] * 3
    (t,) = host._loop.timers
    host._loop.fire(t)
    assert len(lines(caplog)) == 21 and lines(caplog)[-1].startswith(
        "Rejected 10 more messages from 3 peer(s)")


def test_rejection_lines_are_capped_per_interval_then_counted_in_one_line(caplog):
    loop = FakeLoop(500.0)
    budget = LineBudget(loop)
    for i in range(35):
        budget.warn(f"peer{i % 3}", f"line {i}")
    assert lines(caplog) == [f"line {i}" for i in range(20)]
    (t,) = loop.timers                     # one summary timer, not 15
    assert t.when == 510.0
    loop.fire(t)
    summary = ("Rejected {} more messages from {} peer(s) in the last 10s (over 20 lines per "
               "10s, not logged one by one)")
    assert lines(caplog)[20:] == [summary.format(15, 3)]
    t.fn()                                 # nothing more suppressed: no line
    budget.warn("p", "next interval")      # 510 - 500 >= 10: a fresh budget
    assert lines(caplog)[21:] == ["next interval"] and budget.start == 510.0
    # a flood from 1,003 peers: counted up to 1,000 of them; the next interval's first warn
    # (exactly 10 s later) writes the summary and cancels the timer
    for i in range(1022):
        budget.warn(f"flood{i}", "x")
    loop.now = 520.0
    budget.warn("p", "after")
    assert lines(caplog)[-2:] == [summary.format(1003, 1000), "after"]
    assert [(x.when, x.cancelled) for x in loop.timers] == [(510.0, True), (520.0, True)]


@in_loop
async def test_the_backlog_gate_closes_at_max_backlog_and_opens_below_it():
    host = Host()
    host._heavy = asyncio.Semaphore(0)

    async def wait(before, cancel=False):
        host._backlog = before
        task = asyncio.ensure_future(host._wait_for_inbox_slot())
        await asyncio.sleep(0)
        waiting = (host._backlog, host._backlog_ok.is_set())
        task.cancel() if cancel else host._heavy.release()
        await asyncio.gather(task, return_exceptions=True)
        return waiting, (host._backlog, host._backlog_ok.is_set())

    assert await wait(6) == ((7, True), (6, True))
    assert await wait(7) == ((8, False), (7, True))
    assert await wait(8) == ((9, False), (8, False))     # others still wait: stays closed
    assert await wait(7, cancel=True) == ((8, False), (7, True))   # a cancelled wait counts


def test_a_call_after_a_drain_wakes_the_loop_again_and_a_failing_call_is_only_logged(caplog):
    loop, seen = FakeLoop(), []
    calls = LoopCalls(loop)
    calls(functools.partial(int, "x"))     # fails; a partial has no __name__: named by its repr
    calls(seen.append, 1)
    (wakeup,) = loop.timers                # the second call rides on the first one's wake-up
    loop.fire(wakeup)
    assert seen == [1] and lines(caplog) == ["transport call functools.partial(<class 'int'>, "
                                             "'x') failed"]
    calls(seen.append, 2)                  # after the drain: a wake-up of its own
    loop.fire(loop.timers[1])
    assert seen == [1, 2] and len(loop.timers) == 2
