"""The server's schedule, observed through what it sends and writes (fake transport, in-process):
who is sampled to train in each round (federate.sample_client_num / sample_client_rate, seeded per
round), which rounds are evaluated (eval.freq), and online aggregation over several rounds."""
import pytest
import torch

from federatedscope.core.message import EVALUATE, MODEL_PARA
from server_harness import Harness, good_metrics


def _join_all(h, n, train=lambda c: 10):
    for c in range(1, n + 1):
        h.join(c, num_samples={"train": train(c), "val": 5, "test": 5})


def _drive(h, rounds, delta=lambda cid, r: 0.0, size=lambda cid: 10, on_round=None):
    """Play every round: the clients the server asked train (global + ``delta``), every asked
    evaluation is answered. Returns the sorted ids asked to train, per round."""
    trained = []
    for r in range(rounds):
        asked = h.asked(MODEL_PARA, r)
        assert asked, f"nobody was asked to train in round {r}"
        trained.append(asked)
        g = h.global_state()
        states = {}                    # clients with the same delta share one state (speed)
        for cid in asked:
            d = delta(cid, r)
            states.setdefault(d, h.shifted(d, g))
            h.update(cid, r, states[d], size(cid))
        assert h.server.round == r + 1, f"round {r} did not aggregate"
        if on_round:
            on_round(r, asked, g, h.global_state())
        for cid in h.asked(EVALUATE, r + 1):
            h.metrics(cid, r + 1, good_metrics())
    return trained


def _sampled(tmp, n, rounds, *opts, seed=0):
    h = Harness(tmp, "federate.total_round_num", rounds, "seed", seed, "eval.freq", rounds,
                *opts, expected=n)
    _join_all(h, n)
    return _drive(h, rounds)


# ------------------------------------------------------------------ sampling
def test_sample_client_num_picks_that_many_different_clients_each_round(tmp_path):
    trained = _sampled(tmp_path / "a", 8, 6, "federate.sample_client_num", 3)
    assert all(len(ids) == 3 and set(ids) <= set(range(1, 9)) for ids in trained), trained
    assert len({tuple(ids) for ids in trained}) >= 3, f"the draw ignores the round: {trained}"
    # over 6 rounds x 3 draws from 8, a sampler stuck on a subset would leave clients out
    assert len({c for ids in trained for c in ids}) >= 6, trained


def test_sampling_is_reproducible_per_seed_and_differs_between_seeds(tmp_path):
    opts = ("federate.sample_client_num", 3)
    first = _sampled(tmp_path / "a", 8, 5, *opts, seed=7)
    again = _sampled(tmp_path / "b", 8, 5, *opts, seed=7)
    other = _sampled(tmp_path / "c", 8, 5, *opts, seed=8)
    assert first == again
    assert first != other


@pytest.mark.parametrize("n,rate,k", [(8, 0.25, 2), (10, 0.5, 5), (5, 0.1, 1)])
def test_sample_client_rate_trains_int_rate_times_n_clients(tmp_path, n, rate, k):
    # k = max(1, int(rate x the job's clients)), as FS computes sample_client_num from the rate
    trained = _sampled(tmp_path, n, 4, "federate.sample_client_rate", rate)
    assert [len(ids) for ids in trained] == [k] * 4, trained


def test_a_valid_rate_wins_over_a_count_and_a_rate_above_one_is_ignored(tmp_path, caplog):
    both = _sampled(tmp_path / "a", 8, 3, "federate.sample_client_rate", 0.75,
                    "federate.sample_client_num", 2)
    assert [len(ids) for ids in both] == [6] * 3, both
    assert ("federate.sample_client_rate=0.75 and federate.sample_client_num=2 are both set: the "
            "rate wins, as in FS (6 clients per round)") in caplog.text
    over = _sampled(tmp_path / "b", 8, 3, "federate.sample_client_rate", 1.5,
                    "federate.sample_client_num", 3)
    assert [len(ids) for ids in over] == [3] * 3, over
    assert _sampled(tmp_path / "c", 5, 2, "federate.sample_client_rate", 2.0) == [[1, 2, 3, 4, 5]] * 2


def test_without_sampling_every_client_trains_every_round(tmp_path):
    assert _sampled(tmp_path, 5, 3) == [[1, 2, 3, 4, 5]] * 3


def test_only_the_sampled_clients_updates_are_aggregated(tmp_path, caplog):
    # client c moves the model by c; the new global moves by the mean over the sampled clients
    h = Harness(tmp_path, "federate.total_round_num", 4, "federate.sample_client_num", 2,
                "eval.freq", 4, expected=6)
    _join_all(h, 6)
    for r in range(4):
        asked = h.asked(MODEL_PARA, r)
        g = h.global_state()
        left_out = min(set(range(1, 7)) - set(asked))
        h.update(left_out, r, h.shifted(100.0, g))        # not asked: must be ignored
        for cid in asked:
            h.update(cid, r, h.shifted(float(cid), g))
        moved = float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean())
        assert moved == pytest.approx(sum(asked) / 2, abs=1e-4), (r, asked)
        assert f"ignored model_para from client #{left_out}" in caplog.text
        for cid in h.asked(EVALUATE, r + 1):
            h.metrics(cid, r + 1, good_metrics())


# ------------------------------------------------------------------ eval.freq
@pytest.mark.parametrize("freq,want", [
    (1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
    (3, [3, 6, 9, 10]),                  # every 3rd round, and always the last
    (10, [10]),
    (4, [4, 8, 10]),
])
def test_eval_freq_evaluates_every_freq_rounds_and_the_last(tmp_path, freq, want):
    h = Harness(tmp_path, "federate.total_round_num", 10, "eval.freq", freq, expected=4)
    _join_all(h, 4)
    _drive(h, 10)
    asked_rounds = sorted({m.state for _, m in h.comm.sent if m.msg_type == EVALUATE})
    assert asked_rounds == want
    lines = h.eval_lines()
    assert [x["Round"] for x in lines if not x.get("Final")] == want
    assert lines[-1].get("Final") is True and h.server.finished


# ------------------------------------------------------------------ online aggregation
def _weighted_rounds(tmp, online: bool, n: int, rounds: int):
    """n clients with n different sample sizes; client c's delta in round r is
    (c - 2) x (r + 1) x 0.25. Returns the global's fc2.bias shift after every round."""
    h = Harness(tmp, "federate.total_round_num", rounds, "eval.freq", rounds,
                "federate.online_aggr", online, expected=n)
    _join_all(h, n, train=lambda c: 10 * c)
    shifts = []
    _drive(h, rounds, delta=lambda c, r: (c - 2) * (r + 1) * 0.25, size=lambda c: 10 * c,
           on_round=lambda r, asked, g, new: shifts.append(
               float((new["fc2.bias"] - g["fc2.bias"]).mean())))
    return shifts


def test_online_aggregation_is_the_weighted_mean_in_every_round(tmp_path):
    # n=5, weights 10c: sum_c (c-2) x 10c / 150 = (10 x (-1 + 0 + 3 + 8 + 15)) / 150 = 5/3 per
    # 0.25 x (r+1): round r moves by (5/3) x 0.25 x (r + 1)
    want = [5 / 3 * 0.25 * (r + 1) for r in range(4)]
    online = _weighted_rounds(tmp_path / "on", True, 5, 4)
    assert online == pytest.approx(want, abs=1e-5)
    assert _weighted_rounds(tmp_path / "off", False, 5, 4) == pytest.approx(online, abs=1e-6)


def test_online_aggregation_from_64_clients_over_several_rounds(tmp_path, caplog):
    # 64 clients switch online aggregation on by themselves. Client c's delta in round r is
    # (c mod 4) x 0.25 x s_r with s = 1, -2, 3: the mean of (c mod 4) over 64 clients is 1.5, so
    # round r moves the model by 0.375 x s_r. An accumulator carried over from the previous
    # round would pull rounds 2 and 3 towards the earlier states.
    signs = [1.0, -2.0, 3.0]
    caplog.set_level("INFO", logger="federatedscope")
    h = Harness(tmp_path, "federate.total_round_num", 3, "eval.freq", 3, expected=64)
    _join_all(h, 64)
    moves = []
    _drive(h, 3, delta=lambda c, r: (c % 4) * 0.25 * signs[r],
           on_round=lambda r, asked, g, new: moves.append(
               float((new["fc2.bias"] - g["fc2.bias"]).mean())))
    assert "aggregating online" in caplog.text
    assert moves == pytest.approx([0.375 * s for s in signs], abs=1e-5)
    int_keys = [k for k, v in h.global_state().items() if not v.is_floating_point()]
    assert all(h.global_state()[k].dtype in (torch.int64, torch.int32) for k in int_keys)
