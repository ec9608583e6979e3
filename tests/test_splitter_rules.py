"""FS's splitters rule by rule, against hand computations and a hand-written replay of FS's
algorithms (LDA, iid, the prior-following split of val/test).

A scripted generator (``_Script``: shuffle reverses, Dirichlet draws come from a list) makes
the LDA cut points hand-computable; the seeded tests replay FS's numpy calls in the order FS
makes them and compare every client's indices, so a seed gives FS's partition exactly.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import federatedscope.core.splitters as splitters_pkg
from federatedscope.core.auxiliaries.splitter_builder import (build_splitter, get_splitter,
                                                              splitter_kwargs)
from federatedscope.core.splitters import IIDSplitter, LDASplitter
from federatedscope.core.splitters.utils import (dirichlet_distribution_noniid_slice, iid_slice,
                                                 split_according_to_prior)


class _Script:
    """A generator whose shuffle reverses in place and whose Dirichlet draws are given."""

    def __init__(self, draws):
        self.draws = [np.asarray(d, dtype=float) for d in draws]

    def shuffle(self, a):
        a[:] = a[::-1].copy()

    def dirichlet(self, alpha):
        return self.draws.pop(0)


def _as_lists(parts):
    return [p.tolist() for p in parts]


# 12 samples, labels interleaved: label 0 at 0,3,6,9; label 1 at 1,4,7,10; label 2 at 2,5,8,11
LABELS_12 = np.array([0, 1, 2] * 4, dtype=np.int64)
# label 0 reversed [9,6,3,0] cut at 4 x (.5,.75) = 2,3 -> [9,6] [3] [0] []
# label 1 reversed [10,7,4,1] cut at 4 x (0,0,.5) = 0,0,2 -> [] [] [10,7] [4,1]
# label 2 reversed [11,8,5,2] cut at 1,2,3 -> [11] [8] [5] [2]
DRAW_A = [[.5, .25, .25, 0], [0, 0, .5, .5], [.25, .25, .25, .25]]
# clients before the final shuffle: [9,6,11] [3,8] [0,10,7,5] [4,1,2]; reversed:
SPLIT_A = [[11, 6, 9], [8, 3], [5, 7, 10, 0], [2, 1, 4]]


# ------------------------------------------------------------------------------ LDA, scripted
def test_lda_cuts_each_label_at_the_cumulative_dirichlet_shares():
    parts = dirichlet_distribution_noniid_slice(LABELS_12, 4, 0.5, min_size=2,
                                                rng=_Script(DRAW_A))
    assert _as_lists(parts) == SPLIT_A  # smallest client has exactly min_size=2: accepted
    assert all(p.dtype == np.int64 for p in parts)


def test_lda_default_min_size_accepts_a_client_with_one_sample():
    # label 0 all to client 0, label 1 all to client 1; label 2 reversed [11,8,5,2] cut at
    # 4 x (0,0,.25) = 0,0,1 -> [] [] [11] [8,5,2]: client 2 holds one sample, enough for FS
    draws = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, .25, .75]]
    parts = dirichlet_distribution_noniid_slice(LABELS_12, 4, 2.0, rng=_Script(draws))
    assert _as_lists(parts) == [[0, 3, 6, 9], [1, 4, 7, 10], [11], [2, 5, 8]]


def test_lda_redraws_until_every_client_reaches_min_size():
    # first draw: client 2 gets one sample (see above), below min_size=2, so all is redrawn
    first = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, .25, .75]]
    second = [[.25, .5, .25, 0], [.25, .25, .25, .25], [0, .25, .25, .5]]
    parts = dirichlet_distribution_noniid_slice(LABELS_12, 4, 0.5, min_size=2,
                                                rng=_Script(first + second))
    # label 0 [9,6,3,0] cut at 4 x (.25,.75,1) = 1,3,4 -> [9] [6,3] [0] [];
    # label 1 [10,7,4,1] one each; label 2 [11,8,5,2] cut 0,1,2 -> [] [11] [8] [5,2]
    # before the final shuffle: [9,10] [6,3,7,11] [0,4,8] [1,5,2]
    assert _as_lists(parts) == [[10, 9], [11, 7, 3, 6], [8, 4, 0], [2, 5, 1]]


def test_lda_draw_with_a_non_finite_share_is_redrawn_even_when_sizes_pass():
    nan = float("nan")
    # label 0's draw is NaN (its samples would all land on the last client), yet every client
    # would still hold >= 1 sample: the draw must be thrown away all the same
    first = [[nan, nan, nan, nan], [.25, .25, .25, .25], [.25, .25, .25, .25]]
    parts = dirichlet_distribution_noniid_slice(LABELS_12, 4, 0.5, rng=_Script(first + DRAW_A))
    assert _as_lists(parts) == SPLIT_A


def test_lda_refuses_labels_that_are_not_one_per_sample():
    with pytest.raises(ValueError) as e:
        dirichlet_distribution_noniid_slice(np.zeros((6, 2)), 2, 0.5)
    assert str(e.value) == ("the LDA splitter needs one label per sample, got labels of shape "
                            "(6, 2)")


@pytest.mark.parametrize("alpha", [0.0, -0.5])
def test_lda_alpha_must_be_positive(alpha):
    with pytest.raises(ValueError) as e:
        LDASplitter(4, alpha=alpha).split_indices(LABELS_12, seed=1)
    assert str(e.value) == f"data.splitter_args alpha must be > 0, got {alpha!r}"


def test_lda_needs_more_samples_than_client_num_times_min_size():
    with pytest.raises(ValueError) as e:
        dirichlet_distribution_noniid_slice(LABELS_12, 4, 100.0, min_size=3,
                                            rng=np.random.RandomState(0))
    assert str(e.value) == ("the LDA splitter needs more than client_num x min_size = 4 x 3 "
                            "samples, the data has 12; lower federate.client_num or min_size in "
                            "data.splitter_args")
    # one sample more is enough to try (the scripted draw gives sizes 3, 3, 3, 4)
    labels = np.append(LABELS_12, 0)   # label 0 now at 0,3,6,9,12
    draws = [[.4, .2, .2, .2], [.25, .25, .25, .25], [0, .25, .5, .25]]
    parts = dirichlet_distribution_noniid_slice(labels, 4, 100.0, min_size=3,
                                                rng=_Script(draws))
    # label 0 [12,9,6,3,0] cut at 5 x (.4,.6,.8) = 2,3,4 -> [12,9] [6] [3] [0]
    # label 1 [10,7,4,1] one each; label 2 [11,8,5,2] cut 0,1,3 -> [] [11] [8,5] [2]
    assert _as_lists(parts) == [[10, 9, 12], [11, 7, 6], [5, 8, 4, 3], [2, 1, 0]]


# ------------------------------------------------------------------------------- LDA, seeded
def _fs_lda(labels, clients, alpha, min_size, seed):
    """FS's LDA rule written out: per label (ascending), shuffle its indices, draw
    Dirichlet(alpha) and cut at floor(running share x count); redraw all until each client has
    min_size; shuffle each client's indices at the end."""
    rng = np.random.RandomState(seed)
    while True:
        clients_idx = [[] for _ in range(clients)]
        for k in sorted(set(labels.tolist())):
            idx = np.array([i for i, y in enumerate(labels.tolist()) if y == k], dtype=np.int64)
            rng.shuffle(idx)
            share = rng.dirichlet([alpha] * clients)
            bounds, run = [0], 0.0
            for q in share[:-1]:
                run += q
                bounds.append(int(run * len(idx)))
            bounds.append(len(idx))
            for c in range(clients):
                clients_idx[c].extend(idx[bounds[c]:bounds[c + 1]].tolist())
        if min(len(c) for c in clients_idx) >= min_size:
            break
    out = []
    for c in clients_idx:
        a = np.array(c, dtype=np.int64)
        rng.shuffle(a)
        out.append(a.tolist())
    return out


# labels with gaps ({1, 4, 7}) and unequal counts (11, 7, 12)
GAPPED = np.array([1, 4, 7, 1, 7, 1, 4, 7, 7, 1, 4, 1, 7, 7, 1, 4, 1, 7, 1, 4, 7, 7, 1, 4,
                   7, 1, 7, 1, 4, 7], dtype=np.int64)


@pytest.mark.parametrize("seed", [0, 3, 17, 2 ** 31 + 9])
def test_lda_seeded_split_equals_fs_rule_written_out(seed):
    want = _fs_lda(GAPPED, 5, 0.4, 2, seed)
    got = LDASplitter(5, alpha=0.4, min_size=2, seed=1234).split_indices(GAPPED, seed=seed)
    assert _as_lists(got) == want
    assert sorted(sum(want, [])) == list(range(len(GAPPED)))


def test_lda_defaults_are_fs_alpha_half_and_min_size_one():
    s = LDASplitter(4)
    assert (s.alpha, s.min_size, s.seed) == (0.5, 1, None)
    assert repr(s) == "LDASplitter(client_num=4, alpha=0.5)"
    # the splitter's own seed is used when the call gives none
    assert _as_lists(LDASplitter(4, seed=21).split_indices(GAPPED)) == _fs_lda(GAPPED, 4, 0.5,
                                                                                1, 21)


def test_seed_is_taken_modulo_two_to_the_32():
    # RandomState accepts seeds in [0, 2**32): larger and negative seeds wrap around
    s = LDASplitter(4, alpha=0.7)
    assert _as_lists(s.split_indices(GAPPED, seed=2 ** 32 + 5)) == _fs_lda(GAPPED, 4, 0.7, 1, 5)
    assert _as_lists(s.split_indices(GAPPED, seed=-1)) == _fs_lda(GAPPED, 4, 0.7, 1,
                                                                  2 ** 32 - 1)
    assert _as_lists(IIDSplitter(4, seed=2 ** 33 + 2).split_indices(GAPPED)) == \
        _fs_iid(len(GAPPED), 4, 2)


# ----------------------------------------------------------------------------------------- iid
def _fs_iid(num, clients, seed):
    rng = np.random.RandomState(seed)
    idx = np.arange(num, dtype=np.int64)
    rng.shuffle(idx)
    sizes = [num // clients + (1 if c < num % clients else 0) for c in range(clients)]
    out, at = [], 0
    for n in sizes:
        out.append(idx[at:at + n].tolist())
        at += n
    return out


@pytest.mark.parametrize("num,clients,seed", [(10, 4, 8), (23, 5, 0), (9, 9, 77)])
def test_iid_seeded_split_equals_one_shuffle_cut_into_near_equal_parts(num, clients, seed):
    # the call's seed wins over the splitter's own
    got = IIDSplitter(clients, seed=seed + 1).split_indices(np.zeros(num), seed=seed)
    assert _as_lists(got) == _fs_iid(num, clients, seed)
    assert all(p.dtype == np.int64 for p in got)


def test_iid_one_sample_per_client_is_enough_fewer_is_refused():
    parts = iid_slice(4, 4, np.random.RandomState(3))
    assert sorted(len(p) for p in parts) == [1, 1, 1, 1]
    assert sorted(int(p[0]) for p in parts) == [0, 1, 2, 3]
    with pytest.raises(ValueError) as e:
        iid_slice(3, 4)
    assert str(e.value) == ("the iid splitter cannot give each of 4 clients a sample: the data "
                            "has 3; lower federate.client_num")


@settings(max_examples=40, deadline=None)
@given(num=st.integers(1, 200), clients=st.integers(1, 12), seed=st.integers(0, 2 ** 32 - 1))
def test_iid_every_sample_exactly_once_sizes_within_one(num, clients, seed):
    if num < clients:
        return
    parts = IIDSplitter(clients).split_indices(np.zeros(num), seed=seed)
    sizes = [len(p) for p in parts]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[-1] <= 1
    assert sorted(np.concatenate(parts).tolist()) == list(range(num))


# ------------------------------------------------------------------------------ base splitter
def test_one_client_is_a_valid_split_zero_is_refused_by_name():
    assert _as_lists(IIDSplitter(1).split_indices(np.zeros(5), seed=4)) == _fs_iid(5, 1, 4)
    assert sorted(LDASplitter(1).split_indices(LABELS_12, seed=4)[0].tolist()) == list(range(12))
    for cls in (IIDSplitter, LDASplitter):
        with pytest.raises(ValueError) as e:
            cls(0)
        assert str(e.value) == (f"{cls.__name__}: federate.client_num must be >= 1 to split a "
                                f"dataset among clients, got 0")
    assert repr(IIDSplitter(6)) == "IIDSplitter(client_num=6)"


# ------------------------------------------------------------------------------ prior (val/test)
def _fs_prior(labels, prior, seed):
    """FS's consistent_label_distribution written out: label k's indices shuffled; client i
    gets ceil(share_i x n_k); a randomly chosen client holding > 0 gives one back until the
    counts sum to n_k."""
    rng = np.random.RandomState(seed)
    clients = len(prior)
    out = [[] for _ in range(clients)]
    for k in sorted(set(labels.tolist())):
        idx = np.array([i for i, y in enumerate(labels.tolist()) if y == k], dtype=np.int64)
        rng.shuffle(idx)
        held = [sum(1 for v in p if int(v) == k) for p in prior]
        nums = [math.ceil(h / sum(held) * len(idx)) for h in held]
        while sum(nums) > len(idx):
            c = rng.choice(range(clients))
            if nums[c] > 0:
                nums[c] -= 1
        at = 0
        for c in range(clients):
            out[c].extend(idx[at:at + nums[c]].tolist())
            at += nums[c]
    res = []
    for c in out:
        a = np.array(c, dtype=np.int64)
        rng.shuffle(a)
        res.append(a.tolist())
    return res


# train labels of 4 clients: label 0 held 1,1,1,0; label 1 held 1,2,0,2; label 2 by client 4
PRIOR = [[0, 1], [1, 0, 1], [0], [1, 2, 1]]
# label 0 x4: ceil(4/3) = 2,2,2,0 (two given back); label 1 x3: ceil(.6, 1.2, 0, 1.2) =
# 1,2,0,2 (two given back); label 2 x2: 0,0,0,2
EVAL_LABELS = np.array([1, 0, 2, 0, 1, 0, 2, 1, 0], dtype=np.int64)


@pytest.mark.parametrize("seed", range(8))
def test_prior_split_equals_fs_rule_written_out(seed):
    got = LDASplitter(4, seed=999).split_indices(EVAL_LABELS, seed=seed, prior=PRIOR)
    want = _fs_prior(EVAL_LABELS, PRIOR, seed)
    assert _as_lists(got) == want
    counts = [[int((EVAL_LABELS[g] == k).sum()) for k in (0, 1, 2)] for g in want]
    # a client holding none of a label in its train labels gets none of it
    assert counts[3][0] == 0 and counts[2][1] == 0
    assert [row[2] for row in counts] == [0, 0, 0, 2]
    assert [sum(col) for col in zip(*counts)] == [4, 3, 2]


def test_prior_split_with_only_single_sample_clients_gives_one_back():
    # 4 clients holding label 0 once each, 3 samples to split: ceil(3/4) = 1 each, so exactly
    # one client (chosen by the seed) ends up with none
    prior = [[0], [0], [0], [0]]
    for seed in range(6):
        got = split_according_to_prior(np.zeros(3, np.int64), prior, np.random.RandomState(seed))
        assert sorted(len(p) for p in got) == [0, 1, 1, 1]
        assert _as_lists(got) == _fs_prior(np.zeros(3, np.int64), prior, seed)


def test_prior_labels_may_be_column_vectors():
    col = [np.array(p, dtype=np.int64).reshape(-1, 1) for p in PRIOR]
    got = split_according_to_prior(EVAL_LABELS, col, np.random.RandomState(5))
    assert _as_lists(got) == _fs_prior(EVAL_LABELS, PRIOR, 5)


def test_prior_errors_name_the_labels_and_the_client_counts():
    labels = np.arange(8, dtype=np.int64)
    with pytest.raises(ValueError) as e:
        split_according_to_prior(labels, [[0], [7]], np.random.RandomState(0))
    assert str(e.value) == ("label(s) [1, 2, 3, 4, 5] occur in the data to split but in no "
                            "client's prior labels; set data.consistent_label_distribution False")
    with pytest.raises(ValueError) as e:
        LDASplitter(4).split_indices(EVAL_LABELS, seed=0, prior=PRIOR[:3])
    assert str(e.value) == "prior holds 3 clients' labels, the splitter has client_num=4"


# --------------------------------------------------------------------------- registry, builder
def test_registered_builders_answer_only_their_own_name_case_blind():
    build_lda = splitters_pkg._builtin("lda")
    s = build_lda("LDA", 4, alpha=0.3, min_size=2)
    assert type(s) is LDASplitter and (s.client_num, s.alpha, s.min_size) == (4, 0.3, 2)
    s = build_lda("lda", 7)
    assert (s.client_num, s.alpha) == (7, 0.5)
    assert build_lda("iid", 4) is None
    assert build_lda("Lda2", 4) is None
    build_iid = splitters_pkg._builtin("iid")
    assert type(build_iid("IID", 5)) is IIDSplitter and build_iid("IID", 5).client_num == 5
    assert build_iid("lda", 5) is None
    with pytest.raises(ValueError) as e:
        build_lda("LDA", 4, beta=2)
    msg = str(e.value)
    assert msg.startswith("data.splitter_args {'beta': 2} do not fit data.splitter='LDA' (")
    assert "beta" in msg.split("(", 1)[1] and msg.endswith("); see doc/config.md")


def test_splitter_args_may_be_one_mapping_or_a_list_holding_one():
    assert splitter_kwargs({"alpha": 0.3, "min_size": 2}) == {"alpha": 0.3, "min_size": 2}
    assert splitter_kwargs([{"alpha": 0.3}]) == {"alpha": 0.3}
    assert splitter_kwargs(None) == {} and splitter_kwargs([]) == {}
    s = build_splitter("lda", 4, {"alpha": 0.25})
    assert (s.client_num, s.alpha) == (4, 0.25)
    with pytest.raises(ValueError) as e:
        splitter_kwargs([{"alpha": 1}, {"alpha": 2}])
    assert str(e.value) == ("data.splitter_args=[{'alpha': 1}, {'alpha': 2}] must be a list "
                            "holding one mapping, e.g. [{'alpha': 0.5}]")


def test_get_splitter_without_splitter_args_uses_the_defaults():
    from types import SimpleNamespace as NS
    cfg = NS(data=NS(splitter="iid"), federate=NS(client_num=6))
    s = get_splitter(cfg)
    assert type(s) is IIDSplitter and s.client_num == 6
