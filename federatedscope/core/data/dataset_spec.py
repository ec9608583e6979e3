"""What a dataset *is*, as the core needs to know it: one record per ``data.type``.

A domain package (``cv/``, ``nlp/``) builds one ``DatasetSpec`` per dataset and registers it with
``federatedscope.register.register_dataset_spec``. The shard format, the shard tool, the loader
and the model builder read everything dataset-specific from it (sample dtype/shape, class count,
model input, the reader of the public on-disk format, the default transform); nothing in
``federatedscope/core`` names a dataset.
"""
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np


@dataclass
class WriterSamples:
    """One writer's samples (LEAF: a writer/celebrity/role; CIFAR-10: one block of a file) as the
    reader of the public format yields them, one input file in memory at a time."""
    writer_id: str
    x: np.ndarray            # spec.sample_dtype, [n, *spec.sample_shape]
    y: np.ndarray            # int64 [n]
    source: str              # the file it came from (named in errors)
    split: Optional[str]     # 'train'/'test' when the source already splits it, else None

    def __post_init__(self) -> None:
        # Every consumer pairs sample i with label i (the shard tool through its spill rows): a
        # reader that yields more of one than the other would give labels to other samples.
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.source}, writer {self.writer_id}: the dataset's reader gave "
                             f"{len(self.x)} samples but {len(self.y)} labels; a reader must "
                             f"yield one label per sample (fix the reader registered for this "
                             f"data.type)")


@dataclass(frozen=True)
class DatasetSpec:
    name: str                              # FS's ``data.type``
    sample_dtype: str                      # numpy dtype name of a stored sample: 'uint8', 'int64'
    sample_shape: Tuple[int, ...]          # one stored sample
    num_classes: int                       # labels are int64 in [0, num_classes)
    model_input: Tuple[int, ...]           # one sample as the model receives it (after transform)
    # reader of the public on-disk format under ``data.root``: root -> writers, streamed
    iter_writers: Callable[[str], Iterator[WriterSamples]]
    # the input files the reader would open under ``root`` (named in plans and errors)
    list_inputs: Callable[[str], List[str]]
    # True when the data comes split by writer (LEAF); False needs a splitter (lda / iid)
    has_writers: bool = True
    # FS's default ``data.transform`` for this dataset (what a config leaving it empty means),
    # in FS's list spelling, e.g. (['ToTensor'], ['Normalize', {...}]); () = none (token ids)
    default_transform: Tuple[Any, ...] = ()
    # optional, so the shard tool can parse on several cores: the reader cut into independent
    # pieces (LEAF: one per JSON file; each must pickle, e.g. a (path, split) tuple) and the
    # reader of one piece. The pieces' writers, in order, must be exactly ``iter_writers(root)``'s;
    # ``pieces`` returning fewer than two means "read sequentially".
    pieces: Optional[Callable[[str], List[Any]]] = None
    read_piece: Optional[Callable[[Any], Iterator[WriterSamples]]] = None

    @property
    def sample_type(self) -> str:
        """The string the shard format records (``meta.json``/manifest ``sample_type``)."""
        return f"{self.sample_dtype}[" + ",".join(str(d) for d in self.sample_shape) + "]"

    @property
    def row_bytes(self) -> int:
        return int(np.dtype(self.sample_dtype).itemsize * np.prod(self.sample_shape, dtype=np.int64))


def get_spec(name: str) -> DatasetSpec:
    """The registered spec of FS's ``data.type`` ``name``; an unknown one names the known ones."""
    from federatedscope.core.configs.config import ConfigError   # a ValueError naming the key
    from federatedscope.register import dataset_spec_dict
    try:
        return dataset_spec_dict[str(name).lower()]
    except KeyError:
        raise ConfigError(f"data.type={name!r} has no registered dataset spec; known: "
                         f"{sorted(dataset_spec_dict)} (a domain package registers one with "
                         f"federatedscope.register.register_dataset_spec)") from None
