"""Turns per-client evaluation results into FS's reports and the ``eval_results.log`` lines.

``weighted_avg`` weighs each client's ``<split>_<metric>`` by its ``<split>_total``; ``avg`` is the
plain mean over clients; ``fairness`` replaces each metric by FS's statistics of its spread over
clients (``fairness()``); ``raw`` keeps every client's numbers. In every form but ``raw``,
``<split>_total`` and ``<split>_correct`` are their mean over clients, as FS's ``format_eval_res``
writes them (a split's sample count is the sum over ``Results_raw``). Each evaluation appends one
JSON line (written with fsync so a crash cannot lose a reported round), naming which clients' results
are in it (``Clients``) and which were expected but are not (``Missing``: timed out, refused, lost,
or never joined).

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

import numpy as np

from federatedscope.core.auxiliaries.utils import append_line

logger = logging.getLogger("federatedscope")
Results = Dict[str, float]


def _split_of(key: str) -> str:
    return key.split("_", 1)[0]


def _is_count(key: str) -> bool:
    """FS's rule: only ``<split>_total`` and ``<split>_correct`` are counts (averaged over clients
    in every form); ``train_total_local_model`` (Ditto) is a metric like any other."""
    split = _split_of(key)
    return key in (f"{split}_total", f"{split}_correct")


def weighted_avg(per_client: Dict[int, Results]) -> Results:
    sums: Dict[str, float] = {}
    weights: Dict[str, float] = {}
    for res in per_client.values():
        for key, value in res.items():
            split = _split_of(key)
            w = float(res.get(f"{split}_total", 1))
            if _is_count(key):
                w = 1.0        # FS writes a count's plain mean over clients, even in weighted_avg
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


FAIRNESS_STATS = ("std", "bottom_decile", "top_decile", "min", "max", "bottom10%", "top10%",
                  "cos1", "entropy")


def fairness(per_client: Dict[int, Results]) -> Dict[str, Optional[float]]:
    """FS's ``fairness`` form: counts as their mean over clients, then, for every other key sent by
    at least two clients, ``<key>_<stat>`` for each of ``FAIRNESS_STATS`` in place of the key.
    A key only one client sent stays as its value (FS keeps a lone value unsummarised). Like
    ``plain_avg``, a client without a key is left out of that key's statistics."""
    values: Dict[str, List[float]] = {}
    for cid in sorted(per_client):
        for key, value in per_client[cid].items():
            values.setdefault(key, []).append(float(value))
    kept: Dict[str, Optional[float]] = {}
    spread: Dict[str, Optional[float]] = {}
    for key in sorted(values):
        v = values[key]
        if _is_count(key):
            kept[key] = float(np.mean(v))
        elif len(v) == 1:
            kept[key] = v[0]
        else:
            spread.update(_spread(key, np.sort(np.asarray(v, dtype=np.float64))))
    return {**kept, **spread}   # FS's order: the kept keys, then the statistics


def _spread(key: str, a: np.ndarray) -> Dict[str, Optional[float]]:
    """FS's definitions over the sorted values ``a``: population std; deciles by index
    (``a[n // 10]``, ``a[n * 9 // 10]``, no interpolation); the 10% tails' means; the cosine of the
    values with the all-ones vector; the entropy (natural log) of the values normalised to sum 1,
    each shifted by 1e-9. A statistic FS gets as NaN (the bottom 10% of fewer than 10 clients is
    empty; cos1 of all zeros is 0/0) is written as null: the line stays strict JSON."""
    n = a.size
    with np.errstate(divide="ignore", invalid="ignore"):
        shifted = a + 1e-9
        p = shifted / np.sum(shifted)
        stats = (np.std(a), a[n // 10], a[n * 9 // 10], a[0], a[-1],
                 np.mean(a[:n // 10]) if n // 10 else np.nan, np.mean(a[n * 9 // 10:]),
                 np.mean(a) / np.sqrt(np.mean(a ** 2)), np.sum(-p * np.log(p)))
    return {f"{key}_{name}": (float(x) if np.isfinite(x) else None)
            for name, x in zip(FAIRNESS_STATS, stats)}


# the forms a Final line repeats; Results_weighted_avg first: readers look it up by name
_SUMMARIES = ("Results_weighted_avg", "Results_avg", "Results_fairness")


class Monitor:
    def __init__(self, cfg, outdir: str):
        self.cfg = cfg
        self.outdir = outdir
        self.log_path = os.path.join(outdir, "eval_results.log")
        self.key = cfg.eval.best_res_update_round_wise_key
        self.best: Optional[float] = None
        self.best_round = -1
        self.no_improve = 0
        self.key_missing_warned = False
        self.history: List[dict] = []
        self.unwritten: List[str] = []   # lines built but not yet appended to the log
        self.final_rounds: Set[Optional[int]] = set()   # rounds a Final line in the log names

    def flush(self) -> None:
        """Append every queued line, oldest first; raises OSError with the rest still queued."""
        while self.unwritten:
            append_line(self.log_path, self.unwritten[0])
            self.unwritten.pop(0)

    def report(self, round_idx: int, per_client: Dict[int, Results], role: str = "Server #",
               missing: Sequence[int] = (), source: str = "") -> dict:
        """One evaluation line; ``source`` names where the results come from when it is not the
        clients (FS's make_global_eval: the server's own data)."""
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
        if "fairness" in reports:
            line["Results_fairness"] = {k: (v if v is None else round(v, digits))
                                        for k, v in fairness(per_client).items()}
        if "raw" in reports:
            line["Results_raw"] = {f"client #{cid}": res for cid, res in sorted(per_client.items())}
        logger.info(json.dumps({k: v for k, v in line.items() if k != "Results_raw"}))
        brief = ", ".join(f"{k}={wavg[k]:.4f}" for k in ("test_acc", "test_avg_loss", "val_acc")
                          if k in wavg)
        n = len(per_client)
        whom = source or (f"{n} client{'s' if n != 1 else ''}"
                          f"{', missing ' + str(sorted(missing)) if missing else ''}, weighted avg")
        logger.info(f"Server: evaluation after round {round_idx} ({whom}): {brief}")
        self.unwritten.append(json.dumps(line))
        self.history.append(line)
        self._track_best(round_idx, wavg)
        return line

    # ------------------------------------------------------------ restart
    def state_dict(self) -> dict:
        # run_dir: where this run writes, so a restore continues there (outdir.resolve_outdir)
        return {"best": self.best, "best_round": self.best_round, "no_improve": self.no_improve,
                "run_dir": os.path.abspath(self.outdir)}

    def resume_from_log(self) -> Set[int]:
        """Rounds already in ``eval_results.log`` (after a restart); -1 stands for the Final line.
        Replays best/early-stop tracking over them, so the restored Monitor is the one that wrote them."""
        lines = _read_complete_lines(self.log_path)
        rounds: Set[int] = set()
        for line in lines:
            if line.get("Final"):
                rounds.add(-1)
                self.final_rounds.add(line.get("Round"))
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
            if results and not self.key_missing_warned:   # a custom trainer's keys: seen only now
                self.key_missing_warned = True
                logger.warning(f"eval.best_res_update_round_wise_key={self.key!r} is not among "
                               f"the reported results {sorted(results)}: no best round is "
                               f"tracked and early stopping cannot fire; set it to one of them")
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
        """The last evaluated round again, with each summarised form it was reported in (FS's
        Final line carries every summarised form too), and the best round of ``self.key``. The
        line is queued unless the log already has a Final line for that round (a restart after it
        was written): a run extended past an earlier Final gets its own, none is written twice."""
        last = next((h for h in reversed(self.history) if any(h.get(f) for f in _SUMMARIES)), {})
        summary = {"Role": "Server #", "Final": True, "Round": last.get("Round"),
                   "Clients": last.get("Clients", []),
                   "Results_weighted_avg": last.get("Results_weighted_avg", {})}
        summary.update({f: last[f] for f in _SUMMARIES[1:] if f in last})
        summary.update({"best_round": self.best_round, f"best_{self.key}": self.best})
        if summary["Round"] not in self.final_rounds:
            self.final_rounds.add(summary["Round"])
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
