"""The in-process transport: a standalone run's 'network', beside gRPC.

Like Flower's in-memory grid, the workers make the same calls as over gRPC (``ServerComm``:
``bind``/``send``/``broadcast``/``send_to_conn``/``close``; ``ClientComm``: ``send``); only the
delivery differs: every message goes into one FIFO (``LocalBus``) that the standalone runner
drains. In a standalone run a client's connection id is its client id.

This module knows messages, not workers: an entry is ``(destination, sender_conn, message)`` and
the runner hands server-bound ones to the server as it would a transport's.
"""
import collections
from typing import Deque, Iterable, Tuple

from federatedscope.core.message import SERVER_ID, Message

Envelope = Tuple[int, int, Message]     # (destination id, sender's connection id, message)


class LocalBus:
    """One FIFO of envelopes; ``SERVER_ID`` is the server's destination."""

    def __init__(self) -> None:
        self.queue: Deque[Envelope] = collections.deque()

    def post(self, dest: int, conn_id: int, msg: Message) -> None:
        self.queue.append((dest, conn_id, msg))

    def __bool__(self) -> bool:
        return bool(self.queue)

    def next(self) -> Envelope:
        return self.queue.popleft()


class LocalServerComm:
    def __init__(self, bus: LocalBus):
        self.bus = bus

    def bind(self, conn_id: int, client_id: int) -> None:
        pass  # conn_id == client_id in standalone

    def send(self, msg: Message) -> None:
        self.bus.post(msg.receiver, SERVER_ID, msg)

    def broadcast(self, msg: Message, receivers: Iterable[int]) -> None:
        # The tensors are the server's live model; a queued message must keep this round's values.
        if msg.tensors:
            msg.tensors = {k: v.detach().clone() for k, v in msg.tensors.items()}
        for cid in receivers:
            self.bus.post(cid, SERVER_ID, msg)

    def send_to_conn(self, conn_id: int, msg: Message) -> None:
        self.bus.post(conn_id, SERVER_ID, msg)

    def close(self, conn_id: int) -> None:
        pass

    def last_heard(self, conn_id: int) -> float:
        return 0.0   # every message reaches the server: its own record is the whole story


class LocalClientComm:
    def __init__(self, bus: LocalBus, client_id: int):
        self.bus, self.client_id = bus, client_id

    def send(self, msg: Message) -> None:
        self.bus.post(SERVER_ID, self.client_id, msg)
