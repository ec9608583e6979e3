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
    sent = 0
    for _ in range(12):                                 # 12 streams x 100 messages
        batch = list(_mutations(rng, 100))
        _send_stream(address, batch)
        sent += len(batch)
    _send_stream(address, [b"\x00" * (3 * 1024 * 1024)])  # oversized: over max_message_mb
    sent += 1
    assert sent >= 1000
    assert server.poll() is None, "server died under fuzzing"
    clients = [job.client(k) for k in (1, 2, 3)]
    codes = wait_all([server] + clients, timeout=240)
    assert codes == [0, 0, 0, 0], job.server_log()[-3000:]
    log = job.server_log()
    assert log.count("Rejected message") + log.count("Refused client") >= 100
    assert job.final()["Round"] == 2
