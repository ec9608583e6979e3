#!/usr/bin/env python
"""A swarm of virtual clients: N real gRPC sessions from one process, speaking the FL protocol.

Each virtual client is an asyncio task with its own channel (its own TCP connection): it joins
with the declaration and token of its manifest entry (``harness/swarm_manifest.py``),
receives the model, answers training with a precomputed update of the model's keys/shapes/dtypes
and its declared train count, answers evaluation with plausible metrics (totals = its declared
counts, accuracies in [0, 1]) and heartbeats. Mix-ins: late joiners, a fraction that drops
mid-round (closes its session for good), stragglers that answer late. The server is the real
one (``federatedscope/main.py``, shard mode), so N = 1,000 needs no 1,000 torch processes.

    python -m harness.swarm --n 200 --rounds 2          # starts a server, runs the swarm, prints JSON

``RawPeer`` (``harness/raw_peer.py``) is a synchronous single session for attack tests.
"""
import argparse
import asyncio
import gc
import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import grpc

if __package__ in (None, ""):
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from federatedscope.core.communication import codec  # noqa: E402
from federatedscope.core.communication.flow import (  # noqa: E402
    CHUNK_BYTES, DOWNLINK_CHUNKS_HEADER, GO, UPLOAD_CHUNK_HEADER as CHUNK_HEADER, UPLOAD_GO_HEADER,
    DownlinkAssembly, announced_chunk, upload_frames)
from federatedscope.core.communication.grpc_client import signed_join  # noqa: E402
from federatedscope.core.communication.join_proof import NONCE_HEADER  # noqa: E402
from federatedscope.core.communication.limits import (  # noqa: E402
    HEARTBEAT_HEADER, announced_heartbeat)
from federatedscope.core.message import (ASSIGN_ID, EVALUATE, FINISH, HEARTBEAT, JOIN_IN,  # noqa: E402
                                         METRICS, MODEL_PARA, REFUSE, Message)
from harness.raw_peer import BIG, METHOD  # noqa: E402
from harness.swarm_manifest import SwarmShard, write_swarm_manifest  # noqa: E402


# ============================================================================ the swarm
@dataclass
class SwarmPlan:
    address: str
    shards: Dict[int, SwarmShard]
    heartbeat_interval: float = 5.0
    late_fraction: float = 0.0      # join this long after the others
    late_delay: float = 2.0
    drop_fraction: float = 0.0      # close the session for good when this round's model arrives
    drop_round: int = 1
    straggler_fraction: float = 0.0  # answer training this much later
    straggler_delay: float = 0.0
    seed: int = 0
    timeout: float = 600.0          # the whole swarm gives up after this
    gate_ids: frozenset = frozenset()   # these join only once ``gate`` is set (phased benchmarks)
    gate: Optional[threading.Event] = None
    # Sessions opening at once (0: all). One process playing thousands of clients cannot answer
    # thousands of nonces within distribute.join_deadline, as thousands of machines would: the
    # server then closes the streams it opened first and those clients retry. Join latency
    # still counts from the client's start, so waiting here is part of the figure.
    max_connecting: int = 0


@dataclass
class VirtualResult:
    client_id: int
    role: str = "normal"            # normal | late | dropper | straggler
    join_latency: Optional[float] = None
    models: List[int] = field(default_factory=list)      # rounds whose model arrived
    evals: List[int] = field(default_factory=list)
    updates_sent: int = 0
    metrics_sent: int = 0
    finished: bool = False
    refused: str = ""
    error: str = ""
    join_retries: int = 0           # sessions that ended before the server assigned the id
    retry_error: str = ""           # why the first of them ended


class Swarm:
    def __init__(self, plan: SwarmPlan):
        self.plan = plan
        rng = random.Random(plan.seed)
        ids = sorted(plan.shards)
        rng.shuffle(ids)
        n = len(ids)
        k_late, k_drop = int(plan.late_fraction * n), int(plan.drop_fraction * n)
        k_slow = int(plan.straggler_fraction * n)
        roles = (["late"] * k_late + ["dropper"] * k_drop + ["straggler"] * k_slow)
        self.results = {cid: VirtualResult(cid, roles[i] if i < len(roles) else "normal")
                        for i, cid in enumerate(ids)}
        self._update: Optional[dict] = None   # precomputed from the first model received
        self._connecting: Optional[asyncio.Semaphore] = None   # made in run(), on its loop
        self._in_flight = 0
        self.peak_connecting = 0        # most sessions open at once before their join's answer
        self.heartbeat_s = plan.heartbeat_interval   # as the server asked (the last session's)

    def _update_for(self, model: Dict) -> Dict:
        """One update shared by every virtual client: the model nudged by fixed noise (same
        keys, shapes and dtypes; integer buffers unchanged)."""
        if self._update is None:
            import torch
            g = torch.Generator().manual_seed(self.plan.seed)
            self._update = {k: (v + 1e-3 * torch.randn(v.shape, generator=g, dtype=v.dtype)
                                if v.is_floating_point() else v.clone()) for k, v in model.items()}
        return self._update

    @staticmethod
    def _metrics(shard: SwarmShard, r: int) -> Dict[str, float]:
        out = {}
        for split in ("test", "val"):
            total = shard.num_samples[split]
            acc = min(1.0, 0.05 + 0.1 * r + (shard.client_id % 7) / 100)
            correct = int(round(acc * total))
            loss = 4.0 / (1 + r)
            # a real writer can have an empty split: the real client reports 0 of 0 as 0.0
            out.update({f"{split}_acc": correct / total if total else 0.0, f"{split}_correct": correct,
                        f"{split}_total": total, f"{split}_loss": loss * total,
                        f"{split}_avg_loss": loss})
        return out

    async def _client(self, res: VirtualResult) -> None:
        """A session, and a new one (backoff 1 s x 1.6, +-20 %, capped at 10 s, as the real
        client's reconnect) while none has been admitted yet: in a storm of thousands some
        connections fail before they reach the server. Join latency counts from the first try."""
        plan = self.plan
        if res.role == "late":
            await asyncio.sleep(plan.late_delay)
        if res.client_id in plan.gate_ids and plan.gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, plan.gate.wait)
        t_first, delay = time.perf_counter(), 1.0
        rng = random.Random(f"{plan.seed}:{res.client_id}")
        while True:
            if self._connecting is None:
                await self._session(res, t_first)
            else:
                await self._connecting.acquire()
                self._in_flight += 1
                self.peak_connecting = max(self.peak_connecting, self._in_flight)
                await self._session(res, t_first, self._joined)
            if (res.join_latency is not None or res.refused or res.finished
                    or time.perf_counter() - t_first + delay > plan.timeout):
                return
            res.join_retries += 1
            res.retry_error = res.retry_error or res.error
            res.error = ""
            await asyncio.sleep(delay * rng.uniform(0.8, 1.2))
            delay = min(10.0, delay * 1.6)

    def _joined(self) -> None:
        self._in_flight -= 1
        self._connecting.release()

    async def _session(self, res: VirtualResult, t_join: float, joined=None) -> None:
        """One stream; ``joined()`` is called once, when the join is answered or the stream
        ends (whichever comes first)."""
        plan, shard = self.plan, self.plan.shards[res.client_id]

        def answered() -> None:
            nonlocal joined
            if joined is not None:
                joined, done = None, joined
                done()
        channel = grpc.aio.insecure_channel(plan.address, options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)])
        # the server's large messages in downlink chunks, as a real client asks
        call = channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)(
            metadata=((DOWNLINK_CHUNKS_HEADER, "1"),))
        chunks = DownlinkAssembly(BIG)
        lock = asyncio.Lock()           # one write at a time per stream (gRPC's rule)
        cid = res.client_id

        more = CHUNK_BYTES                # continuations' size, as the server announces
        use_go, go = False, asyncio.Event()     # the server's GO for the upload under way
        writes: set = set()

        async def write(msg: Message) -> None:
            async with lock:                    # as a client sends (flow.py)
                frames = upload_frames(codec.encode_parts(msg), more)
                go.clear()
                await call.write(frames[0])
                if len(frames) > 1 and use_go:
                    await go.wait()
                for frame in frames[1:]:
                    await call.write(frame)

        def written(task) -> None:
            writes.discard(task)
            failed = None if task.cancelled() else task.exception()
            if failed is not None and not res.error and not res.finished:
                res.error = f"write failed: {type(failed).__name__}: {str(failed)[:120]}"

        def spawn(coro) -> None:
            # Writes run beside the read loop: an upload waits for a GO that only it reads.
            task = asyncio.ensure_future(coro)
            writes.add(task)
            task.add_done_callback(written)

        async def finish() -> None:
            async with lock:
                await call.done_writing()

        every = plan.heartbeat_interval   # or longer, as the server asks (as a client does)

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(every)
                await write(Message(HEARTBEAT, cid, 0, 0))

        hb = None
        try:
            metadata = dict(await call.initial_metadata() or ())
            nonce, more = metadata.get(NONCE_HEADER), announced_chunk(metadata.get(CHUNK_HEADER))
            use_go = metadata.get(UPLOAD_GO_HEADER) == "1"
            every = self.heartbeat_s = announced_heartbeat(metadata.get(HEARTBEAT_HEADER),
                                                           plan.heartbeat_interval)
            await write(signed_join(Message(JOIN_IN, cid, 0, 0, {
                "client_id": cid, "token": shard.token, "num_samples": dict(shard.num_samples),
                "declaration": shard.declaration}), nonce))
            hb = asyncio.ensure_future(heartbeat())
            while True:
                data = await call.read()
                if data is grpc.aio.EOF:
                    break
                if data == GO:
                    go.set()
                    continue
                data = chunks.feed(data)
                if data is None:
                    continue              # more chunks of this message to come
                msg = codec.decode(data)
                if msg.msg_type == ASSIGN_ID:
                    res.join_latency = time.perf_counter() - t_join
                    answered()
                elif msg.msg_type == MODEL_PARA:
                    res.models.append(msg.state)
                    if res.role == "dropper" and msg.state + 1 >= plan.drop_round:
                        return
                    if res.role == "straggler":
                        await asyncio.sleep(plan.straggler_delay)
                    res.updates_sent += 1
                    spawn(write(Message(MODEL_PARA, cid, 0, msg.state,
                                        {"sample_size": shard.num_samples["train"]},
                                        self._update_for(msg.tensors))))
                elif msg.msg_type == EVALUATE:
                    res.evals.append(msg.state)
                    res.metrics_sent += 1
                    spawn(write(Message(METRICS, cid, 0, msg.state,
                                        {"results": self._metrics(shard, msg.state)})))
                elif msg.msg_type == FINISH:
                    res.finished = True
                    spawn(finish())
                elif msg.msg_type == REFUSE:
                    res.refused = str(msg.content.get("reason", ""))[:200]
                    answered()
                # drop the decoded model before waiting: N idle tasks would otherwise each hold
                # one (N x model bytes in this process; 6.5 GB at 3,550 clients)
                msg = data = None
        except grpc.RpcError as e:
            if not res.finished:
                res.error = f"{e.code().name}: {(e.details() or '')[:160]}"
        except Exception as e:  # a bug in a virtual client must show, not hang the swarm
            res.error = f"{type(e).__name__}: {str(e)[:160]}"
        finally:
            answered()
            if hb is not None:
                hb.cancel()
            for task in list(writes):
                task.cancel()
            call.cancel()
            await channel.close()

    async def run(self) -> Dict[int, VirtualResult]:
        # One process plays thousands of clients beside a large heap (torch, the plan): out of
        # the cyclic collector's scans, or each full collection walks it again.
        gc.collect()
        gc.freeze()
        if self.plan.max_connecting > 0:
            self._connecting = asyncio.Semaphore(self.plan.max_connecting)
        tasks = [asyncio.ensure_future(self._client(r)) for r in self.results.values()]
        try:
            done, pending = await asyncio.wait(tasks, timeout=self.plan.timeout)
        finally:
            gc.unfreeze()       # the process (a test, the benchmark) goes on after the swarm
        for t in pending:
            t.cancel()
        for r in self.results.values():
            if not r.finished and not r.error and r.role != "dropper":
                r.error = r.error or "swarm timeout"
        return self.results


def summarize(results: Dict[int, VirtualResult], rounds: int, sampled: bool = False) -> dict:
    """Counts, join latency percentiles and messages lost (expected to arrive but did not).
    ``sampled``: not every client trains every round, so only ``finish`` is expected by all."""
    lat = sorted(r.join_latency for r in results.values() if r.join_latency is not None)

    def pct(p: float) -> Optional[float]:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None
    stayed = [r for r in results.values() if r.role != "dropper"]
    counts: Dict[str, int] = {}
    for r in results.values():
        if r.error:
            counts[r.error] = counts.get(r.error, 0) + 1
    # A client that stays must get every round's model, the final evaluation and finish.
    lost = sum((0 if sampled else rounds - len(set(r.models))) + (0 if r.finished else 1)
               for r in stayed)
    return {"clients": len(results), "joined": len(lat), "finished": sum(r.finished for r in stayed),
            "stayed": len(stayed), "refused": sum(bool(r.refused) for r in results.values()),
            "errors": sorted(counts)[:5],
            "error_counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])[:5]),
            "updates_sent": sum(r.updates_sent for r in results.values()),
            "metrics_sent": sum(r.metrics_sent for r in results.values()),
            "join_p50_s": pct(0.5), "join_p99_s": pct(0.99), "join_max_s": lat[-1] if lat else None,
            "join_retries": sum(r.join_retries for r in results.values()),
            "retried_clients": sum(r.join_retries > 0 for r in results.values()),
            "retry_errors": sorted({r.retry_error for r in results.values() if r.retry_error})[:3],
            "messages_lost": lost}


def run_swarm(plan: SwarmPlan) -> Dict[int, VirtualResult]:
    """Run the swarm to completion in a fresh event loop (blocking)."""
    return asyncio.run(Swarm(plan).run())


# ============================================================================ CLI
def server_opts(rounds: int, extra=()) -> List[str]:
    """Config overrides for a server driven by a swarm (all clients sampled, O(model) memory)."""
    return ["federate.total_round_num", str(rounds), "federate.online_aggr", "True",
            "federate.join_timeout", "0.0", "eval.freq", str(rounds), "early_stop.patience", "0"
            ] + list(extra)


def main(argv=None) -> int:
    from harness.jobs import Job
    from harness.procs import wait_all
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", default="/tmp/fs_swarm")
    p.add_argument("--late", type=float, default=0.0)
    p.add_argument("--drop", type=float, default=0.0)
    p.add_argument("--stragglers", type=float, default=0.0)
    p.add_argument("--max-connecting", type=int, default=0, help="sessions opening at once (0: all)")
    a = p.parse_args(argv)
    manifest, shards = write_swarm_manifest(a.work, a.n)
    extra = server_opts(a.rounds, ["federate.round_timeout", "20", "federate.min_clients_threshold",
                                   "1"] if a.drop or a.stragglers else [])
    job = Job(a.work, "", a.rounds, manifest)
    server = job.server(extra)
    try:
        res = run_swarm(SwarmPlan(f"127.0.0.1:{job.port}", shards, late_fraction=a.late,
                                  drop_fraction=a.drop, straggler_fraction=a.stragglers,
                                  straggler_delay=25.0 if a.stragglers else 0.0,
                                  max_connecting=a.max_connecting))
        code = wait_all([server], 120, check=False)[0]
    finally:
        wait_all([server], 0, check=False)
    print(json.dumps({"server_exit": code, **summarize(res, a.rounds)}, indent=1))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
