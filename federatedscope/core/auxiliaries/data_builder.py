"""FS's ``get_data``: the one place that decides which data a process gets.

``get_data(config, client_cfgs=None) -> (data, modified_config)`` as in FS. The role (shard mode
or FS's data_idx path; standalone, server or client) is decided here once, and ``data`` is the
typed record of that role (``core/data/base_data.py``):

* shard mode (``distributed_data.enabled``), dataset-agnostic, no public-format file read:
  standalone -> ``StandaloneDataDict`` of every manifest client's shard (with the manifest);
  server -> ``ServerManifest`` (the manifest only, no data file opened); client ->
  ``ClientShard`` of ``distributed_data.shard_path``. A shard whose ``sample_type`` is not the
  registered ``DatasetSpec``'s for ``data.type`` is refused by name.
* FS's path: the loader registered for ``data.type`` (``register.data_dict``, FS's
  ``register_data``) loads every partition; ``convert_data_mode`` keeps what the role needs.

``modified_config`` is a copy of ``config`` with what the data decided: ``federate.client_num`` is
the number of clients the run has (standalone: the clients kept; a shard-mode server: the
manifest's count when ``client_num`` was 0). Merge it back with ``merge_from_other_cfg``.
"""
import logging

from federatedscope import register
from federatedscope.core.configs.config import ConfigError
from federatedscope.core.data.base_data import (ClientData, ClientShard, ServerManifest,
                                                StandaloneDataDict)
from federatedscope.core.data.dataset_spec import get_spec
from federatedscope.core.data.distributed_loader import DistributedShardLoader
from federatedscope.core.data.shard_format import ShardError, read_manifest, shard_dir
from federatedscope.core.data.utils import convert_data_mode, keep_first

logger = logging.getLogger("federatedscope")


def get_data(config, client_cfgs=None):
    modified = config.clone()
    modified.defrost()
    mode, role = modified.federate.mode.lower(), modified.distribute.role
    if not modified.distributed_data.enabled:
        data, modified = load_dataset(modified, client_cfgs)
        data = convert_data_mode(data, modified)
        if mode == "standalone":
            keep_first(data, modified.federate.client_num)
            modified.federate.client_num = len(data)
    elif mode == "standalone":
        data = _simulated_shards(modified, client_cfgs)
        modified.federate.client_num = len(data)
    elif role == "server":
        # The patch's point: a distributed server opens no data file, only the manifest.
        logger.info("Server: distributed_data.enabled — no dataset is opened on the server")
        data = _server_manifest(modified)
        if data.manifest is not None and modified.federate.client_num <= 0:
            modified.federate.client_num = len(data.manifest.clients)
    else:
        data = ClientShard(_checked(_own_shard(modified), modified))
    return data, modified


def load_dataset(config, client_cfgs=None):
    """FS's dispatch: every loader registered with ``register_data`` is asked in turn; the first
    answer that is not None is the ``(data, config)`` of FS's path."""
    for func in register.data_dict.values():
        result = func(config, client_cfgs)
        if result is not None:
            return result
    raise ConfigError(f"data.type={config.data.type!r} has no registered loader; registered: "
                      f"{sorted(register.data_dict)} (a package adds one with "
                      f"federatedscope.register.register_data)")


def _server_manifest(config) -> ServerManifest:
    """The typed manifest when shard mode names one: the only place a server reads it (admission
    re-reads it only if it changes on disk)."""
    path = config.distributed_data.manifest
    if not path:
        return ServerManifest(None, "")
    return ServerManifest(read_manifest(path), path)


def _checked(loader, config):
    """A shard made for another dataset (its meta.json's sample_type) is refused by name."""
    spec = get_spec(config.data.type)
    if loader.sample_type != spec.sample_type:
        raise ShardError(f"{loader.shard_path}/meta.json: sample_type {loader.sample_type!r} is "
                         f"not {spec.name}'s {spec.sample_type!r}; point distributed_data."
                         f"shard_path at a {spec.name} shard or set data.type to its dataset")
    return loader


def _own_shard(config):
    return DistributedShardLoader.from_config(config)


def _simulated_shards(config, client_cfgs) -> StandaloneDataDict:
    """Standalone simulation of a shard run: each manifest client's shard, through the loader."""
    path = config.distributed_data.manifest
    if not path:
        raise ConfigError("standalone simulation of shards needs distributed_data.manifest "
                          "(or set distributed_data.enabled False for FS's data path)")
    manifest = read_manifest(path)
    clients = {}
    for cid, entry in sorted(manifest.clients.items()):
        loader = DistributedShardLoader.from_config(config, client_id=cid,
                                                    shard_path=shard_dir(path, entry))
        own = client_cfgs.get(f"client_{cid}") if client_cfgs is not None else None
        clients[cid] = ClientData.from_loader(_checked(loader, config), own)
    return StandaloneDataDict(clients, manifest=manifest, manifest_path=path)
