"""Turns per-client evaluation results into FS's reports and the ``eval_results.log`` lines.

``weighted_avg`` weighs each client's ``<split>_<metric>`` by its ``<split>_total``; ``avg`` is the
plain mean over clients; ``raw`` keeps every client's numbers. Each evaluation appends exactly one
JSON line (written with fsync so a crash cannot lose a reported round), naming which clients' results
are in it (``Clients``) and which were expected but are not (``Missing``: timed out, refused, lost).

Building a line (``report``, ``final_summary``) never touches the disk: the line is queued and
``flush()`` appends what is queued, in order; a failed append keeps it queued for the next flush,
so the server's state never depends on a write succeeding (it writes through ``WriteGuard``).

The log is also the Monitor's memory across a server restart: ``resume_from_log`` drops a partial
last line left by a kill, replays the best/early-stop tracking over the lines already written and
tells the server which rounds are already reported, so none is written twice.
"""
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Set

from federatedscope.core.auxiliaries.utils import append_line

logger = logging.getLogger("federatedscope")
Results = Dict[str, float]


def _split_of(key: str) -> str:
    return key.split("_", 1)[0]


def weighted_avg(per_client: Dict[int, Results]) -> Results:
    sums: Dict[str, float] = {}
    weights: Dict[str, float] = {}
    for res in per_client.values():
        for key, value in res.items():
            split = _split_of(key)
            w = float(res.get(f"{split}_total", 1))
            if key.endswith("_total") or key.endswith("_correct"):
                sums[key] = sums.get(key, 0.0) + value      # counts add up
                weights[key] = 1.0
            else:
                sums[key] = sums.get(key, 0.0) + value * w
                weights[key] = weights.get(key, 0.0) + w
    return {k: (sums[k] / weights[k] if weights[k] else 0.0) for k in sorted(sums)}


def plain_avg(per_client: Dict[int, Results]) -> Results:
    """FS's ``avg`` form: each key's mean over the clients that reported it. A client that sends
    no such key (no val split, say) must not pull the mean towards 0."""
    sums: Dict[str, float] = {}
    counts: Dict[str, int] = {}
    for res in per_client.values():
        for key, value in res.items():
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
    return {k: sums[k] / counts[k] for k in sorted(sums)}


class Monitor:
    def __init__(self, cfg, outdir: str):
        self.cfg = cfg
        self.outdir = outdir
        self.log_path = os.path.join(outdir, "eval_results.log")
        self.key = cfg.eval.best_res_update_round_wise_key
        self.best: Optional[float] = None
        self.best_round = -1
        self.no_improve = 0
        self.history: List[dict] = []
        self.unwritten: List[str] = []   # lines built but not yet appended to the log

    def flush(self) -> None:
        """Append every queued line, oldest first; raises OSError with the rest still queued."""
        while self.unwritten:
            append_line(self.log_path, self.unwritten[0])
            self.unwritten.pop(0)

    def report(self, round_idx: int, per_client: Dict[int, Results], role: str = "Server #",
               missing: Sequence[int] = ()) -> dict:
        line: dict = {"Role": role, "Round": round_idx,
                      "Clients": sorted(per_client), "Missing": sorted(missing)}
        if not per_client:
            logger.warning(f"Round {round_idx}: no client reported evaluation results "
                           f"(missing: {sorted(missing)})")
            self.unwritten.append(json.dumps(line))
            self.history.append(line)
            return line
        digits = self.cfg.print_decimal_digits
        reports = self.cfg.eval.report
        wavg = weighted_avg(per_client)
        if "weighted_avg" in reports:
            line["Results_weighted_avg"] = {k: round(v, digits) for k, v in wavg.items()}
        if "avg" in reports:
            line["Results_avg"] = {k: round(v, digits) for k, v in plain_avg(per_client).items()}
        if "raw" in reports:
            line["Results_raw"] = {f"client #{cid}": res for cid, res in sorted(per_client.items())}
        logger.info(json.dumps({k: v for k, v in line.items() if k != "Results_raw"}))
        brief = ", ".join(f"{k}={wavg[k]:.4f}" for k in ("test_acc", "test_avg_loss", "val_acc")
                          if k in wavg)
        logger.info(f"Server: evaluation after round {round_idx} ({len(per_client)} clients"
                    f"{', missing ' + str(sorted(missing)) if missing else ''}, weighted avg): {brief}")
        self.unwritten.append(json.dumps(line))
        self.history.append(line)
        self._track_best(round_idx, wavg)
        return line

    # ------------------------------------------------------------ restart
    def state_dict(self) -> dict:
        return {"best": self.best, "best_round": self.best_round, "no_improve": self.no_improve}

    def resume_from_log(self) -> Set[int]:
        """Rounds already in ``eval_results.log`` (after a restart); -1 stands for the Final line.
        Replays best/early-stop tracking over them, so the restored Monitor is the one that wrote them."""
        lines = _read_complete_lines(self.log_path)
        rounds: Set[int] = set()
        for line in lines:
            if line.get("Final"):
                rounds.add(-1)
                continue
            r = line.get("Round")
            if isinstance(r, int):
                rounds.add(r)
                self.history.append(line)
                wavg = line.get("Results_weighted_avg")
                if wavg:
                    self._track_best(r, wavg)
        return rounds

    def _track_best(self, round_idx: int, results: Results) -> None:
        value = results.get(self.key)
        if value is None:
            return
        lower_is_better = "loss" in self.key
        better = self.best is None or (value < self.best - self.cfg.early_stop.delta if lower_is_better
                                       else value > self.best + self.cfg.early_stop.delta)
        if better:
            self.best, self.best_round, self.no_improve = value, round_idx, 0
        else:
            self.no_improve += 1

    def should_stop_early(self) -> bool:
        patience = self.cfg.early_stop.patience
        return patience > 0 and self.no_improve >= patience

    def final_summary(self) -> dict:
        last = next((h for h in reversed(self.history) if h.get("Results_weighted_avg")), {})
        summary = {"Role": "Server #", "Final": True,
                   "Round": last.get("Round"), "Clients": last.get("Clients", []), "Results_weighted_avg": last.get("Results_weighted_avg", {}),
                   "best_round": self.best_round, f"best_{self.key}": self.best}
        self.unwritten.append(json.dumps(summary))
        return summary


def _read_complete_lines(path: str) -> List[dict]:
    """JSON lines of ``path``; a last line without its newline (a kill mid-append) is cut off."""
    if not os.path.exists(path):
        return []
    if not os.path.isfile(path):   # e.g. a link to /dev/full: reading it would never end
        logger.warning(f"{path} is not a regular file; no earlier results read from it")
        return []
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning(f"{path}: dropping a partial last line left by an interrupted write")
        with open(path, "r+b") as f:
            f.truncate(end)
            os.fsync(f.fileno())
    out = []
    for raw in data[:end].splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            logger.warning(f"{path}: skipping an unreadable line")
    return out
