"""Chunked uploads (``flow.py``): a client sends a small first chunk, waits for the server's GO
(sent when the server reads that stream for the message: the inbox slot is its), then sends the
rest in continuations of the size the server announced (1 MiB down to 128 KiB as the expected
client count grows). The size is enforced on every continuation; chunk boundaries never change
the message."""
import logging
import queue
import time

import pytest
import torch
from hypothesis import given, settings, strategies as st

from harness.raw_peer import RawPeer, bind_peer_then_client, next_incoming
from federatedscope.core.communication import codec
from federatedscope.core.communication.flow import (CHUNK_BYTES, CHUNK_FIRST, CHUNK_MORE,
                                                    FIRST_CHUNK_BYTES, GO,
                                                    ALIGN, HeavyIncoming, MAX_UPLOAD_CHUNK,
                                                    UPLOAD_CHUNK_HEADER, UPLOAD_GO_HEADER,
                                                    Reassembly, ServerInbox, announced_chunk,
                                                    chunk_frames, chunk_total, upload_frames)
from federatedscope.core.communication.grpc_client import GrpcClientTransport
from federatedscope.core.communication.grpc_server import GrpcServerTransport
from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.message import (JOIN_IN, MODEL_PARA, InvalidMessage,
                                         Message)
from federatedscope.core.communication.transport import Incoming

MiB = 1024 * 1024
LOGGER = "federatedscope"


@pytest.mark.parametrize("value,size", [
    (None, CHUNK_BYTES), ("", CHUNK_BYTES), ("1MB", CHUNK_BYTES), ("-5", CHUNK_BYTES),
    ("4096", CHUNK_BYTES), (str(MAX_UPLOAD_CHUNK + 1), CHUNK_BYTES),
    (str(CHUNK_BYTES), CHUNK_BYTES), ("200000", 200_000),
    (str(MAX_UPLOAD_CHUNK), MAX_UPLOAD_CHUNK)])
def test_a_client_takes_only_a_sane_announcement(value, size):
    assert announced_chunk(value) == size


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 40_000), size=st.integers(16, 3_000), extra=st.integers(0, 9_000),
       cuts=st.lists(st.integers(0, 40_000), max_size=6))
def test_continuations_of_any_size_reassemble_to_the_message(length, size, extra, cuts):
    data = bytes((i * 7 + length) % 251 for i in range(length))
    more = size + extra
    frames = chunk_frames(data, size, more=more)
    # the same frame handed over in parts (as codec.encode_parts gives it; empty parts and cuts
    # on chunk boundaries included) is cut into the same chunks
    at = sorted({0, length, *(c % (length + 1) for c in cuts)})
    parts = [memoryview(data)[a:b] for a, b in zip(at, at[1:])] + [memoryview(b"")]
    assert chunk_frames(parts, size, more=more) == frames
    if length <= size:
        assert frames == [data]
        return
    first, rest = frames[0], frames[1:]
    assert first.startswith(CHUNK_FIRST) and chunk_total(first) == length
    assert len(first) == len(CHUNK_FIRST) + 8 + size
    assert all(f.startswith(CHUNK_MORE) for f in rest)
    assert [len(f) - 4 for f in rest[:-1]] == [more] * (len(rest) - 1)
    assert 0 < len(rest[-1]) - 4 <= more
    assert len(rest) == -(-(length - size) // more)
    r = Reassembly(length, first, heavy=False)
    done = [r.add(memoryview(f)[4:]) for f in rest]
    assert done[-1] and not any(done[:-1]) and bytes(r.buf) == data


def test_a_message_in_parts_is_its_encoding_and_chunks_alike():
    msg = Message(MODEL_PARA, 3, 0, 2, {"sample_size": 5},
                  {"w": torch.randn(70, 300), "scalar": torch.tensor(2.5),
                   "empty": torch.zeros(0, 4), "mask": torch.tensor([True, False, True]),
                   "n": torch.tensor([7], dtype=torch.int64)})
    whole = codec.encode(msg)
    parts = codec.encode_parts(msg)
    assert b"".join(parts) == whole and sum(p.nbytes for p in parts) == len(whole)
    for size, more in [(CHUNK_BYTES, 0), (CHUNK_BYTES, MiB // 2 - 9), (1000, 333)]:
        assert chunk_frames(parts, size, more) == chunk_frames(whole, size, more)
    small = Message(MODEL_PARA, 3, 0, 2, {"sample_size": 5}, {"b": torch.ones(3)})
    assert chunk_frames(codec.encode_parts(small)) == [codec.encode(small)]


@pytest.mark.parametrize("extra,more", [(-1, 131_063), (0, 131_063), (1, 131_063),
                                        (2_000_000, 1_048_567), (262_126, 131_063)])
def test_an_upload_goes_whole_up_to_64_kib_else_as_a_4_kib_first_chunk_and_pieces(extra, more):
    """What waits for the server's GO is the first chunk: 4 KiB, not a 64 KiB frame."""
    length = CHUNK_BYTES + extra
    data = bytes((i * 13) % 251 for i in range(length))
    parts = [memoryview(data)[:5], memoryview(data)[5:]]
    frames = upload_frames(parts, more)
    if length <= CHUNK_BYTES:
        assert frames == [data]
        return
    assert FIRST_CHUNK_BYTES + len(CHUNK_FIRST) + 8 + 5 == 4096    # with gRPC's prefix
    assert len(frames[0]) == 12 + FIRST_CHUNK_BYTES and chunk_total(frames[0]) == length
    body = length - FIRST_CHUNK_BYTES
    assert [len(f) - 4 for f in frames[1:]] == [more] * (body // more) + (
        [body % more] if body % more else [])
    r = Reassembly(length, frames[0], heavy=False)
    assert [r.add(memoryview(f)[4:]) for f in frames[1:]][-1] and bytes(r.buf) == data


def test_a_first_chunk_needs_its_whole_header_and_no_more():
    head = CHUNK_FIRST + (70_000).to_bytes(8, "little")
    assert chunk_total(head) == 70_000                  # the header alone: the total is known
    with pytest.raises(InvalidMessage) as e:
        chunk_total(head[:-1])
    assert str(e.value) == "truncated first chunk"


def test_a_reassembly_refuses_bytes_past_its_declared_total_and_stops_its_timer_once():
    first = chunk_frames(bytes(range(200)), 50)[0]
    r = Reassembly(200, first, heavy=True)
    r.finish()                                          # no timer armed yet: nothing to cancel
    assert not r.add(b"x" * 100) and r.filled == 150
    with pytest.raises(InvalidMessage) as e:
        r.add(b"y" * 51)
    assert str(e.value) == "chunks exceed the declared 200 bytes" and r.filled == 150

    class Timer:
        cancelled = 0

        def cancel(self):
            Timer.cancelled += 1
    r.timer = Timer()
    r.finish()
    r.finish()                                          # a second call finds no timer
    assert Timer.cancelled == 1 and r.timer is None


@pytest.mark.parametrize("size", [40, 300, CHUNK_BYTES])
def test_a_reassembled_upload_puts_its_tensor_payload_on_an_aligned_address(size):
    """Whatever the first chunk's size, the buffer is placed so the payload starts ALIGN-aligned
    and the decoded tensors share it (no copy)."""
    msg = _update(2, 40_000)
    frames = chunk_frames(codec.encode_parts(msg), size, more=1000)
    r = Reassembly(chunk_total(frames[0]), frames[0], heavy=False)
    assert [r.add(memoryview(f)[len(CHUNK_MORE):]) for f in frames[1:]][-1]
    start = codec.payload_offset(r.buf[:64])
    assert start is not None
    address = torch.frombuffer(r.buf, dtype=torch.uint8).data_ptr()
    assert (address + start) % ALIGN == 0
    w = codec.decode(r.buf).tensors["w"]
    assert w.data_ptr() == address + start and torch.equal(w, msg.tensors["w"])


def test_the_inbox_hands_out_heavy_events_with_or_without_a_listener_and_honours_timeouts():
    inbox = ServerInbox()
    msg = Message(MODEL_PARA, 1, 0, 0)
    inbox.put(HeavyIncoming(7, msg))
    assert inbox.get(timeout=1).conn_id == 7           # nobody listening: nothing to call
    taken = []
    inbox.on_heavy_taken = lambda: taken.append(1)
    inbox.put(Incoming(8, msg))
    inbox.put(HeavyIncoming(9, msg))
    assert [inbox.get().conn_id, inbox.get(False).conn_id] == [8, 9] and taken == [1]
    t = time.monotonic()
    with pytest.raises(queue.Empty):
        inbox.get(True, 0.05)                           # waits its timeout, then gives up
    assert 0.04 <= time.monotonic() - t < 5
    with pytest.raises(queue.Empty):
        inbox.get(False)


def _cfg():
    cfg = get_default_cfg()
    cfg.distribute.server_host, cfg.distribute.server_port = "127.0.0.1", 0
    return cfg


def _update(sender: int, n: int) -> Message:
    return Message(MODEL_PARA, sender, 0, 1, {"sample_size": 5},
                   {"w": torch.arange(n, dtype=torch.float32)})


PIECE = MiB - 9    # what a server for <= 64 expected clients announces: 1 MiB with our prefixes


# 64 MiB shared by the expected clients (half the ceiling), between 128 KiB and 1 MiB, less 9
@pytest.mark.parametrize("max_clients,piece", [
    (2, PIECE), (8, PIECE), (128, PIECE), (200, 671_079), (1000, 134_208), (2000, 131_063),
    (7100, 131_063)])
def test_every_stream_is_told_the_piece_size_and_that_its_server_answers_go(max_clients, piece):
    t = GrpcServerTransport(_cfg(), ServerInbox(), max_clients=max_clients)
    t.start()
    try:
        with RawPeer(f"127.0.0.1:{t.port}") as peer:
            meta = peer.metadata()
            assert (meta[UPLOAD_CHUNK_HEADER], meta[UPLOAD_GO_HEADER]) == (str(piece), "1")
            assert t.limits.upload_chunk == piece
    finally:
        t.stop(grace=1.0)


def _server_and_client():
    """A started server for 8 clients (its inbox) and a real client pointed at it."""
    inbox = ServerInbox()
    t = GrpcServerTransport(_cfg(), inbox, max_clients=8)
    t.start()
    cfg = _cfg()
    cfg.distribute.server_port = t.port
    return inbox, t, GrpcClientTransport(cfg, queue.Queue())


def test_go_comes_only_when_the_server_reads_the_upload_and_a_real_client_waits_for_it():
    """Client #1's upload holds the one inbox slot (the Server has not taken it). Client #2, a
    real client, sends its first chunk and nothing more: no GO reaches it while the slot is
    held. Once the Server takes #1's upload, #2 gets its GO and its continuations follow: the
    whole message arrives. A raw peer's chunked upload is answered with exactly one GO."""
    inbox, t, client = _server_and_client()
    yielded, gone_on = [], []
    requests = client._requests

    def spy(outbox, join, nonce, go):       # what the client hands to gRPC, and when GO came
        for item in requests(outbox, join, nonce, go):
            yielded.append(len(item))
            gone_on.append(go.is_set())
            yield item
    client._requests = spy
    try:
        with RawPeer(f"127.0.0.1:{t.port}") as peer:
            bind_peer_then_client(t, inbox, peer, 1, client, 2)
            first = _update(1, 300_000)                    # 1.2 MB: the slot is taken, not freed
            peer.send_chunked(first)
            assert peer.recv_raw(5.0) == GO                # read at once: the slot was free
            deadline = time.monotonic() + 5
            while t._heavy.locked() is False and time.monotonic() < deadline:
                time.sleep(0.01)
            second = _update(2, 600_000)                   # 2.4 MB: 1 + 3 pieces of PIECE
            size = len(codec.encode(second))
            client.send(second)
            time.sleep(1.0)
            assert yielded[-1] == len(CHUNK_FIRST) + 8 + FIRST_CHUNK_BYTES   # its first chunk only
            taken = next_incoming(inbox)                   # the Server takes #1's upload ...
            assert taken.msg.sender == 1 and torch.equal(taken.msg.tensors["w"],
                                                         first.tensors["w"])
            got = next_incoming(inbox)                     # ... and #2's follows, whole
            assert got.msg.sender == 2 and torch.equal(got.msg.tensors["w"], second.tensors["w"])
            rest = size - FIRST_CHUNK_BYTES
            assert yielded[-4:] == [len(CHUNK_FIRST) + 8 + FIRST_CHUNK_BYTES, 4 + PIECE, 4 + PIECE,
                                    4 + rest - 2 * PIECE]
            assert gone_on[-4:] == [False, True, True, True]
            assert peer.recv_raw(0.5) is None               # one GO per chunked message
    finally:
        client.close(grace=1.0)
        t.stop(grace=1.0)


def test_a_real_client_uploads_in_the_announced_pieces_and_an_oversized_one_is_refused(caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    inbox, t, client = _server_and_client()
    sent = []
    try:
        client.wait_for_server(10)
        client.open_session(Message(JOIN_IN, 1, 0, 0, {"client_id": 1}))
        t.bind(next_incoming(inbox).conn_id, 1)
        assert client.upload_chunk == PIECE and client.upload_go   # with the nonce, pre-join
        update = _update(1, 900_000)                    # 3.6 MB of tensor
        size = len(codec.encode(update))
        outbox_put = client._outbox.put                 # what the client queues for the wire
        client._outbox.put = lambda item: (sent.append(item), outbox_put(item))[1]
        client.send(update)
        assert torch.equal(next_incoming(inbox).msg.tensors["w"], update.tensors["w"])
        pieces = 1 + -(-(size - FIRST_CHUNK_BYTES) // PIECE)
        assert len(sent) == 1 and len(sent[0]) == pieces == 5
        # a peer sending a continuation one byte over the announced size loses that message
        with RawPeer(f"127.0.0.1:{t.port}") as peer:
            peer.join(2)
            t.bind(next_incoming(inbox).conn_id, 2)
            frames = chunk_frames(codec.encode(_update(2, 900_000)), more=PIECE + 1)
            for f in frames:
                peer.send(f)
            deadline = time.monotonic() + 10
            while "over the announced" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            assert f"continuation chunk of {PIECE + 1} bytes, over the announced {PIECE}" \
                in caplog.text
            # the refused message gave its inbox slot back at once, not at its stall check
            # (STALL_SECONDS): the honest client's next upload arrives meanwhile, after a small
            # message (one whole frame: no GO is owed for it, so none is awaited)
            client.send(_update(1, 10))
            assert next_incoming(inbox, timeout=5.0).msg.tensors["w"].numel() == 10
            again = _update(1, 900_000)
            client.send(again)
            assert torch.equal(next_incoming(inbox, timeout=5.0).msg.tensors["w"],
                               again.tensors["w"])
            peer.send(_update(2, 10))                  # the stream lives; the next one arrives
            late = next_incoming(inbox)
            assert late.msg.sender == 2 and late.msg.tensors["w"].numel() == 10
    finally:
        client.close(grace=1.0)
        t.stop(grace=1.0)
