"""The FL server: admits clients, runs rounds, collects evaluations, finishes exactly once.

It holds a model and no data, and trusts no peer further than it can check it:
* one event at a time, each behind a guard: one connection's messages can at worst close it
  (``handle``); a failed *write* is the server's own problem (``WriteGuard``), never a client's;
* joins go through ``Admission`` (manifest, tokens, ids; a refused peer learns only a reason class);
* updates and metrics through ``validation`` (keys/shapes/dtypes/finite, declared counts);
* sampling, weighting and aggregation through one strategy object (``get_aggregator``).
Messages go through FS's handler registry (``Worker``, ``callback_funcs_*``), a round through FS's
steps (``check_client_join_in``, ``trigger_for_start``, ``check_and_move_on``, ``eval``,
``terminate``, ``_perform_federated_aggregation``, ``_start_new_training_round``): overrides work.

A round is: train -> aggregate -> checkpoint -> evaluate (when due) -> checkpoint -> next round;
the state is one ``RoundState`` with a ``Phase`` (``server_state.py``). Every state change is made
before the write that records it, so a full disk cannot leave an evaluation in flight.
"""
import logging
import secrets
import time
from typing import Callable, Optional, Set

import torch

from federatedscope.core.auxiliaries.aggregator_builder import get_aggregator
from federatedscope.core.aggregators.aggregator import AggregationFault
from federatedscope.core.message import (EVALUATE, FINISH, HEARTBEAT, JOIN_IN, METRICS,
                                         MODEL_PARA, REDECLARE, SERVER_ID, Message, clip_text)
from federatedscope.core.monitors.monitor import Monitor
from federatedscope.core.monitors.write_guard import RESULTS_UNWRITABLE, guard_log_files
from federatedscope.core.communication.transport import Disconnected, Incoming, ServerComm
from federatedscope.core.workers.admission import Admission
from federatedscope.core.workers.client_table import ClientTable
from federatedscope.core.workers.base_worker import Worker
from federatedscope.core.workers.server_eval import Evaluation
from federatedscope.core.workers.server_liveness import Liveness
from federatedscope.core.workers.server_state import Phase, RoundState, Step
from federatedscope.core.workers.server_store import ServerStore
from federatedscope.core.workers.validation import all_refused, check_update, update_reference

logger = logging.getLogger("federatedscope")
GAVE_UP, DIVERGED = 3, 5


class Server(Worker):
    peer_role = "client"
    default_handlers = (
        (JOIN_IN, "callback_funcs_for_join_in"), (MODEL_PARA, "callback_funcs_model_para"),
        (METRICS, "callback_funcs_for_metrics"), (REDECLARE, "callback_funcs_for_redeclare"),
        (HEARTBEAT, "callback_funcs_for_heartbeat"))

    def __init__(self, ID: int = SERVER_ID, state: int = 0, config=None, data=None,
                 model: Optional[torch.nn.Module] = None, client_num: Optional[int] = None,
                 total_round_num: Optional[int] = None, device="cpu", strategy=None, *,
                 comm: ServerComm, monitor: Monitor, admission: Admission,
                 distributed: bool = False, **kwargs):
        """FS's arguments in FS's order (an FS subclass passes them on), then what FS builds inside.
        The id is always ``SERVER_ID``, the first round the checkpoint's; ``strategy`` is unused."""
        super().__init__(SERVER_ID, config, comm)
        guard_log_files(logger)
        expected = self.client_num = config.federate.client_num if client_num is None else client_num
        self.model, self.data, self.device = model, data, device
        self.update_ref = update_reference(model)   # what every update must match
        self.monitor, self.admission, self.distributed = monitor, admission, distributed
        self.aggregator = get_aggregator(config, expected, distributed)
        self.liveness = Liveness(config, expected)   # refuses a threshold no round reaches
        self.store = ServerStore(config, monitor)
        restored = self.store.restore(model, self.aggregator)
        self.round_state = RoundState(round=restored.round, eval_owed=restored.eval_owed) \
            if restored else RoundState()
        self.clients = ClientTable(admission, comm, expected)
        self.total_round_num = \
            config.federate.total_round_num if total_round_num is None else total_round_num
        self.reported_rounds = restored.reported_rounds if restored else set()   # in the results
        self.created = time.monotonic()
        self.global_eval: Optional[Callable[[], dict]] = None  # standalone make_global_eval
        self.threshold = self.liveness.threshold
        self._event: Optional[Incoming] = None     # the event being handled (join: its conn)
        # Names this job (kept in the checkpoint): a client restores personal state of this job only
        self.clients.job_id = (restored and restored.job_id) or secrets.token_hex(8)
        self.clients.follow(self.aggregator)
        if distributed:
            admission.warn_if_open()

    finished = property(lambda self: self.round_state.phase is Phase.FINISHED)
    exit_code = property(lambda self: self.round_state.exit_code)
    round = property(lambda self: self.round_state.round)

    @property
    def state(self) -> int:
        """FS's ``state``: the rounds completed (``round_state`` holds the rest)."""
        return self.round_state.round

    @state.setter
    def state(self, value: int) -> None:
        self.round_state.round = value

    # ----------------------------------------------------------------- events
    def handle(self, event) -> None:
        """One event; an error while handling it closes that connection, never the server."""
        try:
            self._route(event)
        except Exception as e:  # noqa: BLE001 - the guard is the point
            conn_id = getattr(event, "conn_id", None)
            what = clip_text(getattr(getattr(event, "msg", None), "msg_type", type(event).__name__), 60)
            logger.error(f"Server: error while handling {what} from connection {conn_id}: "
                         f"{clip_text(repr(e))}; closing that connection",
                         exc_info=logger.isEnabledFor(logging.DEBUG))
            self.clients.close_conn(conn_id, "dropped after an error in its message")
        finally:
            self._event = None

    def _route(self, event) -> None:
        if isinstance(event, Disconnected):
            self.clients.disconnected(event)
            return
        assert isinstance(event, Incoming)
        msg, self._event = event.msg, event
        if msg.msg_type != JOIN_IN:
            rec = self.clients.get(msg.sender)
            if rec is None or rec.conn_id != event.conn_id or not rec.online:
                logger.warning(f"Server: dropped {clip_text(msg.msg_type, 40)} from unjoined/stale "
                               f"connection {event.conn_id}")
                return
            rec.last_seen = time.monotonic()
        if not self.dispatch(msg):
            logger.warning(f"Server: client #{msg.sender} sent unexpected "
                           f"{clip_text(msg.msg_type, 40)}; ignored")

    def callback_funcs_for_heartbeat(self, msg: Message) -> None:
        """Nothing beyond ``last_seen`` (the gRPC transport keeps beats: ``ServerComm.last_heard``)."""

    def callback_funcs_for_join_in(self, msg: Message) -> None:
        cid = self.clients.join(self._event.conn_id, self._event.peer, msg.content, self.round)
        if cid is None:
            return
        phase, online = self.round_state.phase, self.clients.online_count()
        if phase is Phase.JOINING:
            if self.check_client_join_in():
                self.trigger_for_start()
        elif phase is Phase.PAUSED:
            if online >= self.threshold:
                logger.info("Server: enough clients are back; resuming")
                self._resume()
        elif phase is Phase.TRAINING and cid in self.round_state.pending:
            self.clients.send_model(self.model, MODEL_PARA, self.round, [cid])   # catch up
        elif phase is Phase.EVALUATING and cid in self.round_state.evaluation.waiting:
            self.clients.send_model(self.model, EVALUATE, self.round_state.evaluation.round, [cid])

    def callback_funcs_for_redeclare(self, msg: Message) -> None:
        if not self.clients.redeclare(msg.sender, msg.content, self.round):
            self.round_state.pending.discard(msg.sender)
            self.check_and_move_on()

    # ----------------------------------------------------------------- rounds
    def check_client_join_in(self) -> bool:
        """FS's start condition: every expected client has joined."""
        return self.clients.online_count() >= self.client_num

    def trigger_for_start(self) -> None:
        what = f"starting training (round {self.round + 1}/{self.total_round_num})" \
            if self.round < self.total_round_num else f"no round left to train ({self.round}/" \
            f"{self.total_round_num} done)"
        logger.info(f"Server: {self.clients.online_count()}/{self.client_num} clients joined; {what}")
        self._resume()

    def _resume(self) -> None:
        """Continue with whatever is due: an owed evaluation, the next round, or the end."""
        st = self.round_state
        if st.phase is Phase.EVALUATING or st.phase is Phase.FINISHED:
            return                       # its clients were asked; tick() bounds the wait
        if st.eval_owed is not None:
            self.eval()
        elif self.round >= self.total_round_num or st.stop_requested:
            self.terminate()
        else:
            self._start_new_training_round()

    def _start_new_training_round(self, aggregated_num: int = 0) -> None:
        """Sample the round's clients, send them the model (``aggregated_num``: FS's, unused)."""
        sampled = self.aggregator.sample(self.clients.online_ids(), self.round)
        if len(sampled) < self.threshold:
            # Nobody (or too few) to train: wait for re-joins; tick() enforces the time limit.
            self.round_state.sampled, self.round_state.pending = set(), set()
            self._pause(self.liveness.too_few_to_train(len(sampled), self.clients.online_count(),
                                                       self.round + 1))
            return
        self.round_state.begin_round(set(sampled), time.monotonic())
        self.aggregator.begin_round()
        self.clients.send_model(self.model, MODEL_PARA, self.round, sampled)

    def callback_funcs_model_para(self, msg: Message) -> None:
        cid, st = msg.sender, self.round_state
        if msg.state != self.round or cid not in st.pending or \
                st.phase not in (Phase.TRAINING, Phase.PAUSED):
            logger.warning(f"Server: ignored model_para from client #{cid} for round {msg.state} "
                           f"(current round {self.round})")
            return
        st.pending.discard(cid)
        problem = check_update(self.update_ref, msg.tensors, self.aggregator.local_param) or \
            self.admission.check_sample_size(cid, msg.content.get("sample_size"))
        if not problem:
            problem = self.admission.revalidate([cid]).get(cid)
        if problem:
            logger.warning(f"Server: rejected update of client #{cid}: {problem}")
            st.refused[cid] = problem
        else:
            weight = self.aggregator.weight(cid, int(msg.content["sample_size"]),
                                            self.admission.verified(cid), self.clients.train_counts())
            self.aggregator.add(cid, weight, msg.tensors)
        self.check_and_move_on()

    def check_and_move_on(self, check_eval_result: bool = False,
                          min_received_num: Optional[int] = None) -> bool:
        """FS's step: move on once the round (``check_eval_result``: the evaluation) has what it
        waits for (``RoundState.round_step``; ``min_received_num`` is FS's buffer size); True
        when it moved on."""
        if check_eval_result:
            return self._maybe_finish_eval()
        st, got = self.round_state, len(self.aggregator.feedback)
        step = st.round_step(got, self.threshold, min_received_num)
        if step is Step.DIVERGED:
            self._stop(DIVERGED, all_refused(self.round + 1, st.refused))
        elif step is Step.TOO_FEW and st.phase is not Phase.PAUSED:
            self._pause(f"only {got} update(s) in round {self.round + 1}, fewer than "
                        f"federate.min_clients_threshold={self.threshold}")
        if step is not Step.AGGREGATE:
            return False
        if st.pending:
            logger.warning(f"Server: round {self.round + 1}: aggregating without {sorted(st.pending)}")
        took, samples = time.monotonic() - st.started_at, self.aggregator.total_weight
        try:
            aggregated = self._perform_federated_aggregation()
        except AggregationFault as e:   # the rule's fault, not a client's: stop, blame nobody
            self._stop(1, str(e))
            return False
        due = self.round + 1 >= self.total_round_num or (self.round + 1) % self.cfg.eval.freq == 0
        st.end_round(due)
        self._checkpoint()   # before anything about the next step is announced
        logger.info(f"Server: round {self.round}/{self.total_round_num} aggregated {aggregated} "
                    f"update(s) ({samples} samples, rule {self.aggregator.rule}) in {took:.3f}s")
        self._resume()
        return True

    def _perform_federated_aggregation(self) -> int:
        """The round's updates, weighed by the strategy, into the global model; returns how many."""
        aggregated = len(self.aggregator.feedback)
        self.model.load_state_dict(self.aggregator.finish_round(self.model.state_dict()))
        return aggregated

    def _pause(self, why: str) -> None:
        logger.warning(f"Server: paused: {why}; waiting up to "
                       f"{self.liveness.patience:.0f}s for clients to (re)join")
        self.round_state.pause(time.monotonic())

    # ------------------------------------------------------------- evaluation
    def eval(self) -> None:
        """Evaluate the owed round on the clients (FS's ``make_global_eval``: the server's data)."""
        st = self.round_state
        r = st.eval_owed
        if r in self.reported_rounds:    # written before a restart: never twice
            st.eval_owed = None
            self._resume()
            return
        # FS's make_global_eval: the server evaluates on its own data and asks no client
        asked = set() if self.global_eval is not None else self.clients.online_ids()
        st.phase, st.evaluation = Phase.EVALUATING, Evaluation(r, asked)
        self.clients.send_model(self.model, EVALUATE, r, st.evaluation.waiting)
        self.check_and_move_on(check_eval_result=True)

    def callback_funcs_for_metrics(self, msg: Message) -> None:
        ev = self.round_state.evaluation
        if ev is None or not ev.expects(msg.sender, msg.state):
            logger.warning(f"Server: ignored metrics from client #{msg.sender} for round {msg.state}")
            return
        problem = ev.accept(msg.sender, msg.content["results"], self.admission.counts(msg.sender),
                            self.cfg.eval.split)
        if problem:
            logger.warning(f"Server: refused the metrics of client #{msg.sender} for round "
                           f"{ev.round}: {clip_text(problem)}")
        self.check_and_move_on(check_eval_result=True)

    def _maybe_finish_eval(self, timed_out: bool = False) -> bool:
        st, ev = self.round_state, self.round_state.evaluation
        if ev is None or not (ev.done or timed_out):
            return False
        results = ev.results
        if self.global_eval is not None:
            results = {SERVER_ID: self.global_eval()}  # FS: global eval replaces the clients'
        missing = self.clients.missing_from(ev.results) if self.global_eval is None else set()
        if not results and self.clients.online_count() < self.threshold:
            # No line: it would count as reported, here and after a restore; the round stays owed.
            self._pause(f"the evaluation of round {ev.round} got no results (missing "
                        f"{sorted(missing)}); it stays owed, none written")
            return False
        # State first, writes after: a write that fails cannot leave the evaluation in flight.
        self.monitor.report(ev.round, results, missing=sorted(missing),
                            source="the server's own data" if self.global_eval else "")
        self.reported_rounds.add(ev.round)
        st.evaluation, st.eval_owed, st.phase = None, None, Phase.TRAINING
        if self.monitor.should_stop_early() and not st.stop_requested:
            logger.info(f"Server: early stop after round {ev.round} (no improvement of "
                        f"{self.monitor.key} for {self.cfg.early_stop.patience} evaluations)")
            st.stop_requested = True
        self._write_results()
        self._checkpoint()
        self._resume()
        return True

    # ------------------------------------------------------------------ clock
    def next_deadline(self) -> float:
        return self.liveness.next_deadline()

    def tick(self) -> None:
        if not self.distributed or self.finished:
            return
        now, st, live = time.monotonic(), self.round_state, self.liveness
        self.clients.join_lines.tick()
        for rec in live.silent(self.clients.values(), now, self.comm.last_heard):
            self.clients.drop(rec, f"silent for {now - rec.last_seen:.0f}s "
                                   f"(> distribute.heartbeat_timeout); marking it lost", now)
        if st.phase is Phase.JOINING:
            online = self.clients.online_count()
            if not live.join_overdue(self.created, now):
                return
            if online >= self.threshold:
                logger.warning(f"Server: federate.join_timeout={live.join_timeout:.0f}s passed "
                               f"with {online}/{self.client_num} clients; starting with those")
                self.trigger_for_start()
            elif short := live.join_short(self.created, now, online, self.client_num):
                logger.warning(short)    # once per join_timeout period
            return
        gone = live.gone(self.clients.values(), now)
        dropped = sorted(st.pending & gone)
        if dropped:
            logger.warning(f"Server: dropping lost client(s) {dropped} from round {self.round + 1}")
            st.pending -= set(dropped)
            self.check_and_move_on()
        if st.phase is Phase.TRAINING and st.pending and not st.timed_out \
                and live.round_overdue(st.started_at, now):
            logger.warning(f"Server: round {self.round + 1} timed out after "
                           f"{live.round_timeout:.0f}s; stragglers {sorted(st.pending)} are no "
                           f"longer waited for once {self.threshold} update(s) are in")
            st.timed_out = True
            self.check_and_move_on()
        self._tick_eval(now, gone)
        if st.phase is Phase.PAUSED and live.pause_overdue(st.paused_since, now):
            self._stop(GAVE_UP, live.give_up(self.round, self._checkpoint()), tell_clients=False)
        self._check_results_writable(now)

    def _tick_eval(self, now: float, gone: Set[int]) -> None:
        ev = self.round_state.evaluation
        if ev is None:
            return
        lost = ev.drop(gone)
        if lost:
            logger.warning(f"Server: evaluation of round {ev.round}: clients {sorted(lost)} are "
                           f"lost; not waiting for them")
            self.check_and_move_on(check_eval_result=True)
        elif self.liveness.eval_overdue(ev, now):
            logger.warning(f"Server: evaluation of round {ev.round} timed out after "
                           f"{self.liveness.eval_timeout:.0f}s (federate.eval_timeout / "
                           f"round_timeout) without {sorted(ev.waiting)}")
            self._maybe_finish_eval(timed_out=True)

    # ------------------------------------------------------------------ end
    def terminate(self, msg_type: str = FINISH) -> None:
        """The end after the last round: the clients are told (``msg_type``), results written."""
        if self.finished:
            return
        summary = self.monitor.final_summary()
        self.clients.send_model(self.model, msg_type, self.round)
        self.round_state.finish(0)
        acc = summary["Results_weighted_avg"].get("test_acc")   # {} when none was reported
        logger.info(f"Server: finished after {self.round} rounds; final weighted-avg test_acc="
                    f"{acc if acc is None else round(acc, 4)}")
        if not self._write_results():
            self._stop(RESULTS_UNWRITABLE, self.store.results_lost())
        else:
            self.store.write_curves()

    def _stop(self, code: int, why: str, tell_clients: bool = True) -> None:
        """End the job with exit ``code`` (see ``server_state``); clients still online are told."""
        if tell_clients and not self.finished:
            self.clients.send_model(self.model, FINISH, self.round)
        logger.error(f"Server: stopping with exit code {code}: {why}")
        self.round_state.finish(code)

    # ------------------------------------------------------------------ writes
    def _write_results(self) -> bool:
        ok = self.store.write_results()
        self._check_results_writable()
        return ok

    def _check_results_writable(self, now: Optional[float] = None) -> None:
        if not self.finished and self.store.results_overdue(now):
            self._stop(RESULTS_UNWRITABLE, self.store.results_overdue_text())

    def _checkpoint(self) -> bool:
        return self.store.checkpoint(self.round, self.model.state_dict(), self.round_state.eval_owed,
                                     self.aggregator.state_dict(), self.clients.job_id)
