"""``RawPeer``: one real gRPC session to the server with a synchronous API, for tests that play
a hostile peer (send arbitrary frame bytes or a ``Message``, read what comes back, see how the
server ended the stream); ``health_status``: the server's gRPC health answer; ``next_incoming``:
the next message a server transport put in its inbox.
"""
import contextlib
import queue
import socket
import threading
import time
from typing import Optional, Union

import grpc

from federatedscope.core.communication import codec
from federatedscope.core.communication.flow import GO, chunk_frames
from federatedscope.core.communication.join_proof import NONCE_HEADER, PROOF_KEY, join_proof
from federatedscope.core.message import JOIN_IN, Message
from federatedscope.core.communication.transport import Incoming
from federatedscope.core.workers.admission import token_digest

METHOD = "/federatedscope.FLService/Session"
BIG = 1 << 30
_END = object()


class RawPeer:
    """One real session (sync API, a reader thread): for tests that play a hostile peer.

    ``send(frame_or_message)``, ``send_chunked(frame_or_message)``, ``join(client_id, token=..., declaration=..., num_samples=...)``,
    ``recv(timeout) -> Message | None``, ``recv_raw(timeout) -> bytes | None``,
    ``wait_closed(timeout) -> bool``; after the stream ends ``code`` is the gRPC status name
    ("OK", "RESOURCE_EXHAUSTED", ...) and ``details`` its text. ``metadata``: the session's
    invocation metadata (a real client asks for downlink chunks there). Use as a context manager."""

    def __init__(self, address: str, options=(), metadata=()):
        self.address = address
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.use_local_subchannel_pool", 1),  # a connection of its own, like a real peer
            ("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]
            + list(options))
        self._out: "queue.Queue" = queue.Queue()
        self._in: "queue.Queue" = queue.Queue()
        self.code: Optional[str] = None
        self.details = ""
        self._done = threading.Event()
        call = self.channel.stream_stream(METHOD, request_serializer=None,
                                          response_deserializer=None)
        self._call = call(self._requests(), metadata=tuple(metadata) or None)
        self._reader = threading.Thread(target=self._read, daemon=True, name="rawpeer")
        self._reader.start()

    def _requests(self):
        while True:
            item = self._out.get()
            if item is _END:
                return
            yield item

    def _read(self) -> None:
        try:
            for data in self._call:
                self._in.put(data)
            self.code = "OK"
        except grpc.RpcError as e:
            self.code, self.details = e.code().name, e.details() or ""
        finally:
            self._done.set()
            self._in.put(None)

    def send(self, frame: Union[bytes, Message]) -> None:
        self._out.put(codec.encode(frame) if isinstance(frame, Message) else bytes(frame))

    def send_chunked(self, frame: Union[bytes, Message], size: int = 64 * 1024) -> None:
        """As the real client sends a large message: a first chunk and continuations."""
        data = codec.encode(frame) if isinstance(frame, Message) else bytes(frame)
        for part in chunk_frames(data, size):
            self._out.put(part)

    def join(self, client_id: int, token: str = "", declaration: Optional[dict] = None,
             num_samples: Optional[dict] = None, **extra) -> None:
        content = {"client_id": client_id, "token": token,
                   "num_samples": num_samples or {"train": 0, "val": 0, "test": 0}, **extra}
        if token:   # the proof the server checks; the plain token rides along for odd-text tests
            content[PROOF_KEY] = join_proof(token_digest(token), self.nonce(), client_id)
        if declaration is not None:
            content["declaration"] = declaration
        self.send(Message(JOIN_IN, client_id, 0, 0, content))

    def metadata(self) -> dict:
        """The server's initial metadata on this session (its nonce, its upload chunk size)."""
        return dict(self._call.initial_metadata() or ())

    def nonce(self) -> bytes:
        return bytes.fromhex(self.metadata().get(NONCE_HEADER, ""))

    def recv_raw(self, timeout: float = 5.0) -> Optional[bytes]:
        try:
            data = self._in.get(timeout=timeout)
        except queue.Empty:
            return None
        if data is None:
            self._in.put(None)  # keep reporting the end to later calls
        return data

    def recv(self, timeout: float = 5.0) -> Optional[Message]:
        """The next message; GO frames (flow control for our chunked uploads) are skipped."""
        data = self.recv_raw(timeout)
        while data == GO:
            data = self.recv_raw(timeout)
        return None if data is None else codec.decode(data)

    def wait_closed(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    def close(self) -> None:
        self._out.put(_END)
        if not self._done.wait(2.0):
            self._call.cancel()
            self._done.wait(2.0)
        self.channel.close()

    def __enter__(self) -> "RawPeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def health_status(address: str, service: str = "", timeout: float = 5.0) -> str:
    """The health service's answer ("SERVING", ...) or the gRPC error code name."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.RpcError as e:
            return e.code().name


class SourceAddressProxy:
    """A loopback TCP forwarder whose upstream connections leave from another loopback address
    (Linux routes all of 127.0.0.0/8 to ``lo``), so the server sees the peers behind it as a
    second host, without root or namespaces. ``address`` is where to point a ``RawPeer``. It
    counts the payload bytes it carries each way (``bytes``; the wire benchmark's socket figures,
    with ``source_ip`` 127.0.0.1)."""

    def __init__(self, target_port: int, source_ip: str = "127.0.0.2"):
        self.target_port, self.source_ip = target_port, source_ip
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._open: list = [self._listener]
        self.connections, self.bytes, self._lock = 0, {"up": 0, "down": 0}, threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return                                   # closed
            up = socket.socket()
            up.bind((self.source_ip, 0))
            up.connect(("127.0.0.1", self.target_port))
            self._open += [down, up]
            self.connections += 1
            for a, b, way in ((down, up, "up"), (up, down, "down")):
                threading.Thread(target=self._pipe, args=(a, b, way), daemon=True).start()

    def _pipe(self, src, dst, way: str) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 20):
                dst.sendall(data)
                with self._lock:
                    self.bytes[way] += len(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)   # the other direction ends too

    def settled(self, quiet: float = 0.3, limit: float = 5.0):
        """(up, down) byte counts once none has moved for ``quiet`` seconds (trailing acks)."""
        last, t_end, t_quiet = None, time.monotonic() + limit, time.monotonic()
        while time.monotonic() < t_end and time.monotonic() - t_quiet < quiet:
            with self._lock:
                now = (self.bytes["up"], self.bytes["down"])
            if now != last:
                last, t_quiet = now, time.monotonic()
            time.sleep(0.05)
        return last

    def close(self) -> None:
        for s in self._open:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> "SourceAddressProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def next_incoming(inbox, timeout: float = 10.0) -> Incoming:
    """The next ``Incoming`` in a server transport's inbox (other events skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev = inbox.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(ev, Incoming):
            return ev
    raise AssertionError("no message reached the inbox")


def bind_peer_then_client(t, inbox, peer: RawPeer, peer_id: int, client, client_id: int) -> None:
    """On the server transport ``t``: ``peer`` joins as ``peer_id``, then the real client
    transport ``client`` opens its session as ``client_id``; both bound, in that order."""
    peer.join(peer_id)
    t.bind(next_incoming(inbox).conn_id, peer_id)
    client.wait_for_server(10)
    client.open_session(Message(JOIN_IN, client_id, 0, 0, {"client_id": client_id}))
    t.bind(next_incoming(inbox).conn_id, client_id)
