"""FS's ``load_cv_dataset`` for FEMNIST, with the patch's shard branch in it.

* shard mode (``distributed_data.enabled``) skips the centralised path entirely: a distributed
  client opens only its ``distributed_data.shard_path`` and gets the ``DistributedShardLoader``
  itself; a standalone simulation opens each manifest entry's shard. No LEAF file is read.
* otherwise FS's centralised path: every writer of ``data.root`` becomes a task (LEAF JSON,
  cached), one ``ClientData`` per task, ids 1..N.

A distributed server never comes here in shard mode (``get_data`` gives it the manifest only).
"""
import logging
from typing import Tuple

from federatedscope.core.configs.config import ConfigError
from federatedscope.core.data.base_data import ClientData, StandaloneDataDict
from federatedscope.core.data.transforms import build_transform
from federatedscope.core.data.dataset_spec import get_spec

logger = logging.getLogger("federatedscope")


def load_cv_dataset(config, client_cfgs=None):
    """-> (data, config). ``data`` is a ``StandaloneDataDict``, or a ``DistributedShardLoader``
    for a shard-mode distributed client. ``client_cfgs`` (FS's per-client configs) is accepted
    and attached to each ``ClientData``; it does not change what is loaded."""
    spec = get_spec(config.data.type)  # an unknown data.type fails here, naming the known ones
    if config.distributed_data.enabled:
        if config.federate.mode.lower() == "distributed":
            return _checked(_own_shard(config), spec), config
        data = _simulated_shards(config, client_cfgs)
        for client_data in data.values():
            _checked(client_data.loader, spec)
        return data, config
    return _centralised(config, client_cfgs), config


def _checked(loader, spec):
    """A shard made for another dataset (its meta.json's sample_type) is refused by name."""
    if loader.sample_type != spec.sample_type:
        from federatedscope.core.data.shard_format import ShardError
        raise ShardError(f"{loader.shard_path}/meta.json: sample_type {loader.sample_type!r} is "
                         f"not {spec.name}'s {spec.sample_type!r}; point distributed_data."
                         f"shard_path at a {spec.name} shard or set data.type to its dataset")
    return loader


def _client_cfg(client_cfgs, cid: int):
    if client_cfgs is None:
        return None
    return client_cfgs.get(f"client_{cid}")


def _own_shard(config):
    from federatedscope.core.data.distributed_loader import DistributedShardLoader
    return DistributedShardLoader.from_config(config)


def _simulated_shards(config, client_cfgs) -> StandaloneDataDict:
    """Standalone simulation of a shard run: each manifest client's shard, through the loader."""
    from federatedscope.core.data.shard_format import load_manifest, shard_dir
    from federatedscope.core.data.distributed_loader import DistributedShardLoader
    path = config.distributed_data.manifest
    if not path:
        raise ConfigError("standalone simulation of shards needs distributed_data.manifest "
                          "(or set distributed_data.enabled False for FS's data path)")
    manifest = load_manifest(path)
    clients = {}
    for cid, entry in sorted(manifest.items()):
        loader = DistributedShardLoader.from_config(config, client_id=cid,
                                                    shard_path=shard_dir(path, entry))
        clients[cid] = ClientData.from_loader(loader, _client_cfg(client_cfgs, cid))
    return StandaloneDataDict(clients, manifest=manifest)


def _centralised(config, client_cfgs) -> StandaloneDataDict:
    from federatedscope.core.data.datasets import TensorSplit
    from federatedscope.cv.dataset.leaf_femnist import load_femnist_tasks
    tasks = load_femnist_tasks(config.data.root, list(config.data.splits), config.data.subsample,
                               config.data.seed)
    transform = build_transform(config.data.transform)

    def split(pair: Tuple) -> TensorSplit:
        return TensorSplit(pair[0], pair[1], transform)
    return StandaloneDataDict({
        i + 1: ClientData(_client_cfg(client_cfgs, i + 1),
                          *(split(task[s]) if s in task else None for s in ("train", "val", "test")))
        for i, task in enumerate(tasks)})
