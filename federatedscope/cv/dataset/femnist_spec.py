"""What FEMNIST *is*, in one place: sample type, class count, model input, and its reader.

Registered under FS's ``data.type`` 'femnist' when this module is imported (``cv/__init__.py``
imports it), so the core (shard format, shard tool, loader, model builder) reads FEMNIST's facts
from ``federatedscope.core.data.dataset_spec.get_spec('femnist')`` and never names the dataset.
LEAF's pixels are exact k/255 floats, stored losslessly as uint8 k (``leaf_femnist``).
"""
from typing import Iterator, List, Optional, Tuple

from federatedscope.core.data.dataset_spec import DatasetSpec, WriterSamples
from federatedscope.cv.dataset.leaf_checks import NUM_CLASSES, SIDE
from federatedscope.register import register_dataset_spec


# The reader is imported when first used: ``import federatedscope`` registers this spec, and the
# launcher's small helpers (``python -m federatedscope...launch_utils``) must not pay for torch.
def iter_writers(root: str) -> Iterator[WriterSamples]:
    from federatedscope.cv.dataset.leaf_femnist import iter_writers as read
    return read(root)


def list_inputs(root: str) -> List[str]:
    from federatedscope.cv.dataset.leaf_femnist import list_inputs as find
    return find(root)


def pieces(root: str) -> List[Tuple[str, Optional[str]]]:
    from federatedscope.cv.dataset.leaf_femnist import leaf_pieces
    return leaf_pieces(root)


def read_piece(piece: Tuple[str, Optional[str]]) -> Iterator[WriterSamples]:
    from federatedscope.cv.dataset.leaf_femnist import read_leaf_piece
    return read_leaf_piece(piece)


FEMNIST = DatasetSpec(name="femnist", sample_dtype="uint8", sample_shape=(SIDE, SIDE),
                      num_classes=NUM_CLASSES, model_input=(1, SIDE, SIDE), iter_writers=iter_writers,
                      list_inputs=list_inputs, has_writers=True, pieces=pieces,
                      read_piece=read_piece)

register_dataset_spec(FEMNIST.name, FEMNIST)
