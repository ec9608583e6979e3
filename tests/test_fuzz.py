"""Fuzz a live server (shard mode): >= 1,000 random and mutated messages from unjoined streams,
then malformed updates from clients that joined legitimately; the job still ends with exactly the
honest clients' FedAvg result.
"""
import os
import queue
import random
import re
import threading
from typing import Callable, Dict, List, Optional, Tuple

import grpc
import torch

from harness.jobs import Job
from harness.procs import file_contains, wait_all, wait_for
from federatedscope.core.data.shard_format import (ShardDeclaration, load_manifest,
                                                            read_meta, shard_dir)
from federatedscope.core.communication import codec
from federatedscope.core.communication.limits import BAD_MESSAGES_PER_SESSION
from federatedscope.core.message import (EVALUATE, FINISH, HEARTBEAT, JOIN_IN, METRICS,
                                         MODEL_PARA, REDECLARE, REFUSE, Message)

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
    """Rejections the server accounted for: a line each, or counted in a summary line (beyond
    LOG_LINES_PER_INTERVAL per interval), plus refused joins."""
    log = job.server_log().lower()
    summarized = sum(int(n) for n in re.findall(r"rejected (\d+) more messages", log))
    return log.count("rejected message from") + summarized + log.count("refused client")


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


def test_fuzzed_server_still_runs_a_normal_job(femnist_root, femnist_shards, tmp_path):
    job = Job(tmp_path, femnist_root, rounds=2, manifest=femnist_shards,
              common=["distribute.token", TOKEN, "distribute.max_message_mb", "2.0"])
    server = job.server()
    wait_for(lambda: file_contains(job.log("server"), "listening on"), 60, "server up",
             watch=[server])
    address = f"127.0.0.1:{job.port}"
    rng = random.Random(1234)
    payloads = list(_mutations(rng, 600))
    # A refused join closes its stream (what a server should do to an intruder), so anything
    # that decodes as a join goes on a stream of its own; everything else shares streams.
    joins = [p for p in payloads if _is_join(p)]
    others = [p for p in payloads if not _is_join(p)]
    # A session is closed at its BAD_MESSAGES_PER_SESSION-th invalid message: stay below it.
    per_stream = BAD_MESSAGES_PER_SESSION - 1
    for i in range(0, len(others), per_stream):
        _send_stream(address, others[i:i + per_stream])
    for p in joins:
        _send_stream(address, [p])
    _send_stream(address, [b"\x00" * (3 * 1024 * 1024)])  # oversized: over max_message_mb
    assert len(payloads) + 1 >= 600
    assert server.poll() is None, "server died under fuzzing"
    wait_for(lambda: _logged(job) >= len(payloads), 60, "every fuzz message to be answered",
             watch=[server])
    clients = [job.client(k) for k in (1, 2, 3)]
    wait_all([server] + clients, timeout=240, expect=[0, 0, 0, 0])
    assert _logged(job) >= len(payloads)     # each one rejected or refused, with a log line
    assert job.final()["Round"] == 2


# ----------------------------------------------------------- malformed updates from joined clients
State = Dict[str, torch.Tensor]
# Called with (round, the global model received) -> (sample_size, update) to send.
Plan = Callable[[int, State], Tuple[int, State]]


class ScriptedClient(threading.Thread):
    """A client speaking the real protocol (codec frames on the gRPC Session stream) that joins
    with its shard's true declaration, then answers each round with what ``plan`` returns and
    each evaluation with fixed metrics. Records every global model it is sent, by round."""

    def __init__(self, address: str, decl: ShardDeclaration, plan: Plan):
        super().__init__(name=f"scripted-{decl.client_id}", daemon=True)
        self.address, self.decl, self.plan = address, decl, plan
        self.cid = decl.client_id
        self.globals: Dict[int, State] = {}      # EVALUATE(r): the global model after r rounds
        self.finished = False
        self.refused: Optional[str] = None
        self.error: Optional[BaseException] = None

    def _join(self) -> Message:
        return Message(JOIN_IN, self.cid, 0, 0, {"client_id": self.cid, "token": "",
                                                 "num_samples": dict(self.decl.num_samples),
                                                 "declaration": self.decl.to_dict()})

    def _metrics(self, r: int) -> Message:
        n = self.decl.num_samples
        results = {"test_acc": 0.5, "test_total": n["test"], "test_loss": float(n["test"]),
                   "test_avg_loss": 1.0, "val_acc": 0.5, "val_total": n["val"],
                   "val_loss": float(n["val"]), "val_avg_loss": 1.0}
        return Message(METRICS, self.cid, 0, r, {"results": results})

    def run(self) -> None:
        outbox: "queue.Queue" = queue.Queue()
        outbox.put(codec.encode(self._join()))

        def requests():
            while True:
                item = outbox.get()
                if item is None:
                    return
                yield item
        channel = grpc.insecure_channel(self.address)
        try:
            call = channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                         response_deserializer=lambda b: b)(requests(), timeout=300)
            for data in call:
                msg = codec.decode(data)
                if msg.msg_type == MODEL_PARA:
                    size, update = self.plan(msg.state, msg.tensors)
                    outbox.put(codec.encode(Message(MODEL_PARA, self.cid, 0, msg.state,
                                                    {"sample_size": size}, update)))
                elif msg.msg_type == EVALUATE:
                    self.globals[msg.state] = msg.tensors
                    outbox.put(codec.encode(self._metrics(msg.state)))
                elif msg.msg_type == FINISH:
                    self.finished = True
                    break
                elif msg.msg_type == REFUSE:
                    self.refused = msg.content.get("reason")
                    break
        except BaseException as e:  # reported by the test, with the server log
            self.error = e
        finally:
            outbox.put(None)
            channel.close()


def _const(model: State, value: float) -> State:
    """An update shaped exactly like the global model, every entry ``value`` (ints: floor,
    or 0 where ``value`` is not finite)."""
    whole = int(value) if value == value and abs(value) != float("inf") else 0
    return {k: torch.full_like(t, value) if t.is_floating_point()
            else torch.full_like(t, whole) for k, t in model.items()}


def _value(cid: int, r: int) -> float:
    return 10.0 * cid + r + 0.25


def _honest(n_train: int, cid: int) -> Plan:
    return lambda r, model: (n_train, _const(model, _value(cid, r)))


# What client 3 sends in rounds 1.. (round 0 is honest), and the reason the server must log.
def _wrong_keys(m):
    bad = dict(m)
    bad.pop(sorted(bad)[0])
    bad["injected.weight"] = torch.zeros(3)
    return bad


# (what, make(model, n_train) -> (sample_size, update), does a server log line name it?)
MALFORMED = [
    ("wrong keys", lambda m, n: (n, _wrong_keys(m)),
     lambda line: "state keys differ from the global model" in line),
    ("wrong shape", lambda m, n: (n, {k: (t.reshape(-1) if t.dim() > 1 else t)
                                      for k, t in _const(m, 1.0).items()}),
     lambda line: line.count("torch.float32[") == 2),
    ("wrong dtype", lambda m, n: (n, {k: (t.double() if t.is_floating_point() else t)
                                      for k, t in _const(m, 1.0).items()}),
     lambda line: "torch.float64[" in line),
    ("NaN", lambda m, n: (n, _const(m, float("nan"))), lambda line: "non-finite" in line),
    ("inf", lambda m, n: (n, _const(m, float("inf"))), lambda line: "non-finite" in line),
    ("sample_size lie", lambda m, n: (10 * n, _const(m, 1.0)),
     lambda line: f"sample_size " in line and "!= declared train count" in line),
]


def _liar(n_train: int) -> Plan:
    def plan(r: int, model: State):
        if r == 0:
            return n_train, _const(model, _value(3, r))
        _, make, _ = MALFORMED[r - 1]
        return make(model, n_train)
    return plan


def _expected(model: State, contributions: List[Tuple[int, float]]) -> State:
    """FedAvg by hand: sum(n_k * v_k) / sum(n_k), in float64, cast back (ints floored)."""
    total = sum(n for n, _ in contributions)
    mean = sum(n * v for n, v in contributions) / total
    return _const(model, mean) if all(t.is_floating_point() for t in model.values()) else \
        {k: torch.full_like(t, mean) if t.is_floating_point() else torch.full_like(t, int(mean))
         for k, t in model.items()}


def _declaration(manifest: str, cid: int) -> ShardDeclaration:
    entry = load_manifest(manifest)[cid]
    meta = read_meta(os.path.join(shard_dir(manifest, entry), "meta.json"))
    return ShardDeclaration(cid, dict(meta.num_samples), meta.fingerprint,
                            list(meta.label_hist["train"]), meta.sample_type)


def test_malformed_updates_from_a_joined_client_are_rejected(femnist_root, femnist_shards,
                                                             tmp_path):
    """Three clients join with their true shard declarations (strict manifest check). Round 1:
    all honest, each sends a constant update; the global model must be the sample-size-weighted
    mean (train counts differ, so equal weights would show). Rounds 2..7: client 3 sends one
    malformed update each (wrong keys, shape, dtype, NaN, inf, a sample_size lie); each is
    rejected with its reason in the server log and the global model is exactly the FedAvg of
    clients 1 and 2."""
    rounds = 1 + len(MALFORMED)
    job = Job(tmp_path, femnist_root, rounds=rounds, manifest=femnist_shards,
              common=["distribute.heartbeat_timeout", "120"])
    server = job.server()
    wait_for(lambda: file_contains(job.log("server"), "listening on"), 60, "server up",
             watch=[server])
    decls = {k: _declaration(femnist_shards, k) for k in (1, 2, 3)}
    n = {k: d.num_samples["train"] for k, d in decls.items()}
    assert len(set(n.values())) == 3, f"shards must differ in size to test weights: {n}"
    address = f"127.0.0.1:{job.port}"
    peers = {k: ScriptedClient(address, decls[k], _honest(n[k], k) if k != 3 else _liar(n[3]))
             for k in (1, 2, 3)}
    for p in peers.values():
        p.start()
    # Fail fast: a scripted client that errors (or is refused) stops the wait at once.
    wait_for(lambda: all(not p.is_alive() for p in peers.values())
             or any(p.error or p.refused for p in peers.values()), 240,
             "the scripted clients to finish", watch=[server])
    for p in peers.values():
        assert p.error is None and p.refused is None and p.finished, \
            (p.cid, p.error, p.refused, job.server_log()[-3000:])
    wait_all([server], timeout=60, expect=[0])
    rejections = [x for x in job.server_log().splitlines() if "rejected update of client #3" in x]
    for r, (what, _, names_it) in enumerate(MALFORMED, start=1):
        assert any(names_it(x) for x in rejections), \
            f"round {r + 1}: no rejection with the reason for the {what} update: {rejections}"
    assert len(rejections) == len(MALFORMED), rejections
    seen = peers[1].globals
    assert sorted(seen) == list(range(1, rounds + 1)), sorted(seen)
    for r in range(rounds):      # server round r -> EVALUATE(r + 1) carries its result
        cids = (1, 2, 3) if r == 0 else (1, 2)
        want = _expected(seen[r + 1], [(n[k], _value(k, r)) for k in cids])
        for key, t in seen[r + 1].items():
            assert torch.allclose(t.double(), want[key].double(), rtol=1e-6, atol=0), \
                f"round {r + 1}, {key}: got {t.flatten()[:3]}, FedAvg of {cids} is " \
                f"{want[key].flatten()[:3]}"
    assert job.final()["Round"] == rounds
