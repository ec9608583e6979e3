"""wire: bytes per model message vs raw parameter bytes, and codec speed vs a plain memcpy.

Same models (ConvNet2 for FEMNIST, hidden 128 and 2048):
* codec: ``len(codec.encode(msg)) / raw tensor bytes`` for a server->client and a client->server
  model message; encode and decode time per MB beside a ``bytearray`` copy of the same bytes
  (the memory-bandwidth yardstick), interleaved in one loop;
* socket: the real gRPC transports on loopback with a counting TCP forwarder between them, so the
  bytes are what the kernel carried (protobuf + gRPC framing + HTTP/2 frames), both directions.
"""
import queue

import torch

from bench.common import SERVER_YAML, interleaved, median, row, timed
from federatedscope.core.auxiliaries.model_builder import get_model
from federatedscope.core.communication import codec
from federatedscope.core.communication.grpc_client import GrpcClientTransport
from federatedscope.core.communication.grpc_server import GrpcServerTransport
from federatedscope.core.configs.config import finalize, load_cfg
from federatedscope.core.message import JOIN_IN, MODEL_PARA, Message
from harness.raw_peer import SourceAddressProxy

TITLE = "Bytes on the wire per model message, and codec speed"
MODELS = (128, 2048)
RATIO_GOAL = 1.001
COPIES_GOAL = 8.0  # encode + decode within 8 memcpy-equivalents: memory-bandwidth class
PER_ELEMENT_GOAL = 1.5  # time per MB of 1-byte elements vs 8-byte elements: no per-element work


def _cfg(hidden: int, port: int):
    return finalize(load_cfg(SERVER_YAML, [
        "model.hidden", str(hidden), "distribute.server_host", "127.0.0.1",
        "distribute.server_port", str(port), "distribute.heartbeat_interval", "0.0",
        "distributed_data.enabled", "False", "federate.client_num", "1"]))


def _msg(state, up: bool = True):
    return Message(MODEL_PARA, 1, 0, 7, {"sample_size": 7113}, state) if up else \
        Message(MODEL_PARA, 0, 1, 7, {}, state)


def codec_figures(state, repeats: int) -> dict:
    raw, up = codec.raw_tensor_bytes(state), _msg(state)
    out = {"raw_bytes": raw, "tensors": len(state)}
    for tag, msg in (("down", _msg(state, False)), ("up", up)):
        out[f"{tag}_bytes"] = len(codec.encode(msg))
        out[f"{tag}_ratio"] = out[f"{tag}_bytes"] / raw
    blob, flat = codec.encode(up), bytearray(raw)
    t = interleaved({"memcpy": lambda: bytearray(flat), "encode": lambda: codec.encode(up),
                     "decode": lambda: codec.decode(blob)}, repeats)
    mb = raw / (1024 * 1024)
    out.update({f"{k}_ms_per_mb": median(v) * 1e3 / mb for k, v in t.items()})
    out.update({f"{k}_s": v for k, v in t.items()})
    # what a per-element encoder pays at the very least
    per_elem = timed(lambda: [v.tolist() for v in state.values()], min(3, repeats))
    out["tolist_ms_per_mb"] = median(per_elem) * 1e3 / mb
    out["copies"] = (median(t["encode"]) + median(t["decode"])) / median(t["memcpy"])
    out["codec_mb_per_s"] = mb / (median(t["encode"]) + median(t["decode"]))
    return out


def per_element_check(repeats: int) -> dict:
    """Same bytes as 16 M uint8 elements and as 2 M float64 elements: per-element work would
    make the uint8 message ~8x slower per MB."""
    n = 16 * 1024 * 1024
    msgs = {"uint8": _msg({"w": torch.ones(n, dtype=torch.uint8)}, False),
            "float64": _msg({"w": torch.ones(n // 8, dtype=torch.float64)}, False)}
    times = interleaved({k: lambda m=m: codec.decode(codec.encode(m)) for k, m in msgs.items()},
                        repeats)
    out = {f"{k}_ms_per_mb": median(v) * 1e3 / 16 for k, v in times.items()}
    return dict(out, ratio=out["uint8_ms_per_mb"] / out["float64_ms_per_mb"], times_s=times)


def socket_figures(hidden: int, state, k: int) -> dict:
    raw = codec.raw_tensor_bytes(state)
    s_in, c_in = queue.Queue(), queue.Queue()
    server = GrpcServerTransport(_cfg(hidden, 0), s_in, max_clients=2)  # binds a free port
    server.start()
    proxy = SourceAddressProxy(server.port, "127.0.0.1")  # counts the bytes each way
    client = GrpcClientTransport(_cfg(hidden, proxy.port), c_in)
    try:
        client.wait_for_server(20)
        client.open_session(Message(JOIN_IN, 1, 0, 0, {"client_id": 1}))
        server.bind(s_in.get(timeout=20).conn_id, 1)
        counts = [proxy.settled()]
        for send, inbox, got, up in ((server.send, c_in, lambda e: e.tensors, False),
                                     (client.send, s_in, lambda e: e.msg.tensors, True)):
            for _ in range(k):
                send(_msg(state, up))
            for _ in range(k):
                assert got(inbox.get(timeout=60)) is not None
            counts.append(proxy.settled())
    finally:
        client.close()
        server.stop(grace=1.0)
        proxy.close()
    (up0, down0), (up1, down1), (up2, down2) = counts
    # bytes of one direction's messages plus the other direction's acks/window updates
    d_msg, d_ack, u_msg, u_ack = ((down1 - down0) / k, (up1 - up0) / k, (up2 - up1) / k,
                                  (down2 - down1) / k)
    return {"messages_each_way": k, "connections": proxy.connections,
            "down_bytes_per_msg": d_msg, "down_ack_bytes_per_msg": d_ack,
            "up_bytes_per_msg": u_msg, "up_ack_bytes_per_msg": u_ack,
            "down_ratio": d_msg / raw, "up_ratio": u_msg / raw,
            "down_ratio_with_acks": (d_msg + d_ack) / raw,
            "up_ratio_with_acks": (u_msg + u_ack) / raw}


def run(ctx) -> dict:
    torch.set_num_threads(1)
    repeats, k = (5, 3) if ctx.quick else (21, 8)
    raw, rows, notes = {}, [], []
    for hidden in MODELS:
        torch.manual_seed(0)
        state = get_model(_cfg(hidden, 1)).state_dict()
        c, s = codec_figures(state, repeats), socket_figures(hidden, state, k)
        ctx.log(f"  hidden {hidden}: codec ratio {c['up_ratio']:.6f}, {c['copies']:.1f} copies, "
                f"socket ratio down {s['down_ratio']:.6f} up {s['up_ratio']:.6f}")
        raw[f"hidden_{hidden}"] = {"codec": c, "socket": s}
        wc, ws = max(c["down_ratio"], c["up_ratio"]), max(s["down_ratio"], s["up_ratio"])
        rows += [
            row(f"ConvNet2 hidden {hidden} ({c['raw_bytes'] / 1e6:.2f} MB): encoded message / raw "
                f"tensor bytes", wc, f"{wc:.6f}", f"≤ {RATIO_GOAL}", wc <= RATIO_GOAL,
                hidden == 128),
            row(f"ConvNet2 hidden {hidden}: bytes on the loopback socket per message / raw", ws,
                f"{ws:.6f}", f"≤ {RATIO_GOAL}", ws <= RATIO_GOAL, hidden == 2048),
            row(f"ConvNet2 hidden {hidden}: encode + decode time, in memcpy-equivalents",
                c["copies"], f"{c['copies']:.1f} × ({c['encode_ms_per_mb']:.2f} + "
                f"{c['decode_ms_per_mb']:.2f} ms/MB; memcpy {c['memcpy_ms_per_mb']:.3f} ms/MB)",
                f"≤ {COPIES_GOAL:g} (memory-bandwidth class)", c["copies"] <= COPIES_GOAL)]
        if c["copies"] > COPIES_GOAL:
            # how much of the time does not depend on the bytes: the same tensors (names,
            # dtypes) holding one element each, the per-message and per-tensor cost
            tiny = _msg({k: torch.zeros(1, dtype=v.dtype) for k, v in state.items()})
            c["fixed_s"] = fixed = median(timed(lambda: codec.decode(codec.encode(tiny)), repeats))
            mb = c["raw_bytes"] / (1024 * 1024)
            total = (c["encode_ms_per_mb"] + c["decode_ms_per_mb"]) * mb / 1e3
            notes.append(f"Missed for hidden {hidden}: encode + decode {total * 1e3:.2f} ms per "
                         f"message, {fixed * 1e3:.2f} ms of it independent of the bytes (same "
                         f"{c['tensors']} tensors holding one element each: per-tensor work in "
                         f"core/communication/codec.py); the rest is "
                         f"{max(total - fixed, 0) / mb / (c['memcpy_ms_per_mb'] / 1e3):.1f} "
                         f"memcpy-equivalents.")
    pe = raw["per_element"] = per_element_check(repeats)
    rows.append(row("encode + decode time per MB: uint8 tensor / float64 tensor of the same 16 MB",
                    pe["ratio"], f"{pe['ratio']:.2f} ({pe['uint8_ms_per_mb']:.2f} vs "
                    f"{pe['float64_ms_per_mb']:.2f} ms/MB)",
                    f"≤ {PER_ELEMENT_GOAL} (no per-element work: 8× the elements must not cost "
                    f"more)", pe["ratio"] <= PER_ELEMENT_GOAL))
    big = raw["hidden_2048"]
    context = [
        f"Socket figures count one direction's payload; the reverse carries HTTP/2 acks and window "
        f"updates: {big['socket']['down_ack_bytes_per_msg']:.0f} B per 2048-model message "
        f"({(big['socket']['down_ratio_with_acks'] - 1) * 100:.3f} % with them).",
        f"Codec (encode + decode), hidden 2048: {big['codec']['codec_mb_per_s']:.0f} MB/s; "
        f"{repeats} interleaved repeats, medians; a per-element pass (`tensor.tolist()`) takes "
        f"{big['codec']['tolist_ms_per_mb']:.0f} ms/MB."]
    codec_ratio = max(raw[f"hidden_{h}"]["codec"][f"{d}_ratio"] for h in MODELS
                      for d in ("down", "up"))
    return {"rows": rows, "context": context, "raw": raw, "notes": notes,
            "summary": {"max_ratio": max(r["value"] for r in rows if "/ raw" in r["figure"]),
                        "max_codec_ratio": codec_ratio}}
