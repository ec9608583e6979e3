"""The one evaluation in flight: who was asked, what came back, what was refused.

It ends when every asked client answered, was refused, was lost, or ``federate.eval_timeout``
passed (``Liveness.eval_overdue``), so a client that never answers cannot hang the job. The server
reports it (one ``eval_results.log`` line naming whose results are in it and who is missing).
"""
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Mapping, Sequence, Set

from federatedscope.core.workers.validation import check_metrics


@dataclass
class Evaluation:
    round: int
    waiting: Set[int]
    started: float = field(default_factory=lambda: time.monotonic())
    results: Dict[int, dict] = field(default_factory=dict)
    refused: Dict[int, str] = field(default_factory=dict)

    def expects(self, cid: int, round_idx: int) -> bool:
        return round_idx == self.round and cid in self.waiting

    def accept(self, cid: int, results: dict, declared: Mapping[str, int],
               splits: Sequence[str]) -> str:
        """Record ``cid``'s metrics; returns why they were refused ('' when accepted)."""
        self.waiting.discard(cid)
        problem = check_metrics(results, declared, list(splits)) or ""
        if problem:
            self.refused[cid] = problem
        else:
            self.results[cid] = dict(results)
        return problem

    def drop(self, cids: Iterable[int]) -> Set[int]:
        lost = self.waiting & set(cids)
        self.waiting -= lost
        return lost

    @property
    def done(self) -> bool:
        return not self.waiting
