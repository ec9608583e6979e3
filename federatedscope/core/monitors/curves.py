"""A picture per run: accuracy and loss per round, per split, from ``eval_results.log``.

``read_curves`` extracts the points (testable without drawing); ``write_curves`` draws them into
a PNG with matplotlib's Agg canvas. matplotlib stays optional: without it ``write_curves``
logs one line saying how to install it and returns None. The log may belong to a run that is
still going: an incomplete last line is skipped, and a round logged twice (a restored server
repeating an evaluation) keeps its last line.
"""
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from federatedscope.core.auxiliaries.utils import atomic_write

logger = logging.getLogger("federatedscope")

MAX_CLIENT_CURVES = 20      # above this many clients only the weighted average is drawn
KINDS = (("acc", "accuracy"), ("avg_loss", "loss (mean per sample)"))
INSTALL_HINT = "matplotlib is not installed; curves not drawn (pip install matplotlib)"
DPI = 100                   # with the figure's 6 x 4 inches per panel: 1200 x 400 pixels

Series = Dict[str, List[Optional[float]]]      # metric key (e.g. "test_acc") -> value per round


@dataclass
class Curves:
    """The points of one run: ``rounds`` evaluated (ascending), the weighted average of every
    metric per round, and per client (``"client #k"``) when there are at most 20 clients."""
    rounds: List[int] = field(default_factory=list)
    weighted: Series = field(default_factory=dict)
    per_client: Dict[str, Series] = field(default_factory=dict)

    def splits(self) -> List[str]:
        """The splits with a drawable metric: ``test`` of ``test_acc`` (the kind's suffix cut
        once, at the end: ``val_acc_acc`` is split ``val_acc``)."""
        return sorted({k[:-len(suffix)] for k in self.weighted
                       for suffix in (f"_{kind}" for kind, _ in KINDS) if k.endswith(suffix)})


def _lines(path: str) -> List[dict]:
    out = []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for text in f:
            try:
                line = json.loads(text)
            except ValueError:      # a line still being written by a running server
                continue
            if isinstance(line, dict):
                out.append(line)
    return out


def read_curves(eval_results_log_path: str) -> Curves:
    """One point per evaluated round (a round with results; Final lines are not rounds)."""
    by_round: Dict[int, dict] = {}
    for line in _lines(eval_results_log_path):
        if line.get("Final") or not isinstance(line.get("Round"), int) \
                or not line.get("Results_weighted_avg"):
            continue
        by_round[line["Round"]] = line
    rounds = sorted(by_round)
    keys = sorted({k for r in rounds for k in by_round[r]["Results_weighted_avg"]})
    curves = Curves(rounds, {k: [by_round[r]["Results_weighted_avg"].get(k) for r in rounds]
                             for k in keys})
    clients = sorted({c for r in rounds for c in by_round[r].get("Results_raw", {})},
                     key=lambda c: (len(c), c))
    if len(clients) <= MAX_CLIENT_CURVES:
        for c in clients:
            raw = [by_round[r].get("Results_raw", {}).get(c, {}) for r in rounds]
            curves.per_client[c] = {k: [res.get(k) for res in raw] for k in keys}
    return curves


def write_curves(eval_results_log_path: str, png_path: str) -> Optional[str]:
    """Draw the run's curves into ``png_path`` (atomically); returns it, or None when there is
    nothing to draw yet or matplotlib is missing (one log line says which)."""
    curves = read_curves(eval_results_log_path)
    if not curves.rounds:
        logger.info(f"{eval_results_log_path}: no evaluated round yet; no curves drawn")
        return None
    run = os.path.basename(os.path.dirname(os.path.abspath(eval_results_log_path)))
    fig = draw_curves(curves, run)
    if fig is None:
        return None
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return png_path


def draw_curves(curves: Curves, run: str):
    """The figure (matplotlib ``Figure``, 6 x 4 inches per panel: 1200 x 400 pixels at DPI): one
    panel per kind (accuracy, loss); per split, a thick weighted-average line with a point per
    round and a thin line per client, in the split's colour. None (one log line) without
    matplotlib."""
    try:    # the object API, not pyplot: no global figure state shared with other threads
        from matplotlib import rcParams
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning(INSTALL_HINT)
        return None
    fig = Figure(figsize=(6 * len(KINDS), 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(KINDS), squeeze=False)[0]
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (kind, label) in zip(axes, KINDS):
        for i, split in enumerate(curves.splits()):
            key, colour = f"{split}_{kind}", colours[i % len(colours)]
            for values in (s[key] for s in curves.per_client.values() if key in s):
                ax.plot(curves.rounds, values, color=colour, alpha=0.25, lw=0.8)
            if key in curves.weighted:
                ax.plot(curves.rounds, curves.weighted[key], color=colour, marker="o", ms=3,
                        lw=2, label=f"{split} (weighted avg)")
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8)
        else:  # a trainer that reports no such metric: say so instead of an empty frame
            ax.text(0.5, 0.5, f"no {label} reported", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, alpha=0.6)
    per = f"; thin: each of {len(curves.per_client)} clients" if curves.per_client else ""
    fig.suptitle(f"{run} ({len(curves.rounds)} evaluated rounds{per})", fontsize=10)
    fig.tight_layout()
    return fig
