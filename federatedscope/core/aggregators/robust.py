"""Robust aggregation rules (FS's ``aggregator.robust_rule``): bound what one insider can do.

All rules work, as FederatedScope's do, on model *deltas* (client state minus the global state the
round started from), so a rule that drops or clips a client drops or clips its *change*, never the
model itself. Float tensors are flattened into one vector per client for distances and norms;
integer buffers (BatchNorm's ``num_batches_tracked``) are not attackable in a useful way and take
the sample-weighted mean of the clients the rule keeps (floored, like FedAvg).

``f`` is ``aggregator.byzantine_node_num``: how many of the round's updates may be hostile.
"""
import logging
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from federatedscope.core.aggregators.aggregator import Aggregator

logger = logging.getLogger("federatedscope")
State = Dict[str, torch.Tensor]
Update = Tuple[int, int, State]          # (client id, sample size, state)
RULES = ("fedavg", "krum", "median", "trimmedmean", "bulyan", "normbounding")


@dataclass
class RobustArgs:
    """The parameters FS reads from ``aggregator.BFT_args`` (same names)."""
    byzantine_node_num: int = 0
    krum_agg_num: int = 1
    trimmedmean_excluded_ratio: float = 0.1
    normbounding_norm_bound: float = 10.0


def _float_keys(ref: State) -> List[str]:
    return [k for k, t in ref.items() if t.is_floating_point()]


def _flat_deltas(updates: Sequence[Update], ref: State, keys: List[str]) -> torch.Tensor:
    """[n_clients, n_float_params] float64 matrix of deltas, in ``updates`` order."""
    rows = []
    for _, _, state in updates:
        rows.append(torch.cat([(state[k].to(torch.float64) - ref[k].to(torch.float64)).reshape(-1)
                               for k in keys]) if keys else torch.zeros(0, dtype=torch.float64))
    return torch.stack(rows)


def _unflatten(global_state: State, keys: List[str], delta: torch.Tensor,
               int_source: Sequence[Update]) -> State:
    out: State = {}
    offset = 0
    for k, ref in global_state.items():
        if k in keys:
            n = ref.numel()
            out[k] = (ref.to(torch.float64) + delta[offset:offset + n].reshape(ref.shape)).to(ref.dtype)
            offset += n
        else:
            out[k] = _int_mean(k, ref, int_source)
    return out


def _int_mean(key: str, ref: torch.Tensor, updates: Sequence[Update]) -> torch.Tensor:
    """Sample-weighted mean of an integer buffer over ``updates``, floored (as FedAvg does)."""
    total = sum(size for _, size, _ in updates)
    acc = torch.zeros(ref.shape, dtype=torch.float64)
    for _, size, state in updates:
        acc.add_(state[key].to(torch.float64), alpha=(size / total) if total else 1.0 / len(updates))
    return acc.floor().to(ref.dtype)


def _weighted_mean(deltas: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    w = torch.tensor([float(s) for s in sizes], dtype=torch.float64)
    w = w / w.sum() if float(w.sum()) > 0 else torch.full_like(w, 1.0 / len(sizes))
    return (deltas * w[:, None]).sum(dim=0)


def krum_select(deltas: torch.Tensor, f: int, m: int) -> List[int]:
    """Indices of the ``m`` updates with the lowest Krum score (sum of squared distances to the
    ``n - f - 2`` nearest others). Krum's guarantee needs ``n > 2f + 2``; with fewer clients at
    least one neighbour is still used, so an outlier far from everyone scores worst."""
    n = deltas.shape[0]
    d2 = torch.cdist(deltas, deltas).pow(2)
    k = max(1, n - f - 2)
    scores = []
    for i in range(n):
        others = torch.cat([d2[i, :i], d2[i, i + 1:]])
        scores.append(float(others.sort().values[:k].sum()) if len(others) else 0.0)
    order = sorted(range(n), key=lambda i: (scores[i], i))
    return order[:max(1, min(m, n))]


def _trimmed(deltas: torch.Tensor, excluded: int) -> torch.Tensor:
    n = deltas.shape[0]
    excluded = min(excluded, (n - 1) // 2)
    s = deltas.sort(dim=0).values
    return s[excluded:n - excluded].mean(dim=0)


def robust_aggregate(rule: str, global_state: State, updates: List[Update],
                     args: RobustArgs) -> State:
    """The new global state under ``rule`` (not ``fedavg``: that one is ``ClientsAvgAggregator``)."""
    if rule not in RULES or rule == "fedavg":
        raise ValueError(f"aggregator.robust_rule={rule!r}: not a robust rule ({RULES[1:]})")
    updates = sorted(updates, key=lambda u: u[0])      # same order in every run
    keys = _float_keys(global_state)
    deltas = _flat_deltas(updates, global_state, keys)
    n, f = len(updates), args.byzantine_node_num
    kept: Sequence[Update] = updates
    if rule == "krum":
        idx = krum_select(deltas, f, args.krum_agg_num)
        kept = [updates[i] for i in idx]
        delta = _weighted_mean(deltas[idx], [u[1] for u in kept])
    elif rule == "median":
        ordered = deltas.sort(dim=0).values      # even n: mean of the two middle values
        delta = ordered[n // 2] if n % 2 else ordered[n // 2 - 1:n // 2 + 1].mean(dim=0)
    elif rule == "trimmedmean":
        delta = _trimmed(deltas, int(args.trimmedmean_excluded_ratio * n))
    elif rule == "bulyan":
        theta = max(1, n - 2 * f)
        idx = krum_select(deltas, f, theta)
        kept = [updates[i] for i in idx]
        delta = _trimmed(deltas[idx], f)
    else:  # normbounding
        norms = deltas.norm(dim=1)
        bound = float(args.normbounding_norm_bound)
        scale = torch.clamp(bound / torch.clamp(norms, min=1e-12), max=1.0)
        clipped = [i for i in range(n) if float(norms[i]) > bound]
        if clipped:
            logger.info(f"normbounding: clipped the update(s) of client(s) "
                        f"{[updates[i][0] for i in clipped]} to norm {bound}")
        delta = _weighted_mean(deltas * scale[:, None], [u[1] for u in updates])
    return _unflatten(global_state, keys, delta, kept)


def rule_problem(rule: str, args: RobustArgs, n: int) -> str:
    """Why ``rule`` cannot give its guarantee with ``n`` updates per round ('' when it can)."""
    f = args.byzantine_node_num
    if rule == "krum" and f and n <= 2 * f + 2:
        return (f"krum tolerates aggregator.byzantine_node_num={f} only with more than "
                f"{2 * f + 2} clients per round (have {n})")
    if rule == "bulyan" and n < 4 * f + 3:
        return (f"bulyan tolerates aggregator.byzantine_node_num={f} only with at least "
                f"{4 * f + 3} clients per round (have {n})")
    trimmed = int(args.trimmedmean_excluded_ratio * n)
    if rule == "trimmedmean" and f and trimmed < f:
        return (f"trimmedmean trims int(aggregator.BFT_args.trimmedmean_excluded_ratio="
                f"{args.trimmedmean_excluded_ratio} x {n}) = {trimmed} update(s) per side, fewer "
                f"than aggregator.byzantine_node_num={f}; raise the ratio to at least {f / n:.3g}")
    return ""


class RobustAggregator(Aggregator):
    """One of ``RULES`` (not fedavg) on the round's feedback; FS's Krum/Median/... aggregators."""

    def __init__(self, cfg, rule: str, args: RobustArgs, distributed: bool = True,
                 server_optimizer=None):
        super().__init__(cfg, distributed, server_optimizer)
        self.rule = rule
        self.args = args

    def aggregate(self, agg_info: dict) -> State:
        return robust_aggregate(self.rule, agg_info["global_state"],
                                list(agg_info["client_feedback"]), self.args)
