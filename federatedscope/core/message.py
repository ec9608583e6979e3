"""The records workers exchange, independent of transport.

A ``Message`` is what FS workers send: type, sender, receiver, round (``state``), a small JSON-able
``content`` dict and, for model messages, an ordered ``tensors`` dict (a state_dict). The codec
(``communication/codec.py``) turns it into bytes; ``validate_message`` checks what arrived before any
handler sees it, because everything from the network is untrusted.
"""
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

SERVER_ID = 0
UNASSIGNED = -1
BROADCAST = -2     # receiver of a message the transport delivers to several clients

# msg_type -> (who may send it, content keys required: type)
JOIN_IN = "join_in"
ASSIGN_ID = "assign_client_id"
MODEL_PARA = "model_para"
EVALUATE = "evaluate"
METRICS = "metrics"
FINISH = "finish"
HEARTBEAT = "heartbeat"
REFUSE = "refuse"
REDECLARE = "redeclare"

_SCHEMA: Dict[str, Dict[str, Any]] = {
    JOIN_IN: {"from": "client", "content": {"client_id": int}},
    ASSIGN_ID: {"from": "server", "content": {"client_id": int}},
    MODEL_PARA: {"from": "any", "content": {}},
    EVALUATE: {"from": "server", "content": {}},
    METRICS: {"from": "client", "content": {"results": dict}},
    FINISH: {"from": "server", "content": {}},
    HEARTBEAT: {"from": "client", "content": {}},
    REFUSE: {"from": "server", "content": {"reason": str}},
    REDECLARE: {"from": "client", "content": {"declaration": dict}},
}


def register_message_type(msg_type: str, sender: str = "client",
                          content: Optional[Dict[str, type]] = None) -> None:
    """Let a custom ``msg_type`` through validation (FS users add message types with
    ``register_handlers``); ``sender`` is "client", "server" or "any"."""
    if sender not in ("client", "server", "any"):
        raise ValueError(f"sender must be client, server or any, not {sender!r}")
    if msg_type in _SCHEMA:
        return
    _SCHEMA[msg_type] = {"from": sender, "content": dict(content or {})}


def clip_text(value: Any, limit: int = 200) -> str:
    """A peer-supplied value made safe for a log line or a reply: printable, at most ``limit``
    characters (an attacker must not be able to write megabytes into our logs)."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\n", "\\n")
    return text if len(text) <= limit else f"{text[:limit]}...[{len(text)} chars]"


class InvalidMessage(ValueError):
    """A message that fails validation; it is logged and dropped, never handled."""


@dataclass
class Message:
    msg_type: str
    sender: int
    receiver: int
    state: int = 0
    content: Dict[str, Any] = field(default_factory=dict)
    tensors: Optional[Dict[str, torch.Tensor]] = None
    timestamp: float = field(default_factory=time.time)

    def __repr__(self) -> str:  # never dump tensors into logs
        n = len(self.tensors) if self.tensors else 0
        return (f"Message({self.msg_type}, {self.sender}->{self.receiver}, round={self.state}, "
                f"keys={sorted(self.content)}, tensors={n})")


def validate_message(msg: Message, from_server: bool) -> None:
    """Type-check a decoded message; raise ``InvalidMessage`` naming what is wrong."""
    schema = _SCHEMA.get(msg.msg_type)
    if schema is None:
        raise InvalidMessage(f"unknown msg_type {msg.msg_type!r}")
    if schema["from"] == "server" and not from_server:
        raise InvalidMessage(f"{msg.msg_type} may only come from the server")
    if schema["from"] == "client" and from_server:
        raise InvalidMessage(f"{msg.msg_type} may only come from a client")
    # bool is an int subclass: a JSON ``true`` must not pass as round 1
    if not isinstance(msg.state, int) or isinstance(msg.state, bool) or msg.state < 0 \
            or msg.state > 10 ** 9:
        raise InvalidMessage(f"round {msg.state!r} out of range")
    if not isinstance(msg.timestamp, float) or not math.isfinite(msg.timestamp):
        raise InvalidMessage("timestamp is not a finite number")
    if not isinstance(msg.content, dict):
        raise InvalidMessage("content is not an object")
    for key, typ in schema["content"].items():
        if not isinstance(msg.content.get(key), typ) or isinstance(msg.content.get(key), bool):
            raise InvalidMessage(f"{msg.msg_type}: content field {key!r} must be {typ.__name__}")
    if msg.msg_type == METRICS:
        # Shape only: the *values* (NaN, out-of-range accuracies, totals) are judged by the server,
        # which knows the client and can count the refusal instead of waiting for an answer.
        results = msg.content["results"]
        if len(results) > 256:
            raise InvalidMessage(f"metrics: {len(results)} entries")
        for k, v in results.items():
            if not isinstance(k, str) or not isinstance(v, (int, float)) or isinstance(v, bool):
                raise InvalidMessage(f"metrics: {clip_text(k, 40)} is not a number")
    if msg.msg_type == MODEL_PARA and not from_server:
        size = msg.content.get("sample_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidMessage("model_para from a client needs a non-negative int sample_size")
        if not msg.tensors:
            raise InvalidMessage("model_para carries no tensors")
