"""The aggregators' own logic, unit by unit, against hand computations (no server, no transport).

``Aggregator`` (sampling, the unverified-count cap, personalized keys, the round's collection),
``weighted_mean`` / the online running sum (FedAvg) and ``FedOptimizer`` (FedOpt's server SGD).
Values are dyadic (weights summing to a power of two, small integers), so every float64 result
is exact and compared with ``torch.equal``; 4 or more clients, several rounds, non-default keys.
"""
import logging
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from federatedscope.core.aggregators.aggregator import (AggregationFault, Aggregator, cfg_value,
                                                         claim_cap,
                                                         local_keys)
from federatedscope.core.aggregators.fedavg import (CHUNK, ClientsAvgAggregator,
                                                     OnlineClientsAvgAggregator, weighted_mean)
from federatedscope.core.aggregators.fedopt import FedOptimizer
from federatedscope.core.configs.config import ConfigError


def _cfg(num=0, rate=-1.0, seed=7, ratio=2.0, local_param=()):
    return NS(seed=seed, federate=NS(sample_client_num=num, sample_client_rate=rate),
              aggregator=NS(max_sample_ratio=ratio),
              personalization=NS(local_param=list(local_param)))


# ----------------------------------------------------------------------------- small helpers
def test_cfg_value_walks_the_dotted_path_or_gives_the_default():
    cfg = NS(a=NS(b=NS(c=5)), x=0)
    assert cfg_value(cfg, "a.b.c", 9) == 5
    assert cfg_value(cfg, "x", 9) == 0                # a falsy value is a value, not "missing"
    assert cfg_value(cfg, "a.b.d", 9) == 9
    assert cfg_value(cfg, "a.z.c", [1]) == [1]


def test_local_keys_are_substring_matches_and_an_empty_pattern_matches_nothing():
    keys = ["fc1.weight", "bn1.running_mean", "head.bn.bias", "norm.weight", "fc2.bias"]
    assert local_keys(keys, ["bn", ""]) == ["bn1.running_mean", "head.bn.bias"]
    assert local_keys(keys, ["norm", "fc2"]) == ["norm.weight", "fc2.bias"]
    assert local_keys(keys, [""]) == [] and local_keys(keys, []) == []


@pytest.mark.parametrize("counts,ratio,want", [
    ([10, 20, 0, 30, -5], 2.0, 40),     # zero / negative counts are not part of the median
    ([10, 20, 30, 40], 1.5, 37),        # even count: median 25, 1.5 x 25 = 37.5 -> 37
    ([3, 4], 1.5, 5),                   # median 3.5 x 1.5 = 5.25 -> 5
    ([1, 1, 1, 1], 0.3, 1),             # never below one sample
    ([10, 20, 30, 40], 0.0, 2 ** 62),   # ratio 0: no cap
    ([10, 20, 30, 40], -1.0, 2 ** 62),
    ([0, 0, 0, 0], 2.0, 2 ** 62),       # nobody declared anything: nothing to compare with
    ([], 2.0, 2 ** 62),
])
def test_claim_cap_is_ratio_times_the_median_positive_count(counts, ratio, want):
    assert claim_cap(counts, ratio) == want


# ----------------------------------------------------------------------------------- sampling
ONLINE = [9, 3, 12, 1, 7, 4]       # arrival order; sampling works on the sorted ids


def _expected_sample(k, seed, rnd):
    rng = np.random.default_rng([seed, rnd])
    return sorted(int(c) for c in rng.choice(sorted(ONLINE), size=k, replace=False))


def test_sample_client_num_draws_that_many_from_seed_and_round():
    agg = ClientsAvgAggregator(_cfg(num=4, seed=11))
    picks = [agg.sample(ONLINE, r) for r in range(5)]
    assert picks == [_expected_sample(4, 11, r) for r in range(5)]
    assert all(len(set(p)) == 4 and set(p) <= set(ONLINE) for p in picks)
    assert len({tuple(p) for p in picks}) > 1            # the round is part of the seed
    other = ClientsAvgAggregator(_cfg(num=4, seed=12))
    assert [other.sample(ONLINE, r) for r in range(5)] != picks
    # a restarted server (same seed) samples the same clients (no RNG state saved)
    assert ClientsAvgAggregator(_cfg(num=4, seed=11)).sample(list(reversed(ONLINE)), 3) == picks[3]


def test_one_sampled_client_per_round():
    agg = ClientsAvgAggregator(_cfg(num=1, rate=-1.0, seed=5))
    picks = [agg.sample(ONLINE, r) for r in range(4)]
    assert picks == [_expected_sample(1, 5, r) for r in range(4)] and {len(p) for p in picks} == {1}


def test_sample_client_num_above_the_online_count_takes_everyone():
    agg = ClientsAvgAggregator(_cfg(num=10, rate=-1.0))
    assert agg.sample(ONLINE, 2) == sorted(ONLINE)


@pytest.mark.parametrize("num,rate,expected,k", [
    (-1, 0.5, 10, 5),      # a rate of the job's 10 clients, not of the 6 online
    (2, 0.5, 10, 5),       # FS: a valid rate wins over a count
    (2, 1.5, 10, 2),       # a rate above 1 is no rate: the count applies
    (-1, 1.5, 10, 6),      # ... or, without a count, every online client
    (-1, 0.8, 10, 6),      # 8 asked, 6 online: all of them
    (4, -1.0, 10, 4),
    (3, 1.0, 10, 6),       # a rate of exactly 1 is valid and wins: all 10, so all 6 online
])
def test_sampling_follows_fs_rule_over_the_jobs_client_count(num, rate, expected, k):
    agg = ClientsAvgAggregator(_cfg(num=num, rate=rate, seed=9))
    agg.expected_clients = expected
    picks = [agg.sample(ONLINE, r) for r in range(4)]
    want = ([sorted(ONLINE)] * 4 if k == len(ONLINE) else
            [_expected_sample(k, 9, r) for r in range(4)])
    assert picks == want


@pytest.mark.parametrize("rate,k", [(0.5, 3), (0.7, 4), (0.1, 1), (1.0, 6)])
def test_sample_client_rate_takes_int_rate_times_online_at_least_one(rate, k):
    agg = ClientsAvgAggregator(_cfg(num=0, rate=rate, seed=3))
    assert [agg.sample(ONLINE, r) for r in range(3)] == [_expected_sample(k, 3, r)
                                                         for r in range(3)]


@pytest.mark.parametrize("num,rate", [(0, -1.0), (0, 0.0), (-1, -1.0)])
def test_without_sampling_every_online_client_in_id_order(num, rate):
    assert ClientsAvgAggregator(_cfg(num=num, rate=rate)).sample(ONLINE, 4) == sorted(ONLINE)


# ---------------------------------------------------------------------------------- weighting
DECLARED = [10, 20, 30, 40]        # median 25; ratio 2 -> cap 50


def test_verified_or_standalone_counts_are_never_capped():
    agg = ClientsAvgAggregator(_cfg(ratio=2.0))
    assert agg.weight(3, 10 ** 9, True, DECLARED) == 10 ** 9
    standalone = ClientsAvgAggregator(_cfg(ratio=2.0), distributed=False)
    assert standalone.weight(3, 10 ** 9, False, DECLARED) == 10 ** 9


def test_an_unverified_claim_is_capped_at_ratio_times_the_median(caplog):
    agg = ClientsAvgAggregator(_cfg(ratio=2.0))
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        assert agg.weight(2, 49, False, DECLARED) == 49
        assert agg.weight(2, 50, False, DECLARED) == 50       # at the cap: not a capped claim
        assert caplog.text == ""
        assert agg.weight(4, 51, False, DECLARED) == 50
    assert caplog.messages == [
        "Server: client #4 claims 51 train samples, unverified; its weight is capped at 50 "
        "(aggregator.max_sample_ratio x the median declared count)"]
    # a changed declaration list (a new object) gives a new cap
    assert agg.weight(4, 10 ** 6, False, [100, 100, 100, 100]) == 200
    assert agg.weight(4, 10 ** 6, False, DECLARED) == 50


# --------------------------------------------------------------------------------- collection
def _state(v, bn=None):
    s = {"fc.weight": torch.full((2, 3), float(v)), "fc.bias": torch.full((3,), -float(v)),
         "steps": torch.tensor(int(v) * 4)}
    if bn is not None:
        s["bn.running_mean"] = torch.full((3,), float(bn))
    return s


# client -> (weight, value); weights sum to 16, so w/total is exact
ROUND = {4: (8, 3.0), 1: (1, 5.0), 3: (4, -2.0), 2: (3, 1.0)}
ROUND_MEAN = (1 * 5.0 + 3 * 1.0 + 4 * -2.0 + 8 * 3.0) / 16          # 1.5
ROUND_STEPS = (1 * 20 + 3 * 4 + 4 * -8 + 8 * 12) // 16               # 96 / 16 = 6


@pytest.mark.parametrize("cls", [ClientsAvgAggregator, OnlineClientsAvgAggregator])
def test_a_round_combines_the_shared_keys_and_keeps_the_globals_local_ones(cls):
    agg = cls(_cfg(local_param=["bn"]))
    g = _state(0.5, bn=7.0)
    for rnd in range(3):
        agg.begin_round()
        for cid, (w, v) in ROUND.items():     # arrival order 4, 1, 3, 2
            agg.add(cid, w, _state(v + rnd, bn=100.0 + cid))   # its own BN stats: never shared
        assert agg.total_weight == 16
        assert sorted(agg.feedback) == [1, 2, 3, 4]
        new = agg.finish_round(g)
        assert set(new) == set(g)
        assert torch.equal(new["fc.weight"], torch.full((2, 3), ROUND_MEAN + rnd))
        assert torch.equal(new["fc.bias"], torch.full((3,), -(ROUND_MEAN + rnd)))
        assert torch.equal(new["bn.running_mean"], g["bn.running_mean"])
        assert agg.feedback == {} and agg.total_weight == 0
    # last round (values 7, 3, 0, 5 -> steps 28, 12, 0, 20): (28 + 36 + 0 + 160) / 16 = 14
    assert new["steps"].dtype == torch.int64 and int(new["steps"]) == 14


def test_a_config_without_personalization_keys_shares_every_key():
    cfg = _cfg()
    del cfg.personalization
    agg = ClientsAvgAggregator(cfg)
    assert agg.local_param == []
    for cid, (w, v) in ROUND.items():
        agg.add(cid, w, _state(v, bn=float(cid)))
    # bn: (1*1 + 3*2 + 4*3 + 8*4) / 16 = 51/16
    assert agg.finish_round(_state(0.0, bn=0.0))["bn.running_mean"].tolist() == [51 / 16] * 3


def test_updates_reach_aggregate_in_client_id_order_and_the_global_without_local_keys():
    seen = {}

    class Recording(Aggregator):
        def aggregate(self, agg_info):
            seen["ids"] = [c for c, _, _ in agg_info["client_feedback"]]
            seen["weights"] = [w for _, w, _ in agg_info["client_feedback"]]
            seen["global"] = sorted(agg_info["global_state"])
            seen["keys"] = sorted(agg_info["client_feedback"][0][2])
            return {"fc.bias": torch.zeros(3)}

    agg = Recording(_cfg(local_param=["bn"]))
    for cid, (w, v) in ROUND.items():
        agg.add(cid, w, _state(v, bn=1.0))
    new = agg.finish_round(_state(2.0, bn=9.0))
    assert seen == {"ids": [1, 2, 3, 4], "weights": [1, 3, 4, 8],
                    "global": ["fc.bias", "fc.weight", "steps"],
                    "keys": ["fc.bias", "fc.weight", "steps"]}
    # keys the rule did not return keep the global's values
    assert torch.equal(new["fc.bias"], torch.zeros(3))
    assert torch.equal(new["fc.weight"], torch.full((2, 3), 2.0))
    assert torch.equal(new["bn.running_mean"], torch.full((3,), 9.0))
    with pytest.raises(NotImplementedError):
        Aggregator(_cfg()).aggregate({})


def test_a_server_optimizer_steps_after_the_rule_on_the_shared_keys():
    agg = ClientsAvgAggregator(_cfg(local_param=["bn"]), server_optimizer=FedOptimizer(lr=0.5))
    g = _state(0.5, bn=7.0)
    for cid, (w, v) in ROUND.items():
        agg.add(cid, w, _state(v, bn=3.0))
    new = agg.finish_round(g)
    # half-way from 0.5 to the FedAvg mean 1.5
    assert torch.equal(new["fc.weight"], torch.full((2, 3), 1.0))
    assert torch.equal(new["fc.bias"], torch.full((3,), -1.0))
    assert int(new["steps"]) == ROUND_STEPS                     # integers take the combined value
    assert torch.equal(new["bn.running_mean"], torch.full((3,), 7.0))


def test_the_aggregator_state_is_the_server_optimizers():
    plain = ClientsAvgAggregator(_cfg())
    assert plain.state_dict() == {}
    plain.load_state_dict({"fedopt_buffers": {"fc.bias": torch.ones(3)}})    # nothing to load into
    opt = FedOptimizer(lr=0.5, momentum=0.5)
    agg = ClientsAvgAggregator(_cfg(), server_optimizer=opt)
    for cid, (w, v) in ROUND.items():
        agg.add(cid, w, _state(v))
    agg.finish_round(_state(0.5))
    saved = agg.state_dict()
    assert torch.equal(saved["fedopt_buffers"]["fc.weight"],
                       torch.full((2, 3), -1.0, dtype=torch.float64))
    agg.load_state_dict({})                    # an empty checkpoint entry keeps the buffers
    assert set(opt.buffers) == {"fc.weight", "fc.bias"}
    fresh = FedOptimizer(lr=0.5, momentum=0.5)
    ClientsAvgAggregator(_cfg(), server_optimizer=fresh).load_state_dict(saved)
    assert torch.equal(fresh.buffers["fc.bias"], torch.full((3,), 1.0, dtype=torch.float64))


# ------------------------------------------------------------------------------ weighted mean
def test_weighted_mean_is_exact_across_chunk_boundaries():
    n = CHUNK * 2 + 5                          # three chunks, the last one short
    base = torch.arange(n, dtype=torch.float64) % 97
    fb = [(cid, w, {"w": (base * k).to(torch.float32), "b": torch.full((2, 2), k)})
          for cid, w, k in [(3, 4, -2.0), (1, 1, 5.0), (4, 8, 3.0), (2, 3, 1.0)]]
    out = weighted_mean(fb)
    assert out["w"].dtype == torch.float32 and out["w"].shape == (n,)
    assert torch.equal(out["w"], (base * ROUND_MEAN).to(torch.float32))
    assert torch.equal(out["b"], torch.full((2, 2), ROUND_MEAN))


def test_weighted_mean_integers_are_floored_and_zero_weights_count_equally():
    fb = [(1, 1, {"n": torch.tensor([-1, 7])}), (2, 3, {"n": torch.tensor([-2, 7])}),
          (3, 4, {"n": torch.tensor([-3, 8])}), (4, 8, {"n": torch.tensor([-4, 8])})]
    # (-1 - 6 - 12 - 32) / 16 = -3.1875 -> -4 (floor, not truncation); (7+21+32+64)/16 = 7.75 -> 7
    out = weighted_mean(fb)["n"]
    assert out.dtype == torch.int64 and out.tolist() == [-4, 7]
    # a total of one sample is a weight like any other: the mean is that client's state
    one = [(c, int(c == 3), {"x": torch.tensor([float(c)])}) for c in (1, 2, 3, 4)]
    assert weighted_mean(one)["x"].tolist() == [3.0]
    zero = [(c, 0, {"x": torch.tensor([float(c)])}) for c in (1, 2, 3, 4)]
    assert weighted_mean(zero)["x"].tolist() == [2.5]
    with pytest.raises(ValueError, match="^no client updates to aggregate$"):
        weighted_mean([])


def test_a_round_with_one_update_is_that_update():
    state = {"w": torch.tensor([[0.5, -3.0]]), "n": torch.tensor([9])}
    out = weighted_mean([(7, 5, state)])
    assert all(torch.equal(out[k], v) and out[k].dtype == v.dtype for k, v in state.items())


def test_weighted_mean_sums_in_client_id_order_whatever_the_arrival():
    # float64 rounding depends on the order: in id order 2.5e16 + 0.25 rounds to 2.5e16, the
    # -2.5e16 cancels it and client 4's 0.25 is what remains
    vals = {1: 1e17, 2: 1.0, 3: -1e17, 4: 1.0}
    fb = [(c, 1, {"x": torch.tensor([vals[c]], dtype=torch.float64)}) for c in (2, 4, 1, 3)]
    assert weighted_mean(fb)["x"].tolist() == [0.25]


@pytest.mark.parametrize("online", [False, True])
def test_float32_updates_are_summed_in_float64(online):
    # in float32, 2^24 + 1 rounds back to 2^24: the mean would be 2^22 + 0.5, not 2^22 + 1
    vals = [2.0 ** 24, 1.0, 1.0, 2.0]
    agg = (OnlineClientsAvgAggregator if online else ClientsAvgAggregator)(_cfg())
    for cid, v in enumerate(vals, 1):
        agg.add(cid, 1, {"x": torch.tensor([v], dtype=torch.float32)})
    out = agg.finish_round({"x": torch.zeros(1)})["x"]
    assert out.dtype == torch.float32 and out.tolist() == [2.0 ** 22 + 1]


def test_online_mean_single_update_and_empty_round():
    agg = OnlineClientsAvgAggregator(_cfg())
    agg.add(5, 1, {"x": torch.tensor([3.0, -1.5]), "n": torch.tensor([7])})
    assert agg.feedback == {5: (1, None)}
    out = agg.aggregate({"client_feedback": [], "global_state": {}})
    assert out["x"].tolist() == [3.0, -1.5] and out["n"].tolist() == [7]
    agg.begin_round()
    for c in (1, 2, 3, 4):                     # all-zero weights: nothing to divide by
        agg.add(c, 0, {"x": torch.tensor([float(c)])})
    assert agg.aggregate({})["x"].tolist() == [0.0]


def test_online_mean_keeps_dtypes_and_floors_integers():
    agg = OnlineClientsAvgAggregator(_cfg())
    for cid, (w, v) in ROUND.items():
        agg.add(cid, w, {"h": torch.full((CHUNK + 3,), v, dtype=torch.float16),
                         "n": torch.tensor([-int(v * 4)]), "m": torch.tensor([-cid])})
    out = agg.aggregate({})
    assert out["h"].dtype == torch.float16 and torch.equal(
        out["h"], torch.full((CHUNK + 3,), ROUND_MEAN, dtype=torch.float16))
    assert out["n"].dtype == torch.int64 and out["n"].tolist() == [-ROUND_STEPS]
    assert out["m"].tolist() == [-4]           # (-1 - 6 - 12 - 32) / 16 = -3.1875, floored
    assert agg._acc == {}                      # each sum is released once it is cast


@pytest.mark.parametrize("cls", [ClientsAvgAggregator, OnlineClientsAvgAggregator])
def test_float64_keys_and_large_integer_counts_keep_every_bit(cls):
    """The sum is float64 end to end: a float64 key's last bits and an int64 count beyond
    float32's 2^24 survive (a float32 step anywhere would round them away)."""
    agg = cls(_cfg())
    eps, big, n = 2.0 ** -40, 2 ** 40, CHUNK + 5
    agg.begin_round()
    for cid, w in ((4, 8), (1, 1), (3, 4), (2, 3)):
        agg.add(cid, w, {"x": torch.full((n,), 1.0 + cid * eps, dtype=torch.float64),
                         "count": torch.full((n,), big + cid, dtype=torch.int64)})
    out = agg.finish_round({"x": torch.zeros(n, dtype=torch.float64),
                            "count": torch.zeros(n, dtype=torch.int64)})
    # (1 x 1 + 3 x 2 + 4 x 3 + 8 x 4) / 16 = 51 / 16 = 3.1875
    assert torch.equal(out["x"], torch.full((n,), 1.0 + 51 / 16 * eps, dtype=torch.float64))
    assert torch.equal(out["count"], torch.full((n,), big + 3, dtype=torch.int64))


# ------------------------------------------------------------------------------------ FedOpt
@pytest.mark.parametrize("kwargs,text", [
    ({"opt_type": "adamz"}, "fedopt.optimizer: unknown optimizer type 'adamz'"),
    ({"opt_type": "Adam", "nesterov": True}, "fedopt.optimizer: torch.optim.Adam takes no "
                                             "argument 'nesterov'"),
    ({"lr": 0.0}, "fedopt.optimizer: lr > 0 and 0 <= momentum < 1 are required "
                  "(got lr=0.0, momentum=0.0)"),
    ({"lr": -0.5}, "(got lr=-0.5, momentum=0.0)"),
    ({"momentum": 1.0}, "(got lr=1.0, momentum=1.0)"),
    ({"momentum": -0.1}, "(got lr=1.0, momentum=-0.1)"),
])
def test_fedopt_refuses_what_it_cannot_run_naming_the_key(kwargs, text):
    with pytest.raises(ConfigError) as e:
        FedOptimizer(**kwargs)
    assert text in str(e.value)


def test_fedopt_accepts_sgd_in_any_case_and_the_edges_of_its_ranges():
    for kw in ({"opt_type": "sgd"}, {"opt_type": "SGD", "momentum": 0.0},
               {"opt_type": "Sgd", "lr": 1e-9, "momentum": 0.999}):
        FedOptimizer(**kw)


def test_fedopt_momentum_over_three_rounds_by_hand():
    opt = FedOptimizer("SGD", lr=0.5, momentum=0.5)
    g = {"w": torch.zeros(3), "n": torch.tensor(1)}
    # combined models: the global + 1, + 2, - 1 (pseudo-gradients -1, -2, +1)
    # bufs: -1; 0.5*-1 - 2 = -2.5; 0.5*-2.5 + 1 = -0.25. globals: 0.5, 1.75, 1.875
    for shift, want, buf in ((1.0, 0.5, -1.0), (2.0, 1.75, -2.5), (-1.0, 1.875, -0.25)):
        combined = {"w": g["w"] + shift, "n": g["n"] + 3}
        saved = opt.state_dict()
        g = opt.step(g, combined)
        assert g["w"].dtype == torch.float32 and torch.equal(g["w"], torch.full((3,), want))
        assert torch.equal(g["n"], combined["n"])
        assert torch.equal(opt.buffers["w"], torch.full((3,), buf, dtype=torch.float64))
        assert set(opt.buffers) == {"w"}
        # the saved state is a copy: the next step's in-place update does not reach it
        if saved["fedopt_buffers"]:
            assert not torch.equal(saved["fedopt_buffers"]["w"], opt.buffers["w"])


def test_fedopt_resumes_from_its_state_exactly():
    steps = [1.0, 2.0, -1.0, 0.5]
    a = FedOptimizer(lr=0.5, momentum=0.5)
    g = {"w": torch.zeros(2)}
    for s in steps[:2]:
        g = a.step(g, {"w": g["w"] + s})
    saved = {"fedopt_buffers": {k: v.to(torch.float32) for k, v in a.state_dict()
                                ["fedopt_buffers"].items()}}
    b = FedOptimizer(lr=0.5, momentum=0.5)
    b.load_state_dict(saved)
    assert b.buffers["w"].dtype == torch.float64
    saved["fedopt_buffers"]["w"].fill_(99.0)       # the loaded buffer is its own copy
    ga, gb = g, dict(g)
    for s in steps[2:]:
        ga = a.step(ga, {"w": ga["w"] + s})
        gb = b.step(gb, {"w": gb["w"] + s})
    assert torch.equal(ga["w"], gb["w"])
    b.load_state_dict({})
    assert b.buffers == {}
    b.load_state_dict({"fedopt_buffers": None})
    assert b.buffers == {}


def test_fedopt_without_momentum_keeps_no_buffers_and_lr_1_is_the_combined_model():
    opt = FedOptimizer(lr=1.0)
    g = {"w": torch.tensor([0.1, 0.7], dtype=torch.float32)}
    c = {"w": torch.tensor([0.3, -2.9], dtype=torch.float32)}
    assert torch.equal(opt.step(g, c)["w"], c["w"]) and opt.buffers == {}
    half = FedOptimizer(lr=0.25).step({"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])})
    assert half["w"].tolist() == [1.5]


@pytest.mark.parametrize("returned, named", [
    # a misspelt key, a key the global model keeps local (bn: personalization.local_param),
    # a wrong shape, a number instead of a tensor; seven wrong keys: the first five are named
    ({"fc.bais": torch.zeros(3)}, "['fc.bais'] (of 1)"),
    ({"bn.running_mean": torch.zeros(3)}, "['bn.running_mean'] (of 1)"),
    ({"fc.weight": torch.zeros(3, 2)}, "['fc.weight'] (of 1)"),
    ({"fc.bias": 0.5}, "['fc.bias'] (of 1)"),
    ({f"k{i}": torch.zeros(1) for i in range(7)}, "['k0', 'k1', 'k2', 'k3', 'k4'] (of 7)"),
])
def test_a_rule_returning_what_the_shared_model_lacks_is_a_fault_of_the_rule(returned, named):
    agg = ClientsAvgAggregator(_cfg(local_param=["bn"]))
    agg.begin_round()
    for cid, (w, v) in ROUND.items():
        agg.add(cid, w, _state(v, bn=1.0))
    rule = agg.aggregate
    agg.aggregate = lambda info: {**rule(info), **returned}
    with pytest.raises(AggregationFault) as e:
        agg.finish_round(_state(0.5, bn=7.0))
    assert str(e.value) == (f"aggregator ClientsAvgAggregator.aggregate returned {named}, not "
                            f"among the model's shared keys with their shapes; fix it to return "
                            f"one tensor per shared key, shaped as in the model")
    # a rule returning fewer keys (here one) is fine: the others keep their global values
    agg.aggregate = lambda info: {"fc.bias": rule(info)["fc.bias"]}
    new = agg.finish_round(_state(0.5, bn=7.0))
    assert torch.equal(new["fc.weight"], torch.full((2, 3), 0.5))
    assert torch.equal(new["fc.bias"], torch.full((3,), -ROUND_MEAN))
