"""FS's ``get_aggregator``: the server's round strategy (``core/aggregators/aggregator.py``).

``aggregator.robust_rule`` picks the combination: ``fedavg`` (FS's default) is the sample-weighted
mean in client-id order (``ClientsAvgAggregator``; ``federate.online_aggr``, or many clients, folds
updates in as they arrive instead); the robust rules (``core/aggregators/robust.py``) need every
update of the round at once. FedOpt (``fedopt.use`` or ``federate.method FedOpt``) adds a server
optimizer after the rule. A rule that cannot keep its guarantee for the clients a round samples is
a configuration error, raised here, at start, naming the key. ``register.aggregator_dict`` is asked
first (``func(method, config) -> aggregator``), as in FS.
"""
import logging

from federatedscope.core.aggregators.aggregator import Aggregator, cfg_value, clients_per_round
from federatedscope.core.aggregators.fedavg import ClientsAvgAggregator, OnlineClientsAvgAggregator
from federatedscope.core.aggregators.fedopt import FedOptimizer
from federatedscope.core.aggregators.robust import RULES, RobustAggregator, RobustArgs, rule_problem
from federatedscope.core.configs.config import ConfigError

logger = logging.getLogger("federatedscope")
ONLINE_AGGR_FROM = 64      # clients; see doc/config.md (federate.online_aggr)


def _robust_args(config) -> RobustArgs:
    agg, bft = config.aggregator, config.aggregator.BFT_args
    args = RobustArgs(byzantine_node_num=int(agg.byzantine_node_num),
                      krum_agg_num=int(bft.get("krum_agg_num", 1)),
                      trimmedmean_excluded_ratio=float(bft.get("trimmedmean_excluded_ratio", 0.1)),
                      normbounding_norm_bound=float(bft.get("normbounding_norm_bound", 10.0)))
    if args.byzantine_node_num < 0 or args.krum_agg_num < 1 or \
            not 0 <= args.trimmedmean_excluded_ratio < 0.5 or args.normbounding_norm_bound <= 0:
        raise ConfigError("aggregator: byzantine_node_num >= 0, BFT_args.krum_agg_num >= 1, "
                          "0 <= BFT_args.trimmedmean_excluded_ratio < 0.5 and "
                          "BFT_args.normbounding_norm_bound > 0 are required")
    return args


def server_optimizer(config):
    """The FedOpt step, or None when FedOpt is off."""
    method = str(config.federate.method).lower()
    if not (cfg_value(config, "fedopt.use", False) or method == "fedopt"):
        return None
    node = cfg_value(config, "fedopt.optimizer", {})
    node = dict(node) if isinstance(node, dict) else dict(vars(node))
    # FS's open node: every key but type / lr / momentum is the optimizer's own argument
    extra = {k: v for k, v in node.items() if k not in ("type", "lr", "momentum")}
    return FedOptimizer(node.get("type", "SGD"), float(node.get("lr", 1.0)),
                        float(node.get("momentum", 0.0)), **extra)


def get_aggregator(config, expected_clients: int = 0, distributed: bool = True) -> Aggregator:
    """The strategy object of this job; ``expected_clients`` is the job's client count (what
    FS's ``sample_client_rate`` is a rate of)."""
    f = config.federate
    if 0 < f.sample_client_rate <= 1 and 0 < f.sample_client_num <= expected_clients:
        logger.warning(f"federate.sample_client_rate={f.sample_client_rate} and "
                       f"federate.sample_client_num={f.sample_client_num} are both set: the rate "
                       f"wins, as in FS ({clients_per_round(f, expected_clients)} clients per "
                       f"round); remove one of them")
    agg = _choose(config, expected_clients, distributed)
    if isinstance(agg, Aggregator):    # a registered strategy of its own kind keeps its ways
        agg.expected_clients = expected_clients
    return agg


def _choose(config, expected_clients: int, distributed: bool) -> Aggregator:
    from federatedscope import register
    for func in register.aggregator_dict.values():
        custom = func(config.federate.method, config)
        if custom is not None:
            return custom
    agg = config.aggregator
    rule = str(agg.robust_rule).lower()
    if rule not in RULES:
        raise ConfigError(f"aggregator.robust_rule={agg.robust_rule!r}; choose one of {list(RULES)}")
    if rule != "fedavg" and config.federate.online_aggr:
        raise ConfigError(f"aggregator.robust_rule={rule} needs every update of a round at once; "
                          f"set federate.online_aggr False (or robust_rule fedavg)")
    args = _robust_args(config)
    opt = server_optimizer(config)
    if rule != "fedavg":
        problem = rule_problem(rule, args, clients_per_round(config.federate, expected_clients))
        if problem:
            raise ConfigError(f"aggregator.robust_rule={rule}: {problem} (set "
                              f"aggregator.byzantine_node_num lower, or run more clients)")
        return RobustAggregator(config, rule, args, distributed, opt)
    if config.federate.online_aggr or expected_clients >= ONLINE_AGGR_FROM:
        if not config.federate.online_aggr:
            logger.info(f"Server: {expected_clients} clients: aggregating online "
                        f"(memory O(model), not O(clients x model))")
        return OnlineClientsAvgAggregator(config, distributed, opt)
    return ClientsAvgAggregator(config, distributed, opt)
