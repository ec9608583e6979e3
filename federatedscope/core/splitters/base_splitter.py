"""FS's splitter interface: cut one labelled dataset into ``client_num`` client parts.

A splitter decides *which sample goes to which client* from the labels alone
(``split_indices``), so the shard tool can stream the samples afterwards and never hold a whole
dataset of images; FS's ``__call__(dataset)`` (a list of ``(x, y)`` pairs in, one list per client
out) is kept for FS user code and is built on the same index split.
"""
from typing import Any, List, Optional, Sequence

import numpy as np


class BaseSplitter:
    def __init__(self, client_num: int, seed: Optional[int] = None):
        if int(client_num) < 1:
            raise ValueError(f"{type(self).__name__}: federate.client_num must be >= 1 to split "
                             f"a dataset among clients, got {client_num}")
        self.client_num = int(client_num)
        # None: FS's behaviour, numpy's global generator (seeded by setup_seed(cfg.seed));
        # an int: a private generator, so the same seed gives the same partition in any process.
        self.seed = seed

    def _rng(self, seed: Optional[int]):
        seed = self.seed if seed is None else seed
        # np.random (the module) and RandomState draw the same numbers for the same seed, so a
        # seeded split equals FS's split after np.random.seed(seed).
        return np.random if seed is None else np.random.RandomState(int(seed) % (2 ** 32))

    def split_indices(self, labels: Sequence[int], seed: Optional[int] = None,
                      prior: Optional[Sequence[Sequence[int]]] = None) -> List[np.ndarray]:
        """One int64 index array per client; every index in [0, len(labels)) exactly once.

        ``prior`` (one label list per client, e.g. their train labels): split so each client
        gets each label in the share it holds of it there (FS's consistent_label_distribution,
        for val/test sets); FS's LDA splitter honours it, its iid splitter ignores it."""
        raise NotImplementedError

    def __call__(self, dataset: Any, prior: Any = None, **kwargs) -> List[list]:
        samples = list(dataset)
        labels = np.array([int(y) for _, y in samples], dtype=np.int64)
        return [[samples[i] for i in idx] for idx in self.split_indices(labels, prior=prior)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_num={self.client_num})"
