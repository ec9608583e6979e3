"""The FL server: admits clients, runs FedAvg rounds, collects evaluations, finishes exactly once.

It holds a model and no data. Every client claim is checked: its id and shard declaration against
the manifest (when one is configured), its token against the manifest's token hash, its updates
against the global model's keys/shapes/dtypes and its declared train count. Liveness is tracked
here from the messages themselves (heartbeats included), so a dead or silent client is dropped from
the round instead of hanging it.
"""
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import torch

from federatedscope.core.aggregators.fedavg import ClientsAvgAggregator, OnlineAggregator
from federatedscope.core.auxiliaries.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from federatedscope.core.message import (ASSIGN_ID, EVALUATE, FINISH, HEARTBEAT, JOIN_IN, METRICS,
                                         MODEL_PARA, REDECLARE, REFUSE, SERVER_ID, BROADCAST,
                                         Message)
from federatedscope.core.monitors.monitor import Monitor
from federatedscope.core.workers.admission import Admission
from federatedscope.core.workers.base_worker import Disconnected, Incoming, ServerComm

logger = logging.getLogger("federatedscope")
State = Dict[str, torch.Tensor]


@dataclass
class ClientRecord:
    client_id: int
    conn_id: int
    train_samples: int
    online: bool = True
    last_seen: float = field(default_factory=time.monotonic)
    offline_since: float = 0.0


class Server:
    def __init__(self, cfg, model: torch.nn.Module, comm: ServerComm, monitor: Monitor,
                 expected_clients: int, admission: Admission, distributed: bool):
        self.cfg = cfg
        self.model = model
        self.comm = comm
        self.monitor = monitor
        self.expected = expected_clients
        self.admission = admission
        self.distributed = distributed
        self.clients: Dict[int, ClientRecord] = {}
        self.round = 0
        self.total_rounds = cfg.federate.total_round_num
        self.started = False
        self.finished = False
        self.exit_code = 0
        self.pending: Set[int] = set()
        self.updates: Dict[int, Tuple[int, State]] = {}
        self.online_aggr = OnlineAggregator() if cfg.federate.online_aggr else None
        self.eval_pending: Dict[int, Set[int]] = {}
        self.eval_results: Dict[int, Dict[int, dict]] = {}
        self.round_started = 0.0
        self.created = time.monotonic()
        self.paused_since: Optional[float] = None
        self.round_timed_out = False
        self.global_eval = None   # optional callable: the server's own evaluation (standalone)
        self.stop_requested = False
        self.final_eval_round: Optional[int] = None
        self.threshold = max(1, cfg.federate.min_clients_threshold)
        self._restore()

    # ----------------------------------------------------------------- events
    def handle(self, event) -> None:
        if isinstance(event, Disconnected):
            self._on_disconnect(event.conn_id, event.reason)
            return
        assert isinstance(event, Incoming)
        msg = event.msg
        rec = self.clients.get(msg.sender)
        if msg.msg_type == JOIN_IN:
            self._on_join(event.conn_id, msg, event.peer)
            return
        if rec is None or rec.conn_id != event.conn_id or not rec.online:
            logger.warning(f"Dropped {msg.msg_type} from unjoined/stale connection {event.conn_id}")
            return
        rec.last_seen = time.monotonic()
        if msg.msg_type == HEARTBEAT:
            return
        handler = {MODEL_PARA: self._on_model_para, METRICS: self._on_metrics,
                   REDECLARE: self._on_redeclare}.get(msg.msg_type)
        if handler is None:
            logger.warning(f"Client #{msg.sender} sent unexpected {msg.msg_type}; ignored")
            return
        handler(msg)

    def _on_join(self, conn_id: int, msg: Message, peer: str = "") -> None:
        decision = self.admission.admit(msg.content, self._online_ids())
        if not decision.accepted:
            logger.warning(f"Refused client (claimed id {msg.content.get('client_id')}"
                           f"{', from ' + peer if peer else ''}): "
                           f"{decision.reason}")
            self.comm.send_to_conn(conn_id, Message(REFUSE, SERVER_ID, -1, self.round,
                                                    {"reason": decision.reason}))
            self.comm.close(conn_id)
            return
        cid = decision.client_id
        rejoin = cid in self.clients
        self.clients[cid] = ClientRecord(cid, conn_id, decision.train_samples)
        self.comm.bind(conn_id, cid)
        self.comm.send(Message(ASSIGN_ID, SERVER_ID, cid, self.round, {"client_id": cid}))
        logger.info(f"Server: client #{cid} {'re-joined' if rejoin else 'joined'}"
                    f"{' from ' + peer if peer else ''} "
                    f"({decision.train_samples} train samples; {len(self._online_ids())}/"
                    f"{self.expected} online)")
        if not self.started:
            if len(self._online_ids()) >= self.expected:
                self._start()
        elif self.paused_since is not None:
            if len(self._online_ids()) >= self.threshold:
                logger.info("Server: enough clients are back; restarting the round")
                self.paused_since = None
                self._begin_round()
        else:
            self._catch_up(cid)

    def _catch_up(self, cid: int) -> None:
        """A client that re-joined mid-round gets the current global model and its pending work."""
        if cid in self.pending and cid not in self.updates:
            self._send_model([cid], MODEL_PARA, self.round)
        for r, waiting in self.eval_pending.items():
            if cid in waiting:
                self._send_model([cid], EVALUATE, r)

    def _on_disconnect(self, conn_id: int, reason: str) -> None:
        for rec in self.clients.values():
            if rec.conn_id == conn_id and rec.online:
                self._mark_lost(rec, f"lost ({reason})")

    def _mark_lost(self, rec: ClientRecord, why: str, since: Optional[float] = None) -> None:
        """Offline from now (or ``since``); tick() drops it from waiting sets after the grace."""
        rec.online = False
        rec.offline_since = time.monotonic() if since is None else since
        logger.warning(f"Server: client #{rec.client_id} {why}")

    def _on_redeclare(self, msg: Message) -> None:
        decision = self.admission.redeclare(msg.sender, msg.content["declaration"])
        rec = self.clients[msg.sender]
        if not decision.accepted:
            logger.warning(f"Refused re-declaration of client #{msg.sender}: {decision.reason}")
            self.comm.send(Message(REFUSE, SERVER_ID, msg.sender, self.round, {"reason": decision.reason}))
            self._mark_lost(rec, "refused", since=-math.inf)  # never waited for again
            self.comm.close(rec.conn_id)
            self.pending.discard(msg.sender)
            self._maybe_finish_round()
            return
        rec.train_samples = decision.train_samples
        logger.info(f"Server: client #{msg.sender} re-declared its shard "
                    f"({decision.train_samples} train samples)")

    # ----------------------------------------------------------------- rounds
    def _start(self) -> None:
        self.started = True
        logger.info(f"Server: {len(self._online_ids())}/{self.expected} clients joined; starting training "
                    f"(round {self.round + 1}/{self.total_rounds})")
        if self.round >= self.total_rounds:
            self._begin_eval(self.round, final=True)
        else:
            self._begin_round()

    def _sample(self) -> List[int]:
        online = sorted(self._online_ids())
        f = self.cfg.federate
        if f.sample_client_num > 0:
            k = min(f.sample_client_num, len(online))
        elif f.sample_client_rate > 0:
            k = max(1, int(f.sample_client_rate * len(online)))
        else:
            return online
        # Derived from (seed, round): reproducible after a restart without saving RNG state.
        rng = np.random.default_rng([self.cfg.seed, self.round])
        return sorted(int(c) for c in rng.choice(online, size=k, replace=False))

    def _begin_round(self) -> None:
        self.pending = set(self._sample())
        self.updates = {}
        self.round_timed_out = False
        if len(self.pending) < self.threshold:
            # Nobody (or too few) to train: wait for re-joins; tick() enforces the time limit.
            self._pause(f"{len(self.pending)} client(s) online for round {self.round + 1}, fewer "
                        f"than federate.min_clients_threshold={self.threshold}")
            return
        if self.online_aggr:
            self.online_aggr.reset()
        self.round_started = time.monotonic()
        self._send_model(sorted(self.pending), MODEL_PARA, self.round)

    def _on_model_para(self, msg: Message) -> None:
        cid = msg.sender
        if msg.state != self.round or cid not in self.pending or cid in self.updates:
            logger.warning(f"Server: ignored model_para from client #{cid} for round {msg.state} "
                           f"(current round {self.round})")
            return
        problem = self._check_update(cid, msg)
        if problem:
            logger.warning(f"Server: rejected update of client #{cid}: {problem}")
            self.pending.discard(cid)
        else:
            size = int(msg.content["sample_size"])
            if self.online_aggr:
                self.online_aggr.add(size, msg.tensors)
                self.updates[cid] = (size, {})
            else:
                self.updates[cid] = (size, msg.tensors)
        self._maybe_finish_round()

    def _check_update(self, cid: int, msg: Message) -> Optional[str]:
        ref = self.model.state_dict()
        got = msg.tensors or {}
        if set(got) != set(ref):
            return f"state keys differ from the global model ({sorted(set(got) ^ set(ref))[:3]})"
        for k, t in got.items():
            if t.shape != ref[k].shape or t.dtype != ref[k].dtype:
                return f"{k}: {t.dtype}{list(t.shape)} != {ref[k].dtype}{list(ref[k].shape)}"
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return f"{k} has non-finite values"
        declared = self.clients[cid].train_samples
        if int(msg.content["sample_size"]) != declared:
            return f"sample_size {msg.content['sample_size']} != declared train count {declared}"
        return None

    def _maybe_finish_round(self) -> None:
        """Aggregate when every sampled client answered, or after a timeout once enough did."""
        if not self.started or self.finished or self.stop_requested:
            return
        outstanding = self.pending - set(self.updates)
        enough = len(self.updates) >= self.threshold
        if outstanding and not (self.round_timed_out and enough):
            return
        if not enough:
            if self.paused_since is None:
                self._pause(f"only {len(self.updates)} update(s) in round {self.round + 1}, fewer "
                            f"than federate.min_clients_threshold={self.threshold}")
            return
        if outstanding:
            logger.warning(f"Server: round {self.round + 1}: aggregating without {sorted(outstanding)}")
        problems = self.admission.revalidate(sorted(self.updates))
        for cid, reason in problems.items():
            logger.warning(f"Server: client #{cid} left out of aggregation: {reason}")
            self.updates.pop(cid, None)
        if not self.updates:
            self._pause("no valid update left after re-validation")
            return
        self.paused_since = None
        self._aggregate()

    def _aggregate(self) -> None:
        if self.online_aggr:
            new_state = self.online_aggr.result()
        else:
            new_state = ClientsAvgAggregator().aggregate(
                [(cid, size, state) for cid, (size, state) in self.updates.items()])
        self.model.load_state_dict(new_state, strict=True)
        took = time.monotonic() - self.round_started
        logger.info(f"Server: round {self.round + 1}/{self.total_rounds} aggregated "
                    f"{len(self.updates)} update(s) ({sum(s for s, _ in self.updates.values())} "
                    f"samples) in {took:.2f}s")
        self.round += 1
        self.pending, self.updates = set(), {}
        self._checkpoint()
        final = self.round >= self.total_rounds
        if final or self.round % self.cfg.eval.freq == 0:
            self._begin_eval(self.round, final)
        if not final and not self.stop_requested:
            self._begin_round()

    def _pause(self, why: str) -> None:
        logger.warning(f"Server: paused: {why}; waiting up to "
                       f"{self.cfg.federate.graceful_termination_timeout:.0f}s for clients to (re)join")
        self.paused_since = time.monotonic()

    # ------------------------------------------------------------- evaluation
    def _begin_eval(self, r: int, final: bool) -> None:
        targets = set(self._online_ids())
        self.eval_pending[r] = targets
        self.eval_results[r] = {}
        if final:
            self.final_eval_round = r
        self._send_model(sorted(targets), EVALUATE, r)
        self._maybe_finish_eval(r)

    def _on_metrics(self, msg: Message) -> None:
        r = msg.state
        if r not in self.eval_pending or msg.sender not in self.eval_pending[r]:
            logger.warning(f"Server: ignored metrics from client #{msg.sender} for round {r}")
            return
        self.eval_pending[r].discard(msg.sender)
        self.eval_results[r][msg.sender] = dict(msg.content["results"])
        self._maybe_finish_eval(r)

    def _maybe_finish_eval(self, r: int) -> None:
        if self.eval_pending.get(r):
            return
        results = self.eval_results.pop(r, {})
        self.eval_pending.pop(r, None)
        if self.global_eval is not None:
            results = {SERVER_ID: self.global_eval()}  # FS: global eval replaces the clients'
        self.monitor.report(r, results)
        if self.monitor.should_stop_early() and not self.stop_requested:
            logger.info(f"Server: early stop after round {r} (no improvement of "
                        f"{self.monitor.key} for {self.cfg.early_stop.patience} evaluations)")
            self.stop_requested = True
            self.pending, self.updates = set(), {}
        if r == self.final_eval_round or (self.stop_requested and not self.eval_pending):
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        summary = self.monitor.final_summary()
        self._send_model(sorted(self._online_ids()), FINISH, self.round)
        self.finished = True
        acc = summary["Results_weighted_avg"].get("test_acc")
        logger.info(f"Server: finished after {self.round} rounds; final weighted-avg test_acc="
                    f"{acc if acc is None else round(acc, 4)}")

    # ----------------------------------------------------------- liveness
    def next_deadline(self) -> float:
        """Seconds until ``tick`` has something to check (the runner sleeps on its inbox until then)."""
        return max(0.05, min(self.cfg.distribute.heartbeat_timeout / 2, 5.0))

    def tick(self) -> None:
        if not self.distributed or self.finished:
            return
        now = time.monotonic()
        hb = self.cfg.distribute.heartbeat_timeout
        for rec in self.clients.values():
            if rec.online and hb > 0 and now - rec.last_seen > hb:
                self._mark_lost(rec, f"silent for {now - rec.last_seen:.0f}s "
                                     f"(> distribute.heartbeat_timeout); marking it lost", now)
                self.comm.close(rec.conn_id)
        if not self.started:
            jt = self.cfg.federate.join_timeout
            online = len(self._online_ids())
            if jt > 0 and now - self.created > jt and online >= self.threshold:
                logger.warning(f"Server: federate.join_timeout={jt:.0f}s passed with {online}/"
                               f"{self.expected} clients; starting with those")
                self._start()
            return
        grace = hb if hb > 0 else 30.0
        gone = {c.client_id for c in self.clients.values() if not c.online and now - c.offline_since > grace}
        if self.pending - set(self.updates) & gone:
            dropped = sorted((self.pending - set(self.updates)) & gone)
            logger.warning(f"Server: dropping lost client(s) {dropped} from round {self.round + 1}")
            self.pending -= set(dropped)
            self._maybe_finish_round()
        rt = self.cfg.federate.round_timeout
        if rt > 0 and not self.round_timed_out and self.pending - set(self.updates) \
                and now - self.round_started > rt:
            late = sorted(self.pending - set(self.updates))
            logger.warning(f"Server: round {self.round + 1} timed out after {rt:.0f}s; "
                           f"stragglers {late} are no longer waited for once "
                           f"{self.threshold} update(s) are in")
            self.round_timed_out = True
            self._maybe_finish_round()
        for r in list(self.eval_pending):
            lost = self.eval_pending[r] & gone
            if lost:
                self.eval_pending[r] -= lost
                self._maybe_finish_eval(r)
        if self.paused_since is not None and \
                now - self.paused_since > self.cfg.federate.graceful_termination_timeout:
            self._checkpoint()
            logger.error(f"Server: gave up after waiting {self.cfg.federate.graceful_termination_timeout:.0f}s "
                         f"for clients; {self.round} round(s) done and checkpointed"
                         + (f" to {self.cfg.federate.save_to}" if self.cfg.federate.save_to else "")
                         + "; restart with federate.restore_from to continue")
            self.finished = True
            self.exit_code = 3

    # ------------------------------------------------------------- helpers
    def _online_ids(self) -> Set[int]:
        return {cid for cid, rec in self.clients.items() if rec.online}

    def _send_model(self, cids: List[int], msg_type: str, r: int) -> None:
        """One snapshot of the global model for all receivers (encoded once by the transport)."""
        if not cids:
            return
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.comm.broadcast(Message(msg_type, SERVER_ID, BROADCAST, r, {}, state), cids)

    def _checkpoint(self) -> None:
        path = self.cfg.federate.save_to
        if path:
            save_checkpoint(path, Checkpoint(self.round, self.model.state_dict(),
                                             torch.get_rng_state(), self.cfg.seed))

    def _restore(self) -> None:
        path = self.cfg.federate.restore_from
        if not path:
            return
        ckpt = load_checkpoint(path)
        if ckpt is None:
            logger.info(f"Server: no checkpoint at {path} yet; starting from round 0")
            return
        self.model.load_state_dict(ckpt.model, strict=True)
        torch.set_rng_state(ckpt.torch_rng)
        self.round = ckpt.round
        logger.info(f"Server: restored round {self.round} from {path}")
