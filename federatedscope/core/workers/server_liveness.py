"""The server's clock: which clients went silent or are gone, which waits are overdue.

A collaborator with no state of its own beyond the configuration: the server asks it with the
records it holds and the current time, and decides what to do. Nothing here polls or sleeps; the
runner calls ``Server.tick()`` when its inbox was quiet for ``next_deadline()`` seconds or after
each event. Standalone runs have no clock: the in-process bus cannot lose a client.
"""
from typing import Callable, Iterable, List, Optional, Set

from federatedscope.core.workers.server_eval import Evaluation
from federatedscope.core.workers.admission import ClientRecord


def eval_limit(eval_timeout: float, round_timeout: float) -> float:
    """Evaluation waits at most ``federate.eval_timeout``, and no longer than a training round
    may (``federate.round_timeout``, when set): a client too slow to train is too slow to wait for."""
    limits = [t for t in (eval_timeout, round_timeout) if t > 0]
    return min(limits) if limits else 0.0


class Liveness:
    def __init__(self, cfg):
        self.heartbeat_timeout = float(cfg.distribute.heartbeat_timeout)
        self.grace = self.heartbeat_timeout if self.heartbeat_timeout > 0 else 30.0
        self.join_timeout = float(cfg.federate.join_timeout)
        self.round_timeout = float(cfg.federate.round_timeout)
        self.eval_timeout = eval_limit(cfg.federate.eval_timeout, cfg.federate.round_timeout)
        self.patience = float(cfg.federate.graceful_termination_timeout)

    def next_deadline(self) -> float:
        """Seconds until ``tick`` has something to check (the runner sleeps on its inbox until then)."""
        return max(0.05, min(self.heartbeat_timeout / 2, 5.0))

    def silent(self, clients: Iterable[ClientRecord], now: float,
               heard: Callable[[int], float] = lambda conn_id: 0.0) -> List[ClientRecord]:
        """Online clients quiet for longer than the heartbeat timeout. ``heard(conn_id)``: when
        the transport last heard that connection (it keeps heartbeats to itself); asked only
        for a record that looks silent, and folded into its ``last_seen``."""
        hb = self.heartbeat_timeout
        if hb <= 0:
            return []
        out = []
        for r in clients:
            if r.online and now - r.last_seen > hb:
                r.last_seen = max(r.last_seen, heard(r.conn_id))
                if now - r.last_seen > hb:
                    out.append(r)
        return out

    def gone(self, clients: Iterable[ClientRecord], now: float) -> Set[int]:
        """Offline for longer than the grace: no longer waited for."""
        return {r.client_id for r in clients if not r.online and now - r.offline_since > self.grace}

    def join_overdue(self, created: float, now: float) -> bool:
        return self.join_timeout > 0 and now - created > self.join_timeout

    def round_overdue(self, started_at: float, now: float) -> bool:
        return self.round_timeout > 0 and now - started_at > self.round_timeout

    def eval_overdue(self, ev: Evaluation, now: float) -> bool:
        return self.eval_timeout > 0 and bool(ev.waiting) and now - ev.started > self.eval_timeout

    def pause_overdue(self, paused_since: Optional[float], now: float) -> bool:
        return paused_since is not None and now - paused_since > self.patience
