"""The FL server: admits clients, runs rounds, collects evaluations, finishes exactly once.

It holds a model and no data, and trusts no peer further than it can check it:
* one event at a time, each behind a guard: whatever one connection sends can at worst close
  that connection (``handle``);
* joins go through ``Admission`` (manifest, tokens; a refused peer learns only a reason class);
* updates and metrics through ``validation`` (keys/shapes/dtypes/finite, declared counts);
* aggregation through the configured rule (``aggregator.robust_rule``), with unverified sample
  counts capped so a claim cannot buy the model.
Liveness is tracked here from the messages themselves (heartbeats included): a dead, silent or
never-answering client is dropped from the round or the evaluation instead of hanging the job.

A round is: train (``MODEL_PARA`` to the sampled clients) -> aggregate -> checkpoint -> evaluate
(when due) -> checkpoint -> next round. Evaluation of round r finishes before round r+1 starts,
so ``eval_results.log`` gets exactly one line per evaluated round, in round order, and a restored
server knows exactly which evaluation it still owes (see ``auxiliaries/checkpoint.py``).
"""
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set

import numpy as np
import torch

from federatedscope.core.aggregators.fedavg import OnlineAggregator
from federatedscope.core.auxiliaries.aggregator_builder import claim_cap, get_aggregator
from federatedscope.core.auxiliaries.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from federatedscope.core.message import (ASSIGN_ID, BROADCAST, EVALUATE, FINISH, HEARTBEAT, JOIN_IN,
                                         METRICS, MODEL_PARA, REDECLARE, REFUSE, SERVER_ID, Message,
                                         clip_text, register_message_type)
from federatedscope.core.monitors.monitor import Monitor
from federatedscope.core.workers.admission import Admission
from federatedscope.core.workers.base_worker import Disconnected, Incoming, ServerComm
from federatedscope.core.workers.server_eval import Evaluation, EvaluationMixin
from federatedscope.core.workers.server_liveness import LivenessMixin
from federatedscope.core.workers.validation import check_update

logger = logging.getLogger("federatedscope")
State = Dict[str, torch.Tensor]
ONLINE_AGGR_FROM = 64      # clients; see doc/config.md (federate.online_aggr)


@dataclass
class ClientRecord:
    client_id: int
    conn_id: int
    online: bool = True
    last_seen: float = field(default_factory=lambda: time.monotonic())
    offline_since: float = 0.0


class Server(EvaluationMixin, LivenessMixin):
    def __init__(self, cfg, model: torch.nn.Module, comm: ServerComm, monitor: Monitor,
                 expected_clients: int, admission: Admission, distributed: bool):
        self.cfg = cfg
        self.model = model
        self.comm = comm
        self.monitor = monitor
        self.expected = expected_clients
        self.admission = admission
        self.distributed = distributed
        self.aggregator = get_aggregator(cfg)
        # O(model) memory instead of O(clients x model): each update is folded in on arrival.
        # On by default from ONLINE_AGGR_FROM clients (FedAvg only; order of arrival then decides
        # float rounding, ~1e-12, which is why small jobs keep the bit-exact batch mean).
        online = cfg.federate.online_aggr or (self.aggregator.rule == "fedavg"
                                              and expected_clients >= ONLINE_AGGR_FROM)
        self.online_aggr = OnlineAggregator() if online else None
        if online and not cfg.federate.online_aggr:
            logger.info(f"Server: {expected_clients} clients: aggregating online "
                        f"(memory O(model), not O(clients x model))")
        self.in_round = False                      # a training round is collecting updates
        self.clients: Dict[int, ClientRecord] = {}
        self.round = 0
        self.total_rounds = cfg.federate.total_round_num
        self.started = self.finished = self.stop_requested = False
        self.exit_code = 0
        self.pending: Set[int] = set()
        self.updates: Dict[int, tuple] = {}        # cid -> (sample size, state)
        self.evaluation: Optional[Evaluation] = None
        self.eval_owed = -1                        # round whose evaluation is due, -1: none
        self.reported_rounds: Set[int] = set()     # rounds already in eval_results.log
        self.round_started = 0.0
        self.created = time.monotonic()
        self.paused_since: Optional[float] = None
        self.round_timed_out = False
        self.global_eval: Optional[Callable[[], dict]] = None  # standalone make_global_eval
        self.threshold = max(1, cfg.federate.min_clients_threshold)
        self.msg_handlers: Dict[str, Callable[[Message], None]] = {}
        self._register_default_handlers()
        self._restore()
        if distributed and not admission.uses_tokens:
            logger.warning("Server: no client tokens configured (distribute.token or token_hash "
                           "in the manifest): a client id is only a claim, and anyone who can "
                           "reach this port may join as a missing client")

    # ------------------------------------------------------------ handlers
    def register_handlers(self, msg_type: str, callback_func: Callable[[Message], None]) -> None:
        """FS's extension point: ``callback_func(message)`` handles ``msg_type`` from a joined
        client (a new type is also let through the transport's validation)."""
        register_message_type(msg_type, sender="client")
        self.msg_handlers[msg_type] = callback_func

    def _register_default_handlers(self) -> None:
        self.msg_handlers.update({HEARTBEAT: lambda msg: None, MODEL_PARA: self._on_model_para,
                                  METRICS: self._on_metrics, REDECLARE: self._on_redeclare})

    # ----------------------------------------------------------------- events
    def handle(self, event) -> None:
        """One event; an error while handling it closes that connection, never the server."""
        try:
            self._dispatch(event)
        except Exception as e:  # noqa: BLE001 - the guard is the point
            conn_id = getattr(event, "conn_id", None)
            what = clip_text(getattr(getattr(event, "msg", None), "msg_type", type(event).__name__), 60)
            logger.error(f"Server: error while handling {what} from connection {conn_id}: "
                         f"{clip_text(repr(e))}; closing that connection", exc_info=logger.isEnabledFor(logging.DEBUG))
            if conn_id is not None:
                for rec in self.clients.values():
                    if rec.conn_id == conn_id and rec.online:
                        self._mark_lost(rec, "dropped after an error in its message")
                self.comm.close(conn_id)

    def _dispatch(self, event) -> None:
        if isinstance(event, Disconnected):
            self._on_disconnect(event.conn_id, event.reason)
            return
        assert isinstance(event, Incoming)
        msg = event.msg
        if msg.msg_type == JOIN_IN:
            self._on_join(event.conn_id, msg, event.peer)
            return
        rec = self.clients.get(msg.sender)
        if rec is None or rec.conn_id != event.conn_id or not rec.online:
            logger.warning(f"Server: dropped {clip_text(msg.msg_type, 40)} from unjoined/stale "
                           f"connection {event.conn_id}")
            return
        rec.last_seen = time.monotonic()
        handler = self.msg_handlers.get(msg.msg_type)
        if handler is None:
            logger.warning(f"Server: client #{msg.sender} sent unexpected "
                           f"{clip_text(msg.msg_type, 40)}; ignored")
            return
        handler(msg)

    def _on_join(self, conn_id: int, msg: Message, peer: str = "") -> None:
        src = f", from {clip_text(peer, 80)}" if peer else ""
        holder = next((r.client_id for r in self.clients.values()
                       if r.conn_id == conn_id and r.online), None)
        if holder is not None:   # one identity per connection: a second join is ignored
            logger.warning(f"Server: client #{holder} sent another join_in on its connection "
                           f"(claiming {clip_text(msg.content.get('client_id'), 40)}); ignored")
            return
        decision = self.admission.admit(msg.content, self._online_ids())
        if not decision.accepted:
            logger.warning(f"Server: refused client (claimed id "
                           f"{clip_text(msg.content.get('client_id'), 40)}{src}): {decision.reason}")
            self.comm.send_to_conn(conn_id, Message(REFUSE, SERVER_ID, -1, self.round,
                                                    {"reason": decision.peer_reason}))
            self.comm.close(conn_id)
            return
        cid = decision.client_id
        rejoin = cid in self.clients
        self.clients[cid] = ClientRecord(cid, conn_id)
        self.comm.bind(conn_id, cid)
        self.comm.send(Message(ASSIGN_ID, SERVER_ID, cid, self.round, {"client_id": cid}))
        modified = msg.content.get("shard_last_modified")
        shard = (f"; shard last modified {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(modified))}"
                 f" UTC" if isinstance(modified, (int, float)) and 0 <= modified < 2 ** 33 else "")
        logger.info(f"Server: client #{cid} {'re-joined' if rejoin else 'joined'}{src} "
                    f"({decision.train_samples} train samples{shard}; "
                    f"{len(self._online_ids())}/{self.expected} online)")
        if decision.train_samples == 0:
            logger.warning(f"Server: client #{cid} declares 0 train samples: it can only evaluate; "
                           f"its updates weigh nothing in FedAvg")
        if not self.started:
            if len(self._online_ids()) >= self.expected:
                self._start()
        elif self.paused_since is not None:
            if len(self._online_ids()) >= self.threshold:
                logger.info("Server: enough clients are back; resuming")
                self.paused_since = None
                self._resume()
        else:
            self._catch_up(cid)

    def _catch_up(self, cid: int) -> None:
        """A client that re-joined mid-round gets the current global model and its pending work."""
        if cid in self.pending and cid not in self.updates:
            self._send_model([cid], MODEL_PARA, self.round)
        if self.evaluation is not None and cid in self.evaluation.waiting:
            self._send_model([cid], EVALUATE, self.evaluation.round)

    def _on_disconnect(self, conn_id: int, reason: str) -> None:
        for rec in self.clients.values():
            if rec.conn_id == conn_id and rec.online:
                self._mark_lost(rec, f"lost ({clip_text(reason)})")

    def _mark_lost(self, rec: ClientRecord, why: str, since: Optional[float] = None) -> None:
        """Offline from now (or ``since``); tick() drops it from waiting sets after the grace."""
        rec.online = False
        rec.offline_since = time.monotonic() if since is None else since
        logger.warning(f"Server: client #{rec.client_id} {why}")

    def _on_redeclare(self, msg: Message) -> None:
        error = msg.content.get("refresh_error")
        if error:
            logger.warning(f"Server: client #{msg.sender} could not load its changed shard "
                           f"({clip_text(error)}); it keeps its previous shard")
        decision = self.admission.redeclare(msg.sender, msg.content["declaration"])
        if not decision.accepted:
            logger.warning(f"Server: Refused re-declaration of client #{msg.sender}: {decision.reason}")
            self.comm.send(Message(REFUSE, SERVER_ID, msg.sender, self.round,
                                   {"reason": decision.peer_reason}))
            self._mark_lost(self.clients[msg.sender], "refused", since=float("-inf"))
            self.comm.close(self.clients[msg.sender].conn_id)
            self.pending.discard(msg.sender)
            self._maybe_finish_round()
            return
        logger.info(f"Server: client #{msg.sender} re-declared its shard "
                    f"({decision.train_samples} train samples)")

    # ----------------------------------------------------------------- rounds
    def _start(self) -> None:
        self.started = True
        logger.info(f"Server: {len(self._online_ids())}/{self.expected} clients joined; starting training "
                    f"(round {self.round + 1}/{self.total_rounds})")
        self._resume()

    def _resume(self) -> None:
        """Continue with whatever is due: an owed evaluation, the current round, or the end."""
        if self.evaluation is not None:
            return                       # its clients were asked; tick() bounds the wait
        if self.eval_owed >= 0:
            self._begin_eval(self.eval_owed)
        elif self.round >= self.total_rounds or self.stop_requested:
            self._finish()
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
        self.in_round = len(self.pending) >= self.threshold
        if not self.in_round:
            # Nobody (or too few) to train: wait for re-joins; tick() enforces the time limit.
            self._pause(f"{len(self.pending)} client(s) online for round {self.round + 1}, fewer "
                        f"than federate.min_clients_threshold={self.threshold}")
            return
        if self.online_aggr is not None:
            self.online_aggr.reset()
        self.round_started = time.monotonic()
        self._send_model(sorted(self.pending), MODEL_PARA, self.round)

    def _on_model_para(self, msg: Message) -> None:
        cid = msg.sender
        if msg.state != self.round or cid not in self.pending or cid in self.updates:
            logger.warning(f"Server: ignored model_para from client #{cid} for round {msg.state} "
                           f"(current round {self.round})")
            return
        declared = self.admission.counts(cid).get("train", 0)
        problem = check_update(self.model.state_dict(), msg.tensors,
                               msg.content.get("sample_size"), declared)
        if not problem:
            problem = self.admission.revalidate([cid]).get(cid)
        if problem:
            logger.warning(f"Server: rejected update of client #{cid}: {problem}")
            self.pending.discard(cid)
        else:
            weight = self._weight(cid, int(msg.content["sample_size"]))
            if self.online_aggr is not None:
                self.online_aggr.add(weight, msg.tensors)
                self.updates[cid] = (weight, None)
            else:
                self.updates[cid] = (weight, msg.tensors)
        self._maybe_finish_round()

    def _weight(self, cid: int, size: int) -> int:
        """FedAvg weight: the declared count, capped when the manifest could not vouch for it and
        the claim came over the network (a standalone simulation has no untrusted peer)."""
        if self.admission.verified(cid) or not self.distributed:
            return size
        cap = claim_cap([self.admission.counts(c).get("train", 0) for c in self.clients],
                        self.cfg.aggregator.max_sample_ratio)
        if size > cap:
            logger.warning(f"Server: client #{cid} claims {size} train samples, unverified; its "
                           f"weight is capped at {cap} (aggregator.max_sample_ratio x the median "
                           f"declared count)")
            return cap
        return size

    def _maybe_finish_round(self) -> None:
        """Aggregate when every sampled client answered, or after a timeout once enough did."""
        if not self.in_round or self.finished or self.stop_requested:
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
        self.paused_since = None
        self._aggregate()

    def _aggregate(self) -> None:
        if self.online_aggr is not None:
            new_state = self.online_aggr.result()
        else:
            new_state = self.aggregator.aggregate(
                self.model.state_dict(), [(cid, w, st) for cid, (w, st) in self.updates.items()])
        self.model.load_state_dict(new_state, strict=True)
        took = time.monotonic() - self.round_started
        contributors, samples = len(self.updates), sum(w for w, _ in self.updates.values())
        self.in_round = False
        self.round += 1
        self.pending, self.updates = set(), {}
        due = self.round >= self.total_rounds or self.round % self.cfg.eval.freq == 0
        self.eval_owed = self.round if due else -1
        self._checkpoint()   # before anything about the next step is announced
        logger.info(f"Server: round {self.round}/{self.total_rounds} aggregated {contributors} "
                    f"update(s) ({samples} samples, rule {self.aggregator.rule}) in {took:.2f}s")
        self._resume()

    def _pause(self, why: str) -> None:
        logger.warning(f"Server: paused: {why}; waiting up to "
                       f"{self.cfg.federate.graceful_termination_timeout:.0f}s for clients to (re)join")
        self.paused_since = time.monotonic()

    def _finish(self) -> None:
        if self.finished:
            return
        summary = self.monitor.final_summary() if -1 not in self.reported_rounds else {}
        self._send_model(sorted(self._online_ids()), FINISH, self.round)
        self.finished = True
        acc = summary.get("Results_weighted_avg", {}).get("test_acc")
        logger.info(f"Server: finished after {self.round} rounds; final weighted-avg test_acc="
                    f"{acc if acc is None else round(acc, 4)}")

    # ------------------------------------------------------------- helpers
    def _online_ids(self) -> Set[int]:
        return {cid for cid, rec in self.clients.items() if rec.online}

    def _send_model(self, cids: List[int], msg_type: str, r: int) -> None:
        """The global model for all receivers: the transport encodes (or copies) it once, before
        returning, so no per-broadcast clone of the model is made here."""
        if not cids:
            return
        state = {k: v.detach() for k, v in self.model.state_dict().items()}
        self.comm.broadcast(Message(msg_type, SERVER_ID, BROADCAST, r, {}, state), cids)

    def _checkpoint(self) -> None:
        """Best effort: a full disk must not stall the job (the old file stays whole: temp +
        rename); the error names the path, every time it happens."""
        path = self.cfg.federate.save_to
        if not path:
            return
        try:
            save_checkpoint(path, Checkpoint(self.round, self.model.state_dict(),
                                             torch.get_rng_state(), self.cfg.seed,
                                             eval_owed=self.eval_owed,
                                             monitor=self.monitor.state_dict()))
        except OSError as e:
            logger.error(f"Server: cannot write the checkpoint {path} ({e}); the job goes on, but "
                         f"a restart would resume from the last checkpoint written (free space or "
                         f"point federate.save_to elsewhere)")

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
        self.round, self.eval_owed = ckpt.round, ckpt.eval_owed
        # The log is the truth about what was reported (it may be one line ahead of the file).
        self.reported_rounds = self.monitor.resume_from_log()
        owed = f"; evaluation of round {self.eval_owed} is owed" \
            if self.eval_owed >= 0 and self.eval_owed not in self.reported_rounds else ""
        logger.info(f"Server: restored round {self.round} from {path}{owed}")
