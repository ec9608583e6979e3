"""The one config tree (yacs ``CfgNode``) with FederatedScope's key names.

``get_default_cfg()`` returns a fresh tree of defaults. YAML files and CLI ``key value`` pairs are
merged on top with ``merge_from_file`` / ``merge_from_list``; any key that is not in the defaults is
refused with an error naming it (yacs' own behaviour, re-worded to name the source). ``finalize``
checks values that yacs cannot (choices, ranges) and resolves environment variables.
"""
import logging
import os
import re
from typing import List, Optional

import yacs.config as _yacs
from yacs.config import CfgNode as _YacsNode

from federatedscope.core.configs.cfg_evaluation import FS_BEST_KEY, assert_evaluation_cfg
from federatedscope.core.configs.cfg_fl_algo import (FL_ALGO_NOT_IMPLEMENTED, assert_fl_algo_cfg,
                                                     extend_fl_algo_cfg, optimizer_node)
from federatedscope.core.configs.key_status import ACCEPTED_UNUSED

logger = logging.getLogger("federatedscope")


_yacs_coerce = _yacs._check_and_coerce_cfg_value_type


# The shortest distribute.heartbeat_interval a client may use: every server allows each session
# twice this rate (communication/limits.py), whatever the server's own interval.
MIN_HEARTBEAT_INTERVAL = 0.1


def _coerce(replacement, original, key, full_key):
    # yacs refuses `120` for a float key; users (and FS configs) write whole numbers that way.
    if isinstance(original, float) and isinstance(replacement, int) \
            and not isinstance(replacement, bool):
        return float(replacement)
    return _yacs_coerce(replacement, original, key, full_key)


_yacs._check_and_coerce_cfg_value_type = _coerce


class ConfigError(ValueError):
    """A user-caused configuration problem; the message names the key and the fix."""


class CN(_YacsNode):
    """yacs node whose merge errors name the offending key and where it came from."""

    def merge_from_file(self, cfg_filename: str) -> None:
        if not os.path.isfile(cfg_filename):
            raise ConfigError(f"config file not found: {cfg_filename}")
        try:
            # UTF-8 whatever the locale: FS's shipped YAMLs carry non-ASCII comments
            f = open(cfg_filename, "r", encoding="utf-8")
        except OSError as e:    # unreadable: permissions, an I/O error
            raise ConfigError(f"config file {cfg_filename} cannot be read: "
                              f"{e.strerror or e}") from None
        with f:
            try:
                loaded = self.load_cfg(f)
            except Exception as e:  # yaml syntax errors
                raise ConfigError(f"{cfg_filename}: cannot parse YAML: {e}") from e
        try:
            self.merge_from_other_cfg(loaded)
        except (KeyError, AssertionError) as e:
            raise ConfigError(f"{cfg_filename}: {e.args[0]} (see doc/config.md "
                              f"for the keys this version knows)") from None
        except ValueError as e:
            raise ConfigError(f"{cfg_filename}: {e}") from None

    def merge_from_list(self, cfg_list: list) -> None:
        if len(cfg_list) % 2 != 0:
            raise ConfigError(
                f"command-line overrides must be 'key value' pairs; got an odd "
                f"number of items: {cfg_list}")
        cfg_list = [v if i % 2 == 0 else _normalize_bool(v) if isinstance(v, str) else v
                    for i, v in enumerate(cfg_list)]
        try:
            super().merge_from_list(cfg_list)
        except (KeyError, AssertionError) as e:
            raise ConfigError(f"command line: {e.args[0]}") from None
        except ValueError as e:
            raise ConfigError(f"command line: {e}") from None


def same_value(value, default) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)
    return value == default


def _node(**kwargs) -> CN:
    node = CN()
    for k, v in kwargs.items():
        setattr(node, k, v)
    return node


def get_default_cfg() -> CN:
    c = CN()
    # --- general (FS cfg_fl_setting / cfg_training / misc) ---
    c.use_gpu = False
    c.device = -1
    c.backend = "torch"
    c.seed = 0
    c.outdir = "exp"
    c.expname = ""
    c.expname_tag = ""
    c.verbose = 1
    c.print_decimal_digits = 6

    c.early_stop = _node(patience=5, delta=0.0, improve_indicator_mode="best")

    c.federate = _node(
        mode="standalone", client_num=0, total_round_num=50, sample_client_num=-1,
        sample_client_rate=-1.0, unseen_clients_rate=0.0, make_global_eval=False,
        online_aggr=False, method="FedAvg", save_to="", restore_from="",
        join_in_info=[], share_local_model=False, data_weighted_aggr=False,
        use_ss=False, merge_test_data=False,
        # FS keys refused when changed (_NOT_IMPLEMENTED) or accepted (key_status.py)
        use_diff=False, ignore_weight=False, sampler="uniform",
        # reliability
        round_timeout=0.0, min_clients_threshold=0, graceful_termination_timeout=300.0,
        join_timeout=0.0,
        # evaluation answers are waited for at most this long (0: no limit); see doc/config.md
        eval_timeout=300.0,
        # the server stops with exit code 4 once its results log could not be written for
        # this many seconds (a full disk, no file descriptors)
        results_write_timeout=60.0,
    )

    c.distribute = _node(
        use=False, server_host="0.0.0.0", server_port=50050, client_host="0.0.0.0",
        client_port=50050, role="client", data_file="data", data_idx=-1,
        grpc_max_send_message_length=300 * 1024 * 1024,
        grpc_max_receive_message_length=300 * 1024 * 1024,
        grpc_enable_http_proxy=False, grpc_compression="nocompression",
        # the id a client claims (shard mode: else its meta.json's; data_idx mode: else -1, the
        # server assigns one in join order)
        client_id=-1,
        # reliability / security
        heartbeat_interval=5.0, heartbeat_timeout=30.0,
        connect_timeout=60.0, reconnect_max_backoff=60.0, max_reconnect_time=300.0,
        token="", token_file="", tls_ca="", tls_cert="", tls_key="",
        max_message_mb=0.0,
        # a stream that has not sent a valid join_in within this many seconds is closed
        join_deadline=5.0,
        # server's HTTP/2 receive window per client stream: memory held for N simultaneous
        # uploads is N x this; one upload runs at most at window / round-trip time. 0: 64 MiB
        # shared by the sessions the server may hold, 64 KiB..4 MiB (communication/limits.py)
        grpc_stream_window_kb=0,
        # connections one peer address may hold with streams that have not joined; 0: the
        # expected clients not yet joined + 8 (doc/reliability.md, "Transport ceilings")
        grpc_max_connections_per_address=0,
    )

    c.distributed_data = _node(
        enabled=False, shard_path="", manifest="", streaming=False,
        strict_check=True, verify_checksum=True,
    )

    from federatedscope.core.configs.cfg_data import extend_data_cfg
    extend_data_cfg(c)

    c.model = _node(type="convnet2", model_num_per_trainer=1, hidden=256, dropout=0.5,
                    in_channels=0, out_channels=1, layer=2, input_shape=(), use_bias=True,
                    embed_size=8)  # FS: the LSTM's token embedding width

    # FS: CN(new_allowed=True); any further key is the optimizer's argument (cfg_fl_algo.py)
    c.train = _node(local_update_steps=1, batch_or_epoch="batch", data_para_dids=[],
                    is_enable_half=False,
                    optimizer=optimizer_node(type="SGD", lr=0.1, momentum=0.0, weight_decay=0.0))

    c.grad = _node(grad_clip=-1.0, grad_accum_count=1)
    # FS's robust aggregation keys: rule, assumed Byzantine count, and the rules' parameters.
    c.aggregator = _node(robust_rule="fedavg", byzantine_node_num=0,
                         # unverified sample counts (lenient / data_idx mode) weigh at most this
                         # many times the median count of the round's contributors
                         max_sample_ratio=10.0)
    c.aggregator.BFT_args = CN(new_allowed=True)
    c.aggregator.BFT_args.krum_agg_num = 1
    c.aggregator.BFT_args.trimmedmean_excluded_ratio = 0.1
    c.aggregator.BFT_args.normbounding_norm_bound = 10.0
    c.criterion = _node(type="CrossEntropyLoss")
    c.regularizer = _node(type="", mu=0.0)
    c.trainer = _node(type="general")

    c.eval = _node(freq=1, metrics=[], split=["test", "val"],
                   report=["weighted_avg", "avg", "fairness", "raw"],
                   best_res_update_round_wise_key=FS_BEST_KEY, monitoring=[], count_flops=False,
                   save_data=False)
    c.wandb = _node(use=False)
    extend_fl_algo_cfg(c)  # fedopt, fedprox, personalization, finetune, train.scheduler
    return c


# FS's module-level default tree: scripts start from ``global_cfg.clone()`` (never mutate it).
global_cfg = get_default_cfg()


# Values yacs cannot check. Each entry: key -> allowed values.
_CHOICES = {
    "backend": ("torch",),
    "federate.mode": ("standalone", "distributed"),
    "distribute.role": ("server", "client"),
    "distribute.grpc_compression": ("nocompression", "deflate", "gzip"),
    "train.batch_or_epoch": ("batch", "epoch"),
    "aggregator.robust_rule": ("fedavg", "krum", "median", "trimmedmean", "bulyan", "normbounding"),
}
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


# FederatedScope keys this version accepts (so FS configs load) but does not implement. Setting
# one to anything but its default would silently change nothing, so finalize() refuses it, naming
# the key. Each entry: key -> what FS does with it. Audited against `git grep` of every key in
# get_default_cfg(); keep this table in step with doc/config.md ("Refused keys").
_NOT_IMPLEMENTED = {
    "early_stop.improve_indicator_mode": "'mean' early stopping (only 'best' exists here)",
    "federate.unseen_clients_rate": "holding out unseen clients",
    "federate.share_local_model": "one shared model object for all standalone clients",
    "federate.use_ss": "secret-sharing aggregation",
    "federate.merge_test_data": "merging all clients' test data for a global evaluation",
    "federate.ignore_weight": "equal aggregation weights whatever the sample counts",
    "federate.sampler": "client sampling strategies other than 'uniform' (FS: 'group')",
    "train.data_para_dids": "torch.nn.DataParallel over several GPUs",
    "train.is_enable_half": "half-precision (float16) models",
    "distribute.data_file": "FS's per-process data file",
    "data.args": "extra dataset constructor arguments",
    "data.target_transform": "label transforms",
    "data.val_target_transform": "label transforms of the val split",
    "data.test_target_transform": "label transforms of the test split",
    "data.pre_transform": "transforms applied once before caching",
    "data.val_pre_transform": "the val split's transforms applied once before caching",
    "data.test_pre_transform": "the test split's transforms applied once before caching",
    "data.server_holds_all": "the server (worker 0) holding all data for global training",
    "data.file_path": "loading data from one file",
    "data.save_data": "saving the split data",
    "dataloader.type": "other data loaders (FS: 'raw', graph samplers)",
    "model.model_num_per_trainer": "several models per trainer",
    "model.layer": "the layer count of other model types",
    "model.use_bias": "bias switch of other model types",
    "eval.monitoring": "extra monitored quantities",
    "eval.save_data": "saving the evaluation data and predictions",
    "wandb.use": "Weights & Biases logging",
    **FL_ALGO_NOT_IMPLEMENTED,
}


def refuse_unimplemented(cfg: CN) -> None:
    """Raise ``ConfigError`` for the first key of ``_NOT_IMPLEMENTED`` set to a non-default value."""
    defaults = get_default_cfg()
    for key, what in _NOT_IMPLEMENTED.items():
        value, default = _get(cfg, key), _get(defaults, key)
        if same_value(value, default):
            continue
        raise ConfigError(
            f"{key}={value!r} is not implemented here (FederatedScope: {what}); this version "
            f"would silently ignore it. Remove {key} from your YAML / command line or set it "
            f"back to its default (append `{key} {default!r}` to the command); see "
            f"doc/config.md, 'Refused keys'")
    for key, why in ACCEPTED_UNUSED.items():   # loads, but the user should know it does nothing
        value = _get(cfg, key)
        if not same_value(value, _get(defaults, key)):
            logger.info(f"{key}={value!r} is accepted and changes nothing here: {why}")


def _get(cfg: CN, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def expand_env(value: str, key: str) -> str:
    """Expand ``${VAR}``/``$VAR``; an unset variable is an error naming the key and the variable."""
    def sub(m: "re.Match") -> str:
        name = m.group(1) or m.group(2)
        if name not in os.environ:
            raise ConfigError(f"{key}={value!r} references ${{{name}}}, which is not set; "
                              f"export {name}=... or give the path directly")
        return os.environ[name]
    return _ENV_VAR.sub(sub, value)


def finalize(cfg: CN) -> CN:
    """Validate choices/ranges, resolve env vars and derived values; freeze."""
    from federatedscope.core.configs.cfg_data import assert_data_cfg
    assert_data_cfg(cfg)   # FS's deprecated aliases first: they set dataloader.* keys
    refuse_unimplemented(cfg)
    assert_fl_algo_cfg(cfg)  # federate.method and the algorithm keys (cfg_fl_algo.py)
    for key, allowed in _CHOICES.items():
        value = str(_get(cfg, key)).lower()
        if value not in allowed:
            raise ConfigError(f"{key}={_get(cfg, key)!r} is not supported; choose one of {list(allowed)}")
    assert_evaluation_cfg(cfg)  # eval.metrics / report / best key (cfg_evaluation.py)
    if len(cfg.data.splits) != 3 or abs(sum(cfg.data.splits) - 1.0) > 1e-6 or min(cfg.data.splits) < 0:
        raise ConfigError(f"data.splits={list(cfg.data.splits)} must be 3 non-negative fractions summing to 1")
    if not 0.0 < cfg.data.subsample <= 1.0:
        raise ConfigError(f"data.subsample={cfg.data.subsample} must be in (0, 1]")
    if cfg.federate.total_round_num < 1:
        raise ConfigError("federate.total_round_num must be >= 1")
    if cfg.eval.freq < 1:
        raise ConfigError("eval.freq must be >= 1")
    if cfg.dataloader.batch_size < 1:
        raise ConfigError("dataloader.batch_size must be >= 1")
    if cfg.grad.grad_accum_count < 1:
        raise ConfigError(f"grad.grad_accum_count={cfg.grad.grad_accum_count} must be >= 1 "
                          f"(1: a step after every batch)")
    if cfg.grad.grad_accum_count > 1 and str(cfg.federate.method).lower() == "ditto":
        raise ConfigError("grad.grad_accum_count > 1 is not implemented for federate.method "
                          "Ditto (two models step in one round); set grad.grad_accum_count 1")
    if cfg.federate.results_write_timeout <= 0:
        raise ConfigError(f"federate.results_write_timeout={cfg.federate.results_write_timeout} "
                          f"must be > 0 (seconds the results may stay unwritable before exit 4)")
    hb = cfg.distribute.heartbeat_interval
    if hb < 0 or 0 < hb < MIN_HEARTBEAT_INTERVAL:
        raise ConfigError(f"distribute.heartbeat_interval={hb} must be 0 (no heartbeats) or >= "
                          f"{MIN_HEARTBEAT_INTERVAL} s (servers take at most "
                          f"{2 / MIN_HEARTBEAT_INTERVAL:g} per second from a client)")
    hb_timeout, shortest = cfg.distribute.heartbeat_timeout, round(3 * MIN_HEARTBEAT_INTERVAL, 9)
    if hb_timeout < 0 or 0 < hb_timeout < shortest:
        raise ConfigError(f"distribute.heartbeat_timeout={hb_timeout} must be 0 (never mark a "
                          f"silent client lost) or >= {shortest:g} s (the server "
                          f"asks its clients to beat three times per timeout, at most every "
                          f"{MIN_HEARTBEAT_INTERVAL} s)")
    if cfg.federate.mode == "distributed":
        cfg.distribute.use = True
    if cfg.use_gpu:
        import torch
        if not torch.cuda.is_available():
            logger.warning("use_gpu=True but CUDA is not available on this machine; running on CPU")
            cfg.use_gpu = False
    for key in ("distributed_data.shard_path", "distributed_data.manifest", "distribute.token_file",
                "distribute.tls_ca", "distribute.tls_cert", "distribute.tls_key", "data.root"):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value:
            setattr(getattr(cfg, section), name, expand_env(str(value), key))
    if not cfg.expname:
        cfg.expname = f"{cfg.federate.method}_{cfg.model.type}_on_{cfg.data.type}"
        if cfg.federate.mode == "distributed":
            cfg.expname += f"_{_role_name(cfg)}"
        if cfg.expname_tag:
            cfg.expname += "_" + cfg.expname_tag
    cfg.freeze()
    return cfg


def _role_name(cfg: CN) -> str:
    """A distributed process's part of ``expname``, from its config alone (a restarted process
    finds the same directory): the server, a client's own id, else its data_idx partition."""
    if cfg.distribute.role == "server":
        return "server"
    if cfg.distribute.client_id > 0:
        return f"client_{int(cfg.distribute.client_id)}"
    if not cfg.distributed_data.enabled and cfg.distribute.data_idx > 0:
        return f"client_data_idx_{int(cfg.distribute.data_idx)}"
    return "client"


def load_cfg(cfg_file: Optional[str], opts: List[str], overrides: List[str] = ()) -> CN:
    """Defaults <- YAML <- ``key value`` pairs <- ``--override key=value`` items (the global
    config; FS's per-client configs are apart: ``client_cfg.py``)."""
    cfg = global_cfg.clone()
    if cfg_file:
        cfg.merge_from_file(cfg_file)
    cfg.merge_from_list(list(opts))
    from federatedscope.core.cmd_args import override_pairs
    cfg.merge_from_list(override_pairs(list(overrides)))
    return cfg


def _normalize_bool(v: str) -> str:
    # yacs parses values with literal_eval: accept the lower-case spellings users type.
    return {"true": "True", "false": "False"}.get(v.lower(), v)
