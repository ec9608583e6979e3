"""The server's round state: one record, one phase.

``Phase`` says what the server is doing; ``RoundState`` holds everything that phase needs, so no
flag or sentinel lives anywhere else:

* JOINING: waiting for the expected clients (or ``federate.join_timeout``);
* TRAINING: round ``round + 1`` was sent to ``sampled``; ``pending`` are still awaited;
* PAUSED: too few clients or updates, or an evaluation nobody answered with too few online (it
  stays ``eval_owed``); waiting (``paused_since``) for re-joins, at most
  ``federate.graceful_termination_timeout``. A paused round still takes late updates of ``pending``;
* EVALUATING: ``evaluation`` is in flight (round ``evaluation.round``);
* FINISHED: done; ``exit_code`` says how (0 ok, 3 gave up waiting, 4 results unwritable,
  5 a round diverged).

``eval_owed`` is the round whose evaluation is due and not yet reported (restored from the
checkpoint after a kill), ``None`` when none is.
"""
from dataclasses import dataclass, field
from enum import Enum
from typing import Dict, Optional, Set

from federatedscope.core.workers.server_eval import Evaluation


class Step(Enum):
    """What a training round does next (``RoundState.round_step``)."""
    WAIT = "wait"                # updates are still awaited
    DIVERGED = "diverged"        # every sampled client's update was refused
    TOO_FEW = "too few"          # nothing left to wait for, fewer updates than the threshold
    AGGREGATE = "aggregate"


class Phase(Enum):
    JOINING = "joining"
    TRAINING = "training"
    PAUSED = "paused"
    EVALUATING = "evaluating"
    FINISHED = "finished"


@dataclass
class RoundState:
    phase: Phase = Phase.JOINING
    round: int = 0                                   # rounds completed
    sampled: Set[int] = field(default_factory=set)   # asked to train in this round
    pending: Set[int] = field(default_factory=set)   # sampled, not yet answered or dropped
    refused: Dict[int, str] = field(default_factory=dict)   # updates refused, with why
    started_at: float = 0.0
    timed_out: bool = False                          # round_timeout passed: threshold suffices
    paused_since: Optional[float] = None
    evaluation: Optional[Evaluation] = None
    eval_owed: Optional[int] = None
    stop_requested: bool = False                     # early stop: finish after what is due
    exit_code: int = 0

    def begin_round(self, sampled: Set[int], now: float) -> None:
        self.phase = Phase.TRAINING
        self.sampled, self.pending, self.refused = set(sampled), set(sampled), {}
        self.started_at, self.timed_out, self.paused_since = now, False, None

    def round_step(self, got: int, threshold: int, min_received_num: Optional[int] = None) -> Step:
        """With ``got`` updates accepted: a round waits for every sampled client, unless the round
        timed out or ``min_received_num`` (FS's buffer size) are in, and ``threshold`` are."""
        if self.phase not in (Phase.TRAINING, Phase.PAUSED) or not self.sampled:
            return Step.WAIT
        enough = got >= threshold
        buffered = min_received_num is not None and got >= min_received_num
        if self.pending and not ((self.timed_out or buffered) and enough):
            return Step.WAIT
        if not got and self.refused and set(self.refused) == self.sampled:
            return Step.DIVERGED
        return Step.AGGREGATE if enough else Step.TOO_FEW

    def pause(self, now: float) -> None:
        self.phase, self.paused_since = Phase.PAUSED, now
        self.evaluation = None          # a paused server waits for clients, not for metrics

    def end_round(self, due_eval: bool) -> None:
        self.round += 1
        self.phase = Phase.TRAINING      # until the server picks the next step
        self.sampled, self.pending, self.refused = set(), set(), {}
        self.paused_since = None
        self.eval_owed = self.round if due_eval else None

    def finish(self, code: int = 0) -> None:
        self.phase, self.exit_code = Phase.FINISHED, code
        self.evaluation = None

