"""FS's ``load_cv_dataset`` for FEMNIST, CelebA and CIFAR-10, registered with ``register_data``.

FS's centralised path only: every writer of ``data.root`` becomes a partition (LEAF JSON,
cached), one ``ClientData`` per partition, ids 1..N. Shard mode never comes here: it is
dataset-agnostic and handled by ``get_data`` (``core/auxiliaries/data_builder.py``).
"""
import logging
from typing import Tuple

from federatedscope.core.data.base_data import SPLITS, ClientData, StandaloneDataDict
from federatedscope.core.data.dataset_spec import get_spec
from federatedscope.core.data.spec_data import load_spec_partitions, registered_loader
from federatedscope.core.data.transforms import split_transforms
from federatedscope.register import register_data

logger = logging.getLogger("federatedscope")

CV_DATASETS = ("femnist",)


def load_cv_dataset(config, client_cfgs=None):
    """-> (``StandaloneDataDict`` of every partition, config). ``client_cfgs`` (FS's per-client
    configs) is attached to each ``ClientData``; it does not change what is loaded."""
    from federatedscope.core.data.datasets import TensorSplit
    from federatedscope.cv.dataset.leaf_femnist import load_femnist_tasks
    tasks = load_femnist_tasks(config.data.root, list(config.data.splits), config.data.subsample,
                               config.data.seed)
    transform = split_transforms(config.data, get_spec(config.data.type))

    def split(pair: Tuple, name: str) -> TensorSplit:
        return TensorSplit(pair[0], pair[1], transform[name])

    def own_cfg(cid: int):
        return client_cfgs.get(f"client_{cid}") if client_cfgs is not None else None
    return StandaloneDataDict({
        i + 1: ClientData(own_cfg(i + 1),
                          *(split(task[s], s) if s in task else None for s in SPLITS))
        for i, task in enumerate(tasks)}), config


def call_cv_data(config, client_cfgs=None):
    """FS's registry convention: an answer for the cv datasets, None for any other type."""
    if config.data.type.lower() in CV_DATASETS:
        if config.data.splitter:  # FS re-splits the writers' samples: the generic spec path
            return load_spec_partitions(config, get_spec(config.data.type), client_cfgs)
        return load_cv_dataset(config, client_cfgs)
    return None


register_data("femnist", call_cv_data)
# CelebA and CIFAR-10: FS's path through the core's spec loader (same partition rules as the
# shard tool); the spec of the exact data.type, so 'CIFAR10@torchvision' records its own name
register_data("celeba", registered_loader(["celeba"], get_spec))
register_data("cifar10", registered_loader(["cifar10", "cifar10@torchvision"], get_spec))
