"""The wire codec: ``Message`` <-> protobuf ``Envelope`` bytes.

Tensors are raw bytes + dtype + shape (one memcpy each way, no per-element work, no pickle).
Small structured content is JSON. Decoding validates sizes and dtypes against an allow-list before
anything is allocated, because the bytes come from the network.
"""
import json
import math
from typing import Dict, Optional

import numpy as np
import torch

from federatedscope.core.communication.proto import fl_pb2
from federatedscope.core.message import InvalidMessage, Message

# Only plain numeric dtypes travel; anything else is refused on both ends.
_DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
MAX_DIMS = 8
MAX_CONTENT_BYTES = 1 << 20
MAX_TENSORS = 4096


def tensor_to_proto(name: str, t: torch.Tensor) -> fl_pb2.TensorProto:
    t = t.detach()
    if t.dtype not in _NAMES:
        raise TypeError(f"tensor {name!r}: dtype {t.dtype} cannot travel on the wire")
    arr = t.cpu().contiguous().numpy()
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return fl_pb2.TensorProto(name=name, dtype=_NAMES[t.dtype], shape=list(t.shape),
                              data=arr.tobytes())


def tensor_from_proto(tp: fl_pb2.TensorProto) -> torch.Tensor:
    dtype = _DTYPES.get(tp.dtype)
    if dtype is None:
        raise InvalidMessage(f"tensor {tp.name!r}: dtype {tp.dtype!r} not allowed")
    if len(tp.shape) > MAX_DIMS or any(d < 0 for d in tp.shape):
        raise InvalidMessage(f"tensor {tp.name!r}: bad shape {list(tp.shape)}")
    numel = math.prod(tp.shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if numel * itemsize != len(tp.data):
        raise InvalidMessage(f"tensor {tp.name!r}: shape {list(tp.shape)} x {tp.dtype} needs "
                             f"{numel * itemsize} bytes, got {len(tp.data)}")
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype.newbyteorder("<")
    arr = np.frombuffer(tp.data, dtype=np_dtype).reshape(tuple(tp.shape))
    return torch.from_numpy(arr.copy())  # copy: the proto's buffer is read-only


def to_envelope(msg: Message) -> fl_pb2.Envelope:
    env = fl_pb2.Envelope(msg_type=msg.msg_type, sender=msg.sender, receiver=msg.receiver,
                          state=msg.state, timestamp=float(msg.timestamp),
                          content_json=json.dumps(msg.content, separators=(",", ":"))
                          if msg.content else "")
    if msg.tensors:
        env.tensors.extend(tensor_to_proto(k, v) for k, v in msg.tensors.items())
    return env


def from_envelope(env: fl_pb2.Envelope) -> Message:
    if len(env.content_json) > MAX_CONTENT_BYTES:
        raise InvalidMessage(f"content of {len(env.content_json)} bytes exceeds {MAX_CONTENT_BYTES}")
    if len(env.tensors) > MAX_TENSORS:
        raise InvalidMessage(f"{len(env.tensors)} tensors exceeds {MAX_TENSORS}")
    try:
        content = json.loads(env.content_json) if env.content_json else {}
    except ValueError as e:
        raise InvalidMessage(f"content is not JSON: {e}") from None
    tensors: Optional[Dict[str, torch.Tensor]] = None
    if len(env.tensors):
        tensors = {}
        for tp in env.tensors:
            if tp.name in tensors:
                raise InvalidMessage(f"tensor {tp.name!r} appears twice")
            tensors[tp.name] = tensor_from_proto(tp)
    return Message(msg_type=env.msg_type, sender=int(env.sender), receiver=int(env.receiver),
                   state=int(env.state), content=content, tensors=tensors,
                   timestamp=float(env.timestamp))


def encode(msg: Message) -> bytes:
    return to_envelope(msg).SerializeToString()


def decode(data: bytes) -> Message:
    env = fl_pb2.Envelope()
    try:
        env.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError; treat any parse failure alike
        raise InvalidMessage(f"not a valid Envelope: {e}") from None
    return from_envelope(env)


def raw_tensor_bytes(tensors: Dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
