"""Property tests of the wire codec: every allowed dtype and shape survives a round trip bit for
bit at its own width, and frames that name a tensor twice are refused."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from federatedscope.core.communication import codec
from federatedscope.core.communication.proto import fl_pb2
from federatedscope.core.message import MODEL_PARA, InvalidMessage, Message

# The allow-list as the docs state it, written out (not read from codec) so a changed mapping
# shows up here: dtype name on the wire -> torch dtype -> bytes per element.
WIRE = {"float32": (torch.float32, 4), "float64": (torch.float64, 8), "float16": (torch.float16, 2),
        "int64": (torch.int64, 8), "int32": (torch.int32, 4), "int16": (torch.int16, 2),
        "int8": (torch.int8, 1), "uint8": (torch.uint8, 1), "bool": (torch.bool, 1)}
NP = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "int64": np.int64,
      "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


def _random_tensor(name: str, shape, seed: int) -> torch.Tensor:
    """Arbitrary bit patterns of the dtype (NaN payloads, extremes, subnormals included)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape)) if shape else 1
    if name == "bool":
        arr = rng.integers(0, 2, size=n).astype(np.bool_)
    else:
        arr = np.frombuffer(rng.bytes(n * np.dtype(NP[name]).itemsize), dtype=NP[name]).copy()
    return torch.from_numpy(arr.reshape(shape))


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().tobytes()


def _msg(tensors) -> Message:
    return Message(MODEL_PARA, 3, 0, 2, {"sample_size": 1}, tensors)


shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4)
one_tensor = st.tuples(st.sampled_from(sorted(WIRE)), shapes, st.integers(0, 2 ** 32 - 1))


@given(st.lists(one_tensor, min_size=1, max_size=6))
def test_every_allowed_dtype_and_shape_round_trips_bit_exact(specs):
    tensors = {f"t{i}.{name}": _random_tensor(name, shape, seed)
               for i, (name, shape, seed) in enumerate(specs)}
    wire = codec.encode(_msg(tensors))
    back = codec.decode(wire)
    assert list(back.tensors) == list(tensors)           # names and their order
    for k, t in tensors.items():
        b = back.tensors[k]
        assert b.dtype == t.dtype and tuple(b.shape) == tuple(t.shape), k
        assert _bits(b) == _bits(t), k                   # NaN payloads too: bytes, not values
    payload = sum(t.numel() * WIRE[k.split(".")[1]][1] for k, t in tensors.items())
    assert codec.raw_tensor_bytes(back.tensors) == payload
    assert len(wire) > payload


@pytest.mark.parametrize("name", sorted(WIRE))
def test_each_dtype_keeps_its_width_on_the_wire(name):
    dtype, width = WIRE[name]
    if name == "bool":
        t = torch.tensor([True, False, True])
    elif dtype.is_floating_point:
        fi = torch.finfo(dtype)
        t = torch.tensor([fi.max, fi.min, fi.tiny, -0.0], dtype=dtype)
    else:
        ii = torch.iinfo(dtype)        # the extremes overflow any narrower type
        t = torch.tensor([ii.max, ii.min, 0, 1], dtype=dtype)
    wire = codec.encode(_msg({"x": t}))
    empty = codec.encode(_msg({"x": t[:0]}))
    assert len(wire) - len(empty) == t.numel() * width          # exactly width bytes each
    env = fl_pb2.Envelope()
    head_len = int.from_bytes(wire[4:8], "little")
    env.ParseFromString(wire[8:8 + head_len])
    assert env.tensors[0].dtype == name                        # the name on the wire
    back = codec.decode(wire).tensors["x"]
    assert back.dtype == dtype and torch.equal(back, t)


def _frame(env, payload: bytes) -> bytes:
    head = env.SerializeToString()
    return codec.MAGIC + len(head).to_bytes(4, "little") + head + payload


def test_a_tensor_name_given_twice_is_refused():
    env = fl_pb2.Envelope(msg_type=MODEL_PARA, content_json='{"sample_size":1}')
    env.tensors.add(name="w", dtype="float32", shape=[1])
    env.tensors.add(name="w", dtype="float32", shape=[1])      # the second would replace the first
    with pytest.raises(InvalidMessage, match="appears twice"):
        codec.decode(_frame(env, np.array([1.0, 2.0], dtype="<f4").tobytes()))
    env.tensors[1].name = "v"                                  # control: distinct names decode
    back = codec.decode(_frame(env, np.array([1.0, 2.0], dtype="<f4").tobytes()))
    assert back.tensors["w"].tolist() == [1.0] and back.tensors["v"].tolist() == [2.0]


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bfloat16, torch.uint16])
def test_dtypes_outside_the_list_are_refused_on_encode(dtype):
    with pytest.raises(TypeError, match="cannot travel"):
        codec.encode(_msg({"x": torch.zeros(2, dtype=dtype)}))


# ------------------------------------------------------------------ limits, exactly at the edge
def _decode_env(env, payload=b""):
    return codec.decode(_frame(env, payload))


def test_dims_up_to_the_limit_travel_and_one_more_is_refused():
    t = torch.ones([1] * codec.MAX_DIMS)                       # 8 dims: allowed
    assert codec.decode(codec.encode(_msg({"x": t}))).tensors["x"].shape == t.shape
    env = fl_pb2.Envelope(msg_type=MODEL_PARA)
    env.tensors.add(name="x", dtype="float32", shape=[1] * (codec.MAX_DIMS + 1))
    with pytest.raises(InvalidMessage, match="bad shape"):
        _decode_env(env, b"\0" * 4)


def test_negative_dims_and_inline_data_are_refused():
    env = fl_pb2.Envelope(msg_type=MODEL_PARA)
    env.tensors.add(name="x", dtype="float32", shape=[2, -1])
    with pytest.raises(InvalidMessage, match="bad shape"):
        _decode_env(env)
    env = fl_pb2.Envelope(msg_type=MODEL_PARA)
    env.tensors.add(name="x", dtype="float32", shape=[1], data=b"\0" * 4)
    with pytest.raises(InvalidMessage, match="inline data"):
        _decode_env(env, b"\0" * 4)


def test_content_and_tensor_count_limits_are_inclusive():
    at_limit = '"' + "a" * (codec.MAX_CONTENT_BYTES - 2) + '"'        # valid JSON, exactly 1 MiB
    assert codec.decode(_frame(fl_pb2.Envelope(msg_type=MODEL_PARA, content_json=at_limit),
                               b"")).content == "a" * (codec.MAX_CONTENT_BYTES - 2)
    over = fl_pb2.Envelope(msg_type=MODEL_PARA, content_json=at_limit + " ")
    with pytest.raises(InvalidMessage, match="exceeds"):
        codec.decode(_frame(over, b""))
    many = {f"t{i}": torch.zeros(0) for i in range(codec.MAX_TENSORS)}
    assert len(codec.decode(codec.encode(_msg(many))).tensors) == codec.MAX_TENSORS
    env = fl_pb2.Envelope(msg_type=MODEL_PARA)
    for i in range(codec.MAX_TENSORS + 1):
        env.tensors.add(name=f"t{i}", dtype="float32", shape=[0])
    with pytest.raises(InvalidMessage, match="tensors exceeds"):
        _decode_env(env)


def test_decoded_tensors_own_writable_memory():
    import warnings
    wire = codec.encode(_msg({"w": torch.arange(4, dtype=torch.float32)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # torch warns on a view of read-only bytes
        t = codec.decode(wire).tensors["w"]
    t.add_(1)
    assert t.tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("exc,text", [(MemoryError(), "does not fit in memory"),
                                      (RecursionError(), "nests too deeply"),
                                      (ValueError("numpy said no"), "ValueError: numpy said no")])
def test_internal_failures_become_invalid_message(monkeypatch, exc, text):
    def boom(data):
        raise exc
    monkeypatch.setattr(codec, "_decode", boom)
    with pytest.raises(InvalidMessage, match=text):
        codec.decode(b"anything")


def test_header_fields_survive():
    msg = Message(MODEL_PARA, 7, 3, 11, {"sample_size": 5}, {"w": torch.ones(1)}, timestamp=12.5)
    back = codec.decode(codec.encode(msg))
    assert (back.msg_type, back.sender, back.receiver, back.state, back.timestamp) == \
        (MODEL_PARA, 7, 3, 11, 12.5)
    assert back.content == {"sample_size": 5}
    empty = codec.decode(codec.encode(Message(MODEL_PARA, 1, 0, 0, {})))
    assert empty.content == {} and empty.tensors is None
