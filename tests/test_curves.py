"""curves.png from eval_results.log: the points (read_curves) and the drawing (write_curves),
and scripts/tools/plot_results.py over a run directory."""
import importlib.util
import json
import os
import sys

import pytest

from federatedscope.core.monitors.curves import read_curves, write_curves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _line(r, clients, final=False):
    """A server line of round r: client k has test acc k/10 + r/100, val acc half of it."""
    raw = {f"client #{k}": {"test_acc": k / 10 + r / 100, "test_avg_loss": 4.0 - r / 2 - k / 10,
                            "val_acc": (k / 10 + r / 100) / 2, "val_avg_loss": 5.0 - r,
                            "test_total": 10 * k, "val_total": 10 * k} for k in clients}
    n = sum(10 * k for k in clients)
    wavg = {key: sum(raw[f"client #{k}"][key] * 10 * k for k in clients) / n
            for key in ("test_acc", "test_avg_loss", "val_acc", "val_avg_loss")}
    line = {"Role": "Server #", "Round": r, "Clients": list(clients), "Missing": [],
            "Results_weighted_avg": wavg, "Results_raw": raw}
    if final:
        line = {"Role": "Server #", "Final": True, "Round": r, "Results_weighted_avg": wavg}
    return json.dumps(line)


def _log(tmp_path, clients=(1, 2, 3, 4), rounds=(1, 2, 3, 4, 5)):
    """5 evaluated rounds; round 3 is logged twice (a restored server: the last one counts),
    one round has no results, a Final line and a half-written last line (a running server)."""
    lines = [_line(r, clients) for r in rounds if r != 4]
    lines.insert(2, _line(3, clients[:-1]))
    lines.append(json.dumps({"Role": "Server #", "Round": 4, "Clients": [], "Missing": [1]}))
    lines.append(_line(4, clients))
    lines.append(_line(rounds[-1], clients, final=True))
    path = tmp_path / "exp" / "run" / "eval_results.log"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n" + _line(6, clients)[:40])
    return str(path)


def test_read_curves_one_point_per_evaluated_round(tmp_path):
    c = read_curves(_log(tmp_path))
    assert c.rounds == [1, 2, 3, 4, 5]
    assert c.splits() == ["test", "val"]
    # client k, round r: test acc k/10 + r/100; weighted by 10k over k = 1..4 (sum 100):
    # sum(k * (k/10 + r/100)) / 10 = (3.0 + r/10) / 10 = 0.3 + r/100
    assert c.weighted["test_acc"] == pytest.approx([0.31, 0.32, 0.33, 0.34, 0.35])
    assert c.weighted["val_avg_loss"] == pytest.approx([4.0, 3.0, 2.0, 1.0, 0.0])
    assert sorted(c.per_client) == ["client #1", "client #2", "client #3", "client #4"]
    # round 3's second line (with client 4) replaced the first one (without it)
    assert c.per_client["client #4"]["test_acc"] == pytest.approx([0.41, 0.42, 0.43, 0.44, 0.45])
    assert c.per_client["client #2"]["test_avg_loss"] == pytest.approx([3.3, 2.8, 2.3, 1.8, 1.3])


def test_more_than_20_clients_draws_only_the_weighted_average(tmp_path):
    c = read_curves(_log(tmp_path, clients=tuple(range(1, 22)), rounds=(1, 2, 3, 4)))
    assert c.rounds == [1, 2, 3, 4] and c.per_client == {}
    assert len(c.weighted["test_acc"]) == 4
    assert len(read_curves(_log(tmp_path / "b", clients=tuple(range(1, 21)))).per_client) == 20


def test_write_curves_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = str(tmp_path / "out" / "curves.png")
    assert write_curves(_log(tmp_path), png) == png
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    with Image.open(png) as im:
        assert im.size == (1200, 400)
    assert [n for n in os.listdir(tmp_path / "out") if n != "curves.png"] == []   # no temp left


def test_a_metric_nobody_reports_gets_a_note_not_an_empty_legend(tmp_path):
    """Clients that report accuracy but no loss: the loss panel says so (matplotlib would warn
    about a legend with nothing in it)."""
    import warnings
    pytest.importorskip("matplotlib")
    path = tmp_path / "eval_results.log"
    path.write_text("\n".join(json.dumps(
        {"Role": "Server #", "Round": r, "Clients": [1, 2, 3, 4], "Missing": [],
         "Results_weighted_avg": {"test_acc": 0.1 * r}}) for r in (1, 2, 3)) + "\n")
    assert read_curves(str(path)).splits() == ["test"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert write_curves(str(path), str(tmp_path / "curves.png")) == str(tmp_path / "curves.png")
    import matplotlib.pyplot as plt
    assert plt.get_fignums() == []          # drawn without pyplot: no figure left open


def test_without_matplotlib_one_line_says_how_to_install(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib -> ImportError
    png = str(tmp_path / "curves.png")
    assert write_curves(_log(tmp_path), png) is None
    assert not os.path.exists(png)
    assert [r.getMessage() for r in caplog.records if "matplotlib" in r.getMessage()] == \
        ["matplotlib is not installed; curves not drawn (pip install matplotlib)"]


def test_empty_log_draws_nothing(tmp_path):
    log = tmp_path / "eval_results.log"
    log.write_text(json.dumps({"Role": "Server #", "Round": 1, "Clients": [], "Missing": [1]}))
    assert read_curves(str(log)).rounds == []
    assert write_curves(str(log), str(tmp_path / "c.png")) is None


def _plot_results():
    spec = importlib.util.spec_from_file_location(
        "plot_results", os.path.join(ROOT, "scripts", "tools", "plot_results.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plot_results_redraws_every_server_run_under_a_directory(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = _log(tmp_path)
    client_dir = tmp_path / "exp" / "client_1"
    client_dir.mkdir()
    (client_dir / "eval_results.log").write_text(_line(1, (1,)))
    assert _plot_results().main([str(tmp_path / "exp")]) == 0
    assert os.path.exists(os.path.join(os.path.dirname(log), "curves.png"))
    assert not os.path.exists(client_dir / "curves.png")
    assert _plot_results().main([str(tmp_path / "nothing_here")]) == 1
    assert "no eval_results.log under" in capsys.readouterr().err


def test_clients_in_numeric_order_a_missing_client_is_a_gap_and_odd_lines_are_skipped(tmp_path):
    """Clients 2 and 10 (10 after 2, as a reader expects); client 10 absent in round 2 gives
    None there; a line of bytes that are not UTF-8, a JSON array and a Round that is not an
    integer are skipped, never fatal."""
    path = tmp_path / "eval_results.log"
    with open(path, "wb") as f:
        f.write((_line(1, (2, 10)) + "\n").encode())
        f.write(b"\xff\xfe not utf-8\n[1, 2]\n")
        f.write((json.dumps({"Round": "2", "Results_weighted_avg": {"test_acc": 9.0}}) + "\n")
                .encode())
        f.write((_line(2, (2,)) + "\n").encode())
    c = read_curves(str(path))
    assert c.rounds == [1, 2] and list(c.per_client) == ["client #2", "client #10"]
    assert c.per_client["client #10"]["test_acc"] == pytest.approx([1.01, None])
    assert c.per_client["client #2"]["test_acc"] == pytest.approx([0.21, 0.22])
    assert c.splits() == ["test", "val"]


def _figure(tmp_path, **kw):
    pytest.importorskip("matplotlib")
    from federatedscope.core.monitors.curves import draw_curves
    return draw_curves(read_curves(_log(tmp_path, **kw)), "run_7")


def test_the_figure_has_a_panel_per_kind_and_per_split_a_weighted_line_over_thin_clients(tmp_path):
    """4 clients, 5 rounds, splits test and val: each panel holds, per split in the split's
    colour, one thin line per client and a thick weighted-average line with a point per round."""
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = _figure(tmp_path)
    c = read_curves(_log(tmp_path / "again"))
    assert isinstance(fig.canvas, FigureCanvasAgg) and tuple(fig.get_size_inches()) == (12, 4)
    acc, loss = fig.axes                                      # one row of two panels
    assert acc.get_position().x1 < loss.get_position().x0
    assert acc.get_position().y0 == loss.get_position().y0
    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind, ylabel in ((acc, "acc", "accuracy"),
                             (loss, "avg_loss", "loss (mean per sample)")):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("round", ylabel)
        grid = ax.xaxis.get_gridlines()[0]
        assert grid.get_visible() and grid.get_alpha() == 0.3
        lines = ax.get_lines()
        assert len(lines) == 2 * (4 + 1)
        for i, split in enumerate(("test", "val")):
            key, group = f"{split}_{kind}", lines[5 * i:5 * i + 5]
            for line, client in zip(group, ("client #1", "client #2", "client #3", "client #4")):
                assert list(line.get_xdata()) == [1, 2, 3, 4, 5]
                assert list(line.get_ydata()) == c.per_client[client][key]
                assert (line.get_color(), line.get_alpha(), line.get_linewidth(),
                        line.get_marker()) == (cycle[i], 0.25, 0.8, "None")
            avg = group[-1]
            assert list(avg.get_xdata()) == [1, 2, 3, 4, 5]
            assert list(avg.get_ydata()) == c.weighted[key]
            assert (avg.get_color(), avg.get_alpha(), avg.get_linewidth(), avg.get_marker(),
                    avg.get_markersize(), avg.get_label()) == \
                (cycle[i], None, 2, "o", 3, f"{split} (weighted avg)")
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == ["test (weighted avg)",
                                                            "val (weighted avg)"]
        assert legend.get_texts()[0].get_fontsize() == 8
        assert len(ax.texts) == 0
    assert fig.get_suptitle() == "run_7 (5 evaluated rounds; thin: each of 4 clients)"
    assert fig._suptitle.get_fontsize() == 10


def test_above_20_clients_only_the_weighted_lines_and_the_title_says_so(tmp_path):
    fig = _figure(tmp_path, clients=tuple(range(1, 22)), rounds=(1, 2, 3, 4))
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    assert fig.get_suptitle() == "run_7 (4 evaluated rounds)"


def test_a_panel_without_its_metric_says_so_in_its_middle(tmp_path):
    pytest.importorskip("matplotlib")
    from federatedscope.core.monitors.curves import Curves, draw_curves
    fig = draw_curves(Curves([1, 2], {"test_acc": [0.1, 0.2]}), "r")
    acc, loss = fig.axes
    assert len(acc.texts) == 0 and loss.get_legend() is None and len(loss.get_lines()) == 0
    (note,) = loss.texts
    assert note.get_text() == "no loss (mean per sample) reported"
    assert note.get_position() == (0.5, 0.5) and note.get_transform() == loss.transAxes
    assert (note.get_ha(), note.get_va(), note.get_fontsize(), note.get_alpha()) == \
        ("center", "center", 9, 0.6)


def test_the_png_is_1200_by_400_whatever_the_users_matplotlibrc(tmp_path):
    """savefig's dpi is the module's, not the user's rc (a matplotlibrc at 50 dpi)."""
    matplotlib = pytest.importorskip("matplotlib")
    from PIL import Image
    png = str(tmp_path / "curves.png")
    with matplotlib.rc_context({"savefig.dpi": 50, "figure.dpi": 50}):
        assert write_curves(_log(tmp_path), png) == png
    with Image.open(png) as im:
        assert im.size == (1200, 400) and im.format == "PNG"


def test_a_round_without_per_client_results_is_a_gap_for_every_client(tmp_path, caplog):
    """Round 2 logged only its weighted average (no Results_raw): every client's curve has
    None there; a log with no evaluated round says so in one line."""
    path = tmp_path / "eval_results.log"
    lines = [json.loads(_line(r, (1, 2, 3, 4))) for r in (1, 2, 3)]
    del lines[1]["Results_raw"]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    c = read_curves(str(path))
    assert c.rounds == [1, 2, 3]
    assert c.per_client["client #3"]["val_avg_loss"] == pytest.approx([4.0, None, 2.0])
    empty = tmp_path / "empty" / "eval_results.log"
    empty.parent.mkdir()
    empty.write_text("")
    caplog.set_level("INFO", logger="federatedscope")
    assert write_curves(str(empty), str(tmp_path / "c.png")) is None
    assert [r.getMessage() for r in caplog.records] == \
        [f"{empty}: no evaluated round yet; no curves drawn"]


def test_splits_cut_the_kinds_suffix_once_at_the_end():
    from federatedscope.core.monitors.curves import Curves
    c = Curves([1], {"val_acc_acc": [0.1], "train_avg_loss": [1.0], "test_total": [5],
                     "x_acc": [0.2], "test_loss": [1.0]})
    assert c.splits() == ["train", "val_acc", "x"]


def test_a_utf8_log_reads_the_same_under_an_ascii_locale(tmp_path):
    """The log is read as UTF-8 whatever the locale: a hand-edited label "Zürich" survives a
    reader started with LC_ALL=POSIX (locale encoding ASCII, Python's UTF-8 mode off)."""
    import subprocess
    path = tmp_path / "eval_results.log"
    path.write_text(json.dumps({"Round": 1, "Results_weighted_avg": {"test_acc": 0.5},
                                "Results_raw": {"Zürich": {"test_acc": 0.5}}},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    code = ("import sys; from federatedscope.core.monitors.curves import read_curves; "
            "print(ascii(list(read_curves(sys.argv[1]).per_client)))")
    env = dict(os.environ, LC_ALL="POSIX", PYTHONUTF8="0", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == ascii(["Zürich"])


def test_a_split_keeps_its_colour_in_a_panel_where_an_earlier_split_has_no_line(tmp_path):
    """test reports accuracy only, val both: in the loss panel val's line is still val's
    colour (the second), not the first colour the panel hands out."""
    pytest.importorskip("matplotlib")
    from matplotlib import rcParams
    from federatedscope.core.monitors.curves import Curves, draw_curves
    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    fig = draw_curves(Curves([1, 2, 3], {"test_acc": [0.1, 0.2, 0.3], "val_acc": [0.2, 0.3, 0.4],
                                         "val_avg_loss": [3.0, 2.0, 1.0]}), "r")
    acc, loss = fig.axes
    assert [line.get_color() for line in acc.get_lines()] == cycle[:2]
    assert [line.get_color() for line in loss.get_lines()] == [cycle[1]]
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["val (weighted avg)"]


def test_the_title_names_the_run_directory_at_10_points_whatever_the_rc(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    from federatedscope.core.monitors import curves as curves_mod
    drawn = []
    real = curves_mod.draw_curves
    monkeypatch.setattr(curves_mod, "draw_curves",
                        lambda c, run: drawn.append(real(c, run)) or drawn[-1])
    with matplotlib.rc_context({"font.size": 14}):
        assert write_curves(_log(tmp_path), str(tmp_path / "c.png")) == str(tmp_path / "c.png")
    (fig,) = drawn
    assert fig.get_suptitle() == "run (5 evaluated rounds; thin: each of 4 clients)"
    assert fig._suptitle.get_fontsize() == 10
