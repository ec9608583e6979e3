from typing import List, Optional, Sequence

import numpy as np

from federatedscope.core.splitters.base_splitter import BaseSplitter
from federatedscope.core.splitters.utils import (dirichlet_distribution_noniid_slice,
                                                 split_according_to_prior)


class LDASplitter(BaseSplitter):
    """FS's 'lda' splitter: label proportions per client from Dirichlet(``alpha``); smaller alpha
    gives more skewed clients. ``min_size`` (FS's default 1) is the fewest samples a client may
    get before the draw is repeated."""

    def __init__(self, client_num: int, alpha: float = 0.5, min_size: int = 1,
                 seed: Optional[int] = None):
        super().__init__(client_num, seed)
        self.alpha = float(alpha)
        self.min_size = int(min_size)

    def split_indices(self, labels: Sequence[int], seed: Optional[int] = None,
                      prior: Optional[Sequence[Sequence[int]]] = None) -> List[np.ndarray]:
        if prior is not None:
            if len(prior) != self.client_num:
                raise ValueError(f"prior holds {len(prior)} clients' labels, the splitter has "
                                 f"client_num={self.client_num}")
            return split_according_to_prior(np.asarray(labels), prior, self._rng(seed))
        return dirichlet_distribution_noniid_slice(np.asarray(labels), self.client_num,
                                                   self.alpha, self.min_size, self._rng(seed))

    def __repr__(self) -> str:
        return f"LDASplitter(client_num={self.client_num}, alpha={self.alpha})"
