"""Server side of the gRPC transport: every client stream is a coroutine, none holds a thread.

Concurrency model (doc/architecture.md, "Transport and concurrency"): a ``grpc.aio`` server runs
its event loop in ONE background thread. Each stream is two coroutines (reader, writer) with an
``asyncio.Queue`` of outbound frames; an idle session costs a few KB and no thread, so a server
holds thousands. The ``Server`` state machine stays in the main thread and sees only ``inbox``
events; its calls (``bind``/``send``/``broadcast``/``close``) are handed to the loop in order
(``intake.LoopCalls``: calls made while the loop is busy share one wake-up). A broadcast is
encoded once and its frames queued for every receiver (downlink chunks if it asked, else whole).

Nothing unjoined holds resources: a stream must send a valid ``join_in`` within
``distribute.join_deadline``; before it is bound, a message over ``PREJOIN_MAX_BYTES`` is refused
by its length, unread; unjoined streams have their own cap (at the cap a new one evicts the oldest
idle stream of the address holding the most: ``unjoined.py``), so they cannot take the slots
admitted clients need, and one flooding address cannot push other addresses' joins out; a new
connection whose address already holds as many connections with unjoined streams as clients have
yet to join, plus a few (``UnjoinedConnections``), closes that address's oldest unjoined stream if
it has waited ``GIVE_WAY_AFTER``, else it is refused after ``REFUSAL_HOLD``; the health service is
not counted against sessions (its Watch streams have their own cap, ``CappedHealth``). The largest
accepted message is derived from the model. Below our code gRPC enforces the connection-level
ceilings (streams per connection, header size, connections, idle connections, PING strikes:
``limits.server_options``); doc/reliability.md, "Transport ceilings", derives every value.
"""
import asyncio
import itertools
import logging
import os
import queue
import threading
import time
from typing import Dict, Optional, Union

import grpc

from federatedscope.core.communication import codec
from federatedscope.core.communication.flow import (DOWNLINK_CHUNK, DOWNLINK_CHUNKS_HEADER,
                                                    HEAVY_IN_INBOX, ServerInbox, chunk_frames,
                                                    whole_frame)
from federatedscope.core.communication.health import CappedHealth
from federatedscope.core.communication.intake import (CLOSE, Connection, LineBudget, LoopCalls,
                                                      StreamIntake)
from federatedscope.core.communication.join_proof import NONCE_BYTES, NONCE_HEADER
from federatedscope.core.communication.limits import (
    BAD_MESSAGES_PER_SESSION, BIG_MESSAGE, CONCURRENT_BIG_WRITES, CONNECTION_HEADROOM,
    GIVE_WAY_AFTER, MAX_HEALTH_WATCHES, REFUSAL_HOLD, STOP_DRAIN_MAX, UNARY_HEADROOM, TokenBucket,
    compression, derive_limits, grpc_options, probe_bind, server_options)
from federatedscope.core.communication.security import server_credentials
from federatedscope.core.message import Message, clip_text
from federatedscope.core.communication.transport import Disconnected
from federatedscope.core.communication.unjoined import (UnjoinedConnections, UnjoinedStreams,
                                                        peer_address)

logger = logging.getLogger("federatedscope")
BUSY = "server busy: too many sessions not yet joined; retry later"
SERVICE = "federatedscope.FLService"
JOIN_ANSWER_TIMEOUT = 60.0   # seconds; a delivered join_in normally gets bound or refused in ms
__all__ = ["GrpcServerTransport", "ServerInbox", "grpc_options", "compression"]


async def _write_all(context, frames) -> None:
    for frame in frames:
        await context.write(frame)


class GrpcServerTransport(StreamIntake):
    """Implements ``ServerComm`` for the ``Server`` worker; events go to ``inbox``.

    ``max_clients`` bounds admitted sessions (callers pass ~2 x the expected count);
    ``model_bytes`` (raw bytes of the global model's state) sets the largest accepted message to
    2 x model + 1 MiB; 0 keeps the configured ``grpc_max_receive_message_length``."""

    def __init__(self, cfg, inbox: "queue.Queue", max_clients: int = 64, model_bytes: int = 0):
        self.cfg = cfg
        self.inbox = inbox
        self.limits = derive_limits(cfg, max_clients, model_bytes)
        self.rejected = 0
        self.evicted = 0
        self.delivered = 0
        self._ids = itertools.count(1)
        self._conns: Dict[int, Connection] = {}
        self._by_client: Dict[int, Connection] = {}
        self._unjoined = UnjoinedStreams(self.limits.max_unjoined)
        self._addresses = UnjoinedConnections(self.limits.connections_per_address,
                                              self.limits.expected_clients, CONNECTION_HEADROOM)
        self._all_closed: Optional[asyncio.Event] = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-aio",
                                        daemon=True)
        self._thread.start()
        self._calls = LoopCalls(self._loop)
        self.address = f"{cfg.distribute.server_host}:{cfg.distribute.server_port}"
        try:
            self.port = self._run(self._setup(), timeout=30.0)
        except BaseException:
            self._halt_loop()
            raise

    # ------------------------------------------------------------ lifecycle
    def _run(self, coro, timeout: float):
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()     # the caller gave up: the coroutine must not run on, nor be left
            raise               # pending on the loop when it stops

    async def _setup(self) -> int:
        self._server = grpc.aio.server(
            options=server_options(self.cfg, self.limits), compression=compression(self.cfg),
            # all RPCs at once (streams and health checks); beyond, RESOURCE_EXHAUSTED unrun
            maximum_concurrent_rpcs=self.limits.max_sessions + MAX_HEALTH_WATCHES + UNARY_HEADROOM)
        # Raw bytes both ways: the codec parses requests (a malformed one is logged, not fatal in
        # gRPC's deserializer); a broadcast's encoded bytes are queued as they are.
        session = grpc.stream_stream_rpc_method_handler(self._session, request_deserializer=None,
                                                        response_serializer=None)
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {"Session": session}),))
        self.health = CappedHealth.serve(self._server)
        self._lines = LineBudget(self._loop)
        self._all_closed = asyncio.Event()
        self._all_closed.set()
        self._big_writes = asyncio.Semaphore(CONCURRENT_BIG_WRITES)
        self._heavy = asyncio.Semaphore(HEAVY_IN_INBOX)
        self._backlog = 0
        self._backlog_ok = asyncio.Event()
        self._backlog_ok.set()
        if isinstance(self.inbox, ServerInbox):
            self.inbox.on_heavy_taken = lambda: self._call(self._heavy.release)
        creds = server_credentials(self.cfg)
        probe_bind(self.cfg.distribute.server_host, int(self.cfg.distribute.server_port))
        try:
            port = (self._server.add_secure_port(self.address, creds) if creds
                    else self._server.add_insecure_port(self.address))
        except Exception:  # grpc raises RuntimeError("Failed to bind ...") on recent versions
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {self.address}: the port is in use (another server?) "
                          f"or the host is not an address of this machine; choose a free port "
                          f"with distribute.server_port (or fix distribute.server_host)")
        return port

    def start(self) -> None:
        self._run(self._start(), timeout=30.0)

    async def _start(self) -> None:
        await self._server.start()
        await self.health.serving(SERVICE)

    def stop(self, grace: float = 5.0) -> None:
        """Let queued messages (e.g. ``finish``) drain, then stop: sessions get ``grace``
        seconds, renewed while they keep ending (``STOP_DRAIN_MAX`` at most)."""
        if not self._loop.is_running():
            return
        try:
            self._run(self._stop(grace), timeout=STOP_DRAIN_MAX + grace + 15.0)
        except Exception as e:  # a stop that cannot complete must not hide the job's result
            logger.warning(f"gRPC server did not stop cleanly ({type(e).__name__}); exiting anyway")
        self._halt_loop()

    async def _stop(self, grace: float) -> None:
        # Callbacks queued before this coroutine (e.g. the final broadcast) have run: FIFO.
        for conn in list(self._conns.values()):
            conn.outbox.put_nowait(CLOSE)
        # Thousands of sessions ending promptly take longer than ``grace`` on a busy machine (148
        # of 3,550 were cut before they read ``finish``): wait while they keep ending.
        began = self._loop.time()
        while self._conns:
            open_before = len(self._conns)
            try:
                await asyncio.wait_for(self._all_closed.wait(), timeout=grace)
            except asyncio.TimeoutError:
                spent = self._loop.time() - began
                if len(self._conns) >= open_before or spent >= STOP_DRAIN_MAX:
                    logger.warning(f"{len(self._conns)} session(s) still open after {spent:.0f}s"
                                   f" (none ended in the last {grace:.0f}s, or "
                                   f"{STOP_DRAIN_MAX:.0f}s in all); closing")
                    break
        await self.health.enter_graceful_shutdown()
        await self._server.stop(1.0)

    def _halt_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10.0)

    # --------------------------------------------------------- ServerComm
    def _call(self, fn, *args) -> None:
        try:
            self._calls(fn, *args)
        except RuntimeError:  # loop already stopped: the job is over, nothing to deliver to
            logger.debug(f"transport stopped; {getattr(fn, '__name__', fn)} dropped")

    def bind(self, conn_id: int, client_id: int) -> None:
        self._call(self._bind, conn_id, client_id)

    def send(self, msg: Message) -> None:
        self.broadcast(msg, [msg.receiver])

    def broadcast(self, msg: Message, receivers) -> None:
        # One encoding, copied once, before returning (the caller's tensors may change): the
        # same frames go to every queue, cut into downlink chunks when larger than one
        frames = chunk_frames(codec.encode_parts(msg), DOWNLINK_CHUNK)
        self._call(self._enqueue, list(receivers), frames, msg.msg_type)

    def send_to_conn(self, conn_id: int, msg: Message) -> None:
        self._call(self._enqueue_conn, conn_id, codec.encode(msg))

    def close(self, conn_id: int) -> None:
        self._call(self._enqueue_conn, conn_id, CLOSE)

    def last_heard(self, conn_id: int) -> float:
        # From the Server's thread: a dict lookup and two fields, atomic under the GIL. A stream
        # whose upload waits for an inbox slot is heard now: it is we who do not read it.
        conn = self._conns.get(conn_id)
        if conn is None:
            return 0.0
        return time.monotonic() if conn.queued else conn.last_heard

    # ------------------------------------------------ loop-thread handlers
    def _bind(self, conn_id: int, client_id: int) -> None:
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        if conn.client_id is None:
            self._addresses.bound(conn.peer)
        conn.client_id = client_id
        self._unjoined.remove(conn)
        self._by_client[client_id] = conn

    def _enqueue(self, receivers, frames: list, msg_type: str) -> None:
        whole = frames[0] if len(frames) == 1 else None
        for cid in receivers:
            conn = self._by_client.get(cid)
            if conn is None:
                logger.debug(f"dropping {msg_type}: client #{cid} not connected")
                continue
            if whole is None and not conn.chunked_down:   # a client that did not ask for chunks
                whole = whole_frame(frames)
            conn.outbox.put_nowait(frames if conn.chunked_down and len(frames) > 1 else whole)

    def _enqueue_conn(self, conn_id: int, item) -> None:
        conn = self._conns.get(conn_id)
        if conn is not None:
            conn.outbox.put_nowait(item)

    # ---------------------------------------------------------- gRPC side
    def _open(self, peer: str) -> Union[Connection, str]:
        """Register a new stream, or say why it is refused (caps reached)."""
        peer = clip_text(peer, 80)
        over = self._addresses.refusal(peer, len(self._by_client))
        if over:
            # The address is at its ceiling: its own oldest idle stream gives way, so a client
            # behind the same address (a NAT, loopback) still gets in. Only a stream open
            # GIVE_WAY_AFTER without a join does (an honest join takes a round trip): a flooder
            # then makes the server replace at most ceiling / GIVE_WAY_AFTER streams a second.
            old = self._unjoined.oldest_idle(peer_address(peer))
            if old is None or self._loop.time() - old.opened < GIVE_WAY_AFTER:
                return over
            self._evict(old, f"{peer_address(peer)} is at its ceiling of connections not yet "
                             f"joined (distribute.grpc_max_connections_per_address), a newer one "
                             f"arrived")
        elif len(self._unjoined) >= self.limits.max_unjoined:
            old = self._unjoined.victim()
            if old is None:          # every unjoined slot holds a join the Server is deciding
                return BUSY
            self._evict(old, f"{self.limits.max_unjoined} unjoined sessions open, a newer one "
                             f"arrived (the oldest idle one of the address holding the most goes)")
        if len(self._conns) >= self.limits.max_sessions:
            return BUSY
        now = self._loop.time()
        conn = Connection(next(self._ids), peer, os.urandom(NONCE_BYTES),
                          TokenBucket(self.limits.heartbeat_burst, self.limits.heartbeat_rate, now),
                          opened=now)
        self._conns[conn.conn_id] = conn
        self._unjoined.add(conn)
        self._addresses.opened(conn.peer)
        self._all_closed.clear()
        return conn

    def _evict(self, old: Connection, why: str) -> None:
        self._unjoined.remove(old)
        self.evicted += 1
        self._lines.warn(old.peer, f"Closed unjoined session from {old.peer}: {why}")
        old.outbox.put_nowait(CLOSE)

    async def _session(self, _requests, context) -> None:   # read via context.read()
        conn = self._open(context.peer())
        if isinstance(conn, str):
            peer = clip_text(context.peer(), 80)
            self._lines.warn(peer, f"Refused a session from {peer}: {conn} ({len(self._conns)} "
                                   f"sessions open, cap {self.limits.max_sessions})")
            if conn is not BUSY:
                # over its address's ceiling: held before the answer, so a flooder that
                # reconnects at once costs the server a few refusals a second, not hundreds
                await asyncio.sleep(REFUSAL_HOLD)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, conn)
        # The nonce goes first, before the peer may send anything: its join must prove the token
        # for this very stream (join_proof.py); with it, the upload chunk and heartbeat interval.
        await context.send_initial_metadata(((NONCE_HEADER, conn.nonce.hex()),)
                                            + self.limits.announcement())
        conn.chunked_down = any(k == DOWNLINK_CHUNKS_HEADER and v == "1"
                                for k, v in (context.invocation_metadata() or ()))
        reader = asyncio.ensure_future(self._read(conn, context))
        deadline = self._loop.call_later(self.limits.join_deadline, self._check_deadline, conn)
        try:
            while True:
                item = await conn.outbox.get()
                if item is CLOSE:
                    break
                if isinstance(item, bytes) and len(item) < BIG_MESSAGE:
                    await context.write(item)
                    continue
                async with self._big_writes:
                    await self._backlog_ok.wait()    # checked per write, inside the slot
                    if not await self._timed_write(conn, context, item):
                        break
                item = None   # the last broadcast must not outlive its sending
        finally:
            deadline.cancel()
            reader.cancel()
            self._forget(conn)
        if conn.abort is not None:
            await context.abort(*conn.abort)

    async def _timed_write(self, conn: Connection, context, item) -> bool:
        """A peer that stops reading must not keep one of the few large-write slots: a whole
        message (bytes, or its downlink chunks) must be taken within the write timeout."""
        frames = item if isinstance(item, list) else [item]
        try:
            await asyncio.wait_for(_write_all(context, frames), self.limits.write_timeout)
            return True
        except asyncio.TimeoutError:
            who = f"client #{conn.client_id}" if conn.client_id is not None else conn.peer
            logger.warning(f"Closed the session of {who}: a {sum(map(len, frames))}-byte message "
                           f"was not taken within {self.limits.write_timeout:g}s (stalled reader)")
            conn.reason = "stopped reading"
            return False

    async def _read(self, conn: Connection, context) -> None:
        try:
            while True:
                # not ``async for`` over the requests: that iterator keeps the message it yielded
                # last alive while the stream idles (1 MiB chunks: +1.2 MB per client measured)
                data = await context.read()
                if data is grpc.aio.EOF:
                    break
                keep = await self._on_frame(conn, data)
                del data      # likewise: not held while this stream waits for its next message
                if not keep:
                    break
                if conn.bad >= BAD_MESSAGES_PER_SESSION:
                    who = f"client #{conn.client_id}" if conn.client_id is not None else conn.peer
                    logger.warning(f"Closed the session of {who}: {conn.bad} invalid or excess "
                                   f"messages (limit {BAD_MESSAGES_PER_SESSION} per session)")
                    conn.reason = "too many invalid messages"
                    conn.abuse = conn.client_id is not None
                    break
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as e:
            conn.reason = f"stream error: {e.code().name if hasattr(e, 'code') else e}"
        except Exception as e:  # never let one stream take the loop down
            conn.reason = f"reader failed: {clip_text(repr(e), 160)}"
        conn.outbox.put_nowait(CLOSE)

    def _check_deadline(self, conn: Connection, rechecked: bool = False) -> None:
        if conn.client_id is not None or conn.conn_id not in self._conns:
            return
        if conn.join_sent and not rechecked:
            # The Server is deciding (a join storm can queue joins for seconds); a join it
            # never answers must still not hold an unjoined slot for ever.
            self._loop.call_later(JOIN_ANSWER_TIMEOUT, self._check_deadline, conn, True)
            return
        self._unjoined.remove(conn)
        why = (f"its join_in was not answered within {JOIN_ANSWER_TIMEOUT:g}s" if conn.join_sent
               else f"no valid join_in within {self.limits.join_deadline:g}s "
                    f"(distribute.join_deadline)")
        logger.warning(f"Closed session from {conn.peer}: {why}")
        conn.reason = "no join_in before distribute.join_deadline"
        conn.outbox.put_nowait(CLOSE)

    def _forget(self, conn: Connection) -> None:
        self._conns.pop(conn.conn_id, None)
        self._unjoined.remove(conn)
        self._addresses.closed(conn.peer, was_bound=conn.client_id is not None)
        self._drop_assembly(conn)
        if conn.client_id is not None and self._by_client.get(conn.client_id) is conn:
            del self._by_client[conn.client_id]
        if conn.delivered:  # a stream the Server never heard of needs no event
            self.inbox.put(Disconnected(conn.conn_id, conn.reason, conn.abuse))
        if not self._conns:
            self._all_closed.set()

    # ------------------------------------------------------------- figures
    def session_counts(self) -> Dict[str, int]:
        """Open sessions by kind (read on the loop thread for a consistent view)."""
        async def counts():
            return {"open": len(self._conns), "bound": len(self._by_client),
                    "idle_unjoined": self._unjoined.idle, "joining": self._unjoined.joining}
        return self._run(counts(), timeout=10.0)

