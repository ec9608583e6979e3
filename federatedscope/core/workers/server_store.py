"""The server's files: the results log (``Monitor``'s queued lines) and the checkpoint.

A collaborator of ``Server`` that owns every write it makes, each through ``WriteGuard``: a failure
is one bounded error line naming the file, and the server's state never waits on it.
"""
import logging
import os
from dataclasses import dataclass
from typing import Optional, Set

import torch

from federatedscope.core.auxiliaries import checkpoint as ckpt_io
from federatedscope.core.monitors.curves import write_curves
from federatedscope.core.monitors.monitor import Monitor
from federatedscope.core.monitors.write_guard import WriteGuard

logger = logging.getLogger("federatedscope")


@dataclass
class Restored:
    round: int
    eval_owed: Optional[int]
    reported_rounds: Set[int]
    job_id: str


class ServerStore:
    def __init__(self, cfg, monitor: Monitor, writes: Optional[WriteGuard] = None):
        self.cfg = cfg
        self.monitor = monitor
        self.writes = writes or WriteGuard(cfg.federate.results_write_timeout)

    @property
    def results_path(self) -> str:
        return self.monitor.log_path

    def write_results(self) -> bool:
        """Append every queued results line; False (lines kept queued) when the write failed."""
        return self.writes.attempt("results log", self.results_path, self.monitor.flush,
                                   f"{len(self.monitor.unwritten)} line(s) stay queued and are "
                                   f"retried with the next one")

    def write_curves(self) -> None:
        """``curves.png`` beside the results: a picture that cannot be drawn costs one line."""
        png = os.path.join(self.monitor.outdir, "curves.png")
        self.writes.attempt("curves", png, lambda: write_curves(self.results_path, png),
                            "the results log is whole; redraw with scripts/tools/plot_results.py")

    def results_overdue(self, now: Optional[float] = None) -> bool:
        return self.writes.overdue(self.results_path, now)

    def results_overdue_text(self) -> str:
        """Why the server stops once ``results_overdue``, and the fix."""
        return (f"the results log {self.results_path} could not be written for more than "
                f"{self.writes.bound:.0f}s; free space or fix the path (outdir)")

    def results_lost(self) -> str:
        """Why the server stops when its final results could not be written, and the fix."""
        return (f"the results could not be written to {self.results_path} "
                f"({len(self.monitor.unwritten)} line(s) lost); free space or fix the path (outdir)")

    def checkpoint(self, round_idx: int, model_state, eval_owed: Optional[int],
                   aggregator_state: dict, job_id: str) -> bool:
        """True when written; a full disk must not stall the job (the old file stays whole:
        temp + rename). False without ``federate.save_to``."""
        path = self.cfg.federate.save_to
        if not path:
            return False
        ckpt = ckpt_io.Checkpoint(round_idx, model_state, torch.get_rng_state(), self.cfg.seed,
                                  eval_owed=-1 if eval_owed is None else eval_owed,
                                  monitor=self.monitor.state_dict(), aggregator=aggregator_state,
                                  job_id=job_id)
        return self.writes.attempt("checkpoint", path, lambda: ckpt_io.save_checkpoint(path, ckpt),
                                   "the job goes on, but a restart would resume from the last "
                                   "checkpoint written (free space or point federate.save_to "
                                   "elsewhere)")

    def restore(self, model: torch.nn.Module, aggregator) -> Optional[Restored]:
        """Load ``federate.restore_from`` into ``model``/``aggregator``; None when there is none."""
        path = self.cfg.federate.restore_from
        if not path:
            return None
        ckpt = ckpt_io.load_checkpoint(path)
        if ckpt is None:
            logger.info(f"Server: no checkpoint at {path} yet; starting from round 0")
            return None
        try:
            model.load_state_dict(ckpt.model, strict=True)
        except RuntimeError as e:    # torch's text names the keys/shapes, not the file or the fix
            why = " ".join(str(e).split())
            raise ValueError(f"checkpoint {path} does not fit this model ({why}); restore it "
                             f"with the model configuration it was written with, or point "
                             f"federate.restore_from elsewhere") from None
        torch.set_rng_state(ckpt.torch_rng)
        aggregator.load_state_dict(ckpt.aggregator)
        owed = ckpt.eval_owed if ckpt.eval_owed >= 0 else None
        # The log is the truth about what was reported (it may be one line ahead of the file).
        reported = self.monitor.resume_from_log()
        note = f"; evaluation of round {owed} is owed" \
            if owed is not None and owed not in reported else ""
        logger.info(f"Server: restored round {ckpt.round} from {path}{note}")
        total = self.cfg.federate.total_round_num
        if ckpt.round >= total:
            # No round left to train (FS would restart its count at 0; here a restore continues
            # the run). The results belong in this run's log: when it lacks the final model's
            # evaluation, that is done again rather than finishing with none.
            if owed is None and ckpt.round not in reported:
                owed = ckpt.round
            logger.warning(f"Server: the checkpoint {path} is at round {ckpt.round} and "
                           f"federate.total_round_num is {total}: no round is left to train, so "
                           f"this run " + ("evaluates the restored model and finishes"
                                           if owed is not None else "finishes")
                           + f"; to train more rounds from it, raise federate.total_round_num "
                           f"above {ckpt.round} (rounds continue from {ckpt.round})")
        return Restored(ckpt.round, owed, reported, ckpt.job_id)
