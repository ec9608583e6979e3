"""``--plot``: a clients x classes heat map of the train labels (label_distribution.png)."""
import io
import logging
from typing import Dict, List

import numpy as np

logger = logging.getLogger("federatedscope")
MAX_TICKS = 60  # beyond this many rows, label a spread of rows (still with their client ids)


def tick_rows(n: int) -> List[int]:
    """Row indices to label: every row up to MAX_TICKS, else MAX_TICKS spread rows incl. both ends."""
    if n <= MAX_TICKS:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, MAX_TICKS)})


def partition_figure(hists: Dict[int, List[int]]):
    """The matplotlib Figure (no pyplot state); y tick labels are client ids, never row numbers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    ids = sorted(hists)
    mat = np.array([hists[k] for k in ids], dtype=float)
    fig = Figure(figsize=(10, 1.5 + 0.25 * min(len(ids), MAX_TICKS)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    im = ax.imshow(mat, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("class (0-9 digits, 10-35 upper, 36-61 lower)")
    ax.set_ylabel("client")
    rows = tick_rows(len(ids))
    ax.set_yticks(rows, [str(ids[r]) for r in rows])
    ax.set_title("train label distribution per client")
    fig.colorbar(im, ax=ax, label="samples")
    return fig


def plot_partition(path: str, hists: Dict[int, List[int]]) -> str:
    """Write the picture atomically; '' (with a log line) without matplotlib."""
    try:
        fig = partition_figure(hists)
    except ImportError:
        logger.warning("--plot needs matplotlib, which is not installed here: "
                       "pip install matplotlib (the shards were written without the picture)")
        return ""
    from federatedscope.core.auxiliaries.utils import atomic_write_bytes
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path
