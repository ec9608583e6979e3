"""Client side of the gRPC transport: dial out, keep one stream open, reconnect on loss.

The client needs no inbound port. Connecting first probes the server's port with a plain TCP
connect, on the gRPC connection-backoff spec (initial 1 s, x1.6, jitter 0.2, capped at
``distribute.reconnect_max_backoff`` and at 5 s), then waits on gRPC's channel connectivity, so
start order does not matter and nothing spins. A
session can also fail on a live channel (the RPC refused with RESOURCE_EXHAUSTED, the stream
closed right after opening); ``reconnect`` applies the same backoff to every such failure, so a
refused client makes about one attempt a second at most, and gives up after
``distribute.max_reconnect_time`` without a working session. While a stream is open, the request
generator blocks on the outbound queue and sends a heartbeat whenever it has been quiet for
``distribute.heartbeat_interval`` seconds (also during local training).
"""
import logging
import queue
import random
import socket
import threading
import time
from typing import Optional

import grpc

from federatedscope.core.communication import codec
from federatedscope.core.communication.flow import (CHUNK_BYTES, DOWNLINK_CHUNKS_HEADER, GO,
                                                    UPLOAD_CHUNK_HEADER, UPLOAD_GO_HEADER,
                                                    DownlinkAssembly, announced_chunk,
                                                    upload_frames)
from federatedscope.core.communication.join_proof import NONCE_HEADER, PROOF_KEY, join_proof
from federatedscope.core.communication.limits import (HEARTBEAT_HEADER, announced_heartbeat,
                                                      compression, grpc_options)
from federatedscope.core.communication.security import channel_credentials, tls_problem
from federatedscope.core.message import (HEARTBEAT, InvalidMessage, Message, clip_text,
                                         validate_message)
from federatedscope.core.data.shard_format import token_digest
from federatedscope.core.communication.transport import Disconnected

logger = logging.getLogger("federatedscope")
_END = object()


class ServerUnreachable(ConnectionError):
    pass


def signed_join(join: Message, nonce_hex: Optional[str]) -> Message:
    """``join`` with its token replaced by a proof for this stream's nonce (join_proof.py)."""
    content = dict(join.content)
    token = content.pop("token", "")
    if token and nonce_hex:
        try:
            nonce = bytes.fromhex(nonce_hex)
        except ValueError:
            nonce = b""
        content[PROOF_KEY] = join_proof(token_digest(token), nonce, content.get("client_id"))
    return Message(join.msg_type, join.sender, join.receiver, join.state, content)


class Backoff:
    """gRPC's connection-backoff spec (initial 1 s, x1.6, +-20 % jitter), capped at ``cap``."""

    def __init__(self, cap: float, initial: float = 1.0, factor: float = 1.6,
                 jitter: float = 0.2, rng: Optional[random.Random] = None):
        self.cap, self.initial, self.factor, self.jitter = max(cap, initial), initial, factor, jitter
        self.rng = rng or random.Random()
        self.current = initial

    def next(self) -> float:
        """The next wait; jitter keeps a crowd of refused clients from retrying in lockstep."""
        delay = min(self.current, self.cap) * self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        self.current = min(self.current * self.factor, self.cap)
        return delay

    def reset(self) -> None:
        self.current = self.initial


class GrpcClientTransport:
    """Implements ``ClientComm``; server messages (validated) and ``Disconnected`` go to ``inbox``."""

    def __init__(self, cfg, inbox: "queue.Queue"):
        self.cfg = cfg
        self.inbox = inbox
        self.address = f"{cfg.distribute.server_host}:{cfg.distribute.server_port}"
        max_backoff_ms = int(cfg.distribute.reconnect_max_backoff * 1000)
        options = grpc_options(cfg)
        self._max_receive = dict(options)["grpc.max_receive_message_length"]
        options = options + [
            ("grpc.initial_reconnect_backoff_ms", 1000),
            ("grpc.min_reconnect_backoff_ms", 1000),
            ("grpc.max_reconnect_backoff_ms", max(1000, max_backoff_ms)),
            ("grpc.enable_http_proxy", int(cfg.distribute.grpc_enable_http_proxy)),
            # the server may send a model in 1 MiB DATA frames instead of HTTP/2's default
            # 16 KiB: 64x fewer frames to parse per model (as the server allows its clients)
            ("grpc.http2.max_frame_size", 1 << 20),
        ]
        creds = channel_credentials(cfg)
        self._channel = (grpc.secure_channel(self.address, creds, options=options,
                                             compression=compression(cfg)) if creds else
                         grpc.insecure_channel(self.address, options=options,
                                               compression=compression(cfg)))
        # Raw bytes both ways: the codec frames header + tensor payload itself.
        self._session = self._channel.stream_stream(
            "/federatedscope.FLService/Session", request_serializer=None,
            response_deserializer=None)
        self._outbox: Optional["queue.Queue"] = None
        self._call = None
        self._reader: Optional[threading.Thread] = None
        self.sender_id = -1
        self.backoff = Backoff(cfg.distribute.reconnect_max_backoff)
        self._session_ok = False                # the current session delivered a message
        self._failing_since: Optional[float] = None
        self._last_log = -1e9
        self._quiet_failures = 0
        self._closing = threading.Event()       # set by close(): a backoff wait ends at once
        self.upload_chunk = CHUNK_BYTES          # continuations' size, as the server announces
        self.upload_go = False                   # the server answers a first chunk with GO
        # the longer of distribute.heartbeat_interval and what the server asks for
        self.heartbeat_interval = float(cfg.distribute.heartbeat_interval)

    # ---------------------------------------------------------- connecting
    def wait_for_server(self, budget: float, key: str = "distribute.connect_timeout") -> None:
        """Block until the channel is ready or ``budget`` seconds pass (then raise, clearly)."""
        start = time.monotonic()
        logged = 0.0
        probed = False
        probes = Backoff(min(5.0, self.cfg.distribute.reconnect_max_backoff))
        while True:
            left = budget - (time.monotonic() - start)
            if left <= 0:
                lost = key != "distribute.connect_timeout"
                raise ServerUnreachable(
                    f"could not reach the server at {self.address} within {budget:.0f}s "
                    f"({key}). "
                    + ("It was reachable before: if the job finished while this client was away "
                       "(stalled or disconnected), this is expected; otherwise restart the server "
                       "with federate.restore_from, or raise " + key + "." if lost else
                       "Is it running? Start it with `python federatedscope/main.py --cfg "
                       "<server.yaml>`, or check distribute.server_host/server_port."))
            waited = time.monotonic() - start
            if waited - logged >= 10:
                logged = waited
                logger.info(f"Client: server {self.address} not reachable yet; "
                            f"retrying with backoff ({waited:.0f}s/{budget:.0f}s)")
            if not self._port_accepts(min(left, 5.0)):
                # gRPC's own wait polls the channel 5 times a second (grpc/_channel.py), which
                # was most of a waiting client's CPU; a refused connect costs microseconds.
                if self._closing.wait(min(probes.next(), max(0.0, left))):
                    raise ServerUnreachable("client is shutting down")
                continue
            try:
                grpc.channel_ready_future(self._channel).result(timeout=min(left, 5.0))
                return
            except grpc.FutureTimeoutError:
                if not probed:       # a TLS mismatch never heals: say which name/CA, and stop
                    probed = True
                    problem = tls_problem(self.cfg.distribute.server_host,
                                          int(self.cfg.distribute.server_port),
                                          self.cfg.distribute.tls_ca)
                    if problem:
                        raise ServerUnreachable(problem)

    def _port_accepts(self, timeout: float) -> bool:
        """Whether the server's port takes a TCP connection; always True through an HTTP proxy
        (only gRPC knows the way then)."""
        if self.cfg.distribute.grpc_enable_http_proxy:
            return True
        try:
            socket.create_connection((self.cfg.distribute.server_host.strip("[]"),
                                      int(self.cfg.distribute.server_port)),
                                     timeout=max(timeout, 0.1)).close()
            return True
        except OSError:
            return False

    def open_session(self, join: Message) -> None:
        """Start a stream whose first message is ``join``; replies arrive in ``inbox``."""
        if self._outbox is not None:
            self._outbox.put(_END)   # release the previous stream's request generator
        self.sender_id = join.sender
        self._session_ok = False
        outbox: "queue.Queue" = queue.Queue()
        nonce: "queue.Queue" = queue.Queue(maxsize=1)
        go = threading.Event()                   # the server's GO for the upload under way
        self._outbox = outbox
        self._call = self._session(self._requests(outbox, join, nonce, go),
                                   metadata=((DOWNLINK_CHUNKS_HEADER, "1"),))
        self._reader = threading.Thread(target=self._read, args=(self._call, nonce, go),
                                        name="client-reader", daemon=True)
        self._reader.start()

    def _requests(self, outbox: "queue.Queue", join: Message, nonce: "queue.Queue",
                  go: threading.Event):
        # The join waits for this stream's nonce (the server's initial metadata, sent before it
        # reads anything): the token itself never travels, only a proof bound to the nonce.
        try:
            got = nonce.get(timeout=max(1.0, float(self.cfg.distribute.join_deadline)))
        except queue.Empty:
            got = None
        if got is None:
            return   # the stream failed before it began; the reader reports why
        yield codec.encode(signed_join(join, got))
        interval = self.heartbeat_interval   # set with the nonce, from the same metadata
        while True:
            try:
                item = outbox.get(timeout=interval if interval > 0 else None)
            except queue.Empty:
                item = codec.encode(Message(HEARTBEAT, self.sender_id, 0, 0))
            if item is _END:
                return
            if isinstance(item, list) and len(item) > 1:   # a chunked message
                go.clear()
                yield item[0]
                # the rest once the server reads this stream for it (flow.GO); the reader sets
                # ``go`` when the session ends too, so this never outlives the stream
                if self.upload_go:
                    go.wait()
                yield from item[1:]
            elif isinstance(item, list):    # small enough for one whole frame: no GO comes
                yield item[0]
            else:
                yield item

    def _read(self, call, nonce: "queue.Queue", go: threading.Event) -> None:
        reason = "server closed the stream"
        try:
            metadata = dict(call.initial_metadata() or ())
            self.upload_chunk = announced_chunk(metadata.get(UPLOAD_CHUNK_HEADER))
            self.upload_go = metadata.get(UPLOAD_GO_HEADER) == "1"
            self.heartbeat_interval = announced_heartbeat(metadata.get(HEARTBEAT_HEADER),
                                                          self.cfg.distribute.heartbeat_interval)
            nonce.put(metadata.get(NONCE_HEADER))
            chunks = DownlinkAssembly(self._max_receive)
            for data in call:
                if data == GO:
                    go.set()
                    continue
                try:
                    frame = chunks.feed(data)
                    if frame is None:
                        continue          # more chunks of this message to come
                    msg = codec.decode(frame)
                    validate_message(msg, from_server=True)
                except InvalidMessage as e:
                    logger.warning(f"Client: rejected a message from the server: {e}")
                    continue
                self._session_ok = True
                self.inbox.put(msg)
        except grpc.RpcError as e:
            reason = f"{e.code().name}: {e.details()}" if hasattr(e, "code") else str(e)
        go.set()
        if nonce.empty():
            nonce.put(None)
        self.inbox.put(Disconnected(0, reason))

    def reconnect(self, join: Message, reason: str) -> None:
        """The session ended (``reason``): wait a backoff step, then open a new one with ``join``.

        Every way a session can fail comes through here, so the backoff covers them all. The
        budget, ``distribute.max_reconnect_time``, runs from the first failure after the last
        session that delivered a message; when it is spent this raises ``ServerUnreachable``."""
        now = time.monotonic()
        if self._session_ok or self._failing_since is None:
            self.backoff.reset()
            self._failing_since = now
            self._quiet_failures = 0
        budget = self.cfg.distribute.max_reconnect_time
        spent = now - self._failing_since
        delay = self.backoff.next()
        why = clip_text(reason, 200)
        if spent + delay >= budget:
            raise ServerUnreachable(
                f"no working session with the server at {self.address} for {spent:.0f}s "
                f"(distribute.max_reconnect_time={budget:.0f}s); last failure: {why}. Check the "
                f"server's log, or raise distribute.max_reconnect_time to keep trying longer.")
        self._quiet_failures += 1
        if now - self._last_log >= 10.0:  # rate-limited: one line per 10 s, with the count
            logger.warning(f"Client #{self.sender_id}: lost the server at {self.address} ({why}); "
                           f"retrying in {delay:.1f}s ({self._quiet_failures} failure(s) since "
                           f"the last line, {spent:.0f}s/{budget:.0f}s of "
                           f"distribute.max_reconnect_time)")
            self._last_log, self._quiet_failures = now, 0
        if self._closing.wait(delay):
            raise ServerUnreachable("client is shutting down")
        self.wait_for_server(budget - (time.monotonic() - self._failing_since),
                             key="distribute.max_reconnect_time")
        self.open_session(join)

    # ------------------------------------------------------------ ClientComm
    def send(self, msg: Message) -> None:
        if self._outbox is not None:
            self.sender_id = msg.sender
            # Large messages go as small chunks: the server reads them at its own pace.
            self._outbox.put(upload_frames(codec.encode_parts(msg), self.upload_chunk))

    def end_session(self) -> None:
        if self._outbox is not None:
            self._outbox.put(_END)

    def close(self, grace: float = 5.0) -> None:
        """Half-close our side, let the server end the stream, then release the channel.

        Waiting for the reader matters: a gRPC call still running while the interpreter shuts
        down can abort the process ("terminate called without an active exception")."""
        self._closing.set()
        self.end_session()
        if self._reader is not None:
            self._reader.join(timeout=grace)
            if self._reader.is_alive() and self._call is not None:
                self._call.cancel()
                self._reader.join(timeout=grace)
        self._channel.close()
