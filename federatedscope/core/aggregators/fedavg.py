"""FedAvg: the sample-weighted mean of the clients' states (FS's ``ClientsAvgAggregator``).

Accumulated in float64 and in client-id order, so the same updates give bit-identical results.
``OnlineClientsAvgAggregator`` (``federate.online_aggr``) folds each update in as it arrives:
O(model) memory instead of O(clients x model); arrival order then decides float rounding (~1e-12
after the cast), which is why small jobs keep the exact batch mean.
"""
from typing import Dict, List

import torch

from federatedscope.core.aggregators.aggregator import Aggregator, Feedback, State


# Elements accumulated at a time. On CPU, a float32 tensor added into a float64 one is first
# copied whole to float64 (TensorIterator's input promotion), and a float64 sum of a whole key
# is 2 x its float32 bytes: for a model dominated by one layer, each is ~2 models of transient
# memory. A multiple of every SIMD loop's width, so each element takes the same kernel path
# as in one whole-tensor pass (bit-identical results); a 512 KiB float64 chunk stays in cache
# (one 25 MB update measured 28 ms at this size, 33-44 ms at 1 << 18).
CHUNK = 1 << 16


def _chunks(n: int):
    return ((lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK))


def weighted_mean(feedback: List[Feedback]) -> State:
    if not feedback:
        raise ValueError("no client updates to aggregate")
    feedback = sorted(feedback, key=lambda u: u[0])
    total = sum(w for _, w, _ in feedback)
    weights = [(w / total) if total > 0 else 1.0 / len(feedback) for _, w, _ in feedback]
    # Two chunk buffers for the whole call: a fresh float64 chunk per client and key would be
    # mapped and faulted in page by page on the server (its fixed 1 MiB mmap threshold, main.py):
    # one 25 MB update took 84 ms that way, 28 ms with the buffers reused. One 1 MiB block, so
    # it is mapped too and goes back to the kernel when freed, not left in the heap.
    acc, wide = torch.empty(2, CHUNK, dtype=torch.float64)
    out: State = {}
    for key, ref in feedback[0][2].items():
        flat = [state[key].reshape(-1) for _, _, state in feedback]
        res = torch.empty(ref.shape, dtype=ref.dtype)
        dst = res.view(-1)
        for lo, hi in _chunks(ref.numel()):
            a, t = acc[:hi - lo].zero_(), wide[:hi - lo]
            for w, src in zip(weights, flat):
                a.add_(t.copy_(src[lo:hi]), alpha=w)
            dst[lo:hi] = a if ref.is_floating_point() else torch.floor(a, out=t)
        out[key] = res
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
        # the promotion buffer, reused by every add (see weighted_mean)
        self._wide = torch.empty(CHUNK, dtype=torch.float64)

    def add(self, cid: int, weight: int, state: State) -> None:
        for key, t in self.shared(state).items():
            if key not in self._acc:
                self._acc[key] = torch.zeros(t.shape, dtype=torch.float64)
                self._dtypes[key] = t.dtype
            acc, src = self._acc[key].view(-1), t.reshape(-1)
            for lo, hi in _chunks(acc.numel()):   # promoted to float64 a chunk at a time
                acc[lo:hi].add_(self._wide[:hi - lo].copy_(src[lo:hi]), alpha=float(weight))
        self._total += weight
        self.feedback[cid] = (weight, None)

    def aggregate(self, agg_info: dict) -> State:
        total = max(self._total, 1)
        out = {}
        for key in list(self._acc):
            # in place, each sum freed as soon as it is cast: no float64 temporary of the model
            mean = self._acc.pop(key).div_(total)
            dt = self._dtypes[key]
            out[key] = mean.to(dt) if dt.is_floating_point else mean.floor_().to(dt)
            del mean
        return out
