"""Client side of the gRPC transport: dial out, keep one stream open, reconnect on loss.

The client needs no inbound port. Connecting waits on gRPC's own channel connectivity, configured
with the gRPC connection-backoff spec (initial 1 s, x1.6, jitter 0.2, capped at
``distribute.reconnect_max_backoff``), so start order does not matter and nothing spins. While a
stream is open, the request generator blocks on the outbound queue and sends a heartbeat whenever
it has been quiet for ``distribute.heartbeat_interval`` seconds (also during local training).
"""
import logging
import queue
import threading
import time
from typing import Optional

import grpc

from federatedscope.core.communication import codec
from federatedscope.core.communication.grpc_server import compression, grpc_options
from federatedscope.core.communication.security import channel_credentials
from federatedscope.core.message import HEARTBEAT, InvalidMessage, Message, validate_message
from federatedscope.core.workers.base_worker import Disconnected

logger = logging.getLogger("federatedscope")
_END = object()


class ServerUnreachable(ConnectionError):
    pass


class GrpcClientTransport:
    """Implements ``ClientComm``; server messages (validated) and ``Disconnected`` go to ``inbox``."""

    def __init__(self, cfg, inbox: "queue.Queue"):
        self.cfg = cfg
        self.inbox = inbox
        self.address = f"{cfg.distribute.server_host}:{cfg.distribute.server_port}"
        max_backoff_ms = int(cfg.distribute.reconnect_max_backoff * 1000)
        options = grpc_options(cfg) + [
            ("grpc.initial_reconnect_backoff_ms", 1000),
            ("grpc.min_reconnect_backoff_ms", 1000),
            ("grpc.max_reconnect_backoff_ms", max(1000, max_backoff_ms)),
            ("grpc.enable_http_proxy", int(cfg.distribute.grpc_enable_http_proxy)),
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

    # ---------------------------------------------------------- connecting
    def wait_for_server(self, budget: float) -> None:
        """Block until the channel is ready or ``budget`` seconds pass (then raise, clearly)."""
        start = time.monotonic()
        logged = 0.0
        while True:
            left = budget - (time.monotonic() - start)
            if left <= 0:
                raise ServerUnreachable(
                    f"could not reach the server at {self.address} within {budget:.0f}s "
                    f"(distribute.connect_timeout). Is it running? Start it with "
                    f"`python federatedscope/main.py --cfg <server.yaml>`, or check "
                    f"distribute.server_host/server_port.")
            try:
                grpc.channel_ready_future(self._channel).result(timeout=min(left, 5.0))
                return
            except grpc.FutureTimeoutError:
                waited = time.monotonic() - start
                if waited - logged >= 10:
                    logged = waited
                    logger.info(f"Client: server {self.address} not reachable yet; "
                                f"retrying with backoff ({waited:.0f}s/{budget:.0f}s)")

    def open_session(self, join: Message) -> None:
        """Start a stream whose first message is ``join``; replies arrive in ``inbox``."""
        self.sender_id = join.sender
        outbox: "queue.Queue" = queue.Queue()
        outbox.put(codec.encode(join))
        self._outbox = outbox
        self._call = self._session(self._requests(outbox))
        self._reader = threading.Thread(target=self._read, args=(self._call,),
                                        name="client-reader", daemon=True)
        self._reader.start()

    def _requests(self, outbox: "queue.Queue"):
        interval = self.cfg.distribute.heartbeat_interval
        while True:
            try:
                item = outbox.get(timeout=interval if interval > 0 else None)
            except queue.Empty:
                item = codec.encode(Message(HEARTBEAT, self.sender_id, 0, 0))
            if item is _END:
                return
            yield item

    def _read(self, call) -> None:
        reason = "server closed the stream"
        try:
            for data in call:
                try:
                    msg = codec.decode(data)
                    validate_message(msg, from_server=True)
                except InvalidMessage as e:
                    logger.warning(f"Client: rejected a message from the server: {e}")
                    continue
                self.inbox.put(msg)
        except grpc.RpcError as e:
            reason = f"{e.code().name}: {e.details()}" if hasattr(e, "code") else str(e)
        self.inbox.put(Disconnected(0, reason))

    # ------------------------------------------------------------ ClientComm
    def send(self, msg: Message) -> None:
        if self._outbox is not None:
            self.sender_id = msg.sender
            self._outbox.put(codec.encode(msg))

    def end_session(self) -> None:
        if self._outbox is not None:
            self._outbox.put(_END)

    def close(self, grace: float = 5.0) -> None:
        """Half-close our side, let the server end the stream, then release the channel.

        Waiting for the reader matters: a gRPC call still running while the interpreter shuts
        down can abort the process ("terminate called without an active exception")."""
        self.end_session()
        if self._reader is not None:
            self._reader.join(timeout=grace)
            if self._reader.is_alive() and self._call is not None:
                self._call.cancel()
                self._reader.join(timeout=grace)
        self._channel.close()
