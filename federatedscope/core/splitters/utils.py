"""Label-driven partitions shared by the splitters (FS's ``core/splitters/utils.py``)."""
from typing import List, Sequence

import numpy as np

# A Dirichlet draw that leaves a client below ``min_size`` is redrawn (FS's rule); this bounds
# the redraws so an impossible request is an error instead of a hang.
MAX_REDRAWS = 1000


def dirichlet_distribution_noniid_slice(label: np.ndarray, client_num: int, alpha: float,
                                        min_size: int = 1, rng=np.random) -> List[np.ndarray]:
    """FS's LDA split: for each label k (ascending), shuffle k's sample indices and cut them at
    the cumulative proportions of one Dirichlet(alpha, ..., alpha) draw over the clients. The
    whole draw is repeated until every client holds at least ``min_size`` samples; each client's
    indices are shuffled at the end. With ``rng`` seeded like FS's global generator this gives
    FS's partition.

    Unlike FS, the labels are iterated by value (``np.unique``), not as ``range(#labels)``, so a
    label set with gaps (e.g. {0, 2}) loses no sample.
    """
    label = np.asarray(label)
    if label.ndim != 1:
        raise ValueError(f"the LDA splitter needs one label per sample, got labels of shape "
                         f"{label.shape}")
    if not alpha > 0:
        raise ValueError(f"data.splitter_args alpha must be > 0, got {alpha!r}")
    num = len(label)
    if num <= client_num * min_size:
        raise ValueError(f"the LDA splitter needs more than client_num x min_size = "
                         f"{client_num} x {min_size} samples, the data has {num}; lower "
                         f"federate.client_num or min_size in data.splitter_args")
    classes = np.unique(label)
    for _ in range(MAX_REDRAWS):
        parts: List[List[np.ndarray]] = [[] for _ in range(client_num)]
        finite = True
        for k in classes:
            idx_k = np.flatnonzero(label == k)
            rng.shuffle(idx_k)
            prop = rng.dirichlet(np.repeat(alpha, client_num))
            # a tiny alpha can underflow every gamma draw to 0 (prop NaN); cutting at NaN would
            # lose or repeat samples, so such a draw counts as a failed one
            finite = finite and bool(np.isfinite(prop).all())
            cuts = (np.nan_to_num(np.cumsum(prop)) * len(idx_k)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(idx_k, cuts)):
                part.append(chunk)
        out = [np.concatenate(p).astype(np.int64) for p in parts]
        if finite and min(len(p) for p in out) >= min_size:
            break
    else:
        raise ValueError(f"the LDA splitter could not give each of {client_num} clients at least "
                         f"{min_size} sample(s) in {MAX_REDRAWS} Dirichlet draws with alpha="
                         f"{alpha}; raise alpha or lower min_size (data.splitter_args) or "
                         f"federate.client_num")
    for p in out:
        rng.shuffle(p)
    return out


def iid_slice(num: int, client_num: int, rng=np.random) -> List[np.ndarray]:
    """FS's iid split: one shuffle of all indices, cut into ``client_num`` near-equal parts
    (sizes differ by at most one, the larger parts first)."""
    if num < client_num:
        raise ValueError(f"the iid splitter cannot give each of {client_num} clients a sample: "
                         f"the data has {num}; lower federate.client_num")
    index = np.arange(num, dtype=np.int64)
    rng.shuffle(index)
    return [np.asarray(p, dtype=np.int64) for p in np.array_split(index, client_num)]


def split_according_to_prior(label: np.ndarray, prior: Sequence[Sequence[int]],
                             rng=np.random) -> List[np.ndarray]:
    """FS's split of a second set (val/test) so that client i gets each label in the share
    client i holds of it in ``prior`` (one label list per client, e.g. their train labels;
    FS's ``consistent_label_distribution``): label k's n_k indices are shuffled and client i
    gets ceil(share_i * n_k), then randomly chosen clients give one back until the counts sum to
    n_k."""
    label = np.asarray(label)
    client_num = len(prior)
    classes = np.unique(label)
    counts = np.zeros((client_num, len(classes)), dtype=np.int64)
    pos = {int(k): j for j, k in enumerate(classes)}
    seen = set()
    for i, labels_i in enumerate(prior):
        for v in np.asarray(labels_i, dtype=np.int64).reshape(-1):
            seen.add(int(v))
            if int(v) in pos:
                counts[i, pos[int(v)]] += 1
    missing = [int(k) for k in classes if int(k) not in seen]
    if missing:
        raise ValueError(f"label(s) {missing[:5]} occur in the data to split but in no client's "
                         f"prior labels; set data.consistent_label_distribution False")
    parts: List[List[np.ndarray]] = [[] for _ in range(client_num)]
    for j, k in enumerate(classes):
        idx_k = np.flatnonzero(label == k)
        rng.shuffle(idx_k)
        nums = np.ceil(counts[:, j] / counts[:, j].sum() * len(idx_k)).astype(np.int64)
        while nums.sum() > len(idx_k):
            c = rng.choice(range(client_num))
            if nums[c] > 0:
                nums[c] -= 1
        for part, chunk in zip(parts, np.split(idx_k, np.cumsum(nums)[:-1])):
            part.append(chunk)
    out = [np.concatenate(p).astype(np.int64) for p in parts]
    for p in out:
        rng.shuffle(p)
    return out
