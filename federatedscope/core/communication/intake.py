"""What comes in on a client stream, before the ``Server`` sees it: framing, limits, budget.

``StreamIntake`` is the reading half of ``GrpcServerTransport`` (a mixin; everything runs on the
transport's event-loop thread). A frame is a whole message or a chunk of one (``flow.py``); before
a stream is bound to an admitted client a message larger than a join is refused by its declared
length, unread; model-sized messages wait for an inbox slot before they are decoded; every
rejection is one bounded log line.
"""
import asyncio
import collections
import logging
import time
from typing import Optional

import grpc

from federatedscope.core.auxiliaries.line_window import LineWindow
from federatedscope.core.communication import codec
from federatedscope.core.communication.flow import (CHUNK_FIRST, CHUNK_MORE, GO,
                                                    INTERRUPTED_CHUNKS, NO_FIRST_CHUNK,
                                                    HeavyIncoming, Reassembly, ServerInbox,
                                                    chunk_total)
from federatedscope.core.communication.join_proof import NONCE_KEY
from federatedscope.core.communication.limits import (BIG_MESSAGE, LOG_INTERVAL,
                                                      LOG_LINES_PER_INTERVAL, MAX_BACKLOG,
                                                      STALL_SECONDS, TokenBucket)
from federatedscope.core.message import (HEARTBEAT, JOIN_IN, InvalidMessage, clip_text,
                                         validate_message)
from federatedscope.core.communication.transport import Incoming

logger = logging.getLogger("federatedscope")
CLOSE = object()   # queued to a stream's outbox: end the stream after what precedes it


class Connection:
    """One client stream; touched only on the event-loop thread."""

    def __init__(self, conn_id: int, peer: str, nonce: bytes = b"",
                 heartbeats: Optional[TokenBucket] = None, opened: float = 0.0):
        self.conn_id = conn_id
        self.opened = opened              # event-loop time the stream was registered
        self.peer = clip_text(peer, 80)
        self.nonce = nonce                # sent to the peer; its join must prove the token with it
        self.heartbeats = heartbeats      # rate limit of heartbeats on this session
        self.bad = 0                      # invalid / excess messages so far (closed at the limit)
        self.client_id: Optional[int] = None
        self.outbox: "asyncio.Queue" = asyncio.Queue()
        self.join_sent = False        # a valid join_in is with the Server, awaiting its answer
        self.delivered = False        # something reached the inbox: the Server must hear the end
        self.reason = "stream closed by client"
        self.abuse = False            # closed for abuse by a bound client (see ``Disconnected``)
        self.abort: Optional[tuple] = None   # (status code, details) to end the stream with
        self.assembly: Optional[Reassembly] = None   # a chunked message being received
        self.chunked_down = False     # the client asked for large messages in downlink chunks
        # time.monotonic() of the bound client's last frame: the Server's liveness reads it
        # (``last_heard``), so heartbeats need not cross to the Server's thread
        self.last_heard = 0.0
        # its upload waits for an inbox slot: the server, not the client, is not listening
        self.queued = False


class LoopCalls:
    """Calls from other threads, run on the loop's thread in the order they were made. A call
    made while an earlier one still waits for the loop rides on that one's wake-up: in a join
    storm the Server's thread answers joins faster than the busy loop comes round, and a wake-up
    per call (a pipe write here, a pipe read and an epoll return there) cost more than the call."""

    def __init__(self, loop) -> None:
        self.loop = loop
        self.calls: "collections.deque" = collections.deque()
        self.woken = False     # a wake-up is queued and has not started draining yet

    def __call__(self, fn, *args) -> None:
        self.calls.append((fn, args))
        # Read after the append: True means the drain has not begun, so it will see this call
        if not self.woken:
            self.woken = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:    # the loop is closed: nothing will ever drain
                # every later call must raise too (not queue silently behind a wake-up that
                # never comes), and what was queued can no longer run
                self.woken = False
                self.calls.clear()
                raise

    def _drain(self) -> None:
        self.woken = False     # before popping: a call appended from now on queues a wake-up
        while self.calls:
            fn, args = self.calls.popleft()
            try:
                fn(*args)
            except Exception:   # as the loop would for a lone callback: logged, the rest run
                logger.exception(f"transport call {getattr(fn, '__name__', fn)} failed")


class LineBudget(LineWindow):
    """Rejection lines: at most ``LOG_LINES_PER_INTERVAL`` per ``LOG_INTERVAL`` seconds, then one
    summary line with the count when the interval ends, so a flood costs a few lines, not one
    per message (a log is disk and CPU too). Runs on the transport's event loop."""

    def __init__(self, loop) -> None:
        super().__init__(loop.time())
        self.loop = loop
        self.suppressed = 0
        self.peers: set = set()
        self._flush_at = None

    def warn(self, peer: str, text: str) -> None:
        if self.admit(self.loop.time(), LOG_INTERVAL, LOG_LINES_PER_INTERVAL):
            logger.warning(text)
            return
        self.suppressed += 1
        if len(self.peers) < 1000:
            self.peers.add(peer)
        if self._flush_at is None:
            self._flush_at = self.loop.call_at(self.start + LOG_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if self.suppressed:
            logger.warning(f"Rejected {self.suppressed} more messages from {len(self.peers)} "
                           f"peer(s) in the last {LOG_INTERVAL:g}s (over {LOG_LINES_PER_INTERVAL} "
                           f"lines per {LOG_INTERVAL:g}s, not logged one by one)")
        self.suppressed = 0
        self.peers.clear()


class StreamIntake:
    """Reading half of the server transport (mixin: needs ``limits``, ``inbox``, ``_heavy``,
    ``_backlog``/``_backlog_ok``, ``_unjoined``, ``_loop``, counters)."""

    async def _on_frame(self, conn: Connection, data: bytes) -> bool:
        """One wire message: a whole frame, or a chunk of one. False: close the stream."""
        if conn.client_id is not None:
            conn.last_heard = time.monotonic()
        head = data[:len(CHUNK_FIRST)]
        if head == CHUNK_MORE:
            if conn.assembly is None:
                self._reject(conn, NO_FIRST_CHUNK)
                return True
            if len(data) - len(CHUNK_MORE) > self.limits.upload_chunk:
                self._drop_assembly(conn)
                self._reject(conn, f"continuation chunk of {len(data) - len(CHUNK_MORE)} bytes, "
                                   f"over the announced {self.limits.upload_chunk}")
                return True
            try:
                if not conn.assembly.add(memoryview(data)[len(CHUNK_MORE):]):
                    return True
            except InvalidMessage as e:
                self._drop_assembly(conn)
                self._reject(conn, str(e))
                return True
            done, conn.assembly = conn.assembly, None
            done.finish()
            return self._deliver_counted(conn, done.buf, done.heavy)
        if conn.assembly is not None:
            self._drop_assembly(conn)
            self._reject(conn, INTERRUPTED_CHUNKS)
        if head == CHUNK_FIRST:
            return await self._begin_chunks(conn, data)
        if self._refused_by_length(conn, len(data)):
            return False
        heavy = self._budgeted(conn, len(data))
        if heavy:
            await self._wait_heard(conn)
        return self._deliver_counted(conn, data, heavy)

    async def _begin_chunks(self, conn: Connection, data: bytes) -> bool:
        try:
            total = chunk_total(data)
        except InvalidMessage as e:
            self._reject(conn, str(e))
            return True
        if self._refused_by_length(conn, total):
            return False
        heavy = self._budgeted(conn, total)
        if heavy:   # before reading the rest: while we wait, flow control holds the sender
            await self._wait_heard(conn)
        try:
            conn.assembly = Reassembly(total, data, heavy)
        except InvalidMessage as e:
            if heavy:
                self._heavy.release()
            self._reject(conn, str(e))
            return True
        if conn.assembly.complete:
            whole, conn.assembly = conn.assembly.buf, None
            return self._deliver_counted(conn, whole, heavy)
        # Cancelled when the message completes: a pending timer would keep its buffer alive.
        self._arm_stall_check(conn, conn.assembly, self._loop.time())
        conn.outbox.put_nowait(GO)      # we read this stream now: the sender may go on
        return True

    def _arm_stall_check(self, conn: Connection, assembly: Reassembly, began: float) -> None:
        # A slot holder must make progress every STALL_SECONDS (a sender's chunks flow back to
        # back once it holds the slot), and finish within assembly_timeout overall.
        step = min(self.limits.assembly_timeout, STALL_SECONDS)
        assembly.timer = self._loop.call_later(step, self._check_assembly, conn, assembly,
                                               assembly.filled, began)

    def _check_assembly(self, conn: Connection, assembly: Reassembly, filled: int,
                        began: float) -> None:
        """A peer that stops mid-message must not hold an inbox slot: close its stream."""
        if conn.assembly is not assembly:
            return
        elapsed = self._loop.time() - began
        if assembly.filled > filled and elapsed < self.limits.assembly_timeout:
            self._arm_stall_check(conn, assembly, began)
            return
        self._drop_assembly(conn)
        self._reject(conn, f"chunked message stalled (no progress in "
                           f"{min(self.limits.assembly_timeout, STALL_SECONDS):g}s, or "
                           f"incomplete after {self.limits.assembly_timeout:g}s); "
                           f"closing the stream")
        conn.reason = "stalled in the middle of a message"
        conn.outbox.put_nowait(CLOSE)

    def _drop_assembly(self, conn: Connection) -> None:
        if conn.assembly is not None:
            conn.assembly.finish()
            if conn.assembly.heavy:
                self._heavy.release()
        conn.assembly = None

    def _budgeted(self, conn: Connection, size: int) -> bool:
        """Takes one of the few inbox slots. Never before the stream is bound: an unjoined
        message is at most ``prejoin_max`` bytes anyway, and strangers declaring exactly that
        cap must not park in the slots admitted clients' uploads need."""
        return (conn.client_id is not None and size >= BIG_MESSAGE
                and isinstance(self.inbox, ServerInbox))

    def _deliver_counted(self, conn: Connection, data, heavy: bool) -> bool:
        delivered = self.delivered
        keep = self._deliver(conn, data, heavy)
        if heavy and self.delivered == delivered:
            self._heavy.release()           # rejected: its slot goes back at once
        return keep

    def _refused_by_length(self, conn: Connection, size: int) -> bool:
        """Before the stream is bound, a message larger than a join is refused unread."""
        if conn.client_id is not None and size <= self.limits.max_receive:
            return False
        if conn.client_id is None and size <= self.limits.prejoin_max:
            return False
        limit = self.limits.prejoin_max if conn.client_id is None else self.limits.max_receive
        self._reject(conn, f"{size}-byte message refused unread (limit {limit} bytes"
                           f"{' until joined' if conn.client_id is None else ''})")
        conn.reason = "oversized message"
        conn.abuse = conn.client_id is not None   # a stranger has no id to cool off
        conn.abort = (grpc.StatusCode.RESOURCE_EXHAUSTED, "message too large")
        return True

    async def _wait_heard(self, conn: Connection) -> None:
        """An inbox slot for ``conn``'s upload. While it waits the server, not the client, is not
        listening (``last_heard`` reads it as heard), and it counts as heard when the wait ends."""
        conn.queued = True
        try:
            await self._wait_for_inbox_slot()
        finally:
            conn.queued = False
        conn.last_heard = time.monotonic()

    async def _wait_for_inbox_slot(self) -> None:
        self._backlog += 1
        if self._backlog >= MAX_BACKLOG:
            self._backlog_ok.clear()
        try:
            await self._heavy.acquire()
        finally:
            self._backlog -= 1
            if self._backlog < MAX_BACKLOG:
                self._backlog_ok.set()

    def _reject(self, conn: Connection, why: str) -> None:
        self.rejected += 1
        conn.bad += 1
        self._lines.warn(conn.peer, f"Rejected message from {conn.peer}: {clip_text(why, 300)}")

    def _deliver(self, conn: Connection, data: bytes, heavy: bool) -> bool:
        """Decode, check, hand to the Server. False: the stream must be closed."""
        if conn.client_id is None and conn.join_sent:
            self._reject(conn, "message before the server answered this stream's join_in")
            return True
        try:
            msg = codec.decode(data)
            validate_message(msg, from_server=False)
            if conn.client_id is None and msg.msg_type != JOIN_IN:
                raise InvalidMessage(f"{clip_text(msg.msg_type, 60)} before join_in")
            if conn.client_id is not None and msg.sender != conn.client_id:
                raise InvalidMessage(f"connection of client #{conn.client_id} sent as "
                                     f"#{msg.sender}")
        except InvalidMessage as e:
            self._reject(conn, str(e))
            return True
        if (msg.msg_type == HEARTBEAT and conn.heartbeats is not None
                and not conn.heartbeats.take(self._loop.time())):
            self._reject(conn, "heartbeats faster than distribute.heartbeat_interval allows")
            return True
        if conn.client_id is not None:
            if msg.msg_type == HEARTBEAT:
                # Liveness is all a heartbeat carries, and ``_on_frame`` recorded it: thousands
                # of idle sessions beating cost the Server's thread nothing.
                return True
        else:
            msg.content[NONCE_KEY] = conn.nonce.hex()   # the nonce THIS stream was sent
            conn.join_sent = True
            self._unjoined.joined_in(conn)
        conn.delivered = True
        self.delivered += 1
        self.inbox.put((HeavyIncoming if heavy else Incoming)(conn.conn_id, msg, conn.peer))
        return True

