"""``--plot``'s picture, read back: the heat map's rows are the clients in id order with their
ids as tick labels, its cells the train label counts, its labels and colour bar say what a
reader sees, and the PNG is written at 100 dpi cropped to the drawing. Every check runs under
a hostile matplotlibrc, so a setting left to the user's defaults shows up as a difference."""
import io
import logging
import sys

import matplotlib
import numpy as np
import pytest
from PIL import Image

from federatedscope.core.data import sharding_plot as sp

# four clients, ids not 1..4 and given out of order, six classes: row r of the map is the r-th
# smallest id, and its tick label is that id, never r
HISTS = {3: [0, 5, 0, 0, 3, 0], 1: [4, 0, 2, 0, 0, 1], 10: [0, 0, 0, 9, 0, 2],
         4: [1, 1, 1, 1, 1, 1]}
# what a user's matplotlibrc may say; the picture must not depend on it
HOSTILE_RC = {"image.cmap": "gray", "image.interpolation": "bilinear", "image.aspect": "equal",
              "savefig.format": "svg", "savefig.dpi": 50, "savefig.bbox": "standard",
              "figure.dpi": 72}


def _figure(hists):
    with matplotlib.rc_context(HOSTILE_RC):
        return sp.partition_figure(hists)


def test_the_map_is_the_clients_train_counts_in_id_order_labelled_by_id():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = _figure(HISTS)
    assert isinstance(fig.canvas, FigureCanvasAgg)      # renders without pyplot
    ax, bar = fig.axes
    im, = ax.images
    assert im.get_array().tolist() == [[4, 0, 2, 0, 0, 1], [0, 5, 0, 0, 3, 0],
                                       [1, 1, 1, 1, 1, 1], [0, 0, 0, 9, 0, 2]]
    assert list(ax.get_yticks()) == [0, 1, 2, 3]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "3", "4", "10"]
    assert ax.get_title() == "train label distribution per client"
    assert ax.get_xlabel() == "class (0-9 digits, 10-35 upper, 36-61 lower)"
    assert ax.get_ylabel() == "client"
    # the colour bar is the map's: it spans the counts 0..9 and is labelled with what they are
    assert bar.get_ylim() == (0.0, 9.0) and bar.get_ylabel() == "samples"
    assert (im.get_cmap().name, im.get_interpolation(), ax.get_aspect()) == \
        ("viridis", "nearest", "auto")
    assert tuple(fig.get_size_inches()) == (10.0, 1.5 + 0.25 * 4)     # 10 x 2.5 inches


def test_a_tall_plan_labels_60_spread_rows_with_their_client_ids_and_caps_the_height():
    hists = {k: [k % 3, 1] for k in range(1, 71)}
    fig = _figure(hists)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    rows = sp.tick_rows(70)
    assert len(labels) == 60 and labels == [str(r + 1) for r in rows]
    assert labels[:3] == ["1", "2", "3"] and labels[-1] == "70"
    assert tuple(fig.get_size_inches()) == (10.0, 1.5 + 0.25 * 60)    # 16.5, not 19 inches
    assert ax.images[0].get_array().shape == (70, 2)


def test_the_png_is_written_at_100_dpi_cropped_to_the_drawing(tmp_path):
    path = str(tmp_path / "plot" / "label_distribution.png")
    with matplotlib.rc_context(HOSTILE_RC):
        assert sp.plot_partition(path, HISTS) == path
    img = Image.open(path)
    assert img.format == "PNG" and [round(d) for d in img.info["dpi"]] == [100, 100]
    # bbox_inches="tight": the drawing reaches to within pad_inches=0.1 (10 px) of every edge,
    # where the whole 10 x 2.5 inch figure would be 1000 x 250 px with wide white margins
    px = np.asarray(img.convert("RGB"))
    ink = np.argwhere((px < 250).any(axis=2))
    (top, left), (bottom, right) = ink.min(0), ink.max(0)
    h, w = px.shape[:2]
    assert (w, h) != (1000, 250)
    assert all(8 <= m <= 12 for m in (top, left, h - 1 - bottom, w - 1 - right)), \
        (top, left, h - 1 - bottom, w - 1 - right, w, h)
    assert not list((tmp_path / "plot").glob("*.tmp"))      # written atomically, no leftovers


def test_without_matplotlib_the_shards_stay_and_the_log_says_how_to_get_the_picture(
        tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # ImportError
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append((record.levelno, record.getMessage()))
    log = logging.getLogger("federatedscope")
    keep, level = Keep(), log.level
    log.addHandler(keep)
    log.setLevel(logging.WARNING)
    try:
        assert sp.plot_partition(str(tmp_path / "p.png"), HISTS) == ""
    finally:
        log.removeHandler(keep)
        log.setLevel(level)
    assert seen == [(logging.WARNING, "--plot needs matplotlib, which is not installed here: "
                     "pip install matplotlib (the shards were written without the picture)")]
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("n", [4, 60])
def test_height_grows_a_quarter_inch_per_client_up_to_60(n):
    fig = _figure({k: [1, 0, 2] for k in range(1, n + 1)})
    assert tuple(fig.get_size_inches()) == (10.0, 1.5 + 0.25 * n)
