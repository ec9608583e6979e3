"""Which data a process gets — the single branch point between FS's data_idx path and shards.

* standalone: every simulated client's splits, either FS-style (one task per writer, from raw LEAF
  JSON) or, with ``distributed_data.enabled`` and a manifest, each client's shard loaded through
  ``DistributedShardLoader`` (a faithful simulation of the distributed shard run).
* distributed server: nothing in shard mode. In data_idx mode FS's behaviour is kept: it loads the
  whole dataset (that is the cost the patch removes).
* distributed client: its own shard (``DistributedShardLoader``) or, in data_idx mode, the whole
  dataset from which it keeps task ``data_idx``; an invalid ``data_idx`` is an error, never a
  silent fallback to another client's data.
"""
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional

from federatedscope.core.configs.config import ConfigError, client_identity
from federatedscope.core.data.datasets import BatchSource, TensorSplit
from federatedscope.core.data.transforms import build_transform

logger = logging.getLogger("federatedscope")
ClientData = Dict[str, BatchSource]


@dataclass
class ProcessData:
    clients: Dict[int, ClientData]            # client id -> splits (empty for a shard-mode server)
    loaders: Dict[int, object]                # client id -> DistributedShardLoader (shard mode)
    manifest: Optional[dict] = None           # client id -> ManifestEntry, read once (shard mode)


def _fs_tasks(cfg) -> List[ClientData]:
    from federatedscope.cv.dataset.leaf_femnist import load_femnist_tasks
    tasks = load_femnist_tasks(cfg.data.root, list(cfg.data.splits), cfg.data.subsample,
                               cfg.data.seed)
    transform = build_transform(cfg.data.transform)
    return [{split: TensorSplit(x, y, transform) for split, (x, y) in task.items()}
            for task in tasks]


def _shard_loader(cfg, shard_path: str, client_id: int):
    from federatedscope.core.data.distributed_loader import DistributedShardLoader
    sub = cfg.clone()
    sub.defrost()
    sub.distributed_data.shard_path = shard_path
    sub.freeze()
    return DistributedShardLoader(sub, client_id=client_id)


def _read_manifest(cfg) -> Optional[dict]:
    """The manifest's entries when shard mode names one; the only place a process reads it."""
    if not (cfg.distributed_data.enabled and cfg.distributed_data.manifest):
        return None
    from federatedscope.core.auxiliaries.manifest_utils import load_manifest
    return load_manifest(cfg.distributed_data.manifest)


def get_data(cfg) -> ProcessData:
    mode = cfg.federate.mode
    shard_mode = bool(cfg.distributed_data.enabled)
    if mode == "standalone":
        if shard_mode:
            from federatedscope.core.auxiliaries.manifest_utils import shard_dir
            manifest = _read_manifest(cfg)
            if manifest is None:
                raise ConfigError("standalone simulation of shards needs distributed_data.manifest")
            path = cfg.distributed_data.manifest
            loaders = {cid: _shard_loader(cfg, shard_dir(path, e), cid)
                       for cid, e in sorted(manifest.items())}
            return ProcessData({cid: dict(l.datasets) for cid, l in loaders.items()}, loaders,
                               manifest)
        tasks = _fs_tasks(cfg)
        n = cfg.federate.client_num if 0 < cfg.federate.client_num <= len(tasks) else len(tasks)
        return ProcessData({i + 1: tasks[i] for i in range(n)}, {})
    if cfg.distribute.role == "server":
        if shard_mode:
            logger.info("Server: distributed_data.enabled — no dataset is opened on the server")
            return ProcessData({}, {}, _read_manifest(cfg))
        _fs_tasks(cfg)  # FS's data_idx mode: the server loads everything too
        return ProcessData({}, {})
    cid = client_identity(cfg)
    if shard_mode:
        loader = _shard_loader(cfg, cfg.distributed_data.shard_path, cid if cid > 0 else None)
        own = loader.meta.client_id if cid <= 0 else cid
        return ProcessData({own: dict(loader.datasets)}, {own: loader})
    tasks = _fs_tasks(cfg)
    idx = cfg.distribute.data_idx
    if not 1 <= idx <= len(tasks):
        raise ConfigError(
            f"distribute.data_idx={idx} is not a client of this dataset (valid: 1..{len(tasks)} "
            f"with data.subsample={cfg.data.subsample}); set distribute.data_idx to one of them")
    logger.info(f"Client: loaded the whole dataset ({len(tasks)} tasks) and kept data_idx={idx}")
    return ProcessData({idx: tasks[idx - 1]}, {})


def client_count(cfg, data: ProcessData) -> int:
    """How many clients the server waits for: the manifest's, else ``federate.client_num``."""
    if data.manifest is not None:
        return len(data.manifest)
    if cfg.federate.client_num > 0:
        return cfg.federate.client_num
    if data.clients:
        return len(data.clients)
    raise ConfigError("set federate.client_num (how many clients the server waits for)")
