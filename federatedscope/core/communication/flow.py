"""Flow control between the network and the ``Server``: the inbox budget and chunked uploads.

A server that reads every upload the moment it arrives holds N models when N clients answer at
once. Two things keep it O(model): the ``ServerInbox`` lets the transport decode only
``HEAVY_IN_INBOX`` models ahead of the Server, and clients send large messages in chunks
(``upload_frames``): a 4 KiB first chunk, then, once the server answers ``GO`` (it is ready to
read that message), the rest in large continuations. A stream waiting for an inbox slot therefore
holds one small chunk, and gRPC's flow control stops nothing but that chunk's sender; the stream
being read moves the model in few messages (each gRPC message costs the server's event loop about
the same whatever its size). Whole (unchunked) frames stay valid on the wire.
"""
import queue
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np

from federatedscope.core.communication import codec
from federatedscope.core.message import InvalidMessage
from federatedscope.core.communication.transport import Incoming

# Model-sized uploads being received or waiting in a ``ServerInbox`` for the Server (the one it
# is adding no longer counts). One keeps the next upload arriving while the Server adds the
# previous one, and the server's peak at 1 (global) + 2 (float64 online sum) + 2 uploads = 5
# models (measured at hidden 2048, 3 clients: 4 slots 465 MB, 2 slots 422 MB, 1 slot below).
HEAVY_IN_INBOX = 1
# First chunk: magic | uint64 LE total length | bytes; each next chunk: magic | bytes.
CHUNK_FIRST = b"FSC1"
CHUNK_MORE = b"FSC+"
# 64 KiB with our 4-byte magic and gRPC's 5-byte message prefix: one window, one frame; a
# message up to this size goes whole.
CHUNK_BYTES = 64 * 1024 - 9
# A larger message's first chunk: what a stream waiting for an inbox slot holds, so it is small
# (4 KiB with our 12-byte head and gRPC's prefix). At 64 KiB, 3,550 clients answering at once
# parked 227 MB of first chunks in the server while one stream at a time was read.
FIRST_CHUNK_BYTES = 4 * 1024 - 17
# Server -> client, on the stream of a chunked upload: "send the continuations now". Sent when
# the server reads that stream for the message (its inbox slot taken), never before: gRPC takes
# a stream's next message in whole even while we are not reading it, so a client that sent its
# continuations at once would make every waiting stream hold one (1,000 clients at 2 MiB each
# measured 1.76 GB of server RSS, against 0.51 GB with 64 KiB pieces).
GO = b"FSGO"
UPLOAD_GO_HEADER = "fs-upload-go"      # announced "1": this server answers a first chunk with GO
# Continuations' size (announced with ``UPLOAD_CHUNK_HEADER``): each gRPC message costs the
# server's event loop about the same whatever its size, so larger is cheaper, but at 1,000
# clients the server's peak RSS grows with it although one stream at a time sends them (measured
# with GO, 3 rounds, hidden 128: 472-478 MB at 128 KiB, 600 MB at 256 KiB, 1.2-1.4 GB at 1 MiB,
# against 468 MB at 64 KiB; server CPU per round 14.2 s at 64 KiB, 10.6 s at 128 KiB). Hence a
# budget shared by the expected clients, between 128 KiB and 1 MiB.
UPLOAD_CHUNK_HEADER = "fs-upload-chunk"
UPLOAD_CHUNK_BUDGET = 64 * 1024 * 1024
MIN_UPLOAD_CHUNK = 128 * 1024
MAX_UPLOAD_CHUNK = 1024 * 1024
# Server -> client: a larger message goes as a first chunk and continuations of this size (no
# GO: a client reads its one stream eagerly), to clients that ask with this invocation header.
# The client copies each chunk into one aligned buffer as it arrives, so its copy overlaps the
# transfer and the decoded tensors share that buffer (``codec._tensor_at``); a whole 25 MB frame
# was first copied out of gRPC at its end, then once more by the decode (read-only bytes).
DOWNLINK_CHUNKS_HEADER = "fs-downlink-chunks"
DOWNLINK_CHUNK = 1024 * 1024 - len(CHUNK_MORE) - 5
_FIRST_HEAD = len(CHUNK_FIRST) + 8
# What a receiver of chunks (the server's intake, a client's DownlinkAssembly) says of a sequence
# no honest sender makes
NO_FIRST_CHUNK = "continuation chunk without a first chunk"
INTERRUPTED_CHUNKS = "a new message began before the chunked one was complete"
ALIGN = 64    # bytes: a cache line, and every tensor dtype's alignment


class ServerInbox(queue.Queue):
    """The ``Server``'s event queue. Taking a model-carrying event out of it gives that event's
    slot back to the transport, which decodes at most ``HEAVY_IN_INBOX`` models ahead of the
    Server: memory stays O(model) however many clients upload at once (back-pressure reaches
    the senders through gRPC flow control while the readers wait)."""

    def __init__(self) -> None:
        super().__init__()
        self.on_heavy_taken = None

    def get(self, block: bool = True, timeout: Optional[float] = None):
        item = super().get(block, timeout)
        if isinstance(item, HeavyIncoming) and self.on_heavy_taken is not None:
            self.on_heavy_taken()
        return item


@dataclass
class HeavyIncoming(Incoming):
    """An ``Incoming`` holding a model-sized message (counted against the inbox budget)."""


def chunk_frames(data: Union[bytes, Sequence[memoryview]], size: int = CHUNK_BYTES,
                 more: int = 0) -> List[bytes]:
    """``data`` (bytes, or a frame's parts as ``codec.encode_parts`` gives them) as wire
    messages: the whole frame when small, else a first chunk of ``size`` bytes and continuations
    of ``more`` (default ``size``); each byte is copied once, into its chunk."""
    parts = [memoryview(data)] if isinstance(data, (bytes, bytearray)) else list(data)
    total = sum(p.nbytes for p in parts)
    if total <= size:
        return [b"".join(parts)]
    more = more or size
    bounds = [(0, size)] + [(i, min(i + more, total)) for i in range(size, total, more)]
    chunks, k, at = [], 0, 0          # parts[k] starts at byte ``at`` of the frame
    for n, (lo, hi) in enumerate(bounds):
        pieces = [CHUNK_FIRST, total.to_bytes(8, "little")] if n == 0 else [CHUNK_MORE]
        while lo < hi:
            while at + parts[k].nbytes <= lo:    # skip parts that end before this chunk
                at += parts[k].nbytes
                k += 1
            take = min(hi, at + parts[k].nbytes)
            pieces.append(parts[k][lo - at:take - at])
            lo = take
        chunks.append(b"".join(pieces))
    return chunks


def upload_frames(parts: Sequence[memoryview], more: int) -> List[bytes]:
    """What a client (or anything playing one) sends for an encoded message: the whole frame
    when it fits ``CHUNK_BYTES``, else a ``FIRST_CHUNK_BYTES`` first chunk and continuations of
    ``more`` (the server's announced size) after its GO."""
    total = sum(p.nbytes for p in parts)
    if total <= CHUNK_BYTES:
        return [b"".join(parts)]
    return chunk_frames(parts, FIRST_CHUNK_BYTES, more)


def whole_frame(frames: Sequence[bytes]) -> bytes:
    """The frame that ``chunk_frames`` cut (for a receiver that takes messages whole)."""
    if len(frames) == 1:
        return frames[0]
    return b"".join([memoryview(frames[0])[_FIRST_HEAD:]]
                    + [memoryview(c)[len(CHUNK_MORE):] for c in frames[1:]])


def upload_chunk_bytes(expected_clients: int) -> int:
    """The continuation size a server announces: ``UPLOAD_CHUNK_BUDGET`` shared by its expected
    clients, between ``MIN_UPLOAD_CHUNK`` and ``MAX_UPLOAD_CHUNK`` (the whole message with our
    magic and gRPC's 5-byte prefix): 1 MiB up to 64 clients, 128 KiB from 512."""
    share = UPLOAD_CHUNK_BUDGET // max(1, int(expected_clients))
    return min(MAX_UPLOAD_CHUNK, max(MIN_UPLOAD_CHUNK, share)) - len(CHUNK_MORE) - 5


def announced_chunk(value) -> int:
    """A client's reading of ``UPLOAD_CHUNK_HEADER``: the announced size if it is a sane number,
    else the base size (an old or odd server gets what every server accepts)."""
    try:
        size = int(value)
    except (TypeError, ValueError):
        return CHUNK_BYTES
    return size if CHUNK_BYTES <= size <= MAX_UPLOAD_CHUNK else CHUNK_BYTES


def chunk_total(data: bytes) -> int:
    """The total length a first chunk declares (checked against limits before any allocation)."""
    if len(data) < _FIRST_HEAD:
        raise InvalidMessage("truncated first chunk")
    return int.from_bytes(data[len(CHUNK_FIRST):_FIRST_HEAD], "little")


class DownlinkAssembly:
    """A client's side of the server's chunked messages, on its one stream: ``feed`` each
    message as it arrives; it returns a whole frame (a message that was not chunked, or the
    aligned buffer of one just completed) or None while one is being put together. A first
    chunk declaring more than ``max_bytes`` (the client's receive limit) is refused before
    anything is allocated; any refusal drops the message under way."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.current: Optional[Reassembly] = None

    def feed(self, data: bytes):
        head = bytes(data[:len(CHUNK_FIRST)])
        try:
            if head == CHUNK_MORE:
                if self.current is None:
                    raise InvalidMessage(NO_FIRST_CHUNK)
                done = self.current.add(memoryview(data)[len(CHUNK_MORE):])
            elif self.current is not None:
                raise InvalidMessage(INTERRUPTED_CHUNKS)
            elif head == CHUNK_FIRST:
                total = chunk_total(data)
                if total > self.max_bytes:
                    raise InvalidMessage(f"a chunked message of {total} bytes exceeds the "
                                         f"receive limit of {self.max_bytes}")
                self.current = Reassembly(total, data, heavy=False)
                done = self.current.complete
            else:
                return data
        except InvalidMessage:
            self.current = None
            raise
        if not done:
            return None
        frame, self.current = self.current.buf, None
        return frame


class Reassembly:
    """One chunked message being put back together. ``buf`` (a view of the declared size) is
    placed in its allocation so the frame's tensor payload starts ``ALIGN``-aligned: the decoded
    tensors then use it in place instead of a copy (``codec._tensor_at``)."""

    def __init__(self, total: int, first: bytes, heavy: bool):
        # Not zero-filled: every byte is written by the chunks before anyone reads it, and a
        # model-sized memset per upload was a measurable part of the server's receive path.
        raw = np.empty(total + ALIGN, np.uint8)
        start = codec.payload_offset(memoryview(first)[_FIRST_HEAD:_FIRST_HEAD + 64]) or 0
        shift = -(raw.ctypes.data + start) % ALIGN
        self.buf = memoryview(raw)[shift:shift + total]
        self.filled = 0
        self.heavy = heavy          # holds an inbox slot until delivered or dropped
        self.timer = None           # the stall check (an asyncio TimerHandle)
        self.add(memoryview(first)[_FIRST_HEAD:])

    def add(self, part) -> bool:
        """Append a chunk's bytes; True when the message is complete."""
        end = self.filled + len(part)
        if end > len(self.buf):
            raise InvalidMessage(f"chunks exceed the declared {len(self.buf)} bytes")
        self.buf[self.filled:end] = part
        self.filled = end
        return self.complete

    def finish(self) -> None:
        if self.timer is not None:
            self.timer.cancel()     # also drops the handle's reference to this buffer
            self.timer = None

    @property
    def complete(self) -> bool:
        return self.filled == len(self.buf)
