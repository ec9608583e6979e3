"""FS's data keys (FS's ``cfg_data.py``): ``data.*`` and ``dataloader.*`` defaults, FS's
deprecated ``data.*`` loader aliases, and the check of ``distribute.data_idx``.

FederatedScope moved the loader keys from ``data`` to ``dataloader`` and still accepts the old
names: a configuration that sets ``data.batch_size`` (``num_workers``, ``shuffle``,
``drop_last``, ``loader`` -> ``dataloader.type``, ``walk_length``, ``num_steps``, ``sizes``) gets a
warning and the ``dataloader`` key takes the value. FS's own shipped configs use them
(``distributed_femnist_server.yaml``: ``data.batch_size``, ``data.num_workers``). Setting both
names to different non-default values is an error naming both: no silent pick.
"""
import logging

logger = logging.getLogger("federatedscope")

# deprecated data.<key> -> dataloader.<key>; both default to FS's value
DEPRECATED_ALIASES = {
    "loader": "type", "batch_size": "batch_size", "shuffle": "shuffle",
    "num_workers": "num_workers", "drop_last": "drop_last", "walk_length": "walk_length",
    "num_steps": "num_steps", "sizes": "sizes",
}
_LOADER_DEFAULTS = dict(type="base", batch_size=64, shuffle=True, num_workers=0, drop_last=False,
                        pin_memory=False, walk_length=2, num_steps=30, sizes=[10, 5])
# FS's dataloader keys that have no deprecated data.* alias (DP: -1 per-rating privacy)
_LOADER_ONLY = dict(theta=-1)


# config.py imports this module while it builds its default tree: config's names are imported
# inside the functions, never at module level.


def extend_data_cfg(c) -> None:
    from federatedscope.core.configs.config import CN
    c.data = CN(dict(
        root="data", type="femnist", args=[], splits=[0.6, 0.2, 0.2], subsample=1.0,
        transform=[], target_transform=[], pre_transform=[], seed=1234,
        # FS: per-split lists; an empty one means data.transform (core/data/transforms.py)
        val_transform=[], val_target_transform=[], val_pre_transform=[],
        test_transform=[], test_target_transform=[], test_pre_transform=[],
        # FS: the server (worker 0) also holds all data, for global training/evaluation
        server_holds_all=False,
        consistent_label_distribution=False, splitter="", file_path="", save_data=False,
        # FS's splitter arguments, a list holding one mapping, e.g. [{'alpha': 0.5}] for 'lda'
        splitter_args=[],
        # FS's deprecated aliases of dataloader.* (FS: data.loader '' means "not set")
        loader="", **{old: _LOADER_DEFAULTS[new] for old, new in DEPRECATED_ALIASES.items()
                      if old != "loader"}))
    c.dataloader = CN(dict(_LOADER_DEFAULTS, **_LOADER_ONLY))


def assert_data_cfg(cfg) -> None:
    """Apply the deprecated aliases (warning, then ``dataloader.*``), then check ``data_idx``."""
    from federatedscope.core.configs.config import ConfigError, same_value
    for old, new in DEPRECATED_ALIASES.items():
        value = getattr(cfg.data, old)
        default = "" if old == "loader" else _LOADER_DEFAULTS[new]
        if same_value(value, default):
            continue
        current = getattr(cfg.dataloader, new)
        if not same_value(current, _LOADER_DEFAULTS[new]) and not same_value(current, value):
            raise ConfigError(
                f"data.{old}={value!r} (FS's deprecated name) and dataloader.{new}={current!r} "
                f"disagree; keep only dataloader.{new} (remove data.{old} from the YAML, or "
                f"append `data.{old} {current!r}` to the command)")
        logger.warning(f"data.{old} is deprecated (FederatedScope keeps it as an alias of "
                       f"dataloader.{new}); using dataloader.{new}={value!r}: rename the key in "
                       f"your YAML")
        setattr(cfg.dataloader, new, value)
    _check_data_idx(cfg)


def _check_data_idx(cfg) -> None:
    """FS's data_idx mode: a distributed client without shards trains on partition
    ``distribute.data_idx`` (1..number of partitions; the upper bound is known once the data is
    loaded, ``core/data/utils.py``). The partition count does not depend on client_num."""
    if cfg.federate.mode.lower() != "distributed" or cfg.distribute.role != "client" \
            or cfg.distributed_data.enabled:
        return
    if int(cfg.distribute.data_idx) < 1:
        from federatedscope.core.configs.config import ConfigError
        raise ConfigError(
            f"distribute.data_idx={cfg.distribute.data_idx} is not a partition: a data_idx-mode "
            f"client needs distribute.data_idx in 1..number of partitions of data.root (FEMNIST: "
            f"its writers kept by data.subsample; independent of federate.client_num); set it, "
            f"or use shards (distributed_data.enabled True)")
