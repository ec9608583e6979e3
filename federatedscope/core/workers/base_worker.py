"""What workers need from a transport, and the events a transport delivers.

Workers (``Server``, ``Client``) hold the FL logic and never see gRPC. A transport delivers
``Incoming``/``Disconnected`` events into the worker's inbox and offers the ``ServerComm`` /
``ClientComm`` calls below. The standalone runner implements the same calls with an in-process
queue, so the same worker code runs in both modes. ``Worker`` is the base both share: FS's
handler registry.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Protocol

from federatedscope.core.message import Message, register_message_type


@dataclass
class Incoming:
    conn_id: int          # transport-level connection (a client's stream)
    msg: Message
    peer: str = ""        # where the connection comes from (for the audit trail in logs)


@dataclass
class Disconnected:
    conn_id: int
    reason: str


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


class ClientComm(Protocol):
    def send(self, msg: Message) -> None:
        """Deliver to the server."""


class Worker:
    """FS's ``BaseWorker``: an ID and the handler registry both Client and Server dispatch through.

    ``register_handlers(msg_type, callback_func)`` maps a message type to a callable taking the
    ``Message`` (a later registration replaces an earlier one); ``msg_handlers`` is FS's dict.
    The defaults are registered as *bound methods looked up on the instance*
    (``self.callback_funcs_model_para``), so a subclass that overrides a ``callback_funcs_*``
    method replaces the default handler without registering anything itself, as in FS.
    A new type is also let through the transport's validation (``register_message_type``), as
    sent by ``peer_role`` (the role this worker receives from).
    """
    peer_role = "any"

    def __init__(self, ID: int = -1):
        self.ID = ID
        self.msg_handlers: Dict[str, Callable[[Message], None]] = {}
        self._register_default_handlers()

    def _register_default_handlers(self) -> None:
        """Subclasses register their FS-named callbacks here."""

    def register_handlers(self, msg_type: str, callback_func: Callable[[Message], None]) -> None:
        register_message_type(msg_type, sender=self.peer_role)
        self.msg_handlers[msg_type] = callback_func

    def dispatch(self, msg: Message) -> bool:
        """Run the handler of ``msg.msg_type``; False when none is registered (the caller logs)."""
        handler = self.msg_handlers.get(msg.msg_type)
        if handler is None:
            return False
        handler(msg)
        return True
