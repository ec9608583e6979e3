"""FS's ``get_data``: which data a process gets — the branch point between data_idx and shards.

``get_data(config, client_cfgs=None) -> (data, modified_config)`` as in FS. ``data`` is:

* standalone: a ``StandaloneDataDict`` — each manifest client's shard (shard mode), or FS's
  tasks (one per writer).
* distributed server: ``ServerData(manifest=...)`` with no data file opened (shard mode), or
  ``ServerData(None)`` after FS's full load (data_idx mode: that cost is what the patch removes).
* distributed client: its ``DistributedShardLoader``, untouched (shard mode), or the
  ``ClientData`` of task ``distribute.data_idx``.

``modified_config`` is a copy of ``config`` with what the data decided: ``federate.client_num`` is
the number of clients the run has (standalone: the clients kept; a shard-mode server: the
manifest's count when ``client_num`` was 0). Merge it back with ``merge_from_other_cfg``.
"""
import logging

from federatedscope.core.configs.config import ConfigError
from federatedscope.core.data.base_data import ServerData, StandaloneDataDict
from federatedscope.core.data.utils import convert_data_mode

logger = logging.getLogger("federatedscope")


def get_data(config, client_cfgs=None):
    modified = config.clone()
    modified.defrost()
    if _is_shard_server(modified):
        # The patch's point: a distributed server opens no data file, only the manifest.
        logger.info("Server: distributed_data.enabled — no dataset is opened on the server")
        data = _server_data(modified)
    else:
        data, modified = load_dataset(modified, client_cfgs)
    data = convert_data_mode(data, modified)
    _fit_client_num(data, modified)
    return data, modified


def load_dataset(config, client_cfgs=None):
    """FS's dispatch on ``data.type``; FEMNIST is the cv loader's."""
    if config.data.type.lower() == "femnist":
        from federatedscope.cv.dataloader.dataloader import load_cv_dataset
        return load_cv_dataset(config, client_cfgs)
    raise ConfigError(f"data.type={config.data.type!r} has no loader; supported: ['femnist']")


def _is_shard_server(config) -> bool:
    return (config.federate.mode.lower() == "distributed" and config.distributed_data.enabled
            and config.distribute.role == "server")


def _server_data(config) -> ServerData:
    """The manifest's entries and sample type when shard mode names one; the only place a server
    reads it (the server's admission re-reads it only if it changes on disk)."""
    path = config.distributed_data.manifest
    if not path:
        return ServerData()
    from federatedscope.core.data.shard_format import read_manifest
    manifest = read_manifest(path)
    return ServerData(manifest=manifest.clients, sample_type=manifest.sample_type,
                      manifest_path=path)


def _fit_client_num(data, config) -> None:
    """Standalone FS data keeps the first ``client_num`` tasks (all when 0 or more than there
    are) and records how many it kept; a simulation of shards keeps every manifest client, as the
    distributed run does. A shard-mode server with ``client_num`` 0 takes the manifest's."""
    if isinstance(data, StandaloneDataDict):
        n = config.federate.client_num
        if data.manifest is None and 0 < n < len(data):
            for cid in sorted(data)[n:]:
                del data[cid]
        config.federate.client_num = len(data)
    elif isinstance(data, ServerData) and data.manifest is not None \
            and config.federate.client_num <= 0:
        config.federate.client_num = len(data.manifest)


def client_count(config, data) -> int:
    """How many clients the server waits for: the manifest's, else ``federate.client_num``."""
    manifest = getattr(data, "manifest", None)
    if manifest is not None:
        return len(manifest)
    if config.federate.client_num > 0:
        return config.federate.client_num
    if isinstance(data, StandaloneDataDict) and data:
        return len(data)
    raise ConfigError("set federate.client_num (how many clients the server waits for)")
