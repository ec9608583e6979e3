"""The server's evaluation step: ask, collect and check metrics, write one log line per round.

Part of ``Server`` (a mixin: it uses the server's clients, admission, monitor and model). One
evaluation is in flight at a time; it ends when every asked client answered, was refused, was lost,
or ``federate.eval_timeout`` passed, so a client that never answers cannot hang the job. The line
written names whose results are in it and who is missing.
"""
import logging
import time
from dataclasses import dataclass, field
from typing import Dict, Set

from federatedscope.core.message import EVALUATE, SERVER_ID, Message, clip_text
from federatedscope.core.workers.validation import check_metrics

logger = logging.getLogger("federatedscope")


@dataclass
class Evaluation:
    """The one evaluation in flight: which clients were asked, what came back, what was refused."""
    round: int
    waiting: Set[int]
    started: float = field(default_factory=lambda: time.monotonic())  # patchable in tests
    results: Dict[int, dict] = field(default_factory=dict)
    refused: Dict[int, str] = field(default_factory=dict)



class EvaluationMixin:
    def _begin_eval(self, r: int) -> None:
        if r in self.reported_rounds:    # written before a restart: never twice
            self.eval_owed = -1
            self._resume()
            return
        self.evaluation = Evaluation(r, set(self._online_ids()))
        self._send_model(sorted(self.evaluation.waiting), EVALUATE, r)
        self._maybe_finish_eval()

    def _on_metrics(self, msg: Message) -> None:
        ev = self.evaluation
        if ev is None or msg.state != ev.round or msg.sender not in ev.waiting:
            logger.warning(f"Server: ignored metrics from client #{msg.sender} for round {msg.state}")
            return
        ev.waiting.discard(msg.sender)
        results = msg.content["results"]
        problem = check_metrics(results, self.admission.counts(msg.sender), list(self.cfg.eval.split))
        if problem:
            ev.refused[msg.sender] = problem
            logger.warning(f"Server: refused the metrics of client #{msg.sender} for round "
                           f"{ev.round}: {clip_text(problem)}")
        else:
            ev.results[msg.sender] = dict(results)
        self._maybe_finish_eval()

    def _maybe_finish_eval(self, timed_out: bool = False) -> None:
        ev = self.evaluation
        if ev is None or (ev.waiting and not timed_out):
            return
        results = ev.results
        if self.global_eval is not None:
            results = {SERVER_ID: self.global_eval()}  # FS: global eval replaces the clients'
        missing = set(self.clients) - set(ev.results) if self.global_eval is None else set()
        self.monitor.report(ev.round, results, missing=sorted(missing))
        self.reported_rounds.add(ev.round)
        self.evaluation, self.eval_owed = None, -1
        if self.monitor.should_stop_early() and not self.stop_requested:
            logger.info(f"Server: early stop after round {ev.round} (no improvement of "
                        f"{self.monitor.key} for {self.cfg.early_stop.patience} evaluations)")
            self.stop_requested = True
        self._checkpoint()
        self._resume()

