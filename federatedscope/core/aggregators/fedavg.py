"""FedAvg: the sample-size-weighted mean of client states.

Float tensors are averaged in float64 and cast back; integer buffers (BatchNorm's
``num_batches_tracked``) take the weighted mean rounded down, so they keep their dtype. Clients are
summed in ascending id order so every run (standalone or distributed) adds in the same order and
gets bit-identical results.
"""
from typing import Dict, List, Tuple

import torch

State = Dict[str, torch.Tensor]


class ClientsAvgAggregator:
    def aggregate(self, updates: List[Tuple[int, int, State]]) -> State:
        """``updates``: (client_id, sample_size, state). Returns the averaged state."""
        if not updates:
            raise ValueError("no client updates to aggregate")
        updates = sorted(updates, key=lambda u: u[0])
        total = sum(size for _, size, _ in updates)
        weights = [(size / total) if total > 0 else 1.0 / len(updates) for _, size, _ in updates]
        keys = list(updates[0][2].keys())
        out: State = {}
        for key in keys:
            ref = updates[0][2][key]
            acc = torch.zeros(ref.shape, dtype=torch.float64)
            for w, (_, _, state) in zip(weights, updates):
                acc.add_(state[key].to(torch.float64), alpha=w)
            out[key] = acc.to(ref.dtype) if ref.is_floating_point() else acc.floor().to(ref.dtype)
        return out


class OnlineAggregator:
    """``federate.online_aggr``: fold each update in as it arrives (O(model) memory, not O(N x model)).

    Order of arrival differs between runs, so results match the batch aggregator to float64
    rounding (~1e-12 after the cast), not bit for bit.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._acc: Dict[str, torch.Tensor] = {}
        self._dtypes: Dict[str, torch.dtype] = {}
        self._total = 0

    def add(self, sample_size: int, state: State) -> None:
        for key, t in state.items():
            if key not in self._acc:
                self._acc[key] = torch.zeros(t.shape, dtype=torch.float64)
                self._dtypes[key] = t.dtype
            self._acc[key].add_(t, alpha=float(sample_size))   # promoted on the fly, no copy
        self._total += sample_size

    def result(self) -> State:
        total = max(self._total, 1)
        out = {}
        for key, acc in self._acc.items():
            mean = acc / total
            dt = self._dtypes[key]
            out[key] = mean.to(dt) if dt.is_floating_point else mean.floor().to(dt)
        return out
