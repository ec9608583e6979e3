"""FS's 'lda' and 'iid' splitters: the partition each seed gives, its label statistics, FS's
minimum-size redraw rule, and the registry lookup."""
from types import SimpleNamespace

import numpy as np
import pytest

from federatedscope.core.auxiliaries.splitter_builder import build_splitter, get_splitter
from federatedscope.core.splitters import IIDSplitter, LDASplitter
from federatedscope.core.splitters import utils as split_utils


def _labels(per_class, classes=10):
    # interleaved, so label k's indices are not one contiguous block
    return np.tile(np.arange(classes), per_class).astype(np.int64)


def _counts(parts, labels, classes):
    return np.array([np.bincount(labels[p], minlength=classes) for p in parts])


def _replayed_counts(labels, clients, alpha, seed):
    """The per-client, per-label counts FS's rule gives on its first draw: for each label in
    ascending order, shuffle its indices, draw Dirichlet(alpha) over clients and cut at
    floor(cumsum(p) * n_k)."""
    rng = np.random.RandomState(seed)
    classes = np.unique(labels)
    out = np.zeros((clients, len(classes)), dtype=np.int64)
    for j, k in enumerate(classes):
        idx = np.flatnonzero(labels == k)
        rng.shuffle(idx)
        p = rng.dirichlet(np.repeat(alpha, clients))
        cuts = np.concatenate([[0], (np.cumsum(p) * len(idx)).astype(int)[:-1], [len(idx)]])
        out[:, j] = np.diff(cuts)
    return out


@pytest.mark.parametrize("alpha,seed", [(0.5, 7), (2.0, 123), (0.3, 2024)])
def test_lda_label_counts_follow_the_dirichlet_draw_of_the_seed(alpha, seed):
    labels = _labels(60)
    expected = _replayed_counts(labels, 6, alpha, seed)
    assert expected.sum(1).min() >= 1  # first draw already satisfies min_size=1: no redraw
    parts = LDASplitter(6, alpha=alpha).split_indices(labels, seed=seed)
    assert (_counts(parts, labels, 10) == expected).all()


@pytest.mark.parametrize("splitter", [LDASplitter(5, alpha=0.1), LDASplitter(7, alpha=10.0),
                                      IIDSplitter(4), IIDSplitter(9)])
def test_no_sample_lost_or_repeated(splitter):
    labels = _labels(37, classes=7)
    for seed in range(5):
        parts = splitter.split_indices(labels, seed=seed)
        assert len(parts) == splitter.client_num
        assert all(p.dtype == np.int64 for p in parts)
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


def test_small_alpha_skews_clients_large_alpha_is_near_uniform():
    labels = _labels(500)
    share = []
    for alpha in (0.05, 1000.0):
        counts = _counts(LDASplitter(5, alpha=alpha).split_indices(labels, seed=3), labels, 10)
        share.append(counts / counts.sum(1, keepdims=True))
    # distance of each client's label mix from the global one (uniform, 0.1 per label):
    # alpha 0.05 leaves each client a few labels; alpha 1000 gives every client ~10% of each
    tvd = [0.5 * np.abs(s - 0.1).sum(1) for s in share]
    assert tvd[0].mean() > 0.6
    assert tvd[1].max() < 0.05


def test_same_seed_same_partition_other_seed_differs():
    labels = _labels(40)
    s = LDASplitter(4, alpha=0.5)
    a, b, c = (s.split_indices(labels, seed=k) for k in (11, 11, 12))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # FS's behaviour without a seed: numpy's global generator as seeded by setup_seed
    np.random.seed(11)
    d = s.split_indices(labels)
    assert all(np.array_equal(x, y) for x, y in zip(a, d))


def test_min_size_rule_redraws_until_every_client_has_enough():
    labels = _labels(6, classes=4)  # 24 samples
    clients, alpha, min_size = 4, 0.2, 3
    # a seed whose first draw leaves a client below min_size, so the rule must redraw
    seed = next(s for s in range(200)
                if _replayed_counts(labels, clients, alpha, s).sum(1).min() < min_size)
    parts = LDASplitter(clients, alpha=alpha, min_size=min_size).split_indices(labels, seed=seed)
    assert min(len(p) for p in parts) >= min_size
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(24))


def test_min_size_errors_name_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="client_num"):
        LDASplitter(5, alpha=0.5, min_size=4).split_indices(_labels(2))  # 20 <= 5 x 4
    monkeypatch.setattr(split_utils, "MAX_REDRAWS", 3)
    with pytest.raises(ValueError, match="raise alpha"):
        LDASplitter(4, alpha=0.001, min_size=10).split_indices(_labels(5), seed=0)


def test_iid_sizes_differ_by_at_most_one():
    parts = IIDSplitter(4).split_indices(np.zeros(103), seed=5)
    assert [len(p) for p in parts] == [26, 26, 26, 25]
    with pytest.raises(ValueError, match="client_num"):
        IIDSplitter(4).split_indices(np.zeros(3))


def test_fs_call_returns_the_samples_of_each_client():
    labels = _labels(8, classes=3)
    data = [(f"x{i}", int(y)) for i, y in enumerate(labels)]
    s = LDASplitter(4, alpha=1.0, seed=9)
    parts = s(data)
    idx = s.split_indices(labels)
    assert [[x for x, _ in p] for p in parts] == [[f"x{i}" for i in p] for p in idx]


def test_registry_lookup_and_config_entry_point():
    s = build_splitter("LDA", 6, [{"alpha": 0.3}])
    assert isinstance(s, LDASplitter) and s.alpha == 0.3 and s.client_num == 6
    assert isinstance(build_splitter("iid", 3), IIDSplitter)
    with pytest.raises(ValueError, match="known: .*'iid'.*'lda'"):
        build_splitter("louvain", 3)
    with pytest.raises(ValueError, match="splitter_args"):
        build_splitter("lda", 3, [{"beta": 1}])
    with pytest.raises(ValueError, match="splitter_args"):
        build_splitter("lda", 3, [{"alpha": 1}, {"alpha": 2}])
    cfg = SimpleNamespace(data=SimpleNamespace(splitter="lda", splitter_args=[{"alpha": 0.05}]),
                          federate=SimpleNamespace(client_num=5))
    s = get_splitter(cfg)
    assert (s.client_num, s.alpha) == (5, 0.05)
    cfg.data.splitter = ""
    assert get_splitter(cfg) is None


def test_underflowing_dirichlet_draw_is_never_used(monkeypatch):
    # Legacy numpy returns NaN proportions when alpha is so small every gamma draw is 0.
    monkeypatch.setattr(split_utils, "MAX_REDRAWS", 4)
    labels = _labels(20, classes=3)
    with pytest.raises(ValueError, match="raise alpha"):
        LDASplitter(4, alpha=1e-300).split_indices(labels, seed=1)


def test_prior_split_gives_each_client_its_train_share_of_each_label():
    # train: client 1 holds 3 of label 0 and no label 1; client 2: 1 of label 0, 2 of label 1
    prior = [[0, 0, 0], [0, 1, 1]]
    test_labels = np.array([0] * 8 + [1] * 5)
    parts = LDASplitter(2, alpha=0.5).split_indices(test_labels, seed=4, prior=prior)
    counts = _counts(parts, test_labels, 2)
    # label 0: ceil(3/4 * 8) = 6 and ceil(1/4 * 8) = 2; label 1: 0 and ceil(2/2 * 5) = 5
    assert counts.tolist() == [[6, 0], [2, 5]]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(13))
    # ceil over-counts (ceil(1/3 * 4) x 3 = 6 > 4): clients give back until the sum is 4
    parts = LDASplitter(3, alpha=0.5).split_indices(np.zeros(4, np.int64), seed=1,
                                                    prior=[[0], [0], [0]])
    sizes = [len(p) for p in parts]
    assert sum(sizes) == 4 and max(sizes) == 2  # ceil gave 2 each; two were taken back
    with pytest.raises(ValueError, match=r"label\(s\) \[1\] occur .* in no client"):
        LDASplitter(2, alpha=0.5).split_indices(test_labels, seed=4, prior=[[0], [0]])
    # FS's __call__ passes its prior through; iid ignores it
    data = [(i, int(y)) for i, y in enumerate(test_labels)]
    assert [len(p) for p in LDASplitter(2, seed=4)(data, prior=prior)] == [6, 7]
    assert [len(p) for p in IIDSplitter(2, seed=4)(data, prior=prior)] == [7, 6]
