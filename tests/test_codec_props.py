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


@pytest.mark.parametrize("exc,text", [
    (MemoryError(), "message does not fit in memory"),
    (RecursionError(), "content JSON nests too deeply"),
    (ValueError("numpy said no"), "undecodable message (ValueError: numpy said no)"),
    # a parser's text is cut at 120 characters, its length kept
    (OverflowError("x" * 121), f"undecodable message (OverflowError: {'x' * 120}...[121 chars])"),
    (ValueError("y" * 120), f"undecodable message (ValueError: {'y' * 120})")])
def test_internal_failures_become_invalid_message(monkeypatch, exc, text):
    def boom(data):
        raise exc
    monkeypatch.setattr(codec, "_decode", boom)
    with pytest.raises(InvalidMessage) as info:
        codec.decode(b"anything")
    assert str(info.value) == text


def test_header_fields_survive():
    msg = Message(MODEL_PARA, 7, 3, 11, {"sample_size": 5}, {"w": torch.ones(1)}, timestamp=12.5)
    back = codec.decode(codec.encode(msg))
    assert (back.msg_type, back.sender, back.receiver, back.state, back.timestamp) == \
        (MODEL_PARA, 7, 3, 11, 12.5)
    assert back.content == {"sample_size": 5}
    empty = codec.decode(codec.encode(Message(MODEL_PARA, 1, 0, 0, {})))
    assert empty.content == {} and empty.tensors is None


# ------------------------------------------------------------------ the frame, byte for byte
def _envelope(wire: bytes) -> fl_pb2.Envelope:
    env = fl_pb2.Envelope()
    env.ParseFromString(wire[8:8 + int.from_bytes(wire[4:8], "little")])
    return env


def test_content_is_compact_json_and_empty_content_sends_nothing():
    msg = Message(MODEL_PARA, 2, 0, 3, {"sample_size": 5, "pad": [1, 2.5]}, {"w": torch.ones(1)})
    assert _envelope(codec.encode(msg)).content_json == '{"sample_size":5,"pad":[1,2.5]}'
    empty = codec.encode(Message(MODEL_PARA, 2, 0, 3, {}, {"w": torch.ones(1)}))
    assert _envelope(empty).content_json == ""            # not "{}": nothing to parse on arrival
    assert len(codec.encode(msg)) - len(empty) == len('{"sample_size":5,"pad":[1,2.5]}') + 2


def test_payload_is_little_endian_raw_bytes_in_header_order():
    tensors = {"i": torch.tensor([1, -2], dtype=torch.int32), "h": torch.tensor([1.0]).half(),
               "b": torch.tensor([[True], [False]]), "e": torch.zeros(0, 3), "s": torch.tensor(7)}
    wire = codec.encode(_msg(tensors))
    assert wire[-(8 + 2 + 2 + 8):] == (b"\x01\x00\x00\x00" b"\xfe\xff\xff\xff"   # int32 1, -2
                                       b"\x00\x3c" b"\x01\x00"                    # fp16 1.0; T, F
                                       b"\x07\x00\x00\x00\x00\x00\x00\x00")       # int64 7
    assert codec.payload_offset(wire) == len(wire) - 20


def test_payload_offset_needs_the_whole_prefix_and_the_magic():
    wire = codec.encode(_msg({"w": torch.ones(3)}))
    start = 8 + int.from_bytes(wire[4:8], "little")
    assert start == len(wire) - 12
    assert codec.payload_offset(wire) == start
    assert codec.payload_offset(memoryview(wire)[:8]) == start     # exactly the prefix is enough
    assert codec.payload_offset(wire[:7]) is None                  # magic right, length cut short
    assert codec.payload_offset(b"FSW2" + wire[4:]) is None        # long enough, wrong magic


def test_a_frame_of_just_the_prefix_is_an_empty_message():
    back = codec.decode(codec.MAGIC + b"\0\0\0\0")                 # header of 0 bytes, no payload
    assert (back.msg_type, back.sender, back.receiver, back.state, back.content,
            back.tensors, back.timestamp) == ("", 0, 0, 0, {}, None, 0.0)


def _refusal(frame) -> str:
    with pytest.raises(InvalidMessage) as info:
        codec.decode(frame)
    return str(info.value)


def test_framing_refusals_say_what_is_wrong():
    assert _refusal(b"FSW1\0\0\0") == "not a framed message (bad magic)"       # 7 bytes
    assert _refusal(b"FSW2\0\0\0\0") == "not a framed message (bad magic)"
    # 5 header bytes claimed, 3 present: refused before the 3 are parsed
    assert _refusal(codec.MAGIC + (5).to_bytes(4, "little") + b"abc") == \
        "header length 5 does not fit the message"
    with pytest.raises(Exception) as parser:                   # the protobuf runtime's own words
        fl_pb2.Envelope().ParseFromString(b"\xff\xff\xff")
    assert _refusal(codec.MAGIC + (3).to_bytes(4, "little") + b"\xff\xff\xff") == \
        f"not a valid Envelope header: {parser.value}"
    assert _refusal(_frame(fl_pb2.Envelope(content_json="{not json"), b"")) == \
        "content is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 " \
        "(char 1)"
    good = codec.encode(_msg({"w": torch.ones(3)}))
    assert _refusal(good + b"xyz") == "3 trailing bytes after the last tensor"


def test_header_length_limit_is_inclusive():
    # 1 MiB of content + 64 bytes for each of 4096 tensors = 1,310,720 header bytes. The content
    # field costs 1 tag + 3 length bytes + 2^20; msg_type fills the rest: 1 + 3 + 262,136.
    content = '"' + "a" * (2 ** 20 - 2) + '"'
    env = fl_pb2.Envelope(msg_type="m" * 262_136, content_json=content)
    assert env.ByteSize() == 1_310_720
    assert codec.decode(_frame(env, b"")).msg_type == "m" * 262_136
    env.msg_type += "m"
    assert _refusal(_frame(env, b"")) == "header length 1310721 does not fit the message"


def test_tensor_refusals_name_the_tensor_clipped():
    n81, d41 = "n" * 81, "d" * 41                  # one past the 80/40-character cuts
    n_clip, d_clip = "n" * 80 + "...[81 chars]", "d" * 40 + "...[41 chars]"
    env = fl_pb2.Envelope(msg_type=MODEL_PARA)
    env.tensors.add(name=n81, dtype=d41, shape=[1])
    assert _refusal(_frame(env, b"\0")) == f"tensor {n_clip}: dtype {d_clip} not allowed"
    env = fl_pb2.Envelope(msg_type=MODEL_PARA)
    env.tensors.add(name="n" * 80, dtype="d" * 40, shape=[1])      # at the cuts: whole
    assert _refusal(_frame(env, b"\0")) == f"tensor {'n' * 80}: dtype {'d' * 40} not allowed"
    env = fl_pb2.Envelope(msg_type=MODEL_PARA)
    env.tensors.add(name=n81, dtype="float32", shape=[1])
    env.tensors.add(name=n81, dtype="float32", shape=[1])
    assert _refusal(_frame(env, b"\0" * 8)) == f"tensor {n_clip} appears twice"
    # 9 dims (one over MAX_DIMS) whose repr is 121 characters: cut at 120, the "]" dropped
    env = fl_pb2.Envelope(msg_type=MODEL_PARA)
    env.tensors.add(name="w", dtype="float32", shape=[10 ** 10] * 8 + [-(10 ** 13)])
    assert _refusal(_frame(env, b"")) == \
        "tensor w: bad shape [" + "10000000000, " * 8 + "-10000000000000...[121 chars]"
    env = fl_pb2.Envelope(msg_type=MODEL_PARA)
    env.tensors.add(name="w", dtype="float32", shape=[10 ** 10] * 8 + [-(10 ** 12)])   # 120
    assert _refusal(_frame(env, b"")) == \
        "tensor w: bad shape [" + "10000000000, " * 8 + "-1000000000000]"


def test_short_payload_refusal_counts_the_bytes_left():
    env = fl_pb2.Envelope(msg_type=MODEL_PARA)
    env.tensors.add(name="a", dtype="int16", shape=[2])            # 4 bytes, present
    env.tensors.add(name="w", dtype="float32", shape=[3])          # 12 bytes, 9 present
    assert _refusal(_frame(env, b"\0" * 13)) == \
        "tensor w: shape [3] x float32 needs 12 bytes, only 9 left in the message"


@pytest.mark.parametrize("dtype,dims", [("uint8", [0, 2 ** 62]), ("float32", [2 ** 60, 0, 1]),
                                        ("float64", [0, 2 ** 29, 2 ** 30])])
def test_empty_tensor_extent_limit_counts_bytes_and_is_inclusive(dtype, dims):
    """A 0 in the shape makes it empty (0 bytes on the wire), but numpy still refuses a shape whose
    other dims times the item size pass 2^63 bytes: the codec allows up to 2^62 bytes' worth."""
    env = fl_pb2.Envelope(msg_type=MODEL_PARA)
    env.tensors.add(name="w", dtype=dtype, shape=dims)
    back = codec.decode(_frame(env, b"")).tensors["w"]
    assert tuple(back.shape) == tuple(dims) and back.numel() == 0
    env.tensors[0].shape[dims.index(max(dims))] += 1             # one element's worth more
    over = [d + (d == max(dims)) for d in dims]
    assert _refusal(_frame(env, b"")) == f"tensor w: bad shape {over}"
