"""FS's ``Aggregator``: the server's one strategy object for a round's clients.

It owns everything that decides how much a client counts: which online clients a round samples
(``sample``), the FedAvg weight of an update (``weight``: the declared count, capped when nobody
could vouch for it), the collection of a round's feedback (``begin_round`` / ``add``) and the
combination (``aggregate(agg_info)``, FS's call: ``agg_info['client_feedback']`` is a list of
``(client_id, weight, state)``, ``agg_info['global_state']`` the state the round started from).
A server optimizer (``fedopt.py``) steps after whatever rule combined the updates.

Personalized keys (``personalization.local_param``, FS's substring rule) never leave a client:
an update may omit exactly them, every update is reduced to the shared keys before combining,
and the global model keeps its own values of the others.
"""
import logging
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

logger = logging.getLogger("federatedscope")
State = Dict[str, torch.Tensor]


class AggregationFault(ValueError):
    """An aggregation rule returned what the model cannot take: a fault of the rule, not of any
    client, so the job stops (no client is blamed, no round is counted)."""
Feedback = Tuple[int, int, State]          # (client id, weight, state)


def cfg_value(cfg, dotted: str, default):
    """``cfg.a.b`` or ``default`` when the key is not in this config (algorithm keys are added by
    ``cfg_fl_algo.extend_fl_algo_cfg``; a config built without them means the feature is off)."""
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, part):
            return default
        node = getattr(node, part)
    return node


def clients_per_round(federate, total: int) -> int:
    """FS's rule over ``total`` configured clients: a ``sample_client_rate`` in (0, 1] wins
    (``max(1, int(rate * total))``), else a ``sample_client_num`` in 1..total, else all of them
    (a rate above 1 or a count above the total means every client, as in FS)."""
    rate, num = float(federate.sample_client_rate), int(federate.sample_client_num)
    if 0 < rate <= 1:
        return max(1, int(rate * total))
    if 0 < num <= total:
        return num
    return total


def local_keys(keys, patterns: Sequence[str]) -> List[str]:
    """Keys kept on the client: any pattern of ``personalization.local_param`` is a substring."""
    return [k for k in keys if any(p and p in k for p in patterns)]


def claim_cap(reference_counts: Sequence[int], ratio: float) -> int:
    """Largest FedAvg weight an *unverified* sample count may have: ``ratio`` x the median declared
    count, so a claim of 10^9 samples cannot buy the model (no cap for ratio <= 0)."""
    counts = [c for c in reference_counts if c > 0]
    if ratio <= 0 or not counts:
        return 2 ** 62
    return max(1, int(ratio * statistics.median(counts)))


class Aggregator:
    """Sampling, weighting and collection; subclasses define ``aggregate(agg_info)``."""
    rule = "fedavg"

    def __init__(self, cfg, distributed: bool = True, server_optimizer=None):
        self.cfg = cfg
        self.distributed = distributed
        self.server_optimizer = server_optimizer
        self.local_param = [str(p) for p in cfg_value(cfg, "personalization.local_param", [])]
        self.expected_clients = 0      # the job's client count; 0: the online count
        self.feedback: Dict[int, Tuple[int, Optional[State]]] = {}
        self._cap_of: Optional[Sequence[int]] = None    # the counts ``_cap`` was computed from
        self._cap = 0
        self.begin_round()

    # ------------------------------------------------------------ sampling
    def sample(self, online: Sequence[int], round_idx: int) -> List[int]:
        online = sorted(online)
        # the job's configured client count (``get_aggregator`` sets it), as FS counts a rate
        total = self.expected_clients or len(online)
        k = min(clients_per_round(self.cfg.federate, total), len(online))
        if k >= len(online):
            return online
        # Derived from (seed, round): reproducible after a restart without saving RNG state.
        rng = np.random.default_rng([self.cfg.seed, round_idx])
        return sorted(int(c) for c in rng.choice(online, size=k, replace=False))

    # ----------------------------------------------------------- weighting
    def weight(self, cid: int, size: int, verified: bool, declared: Sequence[int]) -> int:
        """The declared count, capped when the manifest could not vouch for it and the claim came
        over the network (a standalone simulation has no untrusted peer)."""
        if verified or not self.distributed:
            return size
        # the server hands the same list until a declaration changes: one median per change,
        # not one per update (thousands of clients)
        if self._cap_of is not declared:
            self._cap_of = declared
            self._cap = claim_cap(declared, self.cfg.aggregator.max_sample_ratio)
        cap = self._cap
        if size > cap:
            logger.warning(f"Server: client #{cid} claims {size} train samples, unverified; its "
                           f"weight is capped at {cap} (aggregator.max_sample_ratio x the median "
                           f"declared count)")
            return cap
        return size

    # ---------------------------------------------------------- collection
    def shared(self, state: State) -> State:
        drop = set(local_keys(state, self.local_param))
        return {k: v for k, v in state.items() if k not in drop}

    def begin_round(self) -> None:
        self.feedback = {}

    def add(self, cid: int, weight: int, state: State) -> None:
        self.feedback[cid] = (weight, self.shared(state))

    @property
    def total_weight(self) -> int:
        return sum(w for w, _ in self.feedback.values())

    def finish_round(self, global_state: State) -> State:
        """The next global state from this round's feedback (all keys: local ones unchanged)."""
        shared_global = self.shared(global_state)
        combined = self.aggregate({"client_feedback": [(c, w, s) for c, (w, s) in
                                                       sorted(self.feedback.items())],
                                   "global_state": shared_global})
        wrong = sorted(k for k, v in combined.items() if k not in shared_global
                       or tuple(getattr(v, "shape", ())) != tuple(shared_global[k].shape))
        if wrong:
            raise AggregationFault(
                f"aggregator {type(self).__name__}.aggregate returned {wrong[:5]} (of "
                f"{len(wrong)}), not among the model's shared keys with their shapes; fix it to "
                f"return one tensor per shared key, shaped as in the model")
        if self.server_optimizer is not None:
            combined = self.server_optimizer.step(shared_global, combined)
        new = dict(global_state)
        new.update(combined)
        self.feedback = {}
        return new

    def aggregate(self, agg_info: dict) -> State:
        raise NotImplementedError

    # -------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        return self.server_optimizer.state_dict() if self.server_optimizer is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.server_optimizer is not None:
            if state:
                self.server_optimizer.load_state_dict(state)
        elif state.get("fedopt_buffers") or state.get("fedopt_optimizer"):
            # a FedOpt run restored without fedopt.use: its moments would vanish in silence
            logger.warning(f"the checkpoint holds a server optimizer's state ("
                           f"{state.get('fedopt_type') or 'FedOpt'}) but this run has none "
                           f"(fedopt.use False): it is not used, and the next checkpoint drops "
                           f"it; restore with fedopt.use True and the checkpoint's "
                           f"fedopt.optimizer to continue it")
