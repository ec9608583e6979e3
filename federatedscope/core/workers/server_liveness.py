"""The server's clock: silent clients, round and evaluation timeouts, giving up.

Part of ``Server`` (a mixin). The runner calls ``tick()`` whenever its inbox has been quiet for
``next_deadline()`` seconds or after each event; nothing here polls or sleeps. Standalone runs
have no clock (``distributed`` is False): the in-process bus cannot lose a client.
"""
import logging
import time
from typing import Set

logger = logging.getLogger("federatedscope")


class LivenessMixin:
    def next_deadline(self) -> float:
        """Seconds until ``tick`` has something to check (the runner sleeps on its inbox until then)."""
        return max(0.05, min(self.cfg.distribute.heartbeat_timeout / 2, 5.0))

    def tick(self) -> None:
        if not self.distributed or self.finished:
            return
        now = time.monotonic()
        self._expire_silent(now)
        if not self.started:
            jt, online = self.cfg.federate.join_timeout, len(self._online_ids())
            if jt > 0 and now - self.created > jt and online >= self.threshold:
                logger.warning(f"Server: federate.join_timeout={jt:.0f}s passed with {online}/"
                               f"{self.expected} clients; starting with those")
                self._start()
            return
        hb = self.cfg.distribute.heartbeat_timeout
        grace = hb if hb > 0 else 30.0
        gone = {c.client_id for c in self.clients.values()
                if not c.online and now - c.offline_since > grace}
        dropped = sorted((self.pending - set(self.updates)) & gone)
        if dropped:
            logger.warning(f"Server: dropping lost client(s) {dropped} from round {self.round + 1}")
            self.pending -= set(dropped)
            self._maybe_finish_round()
        self._check_round_timeout(now)
        self._check_eval_progress(now, gone)
        if self.paused_since is not None and \
                now - self.paused_since > self.cfg.federate.graceful_termination_timeout:
            self._give_up()

    def _expire_silent(self, now: float) -> None:
        hb = self.cfg.distribute.heartbeat_timeout
        for rec in self.clients.values():
            if rec.online and hb > 0 and now - rec.last_seen > hb:
                self._mark_lost(rec, f"silent for {now - rec.last_seen:.0f}s "
                                     f"(> distribute.heartbeat_timeout); marking it lost", now)
                self.comm.close(rec.conn_id)

    def _check_round_timeout(self, now: float) -> None:
        rt = self.cfg.federate.round_timeout
        late = sorted(self.pending - set(self.updates))
        if rt > 0 and not self.round_timed_out and late and now - self.round_started > rt:
            logger.warning(f"Server: round {self.round + 1} timed out after {rt:.0f}s; "
                           f"stragglers {late} are no longer waited for once "
                           f"{self.threshold} update(s) are in")
            self.round_timed_out = True
            self._maybe_finish_round()

    def _check_eval_progress(self, now: float, gone: Set[int]) -> None:
        ev = self.evaluation
        if ev is None:
            return
        lost = ev.waiting & gone
        if lost:
            logger.warning(f"Server: evaluation of round {ev.round}: clients {sorted(lost)} are "
                           f"lost; not waiting for them")
            ev.waiting -= lost
            self._maybe_finish_eval()
            return
        et = _eval_limit(self.cfg.federate.eval_timeout, self.cfg.federate.round_timeout)
        if et > 0 and ev.waiting and now - ev.started > et:
            logger.warning(f"Server: evaluation of round {ev.round} timed out after {et:.0f}s "
                           f"(federate.eval_timeout / round_timeout) without {sorted(ev.waiting)}")
            self._maybe_finish_eval(timed_out=True)

    def _give_up(self) -> None:
        self._checkpoint()
        logger.error(f"Server: gave up after waiting {self.cfg.federate.graceful_termination_timeout:.0f}s "
                     f"for clients; {self.round} round(s) done and checkpointed"
                     + (f" to {self.cfg.federate.save_to}" if self.cfg.federate.save_to else "")
                     + "; restart with federate.restore_from to continue")
        self.finished = True
        self.exit_code = 3



def _eval_limit(eval_timeout: float, round_timeout: float) -> float:
    """Evaluation waits at most ``federate.eval_timeout``, and no longer than a training round
    may (``federate.round_timeout``, when set): a client too slow to train is too slow to wait for."""
    limits = [t for t in (eval_timeout, round_timeout) if t > 0]
    return min(limits) if limits else 0.0
