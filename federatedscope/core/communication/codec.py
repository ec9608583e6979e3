"""The wire codec: ``Message`` <-> bytes (a protobuf ``Envelope`` header + raw tensor payload).

Tensors are raw bytes + dtype + shape (one memcpy each way, no per-element work, no pickle).
Small structured content is JSON. Decoding validates sizes and dtypes against an allow-list before
anything is allocated, because the bytes come from the network.
"""
import json
import math
from typing import Dict, List, Optional

import numpy as np
import torch

from federatedscope.core.communication.proto import fl_pb2
from federatedscope.core.message import InvalidMessage, Message, clip_text

# Only plain numeric dtypes travel; anything else is refused on both ends.
_DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
# Each wire dtype as numpy reads it (little-endian, as the wire is). A table, not a lookup per
# tensor: building a tensor to ask its element size cost a decode ~15 us per tensor, which
# was most of a small model's decode (18 tensors) and of the server's time per upload.
_NUMPY: Dict[str, np.dtype] = {name: torch.empty((), dtype=dt).numpy().dtype.newbyteorder("<")
                               for name, dt in _DTYPES.items()}
MAX_DIMS = 8
MAX_CONTENT_BYTES = 1 << 20
MAX_TENSORS = 4096
# numpy refuses a shape whose non-zero dims times the item size pass intp bytes; with a 0 elsewhere
# in the shape numel is 0 and the byte check passes, so this bound (in bytes, the zero dims counted
# as 1) is what keeps numpy from being the one to fail.
MAX_EXTENT = 1 << 62


# Frame: MAGIC | uint32 little-endian header length | Envelope header | tensor payload.
# The header is the protobuf Envelope with every TensorProto.data left empty; the tensors' raw
# bytes follow it back to back, in header order. Putting the bytes inside protobuf ``bytes`` fields
# costs three extra copies in the protobuf runtime (measured ~2.5 ms/MB); framing them costs one.
MAGIC = b"FSW1"
_PREFIX = len(MAGIC) + 4


def _header(msg: Message) -> "tuple[fl_pb2.Envelope, list]":
    env = fl_pb2.Envelope(msg_type=msg.msg_type, sender=msg.sender, receiver=msg.receiver,
                          state=msg.state, timestamp=float(msg.timestamp),
                          content_json=json.dumps(msg.content, separators=(",", ":"))
                          if msg.content else "")
    payload = []
    for name, t in (msg.tensors or {}).items():
        t = t.detach()
        if t.dtype not in _NAMES:
            raise TypeError(f"tensor {name!r}: dtype {t.dtype} cannot travel on the wire")
        tp = env.tensors.add()
        tp.name, tp.dtype = name, _NAMES[t.dtype]
        tp.shape.extend(t.shape)
        # torch holds tensors in host byte order only (``.numpy()`` is native, ``from_numpy``
        # refuses anything else), and the host is little-endian like the wire: the C-contiguous
        # array's buffer is the payload as it is, joined by ``encode`` in its one copy.
        payload.append(t.cpu().contiguous().numpy())
    return env, payload


def encode_parts(msg: Message) -> List[memoryview]:
    """The frame as byte views in order, not yet joined (the tensors' own memory): a sender that
    cuts the frame into chunks (``flow.chunk_frames``) copies each byte once, not twice."""
    env, payload = _header(msg)
    head = env.SerializeToString()
    return [memoryview(b) for b in (MAGIC, len(head).to_bytes(4, "little"), head)] + \
        [memoryview(a.reshape(-1).view(np.uint8)) for a in payload]


def encode(msg: Message) -> bytes:
    return b"".join(encode_parts(msg))


def _said(e: Exception) -> str:
    """What a parser said about a hostile frame, bounded for one log line."""
    return clip_text(str(e), 120)


def _tensor_at(tp: fl_pb2.TensorProto, data: bytes, offset: int) -> "tuple[torch.Tensor, int]":
    name = clip_text(tp.name, 80)
    np_dtype = _NUMPY.get(tp.dtype)
    if np_dtype is None:
        raise InvalidMessage(f"tensor {name}: dtype {clip_text(tp.dtype, 40)} not allowed")
    shape = list(tp.shape)
    itemsize = np_dtype.itemsize
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape) \
            or math.prod(max(d, 1) for d in shape) * itemsize > MAX_EXTENT:
        raise InvalidMessage(f"tensor {name}: bad shape {clip_text(shape, 120)}")
    if tp.data:
        raise InvalidMessage(f"tensor {name}: inline data is not part of the frame format")
    # Python ints: the product is exact and nothing is allocated before the byte check.
    numel = math.prod(shape)
    size = numel * itemsize
    if offset + size > len(data):
        raise InvalidMessage(f"tensor {name}: shape {shape} x {tp.dtype} needs "
                             f"{size} bytes, only {len(data) - offset} left in the message")
    arr = np.frombuffer(data, dtype=np_dtype, count=numel, offset=offset).reshape(tuple(shape))
    if arr.flags.writeable and arr.flags.aligned:
        # A reassembled upload (a bytearray nobody else holds, laid out by ``flow.Reassembly`` so
        # the payload is aligned): the tensors share it, saving a model-sized copy per upload.
        return torch.from_numpy(arr), offset + size
    return torch.from_numpy(arr.copy()), offset + size  # gRPC's bytes are read-only


def payload_offset(start) -> Optional[int]:
    """Where the tensor payload begins in a frame whose first bytes are ``start`` (None: not
    a frame, or too short to say); lets a receive buffer be placed so the tensors are aligned."""
    if len(start) < _PREFIX or bytes(start[:len(MAGIC)]) != MAGIC:
        return None
    return _PREFIX + int.from_bytes(start[len(MAGIC):_PREFIX], "little")


def decode(data: bytes) -> Message:
    """Bytes (or a writable buffer from chunk reassembly, which the tensors then share) from the
    network -> ``Message``. Any failure at all is an ``InvalidMessage`` with a bounded text: a
    hostile frame must cost one log line, never an exception that escapes."""
    try:
        return _decode(data)
    except InvalidMessage:
        raise
    except RecursionError:
        raise InvalidMessage("content JSON nests too deeply") from None
    except MemoryError:
        raise InvalidMessage("message does not fit in memory") from None
    except Exception as e:  # numpy ValueError/OverflowError, UnicodeDecodeError, protobuf, ...
        raise InvalidMessage(f"undecodable message ({type(e).__name__}: "
                             f"{_said(e)})") from None


def _decode(data: bytes) -> Message:
    if len(data) < _PREFIX or data[:len(MAGIC)] != MAGIC:
        raise InvalidMessage("not a framed message (bad magic)")
    head_len = int.from_bytes(data[len(MAGIC):_PREFIX], "little")
    if head_len > len(data) - _PREFIX or head_len > MAX_CONTENT_BYTES + 64 * MAX_TENSORS:
        raise InvalidMessage(f"header length {head_len} does not fit the message")
    env = fl_pb2.Envelope()
    try:
        env.ParseFromString(bytes(data[_PREFIX:_PREFIX + head_len]))
    except Exception as e:  # protobuf raises DecodeError; treat any parse failure alike
        raise InvalidMessage(f"not a valid Envelope header: {_said(e)}") from None
    if len(env.content_json) > MAX_CONTENT_BYTES:
        raise InvalidMessage(f"content of {len(env.content_json)} bytes exceeds {MAX_CONTENT_BYTES}")
    if len(env.tensors) > MAX_TENSORS:
        raise InvalidMessage(f"{len(env.tensors)} tensors exceeds {MAX_TENSORS}")
    try:
        content = json.loads(env.content_json) if env.content_json else {}
    except ValueError as e:
        raise InvalidMessage(f"content is not JSON: {_said(e)}") from None
    tensors: Optional[Dict[str, torch.Tensor]] = None
    offset = _PREFIX + head_len
    if len(env.tensors):
        tensors = {}
        for tp in env.tensors:
            if tp.name in tensors:
                raise InvalidMessage(f"tensor {clip_text(tp.name, 80)} appears twice")
            tensors[tp.name], offset = _tensor_at(tp, data, offset)
    if offset != len(data):
        raise InvalidMessage(f"{len(data) - offset} trailing bytes after the last tensor")
    return Message(msg_type=env.msg_type, sender=int(env.sender), receiver=int(env.receiver),
                   state=int(env.state), content=content, tensors=tensors,
                   timestamp=float(env.timestamp))


def raw_tensor_bytes(tensors: Dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
