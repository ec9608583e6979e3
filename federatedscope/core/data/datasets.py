"""The one protocol the trainer consumes: a split dataset that yields transformed batches.

Like ``torch.utils.data`` there are two kinds, map-style (``TensorSplit``: samples held as uint8
tensors, possibly memory-mapped) and iterable (the streaming reader in ``distributed_loader``).
Both implement ``iter_batches(batch_size, shuffle, seed)`` and ``__len__``; the trainer needs
nothing else. Samples stay uint8 until a batch is drawn, so a client holds 1 byte per pixel, not 4.
"""
from typing import Callable, Iterator, Protocol, Tuple, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import Dataset

Batch = Tuple[Tensor, Tensor]


@runtime_checkable
class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def iter_batches(self, batch_size: int, shuffle: bool, seed: int) -> Iterator[Batch]: ...


def shuffled_order(n: int, shuffle: bool, seed: int) -> Tensor:
    """The sample order for one pass; identical in every process for the same (n, seed)."""
    if not shuffle:
        return torch.arange(n)
    gen = torch.Generator()
    gen.manual_seed(int(seed) % (2 ** 63))
    return torch.randperm(n, generator=gen)


class TensorSplit(Dataset):
    """A split held as uint8 samples ``x`` [n, ...] and int64 labels ``y`` [n]."""

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Tensor], Tensor]):
        if len(x) != len(y):
            raise ValueError(f"samples ({len(x)}) and labels ({len(y)}) differ in length")
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Batch:
        return self.transform(self.x[i]), self.y[i]

    def iter_batches(self, batch_size: int, shuffle: bool, seed: int) -> Iterator[Batch]:
        order = shuffled_order(len(self), shuffle, seed)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield self.transform(self.x[idx]), self.y[idx]
