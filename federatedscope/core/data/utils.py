"""FS's ``convert_data_mode``: FS's data_idx job, nothing else.

``get_data`` decides the role once and calls this only on FS's path (the whole dataset was
loaded as a ``StandaloneDataDict`` of partitions):

* standalone — the dict itself (every simulated client);
* distributed server — ``ServerManifest(None)``, holding the partitions only for
  ``federate.make_global_eval`` (FS's server evaluates the global model on its data);
* distributed client — ``DataIdxClient`` of partition ``distribute.data_idx``. The index picks a
  partition (valid 1..number of partitions, whatever ``federate.client_num`` is); one out of that
  range is an error naming the key and the range (FS samples a random partition instead, which
  silently trains on someone else's data).
"""
import logging

from federatedscope.core.configs.config import ConfigError
from federatedscope.core.data.base_data import DataIdxClient, ServerManifest, StandaloneDataDict

logger = logging.getLogger("federatedscope")


def keep_first(data: StandaloneDataDict, n: int) -> None:
    """FS keeps the first ``federate.client_num`` partitions (all when 0 or more than there are)."""
    if 0 < n < len(data):
        for cid in sorted(data)[n:]:
            del data[cid]


def _job_partitions(data: StandaloneDataDict, config) -> StandaloneDataDict:
    """The partitions of the job's clients, as a standalone run keeps them (``keep_first``): a
    global evaluation covers the same clients in both modes."""
    kept = StandaloneDataDict(dict(data))
    keep_first(kept, int(config.federate.client_num))
    return kept


def convert_data_mode(data: StandaloneDataDict, config):
    if config.federate.mode.lower() == "standalone":
        return data
    if config.distribute.role == "server":
        return ServerManifest(manifest=None, eval_data=_job_partitions(data, config)
                              if config.federate.make_global_eval else None)
    idx = int(config.distribute.data_idx)
    if idx not in data:
        ids = sorted(data)
        valid = f"1..{ids[-1]}" if ids else "none: the dataset has no partition"
        raise ConfigError(
            f"distribute.data_idx={idx} is not a partition of data.root={config.data.root!r} "
            f"(valid: {valid}, the {len(ids)} partitions of data.type={config.data.type!r} with "
            f"data.subsample={config.data.subsample}; independent of federate.client_num); set "
            f"distribute.data_idx to one of them")
    logger.info(f"Client: loaded the whole dataset ({len(data)} partitions) and kept "
                f"data_idx={idx}")
    return DataIdxClient(data[idx], idx)
