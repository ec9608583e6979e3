"""FS's ``get_aggregator``: the server's aggregation rule, chosen by ``aggregator.robust_rule``.

``fedavg`` (FS's default) is the sample-size-weighted mean of client states, exact and in client-id
order (``ClientsAvgAggregator``; ``federate.online_aggr`` folds updates in as they arrive instead).
The robust rules (``core/aggregators/robust.py``) need every update of the round at once, so they
cannot be combined with online aggregation.
"""
import logging
import statistics
from typing import List, Sequence

from federatedscope.core.aggregators.fedavg import ClientsAvgAggregator
from federatedscope.core.aggregators.robust import (RULES, RobustArgs, State, Update,
                                                    robust_aggregate)
from federatedscope.core.configs.config import ConfigError

logger = logging.getLogger("federatedscope")


class Aggregator:
    """``aggregate(global_state, updates) -> new global state`` for the configured rule."""

    def __init__(self, rule: str, args: RobustArgs):
        self.rule = rule
        self.args = args

    def aggregate(self, global_state: State, updates: List[Update]) -> State:
        if self.rule == "fedavg":
            return ClientsAvgAggregator().aggregate(updates)
        return robust_aggregate(self.rule, global_state, updates, self.args)


def get_aggregator(config) -> Aggregator:
    agg = config.aggregator
    rule = str(agg.robust_rule).lower()
    if rule not in RULES:
        raise ConfigError(f"aggregator.robust_rule={agg.robust_rule!r}; choose one of {list(RULES)}")
    if rule != "fedavg" and config.federate.online_aggr:
        raise ConfigError(f"aggregator.robust_rule={rule} needs every update of a round at once; "
                          f"set federate.online_aggr False (or robust_rule fedavg)")
    bft = agg.BFT_args
    args = RobustArgs(byzantine_node_num=int(agg.byzantine_node_num),
                      krum_agg_num=int(bft.get("krum_agg_num", 1)),
                      trimmedmean_excluded_ratio=float(bft.get("trimmedmean_excluded_ratio", 0.1)),
                      normbounding_norm_bound=float(bft.get("normbounding_norm_bound", 10.0)))
    if args.byzantine_node_num < 0 or args.krum_agg_num < 1 or \
            not 0 <= args.trimmedmean_excluded_ratio < 0.5 or args.normbounding_norm_bound <= 0:
        raise ConfigError("aggregator: byzantine_node_num >= 0, BFT_args.krum_agg_num >= 1, "
                          "0 <= BFT_args.trimmedmean_excluded_ratio < 0.5 and "
                          "BFT_args.normbounding_norm_bound > 0 are required")
    return Aggregator(rule, args)


def claim_cap(reference_counts: Sequence[int], ratio: float) -> int:
    """Largest FedAvg weight an *unverified* sample count may have: ``ratio`` x the median declared
    count, so a claim of 10^9 samples cannot buy the model (no cap for ratio <= 0)."""
    counts = [c for c in reference_counts if c > 0]
    if ratio <= 0 or not counts:
        return 2 ** 62
    return max(1, int(ratio * statistics.median(counts)))
