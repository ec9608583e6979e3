"""Server -> client messages larger than one downlink chunk travel in chunks to clients that ask
for them (``flow.DOWNLINK_CHUNKS_HEADER``), whole to any other peer: the reassembly on the
client (``flow.DownlinkAssembly``) in process, with hypothesis over sizes and cut points, then a
real server broadcasting a 4 MB model to a real client and to a raw peer that did not ask."""
import logging
import queue
import time

import pytest
import torch
from hypothesis import given, settings, strategies as st

from harness.raw_peer import RawPeer, bind_peer_then_client, next_incoming
from federatedscope.core.communication import codec, grpc_client, grpc_server
from federatedscope.core.communication.flow import (ALIGN, CHUNK_FIRST, CHUNK_MORE,
                                                    DOWNLINK_CHUNK, DOWNLINK_CHUNKS_HEADER,
                                                    DownlinkAssembly, ServerInbox, chunk_frames,
                                                    whole_frame)
from federatedscope.core.communication.grpc_client import GrpcClientTransport
from federatedscope.core.communication.grpc_server import GrpcServerTransport
from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.message import EVALUATE, InvalidMessage, Message

MiB = 1024 * 1024


def _model(n: int, state: int = 4) -> Message:
    return Message(EVALUATE, 0, 1, state, {"note": "global"},
                   {"w": torch.arange(n, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int64)})


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 600_000), size=st.integers(64, 300_000))
def test_chunked_frames_reassemble_to_the_message_with_its_tensors_in_place(n, size):
    msg = _model(n)
    frames = chunk_frames(codec.encode_parts(msg), size)
    whole = codec.encode(msg)
    assert whole_frame(frames) == whole
    got, asm = [], DownlinkAssembly(len(whole))
    for f in frames:
        out = asm.feed(f)
        if out is not None:
            got.append(out)
    assert len(got) == 1 and asm.current is None and bytes(got[0]) == whole
    decoded = codec.decode(got[0])
    assert torch.equal(decoded.tensors["w"], msg.tensors["w"]) and decoded.state == 4
    if len(frames) > 1:     # reassembled: the tensors share the aligned buffer, no decode copy
        w = decoded.tensors["w"]
        assert w.numpy().flags.writeable and (n == 0 or w.data_ptr() % ALIGN == 0)


def test_a_message_up_to_one_chunk_goes_whole_and_larger_ones_in_full_chunks():
    # the frame of 300,000 floats + header: 1,200,0xx bytes -> 2 chunks of DOWNLINK_CHUNK max
    big, one = _model(300_000), _model(1000)
    whole = codec.encode(big)
    frames = chunk_frames(codec.encode_parts(big), DOWNLINK_CHUNK)
    assert [len(f) for f in frames] == [len(CHUNK_FIRST) + 8 + DOWNLINK_CHUNK,
                                        len(CHUNK_MORE) + len(whole) - DOWNLINK_CHUNK]
    assert DOWNLINK_CHUNK + len(CHUNK_MORE) + 5 == MiB     # one message with gRPC's prefix
    small = chunk_frames(codec.encode_parts(one), DOWNLINK_CHUNK)
    assert small == [codec.encode(one)]
    assert DownlinkAssembly(10).feed(small[0]) == small[0]   # a whole frame passes untouched


def test_the_assembly_refuses_what_no_server_sends_and_recovers_with_the_next_message():
    big = _model(50_000)
    frames = chunk_frames(codec.encode_parts(big), 64 * 1024)   # 4 chunks
    whole = codec.encode(_model(10))
    asm = DownlinkAssembly(MiB)
    with pytest.raises(InvalidMessage, match="^continuation chunk without a first chunk$"):
        asm.feed(frames[1])
    assert asm.feed(frames[0]) is None and asm.feed(frames[1]) is None
    with pytest.raises(InvalidMessage, match="^a new message began before the chunked one was "
                                             "complete$"):
        asm.feed(whole)
    assert asm.current is None and asm.feed(whole) == whole   # the half message is dropped
    assert asm.feed(frames[0]) is None
    with pytest.raises(InvalidMessage, match="^a new message began"):
        asm.feed(frames[0])                                     # a second first chunk
    # a first chunk that carries the whole message (no server of ours cuts one so) completes it
    asm = DownlinkAssembly(MiB)
    alone = asm.feed(CHUNK_FIRST + len(whole).to_bytes(8, "little") + whole)
    assert bytes(alone) == whole and asm.current is None and asm.feed(whole) == whole
    # more than the client's receive limit: refused from the first chunk's declared total
    small = DownlinkAssembly(200_000)
    total = len(codec.encode(big))
    with pytest.raises(InvalidMessage, match=f"^a chunked message of {total} bytes exceeds the "
                                             f"receive limit of 200000$"):
        small.feed(frames[0])
    assert small.current is None
    # a continuation past the declared total
    asm = DownlinkAssembly(MiB)
    asm.feed(frames[0])
    with pytest.raises(InvalidMessage, match="chunks exceed the declared"):
        asm.feed(CHUNK_MORE + b"x" * (total + 1))
    assert asm.current is None


def _cfg():
    cfg = get_default_cfg()
    cfg.distribute.server_host, cfg.distribute.server_port = "127.0.0.1", 0
    return cfg


def test_a_real_client_gets_a_large_broadcast_in_chunks_and_a_raw_peer_gets_it_whole(
        monkeypatch, caplog):
    caplog.set_level(logging.WARNING, "federatedscope")
    fed = []

    class Counting(DownlinkAssembly):
        def feed(self, data):
            fed.append(len(data))
            return super().feed(data)
    monkeypatch.setattr(grpc_client, "DownlinkAssembly", Counting)
    inbox = ServerInbox()
    t = GrpcServerTransport(_cfg(), inbox, max_clients=8)
    t.start()
    cfg = _cfg()
    cfg.distribute.server_port = t.port
    client_inbox: "queue.Queue" = queue.Queue()
    client = GrpcClientTransport(cfg, client_inbox)
    try:
        with RawPeer(f"127.0.0.1:{t.port}") as peer:
            bind_peer_then_client(t, inbox, peer, 2, client, 1)
            model = _model(1_000_000)                      # 4 MB: 4 chunks
            size = len(codec.encode(model))
            t.broadcast(model, [2, 1])       # the raw peer first: its whole frame is made for it
            model.tensors["w"].zero_()     # the caller's tensors change after broadcast returns
            deadline = time.monotonic() + 10
            got = None
            while got is None and time.monotonic() < deadline:
                item = client_inbox.get(timeout=10)
                got = item if isinstance(item, Message) else None
            assert got is not None and got.msg_type == EVALUATE and got.state == 4
            assert torch.equal(got.tensors["w"], torch.arange(1_000_000, dtype=torch.float32))
            n = -(-size // DOWNLINK_CHUNK)
            assert fed[-n:] == [len(CHUNK_FIRST) + 8 + DOWNLINK_CHUNK] + \
                [len(CHUNK_MORE) + DOWNLINK_CHUNK] * (n - 2) + \
                [len(CHUNK_MORE) + size - (n - 1) * DOWNLINK_CHUNK]
            raw = peer.recv_raw(10)        # the peer that did not ask: the frame whole
            assert raw is not None and len(raw) == size
            assert torch.equal(codec.decode(raw).tensors["w"], got.tensors["w"])
        assert not [r for r in caplog.records if "rejected" in r.getMessage()]
    finally:
        client.close(grace=1.0)
        t.stop(grace=1.0)


def test_only_peers_asking_with_the_header_set_to_1_get_chunks_and_small_messages_go_at_once(
        monkeypatch):
    """Five raw peers: 1 and 2 ask for chunks; 3 sends the header as "0", 4 another header as
    "1", 5 nothing. A message of exactly two chunks goes as two frames to 1 and 2 (no whole frame
    is made for them) and whole, made once, to 3, 4 and 5; a small message to a chunked peer is
    not held while the large-write slots are."""
    made_whole = []
    real = grpc_server.whole_frame
    monkeypatch.setattr(grpc_server, "whole_frame",
                        lambda frames: made_whole.append(len(frames)) or real(frames))
    inbox = ServerInbox()
    t = GrpcServerTransport(_cfg(), inbox, max_clients=8)
    t.start()
    addr = f"127.0.0.1:{t.port}"
    asks = {1: ((DOWNLINK_CHUNKS_HEADER, "1"),), 2: ((DOWNLINK_CHUNKS_HEADER, "1"),),
            3: ((DOWNLINK_CHUNKS_HEADER, "0"),), 4: (("fs-something-else", "1"),), 5: ()}
    peers = {cid: RawPeer(addr, metadata=md) for cid, md in asks.items()}
    try:
        for cid, peer in peers.items():
            peer.join(cid)
            t.bind(next_incoming(inbox).conn_id, cid)
        model = _model(300_000)
        frame = codec.encode(model)
        assert DOWNLINK_CHUNK < len(frame) <= 2 * DOWNLINK_CHUNK      # exactly two chunks
        first = len(CHUNK_FIRST) + 8 + DOWNLINK_CHUNK
        second = len(CHUNK_MORE) + len(frame) - DOWNLINK_CHUNK

        def two_chunks(peer):
            got = [peer.recv_raw(10), peer.recv_raw(10)]
            assert [len(g) for g in got] == [first, second]
            assert got[0].startswith(CHUNK_FIRST) and got[1].startswith(CHUNK_MORE)
            assert whole_frame(got) == frame
        t.broadcast(model, [1, 2])
        for cid in (1, 2):
            two_chunks(peers[cid])
        assert made_whole == []
        t.broadcast(model, [3, 1, 4, 5])
        for cid in (3, 4, 5):
            assert peers[cid].recv_raw(10) == frame
        two_chunks(peers[1])
        assert made_whole == [2]                       # once, for the three that did not ask
        t._run(_set(t._backlog_ok, False), timeout=5)  # large writes held
        note = Message(EVALUATE, 0, 1, 9, {"note": "small"})
        t.send(note)
        assert peers[1].recv_raw(5) == codec.encode(note)
        t._run(_set(t._backlog_ok, True), timeout=5)
    finally:
        for peer in peers.values():
            peer.close()
        t.stop(grace=1.0)


async def _set(event, on: bool) -> None:
    event.set() if on else event.clear()
