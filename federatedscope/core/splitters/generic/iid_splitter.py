from typing import List, Optional, Sequence

import numpy as np

from federatedscope.core.splitters.base_splitter import BaseSplitter
from federatedscope.core.splitters.utils import iid_slice


class IIDSplitter(BaseSplitter):
    """FS's 'iid' splitter: a uniformly random, near-equal split that ignores the labels."""

    def split_indices(self, labels: Sequence[int], seed: Optional[int] = None,
                      prior: Optional[Sequence[Sequence[int]]] = None) -> List[np.ndarray]:
        del prior  # FS's iid split ignores it: iid parts already share the label mix
        return iid_slice(len(labels), self.client_num, self._rng(seed))
