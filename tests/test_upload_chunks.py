"""Upload continuations sized by the server (``flow.upload_chunk_bytes``): a fixed budget shared
by the expected clients, announced in each stream's initial metadata, followed by real clients
and enforced on every continuation. Few clients upload in 512 KiB pieces (each gRPC message costs
the server about the same whatever its size); thousands keep 64 KiB, because a stream waiting for
an inbox slot has its next message taken in whole by gRPC."""
import logging
import queue
import time

import pytest
import torch
from hypothesis import given, settings, strategies as st

from harness.raw_peer import RawPeer, next_incoming
from federatedscope.core.communication import codec
from federatedscope.core.communication.flow import (CHUNK_BYTES, CHUNK_FIRST, CHUNK_MORE,
                                                    ALIGN, HeavyIncoming,
                                                    MAX_UPLOAD_CHUNK, UPLOAD_CHUNK_BUDGET,
                                                    UPLOAD_CHUNK_HEADER, Reassembly,
                                                    ServerInbox, announced_chunk, chunk_frames,
                                                    chunk_total, upload_chunk_bytes)
from federatedscope.core.communication.grpc_client import GrpcClientTransport
from federatedscope.core.communication.grpc_server import GrpcServerTransport
from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.message import (JOIN_IN, MODEL_PARA, InvalidMessage,
                                         Message)
from federatedscope.core.communication.transport import Incoming

MiB = 1024 * 1024
LOGGER = "federatedscope"


@pytest.mark.parametrize("expected,size", [
    (0, MiB // 2 - 9), (1, MiB // 2 - 9), (3, MiB // 2 - 9), (32, MiB // 2 - 9),
    (33, 508_400 - 9),          # 16 MiB / 33
    (100, 167_772 - 9), (255, 65_793 - 9),
    (256, 65_536 - 9), (1000, 65_536 - 9), (3550, 65_536 - 9)])
def test_the_announced_size_shares_a_fixed_budget_between_the_expected_clients(expected, size):
    assert upload_chunk_bytes(expected) == size
    # with the 9 bytes of magic and gRPC prefix, N waiting streams' next messages fit the budget
    # (or are the base 64 KiB each, below which nothing is chunked)
    assert max(1, expected) * (size + 9) <= max(UPLOAD_CHUNK_BUDGET, expected * 65_536)


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


@pytest.mark.parametrize("max_clients,announced", [(8, MiB // 2 - 9), (200, 167_772 - 9),
                                                   (2000, CHUNK_BYTES)])
def test_each_stream_is_told_the_size_its_server_derives(max_clients, announced):
    t = GrpcServerTransport(_cfg(), ServerInbox(), max_clients=max_clients)
    t.start()
    try:
        with RawPeer(f"127.0.0.1:{t.port}") as peer:
            assert peer.metadata()[UPLOAD_CHUNK_HEADER] == str(announced)
            assert t.limits.upload_chunk == announced
    finally:
        t.stop(grace=1.0)


def test_a_real_client_uploads_in_the_announced_pieces_and_an_oversized_one_is_refused(caplog):
    caplog.set_level(logging.WARNING, LOGGER)
    inbox = ServerInbox()
    t = GrpcServerTransport(_cfg(), inbox, max_clients=8)     # 4 expected: 512 KiB pieces
    t.start()
    cfg = _cfg()
    cfg.distribute.server_port = t.port
    client = GrpcClientTransport(cfg, queue.Queue())
    sent = []
    try:
        client.wait_for_server(10)
        client.open_session(Message(JOIN_IN, 1, 0, 0, {"client_id": 1}))
        t.bind(next_incoming(inbox).conn_id, 1)
        assert client.upload_chunk == MiB // 2 - 9     # read with the nonce, before the join
        update = _update(1, 900_000)                    # 3.6 MB of tensor
        size = len(codec.encode(update))
        outbox_put = client._outbox.put                 # what the client queues for the wire
        client._outbox.put = lambda item: (sent.append(item), outbox_put(item))[1]
        client.send(update)
        assert torch.equal(next_incoming(inbox).msg.tensors["w"], update.tensors["w"])
        pieces = 1 + -(-(size - CHUNK_BYTES) // (MiB // 2 - 9))
        assert len(sent) == 1 and len(sent[0]) == pieces == 8
        # a peer sending a continuation one byte over the announced size loses that message
        with RawPeer(f"127.0.0.1:{t.port}") as peer:
            peer.join(2)
            t.bind(next_incoming(inbox).conn_id, 2)
            frames = chunk_frames(codec.encode(_update(2, 900_000)), more=MiB // 2 - 8)
            for f in frames:
                peer.send(f)
            deadline = time.monotonic() + 10
            while "over the announced" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            assert f"continuation chunk of {MiB // 2 - 8} bytes, over the announced " \
                   f"{MiB // 2 - 9}" \
                in caplog.text
            # the refused message gave its inbox slot back at once, not at its stall check
            # (STALL_SECONDS): the honest client's next upload arrives meanwhile
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
