"""``Worker``: the base Client and Server share, FS's handler registry.

What a worker needs from a transport (``ServerComm``/``ClientComm``) and the events a transport
delivers (``Incoming``/``Disconnected``) live in ``core/communication/transport.py``.
"""
from typing import Callable, Dict, Tuple

from federatedscope.core.message import Message, register_message_type


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
    # (msg_type, name of the FS-named callback method): registered at construction
    default_handlers: Tuple[Tuple[str, str], ...] = ()

    def __init__(self, ID: int = -1, config=None, comm=None):
        self.ID = ID
        self.cfg = config        # FS's ``_cfg``: the frozen run config
        self.comm = comm         # the transport's ServerComm / ClientComm
        self.msg_handlers: Dict[str, Callable[[Message], None]] = {}
        self._register_default_handlers()

    @property
    def _cfg(self):
        """FS's name for the config: FS subclasses read ``self._cfg``."""
        return self.cfg

    def _register_default_handlers(self) -> None:
        # looked up on the instance, so a subclass's override of the method is what runs
        for msg_type, method in self.default_handlers:
            self.register_handlers(msg_type, getattr(self, method))

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
