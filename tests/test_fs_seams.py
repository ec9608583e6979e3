"""FederatedScope's seams, in process: FS's signatures, convert_data_mode's data_idx job,
get_data's typed record per role, the Client's handler registry, the join's
shard_last_modified, a failed shard refresh that keeps the old shard, and the run directory rule."""
import inspect
import os
import shutil

import pytest
import torch

from federatedscope.core.auxiliaries.data_builder import get_data
from federatedscope.core.auxiliaries.model_builder import get_model
from federatedscope.core.auxiliaries.outdir import resolve_outdir
from federatedscope.core.auxiliaries.runner_builder import get_runner
from federatedscope.core.configs.config import ConfigError, finalize, global_cfg
from federatedscope.core.data.base_data import (ClientData, ClientShard, DataIdxClient,
                                                ServerManifest, StandaloneDataDict)
from federatedscope.core.data.distributed_loader import DistributedShardLoader
from federatedscope.core.data.utils import convert_data_mode
from federatedscope.core.message import MODEL_PARA, REDECLARE, Message
from federatedscope.core.trainers.trainer import get_trainer
from federatedscope.core.workers.client import Client
from federatedscope.cv.dataloader.dataloader import load_cv_dataset
from federatedscope.cv.dataset.femnist_spec import FEMNIST


def _cfg(**keys):
    cfg = global_cfg.clone()
    for dotted, value in keys.items():
        node = cfg
        *path, last = dotted.split("__")
        for part in path:
            node = getattr(node, part)
        setattr(node, last, value)
    return finalize(cfg)


class _Comm:
    def __init__(self):
        self.sent = []

    def send(self, msg):
        self.sent.append(msg)


@pytest.fixture
def shards(femnist_shards, tmp_path):
    """A private copy of the session's 3 shards (a test may damage it)."""
    out = tmp_path / "shards"
    shutil.copytree(os.path.dirname(femnist_shards), out)
    return out


# ------------------------------------------------------------------------ FS's signatures
def test_fs_signatures():
    assert list(inspect.signature(get_data).parameters) == ["config", "client_cfgs"]
    assert list(inspect.signature(convert_data_mode).parameters) == ["data", "config"]
    assert list(inspect.signature(load_cv_dataset).parameters) == ["config", "client_cfgs"]
    assert list(inspect.signature(get_runner).parameters) == [
        "server_class", "client_class", "config", "client_configs", "data"]
    assert list(inspect.signature(DistributedShardLoader).parameters) == [
        "shard_path", "client_id", "streaming", "strict_check", "verify_checksum", "transform",
        "transforms"]
    assert list(inspect.signature(Client.register_handlers).parameters) == [
        "self", "msg_type", "callback_func"]


# ------------------------------------------------------------------ convert_data_mode
def _two_tasks():
    t = lambda n: torch.zeros((n, 28, 28), dtype=torch.uint8)  # noqa: E731
    y = lambda n: torch.zeros(n, dtype=torch.int64)  # noqa: E731
    from federatedscope.core.data.datasets import TensorSplit
    return StandaloneDataDict({k: ClientData(None, TensorSplit(t(k), y(k), lambda x: x))
                               for k in (1, 2)})


def test_convert_standalone_returns_the_dict_itself():
    data = _two_tasks()
    assert convert_data_mode(data, _cfg(federate__mode="standalone")) is data


def test_convert_data_idx_keeps_one_partition_and_refuses_an_invalid_one():
    data = _two_tasks()
    cfg = _cfg(federate__mode="distributed", distribute__role="client", distribute__data_idx=2)
    out = convert_data_mode(data, cfg)
    assert isinstance(out, DataIdxClient) and out.data is data[2] and out.data_idx == 2
    assert out.splits() == (dict(data[2]), None)
    assert out.claimed_id(cfg) == -1          # the server assigns the id in join order
    named = _cfg(federate__mode="distributed", distribute__role="client", distribute__data_idx=2,
                 distribute__client_id=7)
    assert convert_data_mode(data, named).claimed_id(named) == 7
    bad = _cfg(federate__mode="distributed", distribute__role="client", distribute__data_idx=3)
    with pytest.raises(ConfigError, match=r"distribute\.data_idx=3 is not a partition .*"
                                          r"valid: 1\.\.2.*independent of federate\.client_num"):
        convert_data_mode(data, bad)
    server = _cfg(federate__mode="distributed", distribute__role="server")
    out = convert_data_mode(data, server)
    assert out == ServerManifest(None, "")


# ------------------------------------------------------------------- get_data per role
def test_get_data_shard_server_gets_the_manifest_and_the_client_count(shards):
    path = str(shards / "manifest.json")
    cfg = _cfg(federate__mode="distributed", distribute__role="server",
               distributed_data__enabled=True, federate__client_num=0,
               distributed_data__manifest=path, data__root="/nonexistent")
    data, modified = get_data(cfg)
    assert isinstance(data, ServerManifest) and data.path == path
    assert sorted(data.manifest.clients) == [1, 2, 3]
    assert data.manifest.sample_type == FEMNIST.sample_type
    assert modified.federate.client_num == 3 and cfg.federate.client_num == 0


def test_get_data_shard_client_skips_the_centralised_path(shards):
    cfg = _cfg(federate__mode="distributed", distribute__role="client", distribute__client_id=3,
               distributed_data__enabled=True, distributed_data__shard_path=str(shards / "client_3"),
               distribute__data_idx=99,   # never consulted in shard mode
               data__root="/nonexistent")  # the centralised path would fail on this root
    data, _ = get_data(cfg)
    assert isinstance(data, ClientShard) and data.loader.meta.client_id == 3
    assert data.loader.sample_type == FEMNIST.sample_type == "uint8[28,28]"
    splits, loader = data.splits()
    assert loader is data.loader and splits == dict(data.loader.datasets)
    assert data.claimed_id(cfg) == 3


def test_shard_client_without_client_id_claims_its_meta_json_id(shards):
    cfg = _cfg(federate__mode="distributed", distribute__role="client",
               distributed_data__enabled=True, distributed_data__shard_path=str(shards / "client_2"))
    data, _ = get_data(cfg)
    assert data.claimed_id(cfg) == 2 == data.loader.meta.client_id


def test_get_data_standalone_fs_path_and_modified_client_num(femnist_root):
    cfg = _cfg(federate__mode="standalone", distributed_data__enabled=False,
               data__root=femnist_root, federate__client_num=4)
    data, modified = get_data(cfg)
    assert isinstance(data, StandaloneDataDict) and sorted(data) == [1, 2, 3, 4]
    assert all(isinstance(c, ClientData) and c.train_data is c["train"] for c in data.values())
    assert data.manifest is None and data[2].splits() == (dict(data[2]), None)
    assert modified.federate.client_num == 4


def test_get_data_data_idx_client_keeps_its_partition_whatever_client_num(femnist_root):
    """FS's distributed FEMNIST configs: client_num 3, data_idx 4 (a partition, not an id)."""
    cfg = _cfg(federate__mode="distributed", distribute__role="client", federate__client_num=3,
               data__root=femnist_root, distribute__data_idx=4)
    whole, _ = get_data(_cfg(federate__mode="standalone", data__root=femnist_root))
    data, modified = get_data(cfg)
    assert isinstance(data, DataIdxClient) and data.data_idx == 4
    assert torch.equal(data.data["train"].y, whole[4]["train"].y)
    assert modified.federate.client_num == 3
    n = len(whole)
    bad = _cfg(federate__mode="distributed", distribute__role="client", data__root=femnist_root,
               distribute__data_idx=n + 1)
    with pytest.raises(ConfigError, match=rf"distribute\.data_idx={n + 1} .*valid: 1\.\.{n}"):
        get_data(bad)


def test_get_data_standalone_shards_carry_loaders_and_manifest(shards):
    path = str(shards / "manifest.json")
    cfg = _cfg(federate__mode="standalone", distributed_data__enabled=True,
               distributed_data__manifest=path, data__root="/nonexistent")
    data, modified = get_data(cfg)
    assert sorted(data) == [1, 2, 3] and sorted(data.manifest.clients) == [1, 2, 3]
    assert data.manifest_path == path
    assert all(c.loader.meta.client_id == cid for cid, c in data.items())
    assert all(c.splits()[1] is c.loader for c in data.values())
    assert modified.federate.client_num == 3


# ------------------------------------------------------------------ the client worker
def _client(loader, comm):
    cfg = _cfg(federate__mode="distributed", distributed_data__enabled=True,
               dataloader__batch_size=16, model__out_channels=FEMNIST.num_classes)
    trainer = get_trainer(get_model(cfg), dict(loader.datasets), "cpu", cfg)
    return Client(ID=loader.meta.client_id, config=cfg, trainer=trainer, comm=comm, loader=loader)


def test_custom_message_type_and_replaced_default_handler(shards, logs):
    comm = _Comm()
    client = _client(DistributedShardLoader(str(shards / "client_1")), comm)
    seen = []
    client.register_handlers("ask_for_label_count", lambda msg: comm.send(Message(
        "label_count", client.ID, 0, msg.state, {"n": sum(client.loader.label_hist)})))
    client.register_handlers(MODEL_PARA, lambda msg: seen.append(msg.state))
    client.handle(Message("ask_for_label_count", 0, 1, 4, {}))
    client.handle(Message(MODEL_PARA, 0, 1, 7, {}))
    assert [(m.msg_type, m.content) for m in comm.sent] == [
        ("label_count", {"n": client.loader.num_samples["train"]})]
    assert seen == [7]  # the default training handler was replaced
    client.handle(Message("nobody_handles_this", 0, 1, 0, {}))
    assert any("no handler registered for nobody_handles_this" in m for _, m in logs)


def test_join_reports_shard_last_modified(shards):
    loader = DistributedShardLoader(str(shards / "client_1"))
    content = _client(loader, _Comm()).join_message().content
    newest = max(os.stat(os.path.join(shards, "client_1", f)).st_mtime
                 for f in ("meta.json", "train.pt", "val.pt", "test.pt"))
    assert isinstance(content["shard_last_modified"], float)
    assert content["shard_last_modified"] == loader.last_modified == newest


def _batches(src):
    return [(x.clone(), y.clone()) for x, y in src.iter_batches(16, False, 0)]


@pytest.mark.parametrize("streaming", [False, True])
def test_failed_refresh_keeps_the_old_shard_and_tells_the_server(shards, logs, streaming):
    shard = shards / "client_1"
    loader = DistributedShardLoader(str(shard), client_id=1, streaming=streaming)
    comm = _Comm()
    client = _client(loader, comm)
    before = _batches(client.trainer.data["train"])
    decl = loader.declaration().to_dict()
    # A refresh job swaps in other bytes (client 2's train split) by rename; meta.json still
    # describes the old file, so the new shard fails its sha256/size check.
    staged = shards / "staged_train.pt"
    shutil.copy(shards / "client_2" / "train.pt", staged)
    os.replace(staged, shard / "train.pt")
    client.handle(Message(MODEL_PARA, 0, 1, 0, {}, client.trainer.get_state()))
    redeclare = [m for m in comm.sent if m.msg_type == REDECLARE]
    assert len(redeclare) == 1
    assert redeclare[0].content["declaration"] == decl
    assert "train.pt" in redeclare[0].content["refresh_error"]
    trained = [m for m in comm.sent if m.msg_type == MODEL_PARA]
    assert trained and trained[0].content["sample_size"] == decl["num_samples"]["train"]
    errors = [m for lvl, m in logs if lvl == "ERROR"]
    assert any(str(shard) in m and "keeps training on the shard it loaded before" in m
               and "re-create it with" in m for m in errors), errors
    after = _batches(client.trainer.data["train"])  # still the verified bytes
    assert len(after) == len(before) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                             for a, b in zip(after, before))
    # the next round does not repeat the error while the disk stays as it is
    client.handle(Message(MODEL_PARA, 0, 1, 1, {}, client.trainer.get_state()))
    assert len([m for m in comm.sent if m.msg_type == REDECLARE]) == 1


# ------------------------------------------------------------------ the run directory
def test_run_directory_is_fresh_unless_restoring(tmp_path):
    out = str(tmp_path / "exp")
    first = resolve_outdir(out, "job")
    assert first == os.path.join(out, "job")
    with open(os.path.join(first, "eval_results.log"), "w") as f:
        f.write("{}\n")
    second = resolve_outdir(out, "job")
    third = resolve_outdir(out, "job")  # same second: still a directory of its own
    assert len({first, second, third}) == 3
    assert all(os.path.dirname(d) == first and os.path.basename(d).startswith("sub_exp_")
               for d in (second, third))
    missing_ckpt = str(tmp_path / "none.pt")
    assert os.path.dirname(resolve_outdir(out, "job", missing_ckpt)) == first  # not a restore
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"x")
    assert resolve_outdir(out, "job", str(ckpt)) == first  # a restore continues its directory


def test_shard_of_another_dataset_is_refused_by_its_sample_type(shards, monkeypatch):
    import dataclasses
    from federatedscope import register
    from federatedscope.core.data.shard_format import ShardError
    other = dataclasses.replace(FEMNIST, sample_shape=(3, 64, 64), num_classes=40,
                                model_input=(3, 64, 64))
    monkeypatch.setitem(register.dataset_spec_dict, "femnist", other)
    cfg = _cfg(federate__mode="distributed", distribute__role="client", distribute__client_id=1,
               distributed_data__enabled=True, distributed_data__shard_path=str(shards / "client_1"))
    with pytest.raises(ShardError, match=r"sample_type 'uint8\[28,28\]' is not femnist's "
                                         r"'uint8\[3,64,64\]'"):
        get_data(cfg)


def test_per_client_configs_are_merged_for_that_client_only():
    from federatedscope.core.configs.config import CN
    from federatedscope.core.fed_runner import StandaloneRunner
    cfg = _cfg(federate__mode="standalone")
    client_cfgs = CN({"client_2": {"train": {"optimizer": {"lr": 0.5}}}})
    runner = get_runner(server_class=object, client_class=object, config=cfg,
                        client_configs=client_cfgs, data=_two_tasks())
    assert isinstance(runner, StandaloneRunner)
    assert runner._client_cfg(2).train.optimizer.lr == 0.5
    assert runner._client_cfg(1) is cfg and cfg.train.optimizer.lr == 0.1
