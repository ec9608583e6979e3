"""The server transport against hostile peers, in process: a real grpc.aio server on loopback
(``GrpcServerTransport``) and real gRPC sessions (``bench.swarm.RawPeer``); no Server worker, so
what is tested is exactly what the transport lets through to the inbox."""
import logging
import queue
import threading
import time

import pytest
import torch

from harness.raw_peer import RawPeer, health_status, next_incoming
from federatedscope.core.communication import codec
from federatedscope.core.communication.grpc_server import GrpcServerTransport
from federatedscope.core.communication.proto import fl_pb2
from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.message import ASSIGN_ID, HEARTBEAT, JOIN_IN, METRICS, MODEL_PARA, Message
from federatedscope.core.communication.flow import CHUNK_FIRST
from federatedscope.core.communication.limits import BAD_MESSAGES_PER_SESSION
from federatedscope.core.communication.transport import Disconnected

LOGGER = "federatedscope"


def _cfg(join_deadline: float = 5.0, per_address: int = 0):
    cfg = get_default_cfg()
    cfg.distribute.grpc_max_connections_per_address = per_address
    cfg.distribute.server_host = "127.0.0.1"
    cfg.distribute.server_port = 0   # bound by the server; t.port says which
    cfg.distribute.join_deadline = join_deadline
    return cfg


@pytest.fixture
def server():
    made = []

    def make(join_deadline: float = 5.0, max_clients: int = 8, model_bytes: int = 0,
             per_address: int = 0):
        inbox: "queue.Queue" = queue.Queue()
        t = GrpcServerTransport(_cfg(join_deadline, per_address), inbox, max_clients=max_clients,
                                model_bytes=model_bytes)
        t.start()
        made.append(t)
        return t, inbox, f"127.0.0.1:{t.port}"
    yield make
    for t in made:
        t.stop(grace=1.0)


def _rejections(caplog):
    return [r.getMessage() for r in caplog.records if "Rejected message" in r.getMessage()]


def _raw_frame(env: fl_pb2.Envelope, payload: bytes = b"", patch=None) -> bytes:
    head = env.SerializeToString()
    if patch:
        head = head.replace(*patch)
    return codec.MAGIC + len(head).to_bytes(4, "little") + head + payload


def test_odd_text_in_every_field_reaches_the_inbox_or_one_log_line(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, inbox, addr = server()
    odd = "\ud800 été \udfff \u202e" + "x" * 300
    with RawPeer(addr) as peer:
        # JSON text: lone surrogates and non-ASCII travel as escapes and arrive intact.
        peer.join(1, token=odd, declaration={odd: [odd]}, num_samples={odd: 1})
        got = next_incoming(inbox).msg
        assert got.content["token"] == odd and got.content["declaration"] == {odd: [odd]}
    with RawPeer(addr) as peer:
        # Protobuf text (msg_type, tensor name, dtype) as invalid UTF-8: one bounded log line each.
        for patch in [(b"join_in", b"j\xed\xa0\x80_in"), (b"nm", b"\xff\xfe"),
                      (b"float32", b"\xed\xb0\x80loat")]:
            env = fl_pb2.Envelope(msg_type=JOIN_IN, content_json='{"client_id": 2}')
            env.tensors.add(name="nm", dtype="float32", shape=[1])
            peer.send(_raw_frame(env, b"\0" * 4, patch))
        peer.send(Message("m" * 50_000 + "été", 2, 0, 0, {"client_id": 2}))    # 50 KB msg_type
        peer.join(2)
        assert next_incoming(inbox).msg.content["client_id"] == 2         # still serving
    lines = _rejections(caplog)
    assert len(lines) == 4 and all(len(line) < 600 for line in lines), lines
    assert t.rejected == 4


def test_depth_bomb_and_huge_dims_cost_one_line_and_the_stream_lives(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    t, inbox, addr = server()
    bomb = fl_pb2.Envelope(msg_type=JOIN_IN, content_json="[" * 30_000 + "]" * 30_000)
    dims = fl_pb2.Envelope(msg_type=JOIN_IN, content_json='{"client_id": 3}')
    dims.tensors.add(name="w", dtype="float32", shape=[0, 2 ** 62, 2 ** 62])
    with RawPeer(addr) as peer:
        peer.send(_raw_frame(bomb))
        peer.send(_raw_frame(dims))
        peer.join(3)                      # same stream: it was not closed by the bad frames
        assert next_incoming(inbox).msg.content["client_id"] == 3
        assert not peer.closed
    lines = _rejections(caplog)
    assert len(lines) == 2, lines
    assert "nests too deeply" in lines[0] and "bad shape" in lines[1]


def test_prejoin_message_over_the_cap_is_refused_unread(server, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, LOGGER)
    t, inbox, addr = server(model_bytes=4 * 1024 * 1024)
    decoded = []
    real = codec.decode
    monkeypatch.setattr(codec, "decode", lambda b: decoded.append(len(b)) or real(b))
    big = Message(MODEL_PARA, 1, 0, 0, {"sample_size": 1}, {"w": torch.zeros(256 * 1024)})
    with RawPeer(addr) as peer:
        peer.send(big)                    # 1 MiB: under the receive limit, over the pre-join cap
        assert peer.wait_closed(10)
        assert peer.code == "RESOURCE_EXHAUSTED"
    assert decoded == [], "a pre-join message over the cap was decoded"
    assert any("refused unread" in line for line in _rejections(caplog))
    assert t.limits.max_receive == 2 * 4 * 1024 * 1024 + 1024 * 1024
    with RawPeer(addr) as peer:           # over the model-derived limit: gRPC refuses it itself
        peer.send(b"\0" * (t.limits.max_receive + 1))
        assert peer.wait_closed(10) and peer.code == "RESOURCE_EXHAUSTED"
    assert decoded == []


def test_idle_unjoined_streams_are_evicted_then_closed_at_the_deadline(server, caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    # the per-address connection ceiling (12 here) set out of the way: this is the unjoined cap's
    # test; test_transport_ceilings.py has the ceiling's
    t, inbox, addr = server(join_deadline=1.5, max_clients=8, per_address=1000)
    cap = t.limits.max_unjoined
    idle = [RawPeer(addr) for _ in range(cap + 8)]
    try:
        time.sleep(1.0)                   # let every stream reach the server
        assert health_status(addr) == "SERVING"
        with RawPeer(addr) as peer:       # a real join still gets in (the oldest idle one goes)
            peer.join(5)
            ev = next_incoming(inbox)
            t.bind(ev.conn_id, 5)
            t.send(Message(ASSIGN_ID, 0, 5, 0, {"client_id": 5}))
            assert peer.recv(10).msg_type == ASSIGN_ID
            assert all(p.wait_closed(5) for p in idle), "idle streams outlived join_deadline"
            assert not peer.closed, "a joined stream was closed by the join deadline"
            assert health_status(addr) == "SERVING"
            assert inbox.empty(), "idle streams produced events for the Server"
            counts = t.session_counts()
            assert counts == {"open": 1, "bound": 1, "idle_unjoined": 0, "joining": 0}, counts
    finally:
        for p in idle:
            p.close()
    assert t.evicted >= 8
    assert "distribute.join_deadline" in caplog.text


def test_broadcast_is_encoded_once_and_stop_drains_it(server):
    t, inbox, addr = server()
    peers = [RawPeer(addr) for _ in range(5)]
    try:
        for k, p in enumerate(peers, 1):
            p.join(k)
            t.bind(next_incoming(inbox).conn_id, k)
        calls = []
        real = codec.encode_parts
        codec.encode_parts = lambda m: calls.append(m.msg_type) or real(m)
        try:
            t.broadcast(Message("finish", 0, -2, 3, {}, {"w": torch.ones(1000)}), [1, 2, 3, 4, 5])
        finally:
            codec.encode_parts = real
        assert calls == ["finish"]
        t.stop(grace=5.0)                 # must deliver the queued finish before ending streams
        for p in peers:
            msg = p.recv(5)
            assert msg is not None and msg.msg_type == "finish" and msg.state == 3
            assert p.wait_closed(5)
    finally:
        for p in peers:
            p.close()


def _park_sessions(t, delays):
    """Stand-in sessions on a started transport; each ends (as ``_forget`` would) after its
    delay on the loop, or never (None)."""
    from federatedscope.core.communication.intake import Connection

    def end(c):
        t._conns.pop(c.conn_id, None)
        if not t._conns:
            t._all_closed.set()

    async def park():
        for i, d in enumerate(delays):
            c = Connection(1000 + i, "ipv4:127.0.0.1:1")
            t._conns[c.conn_id] = c
            if d is not None:
                t._loop.call_later(d, end, c)
        t._all_closed.clear()
    t._run(park(), timeout=5)


@pytest.mark.parametrize("delays,cap,left,least", [
    ([0.3, 0.6, 0.9, 1.2, 1.5, 1.8], 60.0, 0, 1.8),   # steady: all wait, past 3 x the grace
    ([0.2, None], 60.0, 1, 0.7),                     # stuck: cut one grace after the last end
    ([0.3 * k for k in range(1, 11)], 1.0, 7, 1.0)])  # steady but past the cap
def test_stop_waits_while_sessions_keep_ending(server, caplog, monkeypatch, delays, cap, left,
                                               least):
    """Thousands of sessions take longer than the stop's grace to end on a busy machine
    although each ends promptly: the wait is renewed while some session ended within the last
    grace (0.5 s here), up to STOP_DRAIN_MAX; only a stuck one is cut off, with one line."""
    from federatedscope.core.communication import grpc_server
    monkeypatch.setattr(grpc_server, "STOP_DRAIN_MAX", cap)
    caplog.set_level(logging.WARNING, LOGGER)
    t, _, _ = server()
    began = time.monotonic()    # before the sessions' end timers start: none fires earlier
    _park_sessions(t, delays)
    t.stop(grace=0.5)
    took = time.monotonic() - began
    assert len(t._conns) == left and least <= took < least + 5.0, (len(t._conns), took)
    warned = [r.getMessage() for r in caplog.records if "still open after" in r.getMessage()]
    assert len(warned) == (1 if left else 0), warned
    if left:
        assert warned[0].startswith(f"{left} session(s) still open after"), warned


def _bound_peers(t, inbox, addr, n, conns=None):
    """``n`` peers joined as clients 1..n; ``conns`` (a dict) gets client id -> connection id
    (streams open in any order, so connection ids need not follow the peers')."""
    peers = [RawPeer(addr) for _ in range(n)]
    for k, p in enumerate(peers, 1):
        p.join(k)
        conn = next_incoming(inbox).conn_id
        t.bind(conn, k)
        if conns is not None:
            conns[k] = conn
    return peers


def test_heartbeats_stay_in_the_transport_and_stamp_their_connection(server, caplog):
    """Liveness is all a heartbeat carries: a joined client's heartbeats never reach the
    Server's inbox (thousands of idle sessions beating would cost its thread), but each stamps
    the connection's ``last_heard``; any other message still arrives, and stamps it too. An
    unjoined stream's heartbeat is still rejected."""
    caplog.set_level(logging.WARNING, LOGGER)
    t, inbox, addr = server(max_clients=8)
    conns = {}
    peers = _bound_peers(t, inbox, addr, 4, conns)
    try:
        assert [t.last_heard(c) for c in conns.values()] == [0.0] * 4   # joins predate binding
        before = time.monotonic()
        for k, p in enumerate(peers, 1):
            for _ in range(k):
                p.send(Message(HEARTBEAT, k, 0, 0))
        peers[3].send(Message(METRICS, 4, 0, 1, {"results": {"test_acc": 0.5}}))
        ev = next_incoming(inbox)
        assert (ev.msg.msg_type, ev.conn_id) == (METRICS, conns[4])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and min(map(t.last_heard, conns.values())) < before:
            time.sleep(0.05)
        stamps = [t.last_heard(c) for c in conns.values()]
        assert all(before <= s <= time.monotonic() for s in stamps), stamps
        time.sleep(0.3)
        assert inbox.empty() and t.rejected == 0           # 10 heartbeats: none crossed
        assert t.last_heard(max(conns.values()) + 100) == 0.0     # no such connection
        with RawPeer(addr) as stranger:
            stranger.send(Message(HEARTBEAT, 5, 0, 0))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and t.rejected == 0:
                time.sleep(0.05)
        assert "heartbeat before join_in" in caplog.text
    finally:
        for p in peers:
            p.close()


def test_simultaneous_uploads_are_read_only_as_fast_as_the_server_takes_them():
    from federatedscope.core.communication.flow import HEAVY_IN_INBOX, ServerInbox
    inbox = ServerInbox()
    t = GrpcServerTransport(_cfg(), inbox, max_clients=64)
    t.start()
    addr = f"127.0.0.1:{t.port}"
    peers = _bound_peers(t, inbox, addr, 30)
    try:
        update = {"w": torch.ones(256 * 1024)}                  # 1 MiB each
        for k, p in enumerate(peers, 1):
            p.send_chunked(Message(MODEL_PARA, k, 0, 0, {"sample_size": 1}, update))
        time.sleep(3.0)                                          # nobody takes from the inbox
        waiting = list(inbox.queue)
        assert len(waiting) == HEAVY_IN_INBOX, len(waiting)     # the rest wait in flow control
        # a stream we do not read because its upload waits for a slot is not silent: the
        # server's liveness hears it now (3,550 uploads wait longer than a heartbeat timeout)
        now = time.monotonic()
        heard = [t.last_heard(c) for c in sorted(t._conns)]
        assert sum(h >= now for h in heard) == 30 - HEAVY_IN_INBOX, heard
        assert all(now - 10 < h for h in heard), heard
        got = [next_incoming(inbox).msg for _ in range(30)]     # taking them lets the rest in
        assert sorted(m.sender for m in got) == list(range(1, 31))
        assert all(torch.equal(m.tensors["w"], update["w"]) for m in got)
    finally:
        for p in peers:
            p.close()
        t.stop(grace=1.0)


def test_chunked_message_stalled_midway_is_dropped_and_its_stream_closed(caplog):
    import dataclasses
    from federatedscope.core.communication.flow import CHUNK_FIRST, ServerInbox, chunk_frames
    caplog.set_level(logging.WARNING, LOGGER)
    inbox = ServerInbox()
    t = GrpcServerTransport(_cfg(), inbox, max_clients=8)
    t.limits = dataclasses.replace(t.limits, assembly_timeout=1.0)
    t.start()
    addr = f"127.0.0.1:{t.port}"
    try:
        stalled, = _bound_peers(t, inbox, addr, 1)
        frames = chunk_frames(codec.encode(Message(MODEL_PARA, 1, 0, 0, {"sample_size": 1},
                                                   {"w": torch.ones(100_000)})))
        stalled.send(frames[0])                                  # first chunk only
        assert stalled.wait_closed(10), "a stalled upload kept its stream (and inbox slot)"
        assert "incomplete after" in caplog.text
        with RawPeer(addr) as stranger:                          # pre-join: refused by the
            stranger.send(CHUNK_FIRST + (50 << 20).to_bytes(8, "little"))   # declared length
            assert stranger.wait_closed(10) and stranger.code == "RESOURCE_EXHAUSTED"
        assert "52428800-byte message refused unread" in caplog.text
    finally:
        t.stop(grace=1.0)


def test_peers_that_stop_reading_cannot_hold_the_write_slots(caplog):
    import dataclasses
    import grpc
    from federatedscope.core.communication.limits import CONCURRENT_BIG_WRITES
    caplog.set_level(logging.WARNING, LOGGER)
    inbox: "queue.Queue" = queue.Queue()
    t = GrpcServerTransport(_cfg(), inbox, max_clients=32)
    t.limits = dataclasses.replace(t.limits, write_timeout=1.5)
    t.start()
    addr = f"127.0.0.1:{t.port}"
    stalled, channels, done = [], [], threading.Event()
    try:
        for k in range(1, CONCURRENT_BIG_WRITES + 3):     # more stalled readers than slots
            ch = grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1),
                                                      ("grpc.http2.bdp_probe", 0)])
            channels.append(ch)
            call = ch.stream_stream("/federatedscope.FLService/Session",
                                    request_serializer=None, response_deserializer=None)
            join = codec.encode(Message(JOIN_IN, k, 0, 0, {"client_id": k}))
            stalled.append(call(_join_then_hold(join, done)))   # never reads its responses
            t.bind(next_incoming(inbox).conn_id, k)
        reader = RawPeer(addr)
        reader.join(100)
        t.bind(next_incoming(inbox).conn_id, 100)
        model = {"w": torch.ones(4 * 1024 * 1024)}       # 16 MiB: far over a 64 KiB window
        t.broadcast(Message("finish", 0, -2, 1, {}, model), list(range(1, len(stalled) + 1)) + [100])
        got = reader.recv(20)
        assert got is not None and got.msg_type == "finish", "stalled readers froze the broadcast"
        assert "stalled reader" in caplog.text
        reader.close()
    finally:
        done.set()
        for c in stalled:
            c.cancel()
        for ch in channels:
            ch.close()
        t.stop(grace=1.0)


def _join_then_hold(join: bytes, done):
    yield join
    done.wait(60)     # keeps the stream open (half-closing would end it) until the test ends


def test_a_join_the_server_never_answers_does_not_hold_a_slot_for_ever(server, caplog,
                                                                      monkeypatch):
    from federatedscope.core.communication import grpc_server
    monkeypatch.setattr(grpc_server, "JOIN_ANSWER_TIMEOUT", 1.0)
    caplog.set_level(logging.WARNING, LOGGER)
    t, inbox, addr = server(join_deadline=1.0)
    with RawPeer(addr) as peer:
        peer.join(7)
        next_incoming(inbox)            # delivered; the "Server" never binds nor refuses it
        time.sleep(1.5)
        assert not peer.closed, "a delivered join was cut at the plain join deadline"
        assert peer.wait_closed(10)
    assert "join_in was not answered" in caplog.text


def test_token_bucket_passes_the_burst_then_the_rate():
    """Heartbeat limit: burst 8, then 4 per 5 s interval (0.8/s), hand-computed."""
    from federatedscope.core.communication.limits import TokenBucket
    b = TokenBucket(8, 0.8, now=100.0)
    assert [b.take(100.0) for _ in range(9)] == [True] * 8 + [False]
    assert b.take(101.0) is False          # 0.8 tokens: not yet
    assert b.take(101.25) is True          # 0.8 + 0.2 = 1.0
    assert b.take(101.25) is False
    assert [b.take(200.0) for _ in range(9)] == [True] * 8 + [False]   # refills to the cap only


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big")
            + payload)


def _flood_until_closed(port: int, first: bytes, frames, seconds: float):
    """Raw HTTP/2 on a TCP socket: preface, SETTINGS (+ ACK), ``first``, then ``frames`` until the
    server closes the connection. Returns (frames sent, seconds taken or None, frame types the
    server sent)."""
    import socket
    import time
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0, b"")
                  + _h2_frame(4, 1, 0, b"") + first)
        s.settimeout(0.01)
        t0, sent, took = time.monotonic(), 0, None
        while time.monotonic() - t0 < seconds and took is None:
            try:
                s.sendall(next(frames))
                sent += 1
                data = s.recv(65536)
                if not data:
                    took = time.monotonic() - t0
                got += data
            except socket.timeout:
                continue
            except OSError:                  # reset: closed by the server
                took = time.monotonic() - t0
    kinds, i = [], 0
    while i + 9 <= len(got):
        kinds.append(got[i + 3])
        i += 9 + int.from_bytes(got[i:i + 3], "big")
    return sent, took, kinds


def test_ping_and_continuation_floods_get_goaway(server):
    """PINGs while the server sends nothing: GOAWAY after 2 strikes
    (grpc.http2.max_ping_strikes). A header block grown by CONTINUATION frames: the stream is
    reset once it passes grpc.absolute_max_metadata_size (16 KiB), the rest is discarded
    unbuffered, and the connection, now without a stream, gets GOAWAY at the idle limit (10 s)."""
    import itertools
    t, inbox, _ = server()
    pings = (_h2_frame(6, 0, 0, i.to_bytes(8, "big")) for i in itertools.count())
    sent, took, kinds = _flood_until_closed(t.port, b"", pings, 20)
    assert took is not None and sent <= 10 and 7 in kinds, (sent, took, kinds)   # 7: GOAWAY
    block = b"\x00\x05x-aaa\x03bbb" * 100      # 1,100 bytes of literal headers per frame
    conts = (_h2_frame(9, 0, 1, block) for _ in itertools.count())
    sent, took, kinds = _flood_until_closed(t.port, _h2_frame(1, 0, 1, block), conts, 30)
    assert took is not None and took <= 15, (sent, took)
    assert 3 in kinds and 7 in kinds, kinds                                      # RST_STREAM, GOAWAY
    assert inbox.empty() and t.session_counts()["open"] == 0


def test_an_upload_that_stops_progressing_loses_its_slot_before_the_overall_timeout(
        caplog, monkeypatch):
    """Progress every STALL_SECONDS (1 s here) keeps a slow upload; a pause longer than that
    drops it and closes the stream, long before assembly_timeout (30 s here)."""
    import dataclasses
    import time
    from federatedscope.core.communication import intake
    from federatedscope.core.communication.flow import ServerInbox, chunk_frames
    monkeypatch.setattr(intake, "STALL_SECONDS", 1.0)
    caplog.set_level(logging.WARNING, LOGGER)
    inbox = ServerInbox()
    t = GrpcServerTransport(_cfg(), inbox, max_clients=8)
    t.limits = dataclasses.replace(t.limits, assembly_timeout=30.0)
    t.start()
    try:
        slow, = _bound_peers(t, inbox, f"127.0.0.1:{t.port}", 1)
        frames = chunk_frames(codec.encode(Message(MODEL_PARA, 1, 0, 0, {"sample_size": 1},
                                                   {"w": torch.ones(200_000)})))
        assert len(frames) >= 8
        t0 = time.monotonic()
        for f in frames[:7]:                  # 3 s of progress, one chunk per 0.5 s
            slow.send(f)
            time.sleep(0.5)
        assert not slow.closed, "a slow upload that progresses was dropped"
        assert slow.wait_closed(10), "a stalled upload kept its slot"
        assert time.monotonic() - t0 < 10 and "no progress in 1s" in caplog.text
    finally:
        t.stop(grace=1.0)


def _disconnects(inbox, n, timeout=10.0) -> dict:
    got, deadline = {}, time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        try:
            ev = inbox.get(timeout=0.1)
        except queue.Empty:
            continue
        if isinstance(ev, Disconnected):
            got[ev.conn_id] = ev
    return got


def test_only_an_abuse_close_of_a_bound_client_is_flagged_as_abuse(server):
    """What the Server's cool-off rests on (``Disconnected.abuse``): set when the transport
    closes an admitted client for invalid/excess messages or an oversized one; never for the
    client's own close or a stranger."""
    t, inbox, addr = server(model_bytes=64 * 1024)
    conns = {}
    peers = [RawPeer(addr) for _ in range(4)]
    try:
        for k, peer in enumerate(peers[:3], start=1):
            peer.join(k)
            conns[k] = next_incoming(inbox).conn_id
            t.bind(conns[k], k)
        time.sleep(0.2)                       # the binds are queued to the loop: let them run
        for _ in range(BAD_MESSAGES_PER_SESSION):
            peers[0].send(Message("no_such_type", 1, 0, 0))            # 1: invalid messages
            peers[3].send(Message("no_such_type", 9, 0, 0))            # a stranger: the same
        peers[1].send(CHUNK_FIRST + (t.limits.max_receive + 1).to_bytes(8, "little") + b"\0")
        assert peers[0].wait_closed(10) and peers[1].wait_closed(10) and peers[3].wait_closed(10)
        peers[2].close()                                               # 3: its own close
        got = _disconnects(inbox, 3)
    finally:
        for peer in peers:
            peer.close()
    assert sorted(got) == sorted(conns.values()), got       # the stranger's end is no event
    assert got[conns[1]].abuse and got[conns[1]].reason == "too many invalid messages"
    assert got[conns[2]].abuse and got[conns[2]].reason == "oversized message"
    assert not got[conns[3]].abuse


def test_a_flood_from_one_address_evicts_only_its_own_unjoined_streams(server, caplog):
    """4 clients from 127.0.0.1 hold unjoined streams (slow to join); a second host (127.0.0.2,
    through a forwarder) then opens the cap + 16 more. Oldest-first eviction would close the 4
    honest streams first; per address, only the flooder's own streams go, and every honest join
    still reaches the Server."""
    from harness.raw_peer import SourceAddressProxy
    caplog.set_level(logging.WARNING, LOGGER)
    t, inbox, addr = server(join_deadline=30.0, max_clients=8, per_address=1000)   # as above
    cap = t.limits.max_unjoined
    honest = [RawPeer(addr) for _ in range(4)]
    flood = []
    try:
        for p in honest:
            p.nonce()                      # the server has registered this stream
        assert t.session_counts()["idle_unjoined"] == 4
        with SourceAddressProxy(t.port) as proxy:
            flood = [RawPeer(proxy.address) for _ in range(cap + 16)]
            for p in flood:
                p.nonce()
            assert t.evicted == 20, t.evicted      # 4 + cap + 16 streams, cap kept
            end = time.monotonic() + 10
            while sum(p.closed for p in flood) < 20 and time.monotonic() < end:
                time.sleep(0.05)
            assert sum(p.closed for p in flood) == 20
            assert not any(p.closed for p in honest), "an honest stream was evicted"
            assert "127.0.0.2" in caplog.text and "Closed unjoined session from ipv4:127.0.0.1" \
                not in caplog.text
            for cid, p in enumerate(honest, 1):
                p.join(cid)
                ev = next_incoming(inbox)
                assert ev.msg.msg_type == JOIN_IN and ev.msg.sender == cid and "127.0.0.1" in ev.peer
    finally:
        for p in honest + flood:
            p.close()


def test_at_its_ceiling_an_address_gives_way_only_after_a_second_and_refusals_are_held(server):
    """A fixed ceiling of 2 for 127.0.0.1: a third stream at once is refused, but only after
    REFUSAL_HOLD (a flooder reconnecting at once gets one attempt a second per connection);
    once the oldest has waited GIVE_WAY_AFTER without joining, a newcomer closes it (the
    oldest, not the newer one) and takes its place."""
    from federatedscope.core.communication.limits import GIVE_WAY_AFTER, REFUSAL_HOLD
    t, inbox, addr = server(join_deadline=30.0, max_clients=8, per_address=2)
    a = RawPeer(addr)
    assert a.nonce()
    b = RawPeer(addr)
    assert b.nonce()
    began = time.monotonic()
    c = RawPeer(addr)
    try:
        assert not c.nonce() and c.wait_closed(10) and c.code == "RESOURCE_EXHAUSTED"
        assert time.monotonic() - began >= REFUSAL_HOLD - 0.05
        assert "ipv4:127.0.0.1 already holds 2 connections" in c.details
        assert "ceiling 2, set; distribute.grpc_max_connections_per_address" in c.details
        time.sleep(max(0.0, GIVE_WAY_AFTER - (time.monotonic() - began)) + 0.2)
        d = RawPeer(addr)
        assert d.nonce(), "a newcomer was refused although the oldest stream had waited"
        assert a.wait_closed(10) and not b.wait_closed(0.5) and not d.closed
        assert t.evicted == 1
    finally:
        for p in (a, b, c):
            p.close()
        if "d" in locals():
            d.close()
