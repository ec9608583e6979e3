"""FedAvg: the sample-weighted mean of the clients' states (FS's ``ClientsAvgAggregator``).

Accumulated in float64 and in client-id order, so the same updates give bit-identical results.
``OnlineClientsAvgAggregator`` (``federate.online_aggr``) folds each update in as it arrives:
O(model) memory instead of O(clients x model); arrival order then decides float rounding (~1e-12
after the cast), which is why small jobs keep the exact batch mean.
"""
from typing import Dict, List

import torch

from federatedscope.core.aggregators.aggregator import Aggregator, Feedback, State


def weighted_mean(feedback: List[Feedback]) -> State:
    if not feedback:
        raise ValueError("no client updates to aggregate")
    feedback = sorted(feedback, key=lambda u: u[0])
    total = sum(w for _, w, _ in feedback)
    weights = [(w / total) if total > 0 else 1.0 / len(feedback) for _, w, _ in feedback]
    out: State = {}
    for key, ref in feedback[0][2].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for w, (_, _, state) in zip(weights, feedback):
            acc.add_(state[key].to(torch.float64), alpha=w)
        out[key] = acc.to(ref.dtype) if ref.is_floating_point() else acc.floor().to(ref.dtype)
    return out


class ClientsAvgAggregator(Aggregator):
    rule = "fedavg"

    def aggregate(self, agg_info: dict) -> State:
        return weighted_mean(agg_info["client_feedback"])


class OnlineClientsAvgAggregator(ClientsAvgAggregator):
    """Keeps only the running weighted sum; ``aggregate`` ignores ``client_feedback``'s states."""

    def begin_round(self) -> None:
        super().begin_round()
        self._acc: Dict[str, torch.Tensor] = {}
        self._dtypes: Dict[str, torch.dtype] = {}
        self._total = 0

    def add(self, cid: int, weight: int, state: State) -> None:
        for key, t in self.shared(state).items():
            if key not in self._acc:
                self._acc[key] = torch.zeros(t.shape, dtype=torch.float64)
                self._dtypes[key] = t.dtype
            self._acc[key].add_(t, alpha=float(weight))   # promoted on the fly, no copy
        self._total += weight
        self.feedback[cid] = (weight, None)

    def aggregate(self, agg_info: dict) -> State:
        total = max(self._total, 1)
        out = {}
        for key, acc in self._acc.items():
            mean = acc / total
            dt = self._dtypes[key]
            out[key] = mean.to(dt) if dt.is_floating_point else mean.floor().to(dt)
        return out
