"""The robust rules' arithmetic at realistic client counts (n = 4, 5, 7, 10), through the public
``core/aggregators/robust.py`` functions, against values worked out by hand in the comments.

Each update's float parameter is a 1-D delta from a zero global state, so every rule reduces to
arithmetic on a handful of numbers; a second coordinate (and an integer buffer) checks that rules
work per coordinate and that integer buffers follow the clients the rule keeps.
"""
import pytest
import torch

from federatedscope.core.aggregators.robust import (RobustArgs, check_rule, krum_select,
                                                    robust_aggregate)

GLOBAL = {"w": torch.zeros(2), "n": torch.tensor(0)}


def _updates(xs, sizes=None, counts=None):
    """Client i+1 sends w = [x_i, -x_i] (a delta of x_i) and integer buffer n = counts[i]."""
    sizes = sizes or [10] * len(xs)
    counts = counts or [0] * len(xs)
    return [(i + 1, sizes[i], {"w": torch.tensor([float(x), -float(x)]),
                               "n": torch.tensor(counts[i])})
            for i, x in enumerate(xs)]


def _w(state):
    return [float(v) for v in state["w"]]


def _agg(rule, xs, sizes=None, counts=None, **args):
    return robust_aggregate(rule, GLOBAL, _updates(xs, sizes, counts), RobustArgs(**args))


# ------------------------------------------------------------------ median
@pytest.mark.parametrize("xs,want", [
    ([20, 1, 10, 2], 6.0),                           # n=4 even: sorted 1 2 10 20 -> (2+10)/2
    ([3, 20, 1, 10, 2], 3.0),                        # n=5 odd: the middle of 1 2 3 10 20
    ([9, 1, 8, 2, 7, 3, 6, 4, 5, 100], 5.5),         # n=10: sorted ..., 5, 6, ... -> (5+6)/2
])
def test_median_odd_and_even_counts(xs, want):
    assert _w(_agg("median", xs)) == [want, -want]


def test_median_is_per_coordinate_not_per_client():
    ups = [(1, 10, {"w": torch.tensor([1.0, 40.0]), "n": torch.tensor(0)}),
           (2, 10, {"w": torch.tensor([2.0, 30.0]), "n": torch.tensor(0)}),
           (3, 10, {"w": torch.tensor([3.0, 20.0]), "n": torch.tensor(0)}),
           (4, 10, {"w": torch.tensor([4.0, 10.0]), "n": torch.tensor(0)})]
    # coordinate 0: (2+3)/2; coordinate 1: (20+30)/2 -- no single client holds [2.5, 25]
    assert _w(robust_aggregate("median", GLOBAL, ups, RobustArgs())) == [2.5, 25.0]


# ------------------------------------------------------------------ trimmed mean
ODD10 = [0, 0, 0, 1, 2, 3, 4, 6, 50, 100]


@pytest.mark.parametrize("ratio,byz,want", [
    (0.1, 0, 66 / 8),    # FS default 0.1 x 10 = 1 per side: 0 0 1 2 3 4 6 50 -> 66/8
    (0.1, 2, 66 / 8),    # byzantine_node_num does not change the trimming: the ratio does
    (0.2, 0, 16 / 6),    # 2 per side: 0 1 2 3 4 6 -> 16/6
    (0.3, 0, 10 / 4),    # 3 per side: 1 2 3 4 -> 10/4
])
def test_trimmed_mean_excludes_ratio_times_n_from_each_side(ratio, byz, want):
    got = _w(_agg("trimmedmean", ODD10, trimmedmean_excluded_ratio=ratio, byzantine_node_num=byz))
    assert got == pytest.approx([want, -want], abs=1e-6)


@pytest.mark.parametrize("xs,want", [
    ([1, 2, 3, 30], 9.0),          # n=4: int(0.1 x 4) = 0 trimmed -> plain mean 36/4
    ([1, 2, 3, 4, 40], 10.0),      # n=5: int(0.5) = 0 -> 50/5
])
def test_trimmed_mean_with_fs_default_ratio_trims_nothing_below_ten_clients(xs, want):
    assert _w(_agg("trimmedmean", xs)) == [want, -want]


def test_trimmed_mean_never_trims_everything():
    # ratio 0.5 at n=4 would drop 2 per side (all 4); capped at (n-1)//2 = 1 -> mean(2, 3)
    assert _w(_agg("trimmedmean", [1, 2, 3, 30], trimmedmean_excluded_ratio=0.5)) == [2.5, -2.5]


# ------------------------------------------------------------------ krum
# Deltas 0, 1, 3, 7, 20 (x2 coordinates: squared distances double, the order does not change).
# Squared 1-D distances to the others, sorted:
#   0: 1 9 49 400    1: 1 4 36 361    3: 4 9 16 289    7: 16 36 49 169    20: 169 289 361 400
KRUM5 = [0, 1, 3, 7, 20]


@pytest.mark.parametrize("byz,want", [
    (0, 3.0),   # n-f-2 = 3 neighbours: scores 59 41 29 101 1050 -> delta 3 wins
    (1, 1.0),   # 2 neighbours: 10 5 13 52 458 -> delta 1 wins
    (2, 0.0),   # 1 neighbour: 1 1 4 16 169 -> tie of 0 and 1, broken by the lower client id
])
def test_krum_scores_use_n_minus_f_minus_2_neighbours(byz, want):
    assert _w(_agg("krum", KRUM5, byzantine_node_num=byz)) == [want, -want]


def test_krum_at_four_clients_with_fs_defaults():
    # n=4, f=0: 2 neighbours. 0: 1 9 | 1: 1 4 | 3: 4 9 | 20: 289 361 -> scores 10 5 13 650
    assert _w(_agg("krum", [0, 1, 3, 20])) == [1.0, -1.0]


def test_multi_krum_averages_the_best_m_by_sample_size():
    # f=1 scores: delta 1 -> 5, delta 0 -> 10 are the best two; sizes 10 (delta 0) and 30
    # (delta 1): (0 x 10 + 1 x 30) / 40 = 0.75. The integer buffer follows the kept two:
    # (4 x 10 + 8 x 30) / 40 = 7.
    sizes, counts = [10, 30, 10, 10, 10], [4, 8, 100, 100, 100]
    out = _agg("krum", KRUM5, sizes, counts, byzantine_node_num=1, krum_agg_num=2)
    assert _w(out) == [0.75, -0.75] and int(out["n"]) == 7
    assert krum_select(torch.tensor([[float(x)] for x in KRUM5], dtype=torch.float64), 1, 3) \
        == [1, 0, 2]          # scores 5 10 13: the best three in score order


def test_krum_at_ten_clients_drops_the_outliers():
    # eight clients at deltas 0..7, two attackers at 1000 and 1001. f=2 -> 6 neighbours; the
    # middle clients 3 and 4 have the smallest sums (1+1+4+4+9+9 = 28, vs 1+4+9+16+25+36 for 0);
    # krum_agg_num 2 keeps both: mean of 3 and 4 = 3.5
    xs = [0, 1, 2, 3, 4, 5, 6, 7, 1000, 1001]
    assert _w(_agg("krum", xs, byzantine_node_num=2, krum_agg_num=2)) == [3.5, -3.5]


# ------------------------------------------------------------------ bulyan
def test_bulyan_selects_n_minus_2f_by_krum_then_trims_f():
    # n=5, f=1: theta = 3 selected by krum (scores above: deltas 1, 0, 3), then 1 trimmed from
    # each side of 0 1 3 -> 1
    assert _w(_agg("bulyan", KRUM5, byzantine_node_num=1)) == [1.0, -1.0]


def test_bulyan_at_seven_clients():
    # n=7, f=1 (7 >= 4f+3): theta = 5, krum with 4 neighbours over deltas 0 1 2 3 4 50 90:
    # scores 0: 1+4+9+16=30, 1: 1+1+4+9=15, 2: 1+1+4+4=10, 3: 15, 4: 30, 50, 90 huge -> keep
    # 0..4; trim 1 per side -> mean(1, 2, 3) = 2
    assert _w(_agg("bulyan", [0, 1, 2, 3, 4, 50, 90], byzantine_node_num=1)) == [2.0, -2.0]
    assert check_rule("bulyan", 1, 7) == [] and check_rule("bulyan", 1, 6)


# ------------------------------------------------------------------ norm bounding
def test_normbounding_scales_down_only():
    # deltas [3,-3] (norm 4.24 < 10: untouched) and [30,-30] (norm 42.4 -> scaled by
    # 10/42.43 to [7.07, -7.07]); sizes 10 and 30 -> (3 x 10 + 7.0711 x 30) / 40
    out = _w(_agg("normbounding", [3, 30], [10, 30]))
    clipped = 10 / (2 ** 0.5)
    want = (3 * 10 + clipped * 30) / 40
    assert out == pytest.approx([want, -want], rel=1e-6)


@pytest.mark.parametrize("bound,want", [(10.0, 2.0), (1.0, 1 / 2 ** 0.5)])
def test_normbounding_below_the_bound_is_the_plain_weighted_mean(bound, want):
    # four clients at delta 1, 2, 2, 3 (norms 1.41 .. 4.24): all under 10 -> mean 2 unchanged;
    # with bound 1 each is scaled to norm 1, i.e. to [0.707, -0.707]
    assert _w(_agg("normbounding", [1, 2, 2, 3], normbounding_norm_bound=bound)) \
        == pytest.approx([want, -want], rel=1e-6)


# ------------------------------------------------------------------ shared behaviour
def test_rules_see_deltas_not_states():
    base = {"w": torch.tensor([100.0, -100.0]), "n": torch.tensor(0)}
    ups = [(i + 1, 10, {"w": base["w"] + torch.tensor([x, -x]), "n": torch.tensor(0)})
           for i, x in enumerate([3.0, 4.0])]
    # both deltas (norm 4.24, 5.66) are under the default bound of 10: the mean delta 3.5 is
    # added to the global 100 (clipping the states themselves, norm ~141, would shrink it)
    out = robust_aggregate("normbounding", base, ups, RobustArgs())
    assert _w(out) == [103.5, -103.5]


def test_integer_buffers_take_the_floored_weighted_mean_of_the_kept_clients():
    # median keeps everyone: (1 x 10 + 2 x 10 + 4 x 20) / 40 = 2.75 -> 2
    out = _agg("median", [1, 2, 3], [10, 10, 20], [1, 2, 4])
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 2


def test_fedavg_is_not_a_robust_rule():
    with pytest.raises(ValueError, match="not a robust rule"):
        _agg("fedavg", [1, 2, 3, 4])


# ------------------------------------------------------------------ edges of the arithmetic
def test_several_float_tensors_are_cut_back_in_place():
    # three float tensors of sizes 2, 3, 1 (one float64) around an integer buffer: the flat
    # vector must be cut back at offsets 0, 2, 5 and each tensor keep its dtype; median of
    # (1, 2, 30, 40) x the tensor's factor per entry
    g = {"a": torch.zeros(2), "b": torch.zeros(3, dtype=torch.float64), "n": torch.tensor(0),
         "c": torch.zeros(1)}
    ups = [(i + 1, 10, {"a": torch.tensor([x, 2 * x]),
                        "b": torch.full((3,), -x, dtype=torch.float64),
                        "n": torch.tensor(0), "c": torch.tensor([3 * x])})
           for i, x in enumerate([1.0, 2.0, 30.0, 40.0])]
    out = robust_aggregate("median", g, ups, RobustArgs())
    assert out["a"].tolist() == [16.0, 32.0] and out["a"].dtype == torch.float32
    assert out["b"].tolist() == [-16.0] * 3 and out["b"].dtype == torch.float64
    assert out["c"].tolist() == [48.0] and out["c"].dtype == torch.float32


def test_ties_are_broken_by_client_id_whatever_the_arrival_order():
    # f=2 at n=5 (1 neighbour): deltas 0 (client 1) and 1 (client 2) tie at score 1
    ups = _updates(KRUM5)
    out = robust_aggregate("krum", GLOBAL, list(reversed(ups)), RobustArgs(byzantine_node_num=2))
    assert _w(out) == [0.0, -0.0]


def test_zero_sample_sizes_weigh_clients_equally():
    # multi-krum keeps deltas 1 and 0 (f=1); with no sample counts: plain mean 0.5, and the
    # integer buffer (3 + 8) / 2 = 5.5 -> 5
    out = _agg("krum", KRUM5, [0] * 5, [3, 8, 0, 0, 0], byzantine_node_num=1, krum_agg_num=2)
    assert _w(out) == [0.5, -0.5] and int(out["n"]) == 5


@pytest.mark.parametrize("m,want", [(0, 1.0), (5, 6.2), (9, 6.2)])
def test_krum_agg_num_is_clamped_to_one_and_n(m, want):
    # m=0 keeps the best one (delta 1 with f=1); m >= n keeps all five: mean 31/5
    assert _w(_agg("krum", KRUM5, byzantine_node_num=1, krum_agg_num=m)) \
        == pytest.approx([want, -want], abs=1e-6)


def test_a_single_update_passes_every_rule():
    for rule in ("krum", "median", "trimmedmean", "bulyan", "normbounding"):
        assert _w(_agg(rule, [4])) == [4.0, -4.0], rule


def test_bulyan_with_more_byzantine_than_clients_keeps_one():
    # n=4, f=2: theta = max(1, 4 - 4) = 1 selected by krum (1 neighbour: deltas 0 and 1 tie,
    # client 1 wins) -> its delta 0
    assert _w(_agg("bulyan", [0, 1, 3, 20], byzantine_node_num=2)) == [0.0, -0.0]


def test_zero_delta_is_not_scaled_and_clipping_is_logged(caplog):
    caplog.set_level("INFO", logger="federatedscope")
    out = _agg("normbounding", [0, 30, 3])          # norms 0, 42.4 (clipped), 4.2
    clipped = 10 / (2 ** 0.5)
    assert _w(out) == pytest.approx([(clipped + 3) / 3, -(clipped + 3) / 3], rel=1e-6)
    assert "clipped the update(s) of client(s) [2] to norm 10.0" in caplog.text


def test_unknown_rule_is_refused_naming_the_rules():
    with pytest.raises(ValueError, match=r"robust_rule='krumm'.*\('krum', 'median'"):
        _agg("krumm", [1, 2, 3, 4])


def test_fs_default_parameters():
    a = RobustArgs()
    assert (a.byzantine_node_num, a.krum_agg_num, a.trimmedmean_excluded_ratio,
            a.normbounding_norm_bound) == (0, 1, 0.1, 10.0)


@pytest.mark.parametrize("rule,f,n,notes", [
    ("krum", 1, 4, ["krum tolerates f=1 only with more than 4 clients per round (have 4)"]),
    ("krum", 1, 5, []),
    ("krum", 2, 6, ["krum tolerates f=2 only with more than 6 clients per round (have 6)"]),
    ("krum", 2, 7, []),
    ("krum", 0, 5, ["krum with aggregator.byzantine_node_num=0 assumes no attacker"]),
    ("bulyan", 1, 6, ["bulyan tolerates f=1 only with at least 7 clients per round (have 6)"]),
    ("bulyan", 0, 3, ["bulyan with aggregator.byzantine_node_num=0 assumes no attacker"]),
    ("median", 0, 4, []),
    ("normbounding", 3, 4, []),
])
def test_check_rule_warns_exactly_below_the_guarantee(rule, f, n, notes):
    assert check_rule(rule, f, n) == notes


def test_krum_scores_are_squared_distances():
    # n=5, f=1 (2 neighbours), deltas 0 1 5 8 11. Squared: 0: 1+25=26, 1: 1+16=17, 5: 9+16=25,
    # 8: 9+9=18, 11: 9+36=45 -> delta 1. (Cubed distances would pick 8: 1+64=65 > 27+27=54.)
    assert _w(_agg("krum", [0, 1, 5, 8, 11], byzantine_node_num=1)) == [1.0, -1.0]


def test_weights_are_exact_in_float64():
    # a float64 model, sample sizes 1 and 2 under the bound: (3 x 1 + 6 x 2) / 3 = 5 exactly;
    # weights rounded to float32 (1/3 -> 0.33333334) would give 5.0000002
    g = {"w": torch.zeros(1, dtype=torch.float64)}
    ups = [(1, 1, {"w": torch.tensor([3.0], dtype=torch.float64)}),
           (2, 2, {"w": torch.tensor([6.0], dtype=torch.float64)})]
    assert robust_aggregate("normbounding", g, ups, RobustArgs())["w"].item() == 5.0


def test_a_total_of_one_sample_is_a_weight_not_a_reason_for_equal_weights():
    # sizes 1 and 0: client 1 alone counts -> its delta 3
    assert _w(_agg("normbounding", [3, 4], [1, 0])) == [3.0, -3.0]


def test_integer_buffers_keep_counts_beyond_float32():
    # 2^25 + 1 is not a float32: the mean of two such counts must still be exact
    big = 2 ** 25 + 1
    out = _agg("median", [1, 2], [10, 10], [big, big])
    assert int(out["n"]) == big


@pytest.mark.parametrize("rule,want", [("median", 6), ("krum", 4), ("normbounding", 6),
                                       ("trimmedmean", 6), ("bulyan", 6)])
def test_a_model_with_only_integer_buffers(rule, want):
    # nothing to clip or rank: counts 4, 8 (sizes 10, 10) -> mean 6; krum's scores all tie at 0,
    # so it keeps client 1 alone -> 4
    g = {"n": torch.tensor(0)}
    ups = [(1, 10, {"n": torch.tensor(4)}), (2, 10, {"n": torch.tensor(8)})]
    assert int(robust_aggregate(rule, g, ups, RobustArgs())["n"]) == want


def test_norms_below_one_are_scaled_by_the_bound_over_the_norm():
    # bound 0.5, delta [0.4, -0.4] (norm 0.566): scaled to norm 0.5 -> 0.5 / sqrt(2) per entry
    out = _w(_agg("normbounding", [0.4], normbounding_norm_bound=0.5))
    assert out == pytest.approx([0.5 / 2 ** 0.5, -0.5 / 2 ** 0.5], rel=1e-6)


def test_an_update_exactly_at_the_bound_is_not_reported_as_clipped(caplog):
    caplog.set_level("INFO", logger="federatedscope")
    g = {"w": torch.zeros(2)}
    ups = [(1, 10, {"w": torch.tensor([6.0, -8.0])}), (2, 10, {"w": torch.tensor([0.0, 0.0])})]
    out = robust_aggregate("normbounding", g, ups, RobustArgs())     # norm 10 = the bound
    assert out["w"].tolist() == [3.0, -4.0] and "clipped" not in caplog.text
