"""What workers need from a transport, and the events a transport delivers.

Workers (``Server``, ``Client``) hold the FL logic and never see gRPC. A transport (gRPC in
``grpc_server.py``/``grpc_client.py``, in-process in ``local.py``) delivers ``Incoming`` /
``Disconnected`` events into the worker's inbox and offers the ``ServerComm`` / ``ClientComm``
calls below, so the same worker code runs over either. This module is the contract between the
two sides: transports import it, never the workers.
"""
from dataclasses import dataclass
from typing import List, Protocol

from federatedscope.core.message import Message


@dataclass
class Incoming:
    conn_id: int          # transport-level connection (a client's stream)
    msg: Message
    peer: str = ""        # where the connection comes from (for the audit trail in logs)


@dataclass
class Disconnected:
    conn_id: int
    reason: str
    # The transport closed an admitted client's session for abuse (invalid or excess messages, a
    # message over the size limit): the server cools that id off. False for a network drop, a
    # stalled peer or the client's own close: those never cost an honest client its re-join.
    abuse: bool = False


class ServerComm(Protocol):
    def bind(self, conn_id: int, client_id: int) -> None:
        """From now on messages to ``client_id`` go to ``conn_id`` and it may only send as it."""

    def send(self, msg: Message) -> None:
        """Deliver to ``msg.receiver`` (a bound client id)."""

    def broadcast(self, msg: Message, receivers: List[int]) -> None:
        """Deliver the same message to several clients. Its tensors may be the server's live
        model: encode (or copy) them before returning, once for all receivers."""

    def send_to_conn(self, conn_id: int, msg: Message) -> None:
        """Reply on a connection that is not bound (e.g. a refusal)."""

    def close(self, conn_id: int) -> None:
        """End the connection after what was queued for it has been sent."""

    def last_heard(self, conn_id: int) -> float:
        """``time.monotonic()`` when the transport last took a valid message from the client
        bound to ``conn_id`` (0.0: unknown). A transport may keep heartbeats to itself, since
        liveness is all they carry: the server asks here before it calls a client silent."""


class ClientComm(Protocol):
    def send(self, msg: Message) -> None:
        """Deliver to the server."""
