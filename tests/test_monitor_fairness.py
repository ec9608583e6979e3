"""FS's ``fairness`` report and FS's counts in every summarised form, against hand computations.

FS's ``Monitor.format_eval_res`` writes, for each metric sent by two or more clients, nine
statistics of its values over the clients (sorted values ``a``, ``n`` clients): ``_std``
(population), ``_bottom_decile`` ``a[n // 10]``, ``_top_decile`` ``a[n * 9 // 10]``, ``_min``,
``_max``, ``_bottom10%`` ``mean(a[:n // 10])``, ``_top10%`` ``mean(a[n * 9 // 10:])``, ``_cos1``
``mean(a) / sqrt(mean(a ** 2))`` and ``_entropy`` of ``a`` normalised to sum 1 (natural log, each
value shifted by 1e-9, which moves nothing here beyond 1e-8). ``<split>_total`` and
``<split>_correct`` are their mean over clients in weighted_avg, avg and fairness alike.

Five clients with unequal sample counts (10, 30, 20, 10, 40: 110 test samples) and unequal
accuracies, listed out of order so that sorting matters; twelve clients where the deciles, the
10% tails and the extremes are all different values.
"""
import json
import math
from types import SimpleNamespace as NS

import pytest

from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.monitors.monitor import FAIRNESS_STATS, Monitor, fairness

FS_DEFAULT_REPORTS = ["weighted_avg", "avg", "fairness", "raw"]


def _cfg(reports=FS_DEFAULT_REPORTS, digits=4, key="test_acc"):
    return NS(eval=NS(best_res_update_round_wise_key=key, report=list(reports)),
              print_decimal_digits=digits, early_stop=NS(delta=0.0, patience=0))


# acc = correct / total; clients 1, 3 and 5 have a val split; only client 2 sends train_loss
FIVE = {
    4: {"test_total": 10, "test_correct": 3, "test_acc": 0.3, "test_avg_loss": 2.0},
    1: {"test_total": 10, "test_correct": 9, "test_acc": 0.9, "test_avg_loss": 0.5,
        "val_total": 4, "val_correct": 1, "val_acc": 0.25},
    5: {"test_total": 40, "test_correct": 20, "test_acc": 0.5, "test_avg_loss": 1.5,
        "val_total": 12, "val_correct": 12, "val_acc": 1.0},
    2: {"test_total": 30, "test_correct": 3, "test_acc": 0.1, "test_avg_loss": 2.5,
        "train_loss": 0.75},
    3: {"test_total": 20, "test_correct": 14, "test_acc": 0.7, "test_avg_loss": 1.0,
        "val_total": 8, "val_correct": 4, "val_acc": 0.5},
}


def _entropy(values):
    total = sum(values)
    return -sum(v / total * math.log(v / total) for v in values if v)


# the kept keys (counts as means, a lone value as it is), then each metric's nine statistics
FIVE_FAIRNESS = {
    "test_correct": 9.8,               # (9 + 3 + 14 + 3 + 20) / 5 = 49 / 5
    "test_total": 22.0,                # 110 / 5
    "train_loss": 0.75,                # one client sent it: FS keeps the value
    "val_correct": 17 / 3,             # (1 + 4 + 12) / 3: clients without a val split left out
    "val_total": 8.0,                  # (4 + 8 + 12) / 3
    # acc sorted .1 .3 .5 .7 .9: mean .5, squared deviations .16 .04 0 .04 .16 -> var .08
    "test_acc_std": math.sqrt(0.08),
    "test_acc_bottom_decile": 0.1,     # a[5 // 10] = a[0]
    "test_acc_top_decile": 0.9,        # a[45 // 10] = a[4]
    "test_acc_min": 0.1, "test_acc_max": 0.9,
    "test_acc_bottom10%": None,        # mean(a[:0]): FS's NaN, written as null
    "test_acc_top10%": 0.9,            # mean(a[4:])
    "test_acc_cos1": 0.5 / math.sqrt(0.33),    # mean of squares (.01+.09+.25+.49+.81) / 5
    "test_acc_entropy": _entropy([1, 3, 5, 7, 9]),
    # loss sorted .5 1 1.5 2 2.5: mean 1.5, squared deviations 1 .25 0 .25 1 -> var .5
    "test_avg_loss_std": math.sqrt(0.5),
    "test_avg_loss_bottom_decile": 0.5, "test_avg_loss_top_decile": 2.5,
    "test_avg_loss_min": 0.5, "test_avg_loss_max": 2.5,
    "test_avg_loss_bottom10%": None, "test_avg_loss_top10%": 2.5,
    "test_avg_loss_cos1": 1.5 / math.sqrt(2.75),  # (.25 + 1 + 2.25 + 4 + 6.25) / 5
    "test_avg_loss_entropy": _entropy([1, 2, 3, 4, 5]),
    # val_acc of clients 1, 3, 5 sorted .25 .5 1: mean 7/12, mean of squares 7/16,
    # var 7/16 - 49/144 = 7/72; deciles a[0] and a[27 // 10] = a[2]
    "val_acc_std": math.sqrt(7 / 72),
    "val_acc_bottom_decile": 0.25, "val_acc_top_decile": 1.0,
    "val_acc_min": 0.25, "val_acc_max": 1.0,
    "val_acc_bottom10%": None, "val_acc_top10%": 1.0,
    "val_acc_cos1": (7 / 12) / math.sqrt(7 / 16),
    "val_acc_entropy": _entropy([1, 2, 4]),
}


def _approx(want, abs_tol):
    return {k: (None if v is None else pytest.approx(v, abs=abs_tol)) for k, v in want.items()}


def test_fairness_of_five_clients_is_fs_statistics_over_the_clients_that_sent_each_key():
    got = fairness(FIVE)
    assert list(got) == list(FIVE_FAIRNESS)          # FS's order: kept keys, then statistics
    assert got == _approx(FIVE_FAIRNESS, 1e-8)


def test_deciles_and_tails_of_twelve_clients_are_fs_index_picks_not_interpolations():
    # client c has test_avg_loss 0.5 x ((5c) mod 12): the values 0, .5, ..., 5.5 out of order
    per = {c: {"test_total": c, "test_avg_loss": 0.5 * (5 * c % 12)} for c in range(1, 13)}
    got = fairness(per)
    sum_sq = sum(k * k for k in range(12))           # 506
    assert got == _approx({
        "test_total": 6.5,                           # (1 + ... + 12) / 12
        "test_avg_loss_std": 0.5 * math.sqrt(143 / 12),   # var of 0..11 is (12^2 - 1) / 12
        "test_avg_loss_bottom_decile": 0.5,          # a[12 // 10] = a[1]
        "test_avg_loss_top_decile": 5.0,             # a[108 // 10] = a[10]
        "test_avg_loss_min": 0.0, "test_avg_loss_max": 5.5,
        "test_avg_loss_bottom10%": 0.0,              # mean(a[:1])
        "test_avg_loss_top10%": 5.25,                # mean(a[10:]) = (5 + 5.5) / 2
        "test_avg_loss_cos1": 2.75 / math.sqrt(0.25 * sum_sq / 12),
        "test_avg_loss_entropy": _entropy(range(12)),
    }, 1e-8)


def test_equal_zero_values_have_no_cosine_and_the_uniform_entropy():
    per = {c: {"test_total": 2 * c, "test_correct": 0, "test_acc": 0.0} for c in (1, 2, 3, 4, 5)}
    got = fairness(per)
    assert got["test_total"] == 6.0 and got["test_correct"] == 0.0     # (2+4+6+8+10) / 5
    assert got["test_acc_std"] == 0.0 and got["test_acc_max"] == 0.0
    assert got["test_acc_cos1"] is None                  # 0 / 0: FS's NaN, written as null
    assert got["test_acc_entropy"] == pytest.approx(math.log(5), abs=1e-9)


def test_each_round_line_and_the_final_line_carry_fs_default_forms(tmp_path):
    """Three rounds with FS's default eval.report: each line has weighted_avg, avg and fairness
    (counts as means in all three) and raw; the Final line repeats round 3's summarised forms."""
    m = Monitor(_cfg(), str(tmp_path))
    worse = {c: dict(r, test_acc=r["test_acc"] / 2) for c, r in FIVE.items()}
    for r, per in [(1, worse), (2, FIVE), (3, worse)]:
        line = m.report(r, per, missing=[6])
    assert list(line) == ["Role", "Round", "Clients", "Missing", "Results_weighted_avg",
                          "Results_avg", "Results_fairness", "Results_raw"]
    wavg, avg, fair = (line[f"Results_{f}"] for f in ("weighted_avg", "avg", "fairness"))
    # the counts: means over clients (FS), not the sums 110 and 49
    assert (wavg["test_total"], wavg["test_correct"], wavg["val_total"]) == (22.0, 9.8, 8.0)
    assert (avg["test_total"], avg["test_correct"], avg["val_total"]) == (22.0, 9.8, 8.0)
    assert (fair["test_total"], fair["test_correct"], fair["val_total"]) == (22.0, 9.8, 8.0)
    assert wavg["val_correct"] == avg["val_correct"] == fair["val_correct"] == 5.6667  # 17 / 3
    # accuracy is still weighed by each client's test_total: (3+9+20+3+14) / 2 / 110 = 24.5 / 110
    assert wavg["test_acc"] == round(24.5 / 110, 4) == 0.2227
    # round 3's fairness: the accuracies halved, rounded to print_decimal_digits 4
    assert fair["test_acc_std"] == round(math.sqrt(0.08) / 2, 4) == 0.1414
    assert (fair["test_acc_min"], fair["test_acc_max"], fair["test_acc_top10%"]) == \
        (0.05, 0.45, 0.45)
    assert fair["test_acc_bottom10%"] is None and fair["test_acc_cos1"] == 0.8704  # .5/sqrt(.33)
    assert set(fair) == set(FIVE_FAIRNESS) and len(FAIRNESS_STATS) == 9
    summary = m.final_summary()
    assert summary == {"Role": "Server #", "Final": True, "Round": 3, "Clients": [1, 2, 3, 4, 5],
                       "Results_weighted_avg": wavg, "Results_avg": avg,
                       "Results_fairness": fair, "best_round": 2,
                       "best_test_acc": pytest.approx(49 / 110)}
    m.flush()
    lines = open(m.log_path, encoding="utf-8").read().splitlines()

    def no_nan(name):
        raise AssertionError(f"{name} in eval_results.log: not strict JSON")
    assert [json.loads(t, parse_constant=no_nan) for t in lines][-1] == summary
    assert '"test_acc_bottom10%": null' in lines[-1] and '"test_total": 22.0' in lines[-1]


def test_a_fairness_only_report_still_gets_its_final_line(tmp_path):
    m = Monitor(_cfg(reports=["fairness"]), str(tmp_path))
    m.report(1, FIVE)
    m.report(2, {}, missing=[1, 2, 3, 4, 5])       # nobody answered: not a round to repeat
    summary = m.final_summary()
    assert (summary["Round"], summary["Clients"], summary["Results_weighted_avg"]) == \
        (1, [1, 2, 3, 4, 5], {})
    assert summary["Results_fairness"]["test_acc_max"] == 0.9 and "Results_avg" not in summary
    assert (summary["best_round"], summary["best_test_acc"]) == (1, pytest.approx(49 / 110))


def test_fs_default_eval_report_writes_all_four_forms(tmp_path):
    cfg = get_default_cfg()
    assert list(cfg.eval.report) == FS_DEFAULT_REPORTS
    line = Monitor(cfg, str(tmp_path)).report(1, FIVE)
    assert [k for k in line if k.startswith("Results_")] == \
        ["Results_weighted_avg", "Results_avg", "Results_fairness", "Results_raw"]
    # the fairness values are rounded to print_decimal_digits like the other forms
    digits = cfg.print_decimal_digits
    assert line["Results_fairness"]["test_acc_std"] == round(math.sqrt(0.08), digits)


def test_ten_clients_are_the_first_count_with_a_bottom_tail_and_decile_above_the_minimum():
    """n = 10: a[n // 10] = a[1] (not the minimum) and the bottom 10% is a[:1], one client; with
    fewer than 10 clients the bottom tail is empty (null). Client c has test_acc (3c mod 10) / 10:
    the values 0, .1, ..., .9 out of order."""
    per = {c: {"test_total": 10 * c, "test_acc": (3 * c % 10) / 10} for c in range(1, 11)}
    got = fairness(per)
    assert got == _approx({
        "test_total": 55.0,                            # (10 + 20 + ... + 100) / 10
        "test_acc_std": 0.1 * math.sqrt(99 / 12),      # var of 0..9 is (10^2 - 1) / 12
        "test_acc_bottom_decile": 0.1,                 # a[10 // 10] = a[1]
        "test_acc_top_decile": 0.9,                    # a[90 // 10] = a[9]
        "test_acc_min": 0.0, "test_acc_max": 0.9,
        "test_acc_bottom10%": 0.0,                     # mean(a[:1])
        "test_acc_top10%": 0.9,                        # mean(a[9:])
        "test_acc_cos1": 0.45 / math.sqrt(0.285),      # 0.01 x (0 + 1 + 4 + ... + 81) / 10
        "test_acc_entropy": _entropy(range(10)),
    }, 1e-8)
    # one client fewer: 9 // 10 = 0, the bottom tail is empty again and the decile is the minimum
    del per[10]                                        # drops the value 0.0
    nine = fairness(per)
    assert (nine["test_acc_bottom10%"], nine["test_acc_bottom_decile"]) == (None, 0.1)


def test_fairness_warns_nothing_for_few_clients_or_all_zero_values():
    """FS's NaN statistics (the empty bottom tail of fewer than 10 clients, cos1 of all zeros) are
    written as null quietly: the server reports every round, and numpy's 'Mean of empty slice' /
    'invalid value' RuntimeWarnings would reach its stderr each time."""
    import warnings
    per = {c: {"test_total": 5, "test_correct": 0, "test_acc": 0.0, "test_avg_loss": 0.25 * c}
           for c in (1, 2, 3, 4)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fairness(per)
    assert got["test_acc_cos1"] is None and got["test_avg_loss_bottom10%"] is None
    assert got["test_avg_loss_cos1"] == pytest.approx(0.625 / math.sqrt(0.46875))  # 1.875 / 4
