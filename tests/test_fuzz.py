"""Fuzz a live server with >= 1,000 random and mutated messages, then run a normal job on it."""
import random

import grpc
import torch

from fl_job import Job
from proc_utils import file_contains, wait_all, wait_for
from federatedscope.core.communication import codec
from federatedscope.core.message import (HEARTBEAT, JOIN_IN, METRICS, MODEL_PARA, REDECLARE,
                                         Message)

TOKEN = "s3cret-token"
METHOD = "/federatedscope.FLService/Session"


def _valid_messages():
    model = {"w": torch.randn(4, 4), "n": torch.tensor(3)}
    return [
        Message(JOIN_IN, -1, 0, 0, {"client_id": 1, "token": "wrong"}),
        Message(JOIN_IN, 2, 0, 0, {"client_id": 2}),                       # no token
        Message(MODEL_PARA, 1, 0, 0, {"sample_size": 10}, model),           # before join
        Message(MODEL_PARA, 1, 0, 10 ** 12, {"sample_size": 10}, model),    # absurd round
        Message(METRICS, 3, 0, 0, {"results": {"test_acc": 0.5}}),
        Message(HEARTBEAT, 1, 0, 0),
        Message(REDECLARE, 1, 0, 0, {"declaration": {"client_id": 1}}),
        Message("finish", 1, 0, 0),                                          # server-only type
        Message("rm -rf", 1, 0, 0),
    ]


def _mutations(rng, n):
    seeds = [codec.encode(m) for m in _valid_messages()]
    for i in range(n):
        kind = i % 4
        if kind == 0:                                   # pure noise
            yield rng.randbytes(rng.randint(0, 512))
        elif kind == 1:                                 # bit flips in a valid message
            b = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 8)):
                if b:
                    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            yield bytes(b)
        elif kind == 2:                                 # truncation / splicing
            a, c = rng.choice(seeds), rng.choice(seeds)
            yield a[:rng.randint(0, len(a))] + c[rng.randint(0, len(c)):]
        else:                                           # well-formed but invalid
            yield rng.choice(seeds)


def _is_join(payload: bytes) -> bool:
    try:
        return codec.decode(payload).msg_type == JOIN_IN
    except Exception:
        return False


def _logged(job) -> int:
    log = job.server_log()
    return log.count("Rejected message") + log.count("Refused client")


def _send_stream(address, payloads):
    channel = grpc.insecure_channel(address)
    call = channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)
    try:
        for _ in call(iter(payloads), timeout=20):
            pass  # refusals come back; read them so the server's writes don't block
    except grpc.RpcError:
        pass  # the server may close a stream that misbehaves: that is the point
    finally:
        channel.close()


def test_fuzzed_server_still_runs_a_normal_job(femnist_root, tmp_path):
    job = Job(tmp_path, femnist_root, rounds=2,
              common=["distribute.token", TOKEN, "distribute.max_message_mb", "2.0"])
    server = job.server()
    wait_for(lambda: file_contains(job.log("server"), "listening on"), 60, "server up")
    address = f"127.0.0.1:{job.port}"
    rng = random.Random(1234)
    payloads = list(_mutations(rng, 1200))
    # A refused join closes its stream (what a server should do to an intruder), so anything
    # that decodes as a join goes on a stream of its own; everything else shares streams.
    joins = [p for p in payloads if _is_join(p)]
    others = [p for p in payloads if not _is_join(p)]
    for i in range(0, len(others), 100):
        _send_stream(address, others[i:i + 100])
    for p in joins:
        _send_stream(address, [p])
    _send_stream(address, [b"\x00" * (3 * 1024 * 1024)])  # oversized: over max_message_mb
    assert len(payloads) + 1 >= 1000
    assert server.poll() is None, "server died under fuzzing"
    wait_for(lambda: _logged(job) >= len(payloads), 60, "every fuzz message to be answered")
    clients = [job.client(k) for k in (1, 2, 3)]
    codes = wait_all([server] + clients, timeout=240)
    assert codes == [0, 0, 0, 0], job.server_log()[-3000:]
    assert _logged(job) >= len(payloads)     # each one rejected or refused, with a log line
    assert job.final()["Round"] == 2
