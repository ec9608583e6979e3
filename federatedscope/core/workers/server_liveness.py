"""The server's clock: which clients went silent or are gone, which waits are overdue.

A collaborator with no state of its own beyond the configuration (and how many join_timeout
periods it has reported as short of clients): the server asks it with the
records it holds and the current time, and decides what to do. Nothing here polls or sleeps; the
runner calls ``Server.tick()`` when its inbox was quiet for ``next_deadline()`` seconds or after
each event. Standalone runs have no clock: the in-process bus cannot lose a client. It also
holds the threshold (``min_clients``: refused at start when no round could reach it) and words
the lines of a pause and of a give-up.
"""
from typing import Callable, Iterable, List, Optional, Set

from federatedscope.core.aggregators.aggregator import clients_per_round
from federatedscope.core.configs.config import ConfigError
from federatedscope.core.workers.server_eval import Evaluation
from federatedscope.core.workers.client_table import ClientRecord


def min_clients(cfg, expected: int) -> int:
    """``federate.min_clients_threshold`` (0 counts as 1), refused when no round could reach it: a
    round trains at most ``clients_per_round`` of the ``expected`` clients (FS's sampling rule),
    so a higher threshold would pause every round, with every client online, and give up."""
    f = cfg.federate
    threshold = max(1, int(f.min_clients_threshold))
    per_round = clients_per_round(f, expected)
    if expected <= 0 or threshold <= per_round:
        return threshold
    if 0 < f.sample_client_rate <= 1:
        by = f"federate.sample_client_rate={f.sample_client_rate}"
        fix = "raise federate.sample_client_rate"
    elif 0 < f.sample_client_num <= expected:
        by = f"federate.sample_client_num={f.sample_client_num}"
        fix = "raise federate.sample_client_num"
    else:
        by, fix = "no sampling: every client", "run more clients (manifest / federate.client_num)"
    raise ConfigError(f"federate.min_clients_threshold={f.min_clients_threshold} is above the "
                      f"{per_round} client(s) a round trains ({by}, of {expected} expected): no "
                      f"round could ever aggregate; set federate.min_clients_threshold to at most "
                      f"{per_round}, or {fix}")


def eval_limit(eval_timeout: float, round_timeout: float) -> float:
    """Evaluation waits at most ``federate.eval_timeout``, and no longer than a training round
    may (``federate.round_timeout``, when set): a client too slow to train is too slow to wait for."""
    limits = [t for t in (eval_timeout, round_timeout) if t > 0]
    return min(limits) if limits else 0.0


class Liveness:
    def __init__(self, cfg, expected: int = 0):
        self.threshold = min_clients(cfg, expected)   # fewest updates a round aggregates
        self.heartbeat_timeout = float(cfg.distribute.heartbeat_timeout)
        self.grace = self.heartbeat_timeout if self.heartbeat_timeout > 0 else 30.0
        self.join_timeout = float(cfg.federate.join_timeout)
        self._join_periods_noted = 0
        self.round_timeout = float(cfg.federate.round_timeout)
        self.eval_timeout = eval_limit(cfg.federate.eval_timeout, cfg.federate.round_timeout)
        self.patience = float(cfg.federate.graceful_termination_timeout)
        self.save_to = cfg.federate.save_to

    def next_deadline(self) -> float:
        """Seconds until ``tick`` has something to check (the runner sleeps on its inbox until then)."""
        hb = self.heartbeat_timeout    # 0: silence is never checked, the other limits every 5 s
        return max(0.05, min(hb / 2, 5.0)) if hb > 0 else 5.0

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

    def join_short(self, created: float, now: float, online: int, expected: int) -> Optional[str]:
        """Once per join_timeout period past it, while fewer than the threshold have joined: the
        line that says the server still waits, and what would let it start."""
        periods = int((now - created) // self.join_timeout) if self.join_timeout > 0 else 0
        if periods <= self._join_periods_noted:
            return None
        self._join_periods_noted = periods
        return (f"Server: {now - created:.0f}s since start (federate.join_timeout="
                f"{self.join_timeout:.0f}s) with {online}/{expected} clients, fewer than "
                f"federate.min_clients_threshold={self.threshold}; still waiting: start the "
                f"missing clients (check their logs) or lower federate.min_clients_threshold")

    def round_overdue(self, started_at: float, now: float) -> bool:
        return self.round_timeout > 0 and now - started_at > self.round_timeout

    def eval_overdue(self, ev: Evaluation, now: float) -> bool:
        return self.eval_timeout > 0 and bool(ev.waiting) and now - ev.started > self.eval_timeout

    def pause_overdue(self, paused_since: Optional[float], now: float) -> bool:
        return paused_since is not None and now - paused_since > self.patience

    def too_few_to_train(self, sampled: int, online: int, round_no: int) -> str:
        """Why round ``round_no`` cannot start, counting the clients online as they are."""
        who = f"{online} client(s) online" if sampled == online else \
            f"{sampled} client(s) sampled of the {online} online"
        return f"{who} for round {round_no}, fewer than federate.min_clients_threshold=" \
               f"{self.threshold}"

    def give_up(self, rounds: int, saved: bool) -> str:
        """The give-up line: it claims a checkpoint only when one was just written (``saved``)."""
        save_to = self.save_to
        done = f"gave up after waiting {self.patience:.0f}s for clients; {rounds} round(s) done"
        if saved:
            return f"{done} and checkpointed to {save_to}; restart with federate.restore_from " \
                   f"to continue"
        if save_to:
            return f"{done}; the checkpoint {save_to} could not be written now (see above): " \
                   f"federate.restore_from resumes from the last one written there"
        return f"{done}, none checkpointed (federate.save_to is not set); to continue a run " \
               f"that gives up, set federate.save_to and restart with federate.restore_from"
