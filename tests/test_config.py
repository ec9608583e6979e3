import glob
import logging
import os

import pytest

from federatedscope.core.cmd_args import parse_args
from federatedscope.core.configs.config import ConfigError, finalize, get_default_cfg, load_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every key of FS's published FEMNIST configs that this project promises to load and act on.
FS_KEYS = """use_gpu device seed outdir expname early_stop.patience
federate.mode federate.client_num federate.total_round_num federate.sample_client_num
federate.sample_client_rate federate.make_global_eval federate.online_aggr federate.method
federate.save_to federate.restore_from federate.join_in_info
distribute.use distribute.server_host distribute.server_port distribute.client_host
distribute.client_port distribute.role distribute.data_idx distribute.grpc_max_send_message_length
distribute.grpc_max_receive_message_length distribute.grpc_compression
data.root data.type data.splits data.subsample data.transform data.seed
dataloader.batch_size dataloader.shuffle dataloader.num_workers
model.type model.hidden model.out_channels model.dropout model.input_shape
train.local_update_steps train.batch_or_epoch train.optimizer.type train.optimizer.lr
train.optimizer.momentum train.optimizer.weight_decay grad.grad_clip criterion.type trainer.type
eval.freq eval.metrics eval.report eval.best_res_update_round_wise_key eval.count_flops
distributed_data.enabled distributed_data.shard_path distributed_data.manifest
distributed_data.streaming distributed_data.strict_check distributed_data.verify_checksum
distribute.client_id""".split()


@pytest.mark.parametrize("key", FS_KEYS)
def test_every_fs_key_exists(key):
    node = get_default_cfg()
    for part in key.split("."):
        assert hasattr(node, part), key
        node = getattr(node, part)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "scripts", "**", "*.yaml"),
                                               recursive=True)))
def test_shipped_configs_load(path):
    cfg = finalize(load_cfg(path, []))
    assert cfg.model.type == "convnet2" and cfg.data.type == "femnist"


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("federate:\n  totl_round_num: 3\n")
    with pytest.raises(ConfigError, match="totl_round_num"):
        load_cfg(str(bad), [])
    with pytest.raises(ConfigError, match="no_such"):
        load_cfg(None, ["no_such.key", "1"])


def test_cli_pairs_and_overrides_win(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("federate:\n  total_round_num: 3\ndistributed_data:\n  enabled: true\n")
    cfg = load_cfg(str(y), ["federate.total_round_num", "7", "distributed_data.enabled", "False"])
    assert cfg.federate.total_round_num == 7 and cfg.distributed_data.enabled is False
    cfg = load_cfg(str(y), [], ["distributed_data.enabled=false", "federate.total_round_num=9"])
    assert cfg.distributed_data.enabled is False and cfg.federate.total_round_num == 9


def test_cli_value_starting_with_client_parses():
    # upstream FS crashes here: argparse abbreviates 'client...' to --client_cfg
    args = parse_args(["--cfg", "s.yaml", "distribute.role", "client", "expname", "client_1",
                       "--override", "seed=3"])
    assert args.opts == ["distribute.role", "client", "expname", "client_1"]
    assert args.override == ["seed=3"]
    cfg = load_cfg(None, args.opts, args.override)
    assert cfg.distribute.role == "client" and cfg.expname == "client_1" and cfg.seed == 3


def test_bad_choices_named():
    for key, value in [("federate.mode", "'cloud'"), ("model.type", "'resnet'"),
                       ("eval.metrics", "['f1x']"), ("data.splits", "[0.5,0.5,0.5]")]:
        with pytest.raises(ConfigError, match=key.split(".")[0]):
            finalize(load_cfg(None, [key, value]))


def test_use_gpu_without_cuda_warns_once(caplog):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        cfg = finalize(load_cfg(None, ["use_gpu", "True"]))
    assert cfg.use_gpu is False
    assert sum("CUDA is not available" in r.message for r in caplog.records) == 1


def test_env_var_in_shard_path(monkeypatch):
    monkeypatch.setenv("FS_SHARD_PATH", "/tmp/shards/client_2")
    cfg = finalize(load_cfg(None, ["distributed_data.shard_path", "${FS_SHARD_PATH}"]))
    assert cfg.distributed_data.shard_path == "/tmp/shards/client_2"
    monkeypatch.delenv("FS_SHARD_PATH")
    with pytest.raises(ConfigError, match="FS_SHARD_PATH"):
        finalize(load_cfg(None, ["distributed_data.shard_path", "${FS_SHARD_PATH}"]))
