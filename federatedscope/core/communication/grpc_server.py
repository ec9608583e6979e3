"""Server side of the gRPC transport: one bidirectional stream per client, no polling.

Each client stream gets a reader thread (blocking on the next request) and a response generator
(blocking on that connection's outbound queue). Both push into / pull from ``queue.Queue``s, so an
idle server sleeps in the kernel. Decoded messages are validated before they reach the worker; a
bad message is logged and dropped, and a connection that sends as another client is closed.
The standard gRPC health service is registered so launchers can wait for readiness.
"""
import itertools
import logging
import queue
import threading
from typing import Dict, Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from federatedscope.core.communication import codec
from federatedscope.core.communication.security import server_credentials
from federatedscope.core.message import JOIN_IN, InvalidMessage, Message, validate_message
from federatedscope.core.workers.base_worker import Disconnected, Incoming

logger = logging.getLogger("federatedscope")
_CLOSE = object()


def grpc_options(cfg) -> list:
    limit_mb = cfg.distribute.max_message_mb
    send = cfg.distribute.grpc_max_send_message_length
    recv = cfg.distribute.grpc_max_receive_message_length
    if limit_mb > 0:
        recv = min(recv, int(limit_mb * 1024 * 1024))
    return [("grpc.max_send_message_length", send), ("grpc.max_receive_message_length", recv),
            ("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000)]


def compression(cfg) -> grpc.Compression:
    return {"deflate": grpc.Compression.Deflate, "gzip": grpc.Compression.Gzip}.get(
        cfg.distribute.grpc_compression.lower(), grpc.Compression.NoCompression)


class _Connection:
    def __init__(self, conn_id: int, peer: str):
        self.conn_id = conn_id
        self.peer = peer
        self.client_id: Optional[int] = None
        self.outbox: "queue.Queue" = queue.Queue()
        self.closed = threading.Event()


class GrpcServerTransport:
    """Implements ``ServerComm`` for the ``Server`` worker; events go to ``inbox``."""

    def __init__(self, cfg, inbox: "queue.Queue", max_clients: int = 64):
        self.cfg = cfg
        self.inbox = inbox
        self._ids = itertools.count(1)
        self._conns: Dict[int, _Connection] = {}
        self._by_client: Dict[int, _Connection] = {}
        self._lock = threading.Lock()
        self.rejected = 0
        from concurrent import futures
        # Per client: one handler thread (response generator) + our reader thread (not pooled).
        pool = futures.ThreadPoolExecutor(max_workers=max_clients + 8, thread_name_prefix="grpc")
        self._server = grpc.server(pool, options=grpc_options(cfg),
                                   compression=compression(cfg),
                                   maximum_concurrent_rpcs=max_clients + 4)
        # Requests arrive as raw bytes and are parsed by the codec, so a malformed message is
        # logged and skipped instead of aborting the stream inside gRPC's deserializer.
        session = grpc.stream_stream_rpc_method_handler(
            self.Session, request_deserializer=None,
            response_serializer=None)  # we queue bytes: a broadcast is encoded once
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "federatedscope.FLService", {"Session": session}),))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        address = f"{cfg.distribute.server_host}:{cfg.distribute.server_port}"
        creds = server_credentials(cfg)
        self.port = (self._server.add_secure_port(address, creds) if creds
                     else self._server.add_insecure_port(address))
        if self.port == 0:
            raise OSError(f"cannot listen on {address}: port in use or host invalid "
                          f"(change distribute.server_port)")

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set("federatedscope.FLService", health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float = 5.0) -> None:
        """Let queued messages (e.g. ``finish``) drain, then stop."""
        with self._lock:
            conns = list(self._conns.values())
        for conn in conns:
            conn.outbox.put(_CLOSE)
        for conn in conns:
            conn.closed.wait(timeout=grace)
        self.health.enter_graceful_shutdown()
        if not self._server.stop(grace=1.0).wait(timeout=10.0):
            logger.warning("gRPC server did not shut down within 10s; exiting anyway")

    # --------------------------------------------------------- ServerComm
    def bind(self, conn_id: int, client_id: int) -> None:
        with self._lock:
            conn = self._conns.get(conn_id)
            if conn is None:
                return
            conn.client_id = client_id
            self._by_client[client_id] = conn

    def send(self, msg: Message) -> None:
        self.broadcast(msg, [msg.receiver])

    def broadcast(self, msg: Message, receivers) -> None:
        data = codec.encode(msg)   # one encoding shared by every receiver's queue
        for cid in receivers:
            with self._lock:
                conn = self._by_client.get(cid)
            if conn is None or conn.closed.is_set():
                logger.debug(f"dropping {msg!r}: client #{cid} not connected")
                continue
            conn.outbox.put(data)

    def send_to_conn(self, conn_id: int, msg: Message) -> None:
        with self._lock:
            conn = self._conns.get(conn_id)
        if conn is not None:
            conn.outbox.put(codec.encode(msg))

    def close(self, conn_id: int) -> None:
        with self._lock:
            conn = self._conns.get(conn_id)
        if conn is not None:
            conn.outbox.put(_CLOSE)

    # ---------------------------------------------------------- gRPC side
    def Session(self, request_iterator, context):
        conn = _Connection(next(self._ids), context.peer())
        with self._lock:
            self._conns[conn.conn_id] = conn
        reader = threading.Thread(target=self._read, args=(conn, request_iterator, context),
                                  name=f"reader-{conn.conn_id}", daemon=True)
        reader.start()
        try:
            while True:
                item = conn.outbox.get()
                if item is _CLOSE:
                    break
                yield item
        finally:
            conn.closed.set()
            self._forget(conn)

    def _read(self, conn: _Connection, requests, context) -> None:
        reason = "stream closed by client"
        try:
            for data in requests:
                self._deliver(conn, data)
        except grpc.RpcError as e:
            reason = f"stream error: {e.code().name if hasattr(e, 'code') else e}"
        except Exception as e:  # never let one stream kill the server
            reason = f"reader failed: {e!r}"
        finally:
            conn.outbox.put(_CLOSE)
            self.inbox.put(Disconnected(conn.conn_id, reason))

    def _deliver(self, conn: _Connection, data: bytes) -> None:
        try:
            msg = codec.decode(data)
            validate_message(msg, from_server=False)
            if conn.client_id is None and msg.msg_type != JOIN_IN:
                raise InvalidMessage(f"{msg.msg_type} before join_in")
            if conn.client_id is not None and msg.sender != conn.client_id:
                raise InvalidMessage(f"connection of client #{conn.client_id} sent as #{msg.sender}")
        except InvalidMessage as e:
            self.rejected += 1
            logger.warning(f"Rejected message from {conn.peer}: {e}")
            return
        self.inbox.put(Incoming(conn.conn_id, msg, conn.peer))

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.pop(conn.conn_id, None)
            if conn.client_id is not None and self._by_client.get(conn.client_id) is conn:
                del self._by_client[conn.client_id]
