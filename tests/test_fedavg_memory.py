"""FedAvg's memory-bounded arithmetic gives the same bits as the whole-tensor float64 mean.

``weighted_mean`` accumulates a key CHUNK elements at a time; the online aggregator adds each
update CHUNK elements at a time and divides its sum in place. Both exist only to keep float64
temporaries of the model out of the server's peak, so the result must be bit-identical to the
plain formula, written out here.
"""
import torch

from federatedscope.core.aggregators import fedavg
from federatedscope.core.aggregators.fedavg import OnlineClientsAvgAggregator, weighted_mean
from federatedscope.core.configs.config import global_cfg


def _plain_mean(feedback):
    """The formula, whole tensors: float64 sum of weight/total x state, then cast (floor: ints)."""
    total = sum(w for _, w, _ in feedback)
    out = {}
    for key, ref in feedback[0][2].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for _, w, state in sorted(feedback, key=lambda u: u[0]):
            acc.add_(state[key].to(torch.float64), alpha=w / total)
        out[key] = acc.to(ref.dtype) if ref.is_floating_point() else acc.floor().to(ref.dtype)
    return out


def _updates(n_clients: int, chunk: int):
    g = torch.Generator().manual_seed(7)
    # sizes around the chunk: several whole chunks plus an odd tail, exactly one chunk, tiny,
    # a scalar, an empty tensor, and an integer buffer (floored)
    shapes = {"fc.weight": (3 * chunk + 37,), "conv.weight": (chunk // 8, 8),
              "bias": (5,), "scale": (), "empty": (0, 4)}
    feedback = []
    for cid in (4, 1, 3, 2, 6)[:n_clients]:
        state = {k: torch.randn(s, generator=g) * 10 ** cid for k, s in shapes.items()}
        state["bn.num_batches_tracked"] = torch.tensor(100 + 7 * cid, dtype=torch.int64)
        state["counts"] = torch.randint(0, 1000, (chunk + 3,), generator=g, dtype=torch.int32)
        feedback.append((cid, 13 * cid + 5, state))
    return feedback


def test_chunked_weighted_mean_is_bit_identical(monkeypatch):
    monkeypatch.setattr(fedavg, "CHUNK", 4096)   # several chunks per key, small test tensors
    feedback = _updates(5, 4096)
    got, want = weighted_mean(feedback), _plain_mean(feedback)
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), k
    # the weights matter: client 6 (weight 83 of 275) at 1e6 scale dominates the mean of "bias"
    assert not torch.equal(got["bias"], feedback[0][2]["bias"])


def test_chunked_weighted_mean_at_the_real_chunk_size():
    feedback = _updates(4, fedavg.CHUNK)
    got, want = weighted_mean(feedback), _plain_mean(feedback)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_online_aggregate_divides_in_place_and_matches_the_formula(monkeypatch):
    """Each update is added a chunk at a time (several chunks here) and the sum divided in place:
    the same bits as whole-tensor arithmetic."""
    monkeypatch.setattr(fedavg, "CHUNK", 4096)
    cfg = global_cfg.clone()
    agg = OnlineClientsAvgAggregator(cfg, distributed=False)
    feedback = _updates(4, 4096)
    for cid, w, state in feedback:
        agg.add(cid, w, state)
    total = sum(w for _, w, _ in feedback)
    want = {}
    for key, ref in feedback[0][2].items():   # the online formula: sum(w x state) / total
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for _, w, state in feedback:
            acc.add_(state[key], alpha=float(w))
        mean = acc / total
        want[key] = mean.to(ref.dtype) if ref.is_floating_point() else mean.floor().to(ref.dtype)
    got = agg.aggregate({"client_feedback": [], "global_state": {}})
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert agg._acc == {}          # every float64 sum was released by the aggregation
