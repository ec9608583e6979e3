"""The one protocol the trainer consumes: a split dataset that yields transformed batches.

Like ``torch.utils.data`` there are two kinds, map-style (``TensorSplit``: samples held as
tensors, possibly memory-mapped) and iterable (the streaming reader in ``distributed_loader``).
Both implement ``iter_batches(batch_size, shuffle, seed, num_workers=0, drop_last=False,
pin_memory=False)`` and ``__len__``; the trainer needs nothing else. The three DataLoader keys
are FS's ``dataloader.{num_workers,drop_last,pin_memory}``: ``num_workers`` > 0 reads batches
in torch DataLoader worker processes (same samples, each exactly once per epoch). Samples stay
in their stored dtype (uint8 pixels) until a batch is drawn, so a client holds 1 byte per pixel.
"""
import gc
from typing import Callable, Iterable, Iterator, List, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

Batch = Tuple[Tensor, Tensor]


@runtime_checkable
class BatchSource(Protocol):  # pragma: no mutate block
    # not mutated: a protocol's bodies never run, and mutmut's helper methods on it would
    # become protocol members that no real source has (isinstance would turn False)
    def __len__(self) -> int: ...

    def iter_batches(self, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                     drop_last: bool = False, pin_memory: bool = False) -> Iterator[Batch]: ...


def shuffled_order(n: int, shuffle: bool, seed: int) -> Tensor:
    """The sample order for one pass; identical in every process for the same (n, seed)."""
    if not shuffle:
        return torch.arange(n)
    gen = torch.Generator()
    gen.manual_seed(int(seed) % (2 ** 63))
    return torch.randperm(n, generator=gen)


def batch_loader(dataset: Dataset, sampler: Optional[Iterable], num_workers: int,
                 pin_memory: bool) -> Iterator[Batch]:
    """Batches of a torch DataLoader over ready-made batches (``batch_size=None``): the dataset
    (or, for map-style, ``dataset[index tensor]``) already yields whole batches. Pinning needs
    CUDA; on a CPU-only host it would only warn, so it is asked for only where it can happen.

    Workers are forked from this process, which may run threads (a client runs gRPC's). Its
    uncollected garbage is frozen out of their collector first: a finalizer written for this
    process's threads must not run in a worker, where those threads do not exist (seen: workers
    spinning in such a finalizer's ``Thread.join``)."""
    loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=int(num_workers),
                        pin_memory=bool(pin_memory) and torch.cuda.is_available())
    if int(num_workers) <= 0:
        return iter(loader)
    gc.collect()
    gc.freeze()
    try:
        return iter(loader)      # forks the workers
    finally:
        gc.unfreeze()


class TensorSplit(Dataset):
    """A split held as samples ``x`` [n, ...] and int64 labels ``y`` [n]."""

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Tensor], Tensor]):
        if len(x) != len(y):
            raise ValueError(f"samples ({len(x)}) and labels ({len(y)}) differ in length")
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i) -> Batch:
        """One sample for an int ``i``; a batch for an index tensor (what the loader passes)."""
        return self.transform(self.x[i]), self.y[i]

    def iter_batches(self, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                     drop_last: bool = False, pin_memory: bool = False) -> Iterator[Batch]:
        order = shuffled_order(len(self), shuffle, seed)
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        batches: List[Tensor] = [order[s:s + batch_size] for s in range(0, stop, batch_size)]
        if num_workers == 0 and not pin_memory:
            for idx in batches:
                yield self[idx]
        else:
            yield from batch_loader(self, batches, num_workers, pin_memory)
