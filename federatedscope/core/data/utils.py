"""FS's ``convert_data_mode``: from the dataset a process loaded to the data it runs with.

This is the branch the patch plan names. Three cases:

* standalone — the ``StandaloneDataDict`` is returned as it is (every simulated client).
* distributed, the data is a ``DistributedShardLoader`` (a client in shard mode) — returned
  untouched: the process already holds only its own shard, and ``distribute.data_idx`` is never
  consulted. A ``ServerData`` (shard-mode server) is likewise returned untouched.
* distributed, the data is a whole ``StandaloneDataDict`` (FS's data_idx mode) — a client keeps
  task ``distribute.data_idx``; an index that is not a client of the dataset is an error naming
  the key (FS picks a random client instead, which silently trains on someone else's data). A
  server keeps nothing: ``ServerData(manifest=None)``.
"""
import logging

from federatedscope.core.configs.config import ConfigError
from federatedscope.core.data.base_data import ClientData, ServerData, StandaloneDataDict

logger = logging.getLogger("federatedscope")


def convert_data_mode(data, config):
    if config.federate.mode.lower() == "standalone":
        return data
    from federatedscope.core.data.distributed_loader import DistributedShardLoader
    if isinstance(data, (DistributedShardLoader, ServerData)):
        return data
    if not isinstance(data, StandaloneDataDict):
        raise TypeError(f"convert_data_mode: unexpected data {type(data).__name__}")
    if config.distribute.role == "server":
        return ServerData(manifest=None)
    return _data_idx_task(data, config)


def _data_idx_task(data: StandaloneDataDict, config) -> ClientData:
    idx = config.distribute.data_idx
    if idx not in data:
        ids = sorted(data)
        valid = f"{ids[0]}..{ids[-1]}" if ids else "none"
        raise ConfigError(
            f"distribute.data_idx={idx} is not a client of this dataset (valid: {valid} "
            f"with data.subsample={config.data.subsample}); set distribute.data_idx to one of "
            f"them")
    logger.info(f"Client: loaded the whole dataset ({len(data)} tasks) and kept data_idx={idx}")
    return data[idx]
