"""What FEMNIST *is*, in one place: sample shape, class count, the grey-level rule, model input.

The core (shard format, loader, trainer, transforms) is dataset-agnostic: it reads shapes, class
counts and ``sample_type`` from ``meta.json``/the manifest. A second dataset (plan §8: CelebA,
DomainNet) adds a ``DatasetSpec`` next to this one and registers it in ``SPECS``; nothing under
``federatedscope/core`` changes.
"""
from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class DatasetSpec:
    name: str                        # FS's ``data.type``
    sample_shape: Tuple[int, ...]    # one stored sample (uint8)
    num_classes: int                 # labels are int64 in [0, num_classes)
    grey_levels: int                 # stored value = round(v * grey_levels) of the source float v
    grey_tolerance: float            # |v * grey_levels - round(...)| above this is an error
    model_input: Tuple[int, int, int]  # (channels, height, width) after ToTensor

    @property
    def sample_type(self) -> str:
        """The string the shard format records (``meta.json`` -> ``sample_type``)."""
        return "uint8[" + ",".join(str(d) for d in self.sample_shape) + "]"

    @property
    def row_bytes(self) -> int:
        n = 1
        for d in self.sample_shape:
            n *= d
        return n


# LEAF stores FEMNIST pixels as floats that are exactly k/255 (background ~1.0, ink dark), so
# uint8 round(v * 255) is lossless; anything off the grid is a different preprocessing, never
# silently binarised (doc/architecture.md "Samples").
FEMNIST = DatasetSpec(name="femnist", sample_shape=(28, 28), num_classes=62, grey_levels=255,
                      grey_tolerance=1e-6, model_input=(1, 28, 28))

SPECS: Dict[str, DatasetSpec] = {FEMNIST.name: FEMNIST}


def get_spec(data_type: str) -> DatasetSpec:
    """The spec for FS's ``data.type``; an unknown type names the known ones."""
    try:
        return SPECS[data_type.lower()]
    except KeyError:
        raise ValueError(f"data.type={data_type!r} has no dataset spec; known: "
                         f"{sorted(SPECS)} (add one in federatedscope/cv/dataset/)") from None


# Until the shard format's spec record replaces this file's, FEMNIST's spec is registered here so
# the builders find it by data.type (register.dataset_spec_dict).
from federatedscope.register import register_dataset_spec  # noqa: E402

register_dataset_spec(FEMNIST.name, FEMNIST)
