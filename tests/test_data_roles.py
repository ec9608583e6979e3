"""FS's data configuration and the role decided once: the deprecated ``data.*`` loader aliases
(warning, then the ``dataloader.*`` value), ``distribute.data_idx`` as a partition index, the
typed record each role gets, the runner's one dispatch on it, and the in-process transport."""
import logging

import pytest
import torch

from federatedscope.core.configs.cfg_data import DEPRECATED_ALIASES, assert_data_cfg
from federatedscope.core.configs.config import ConfigError, finalize, get_default_cfg, load_cfg
from federatedscope.core.data.base_data import (ClientData, ClientShard, DataIdxClient,
                                                ServerManifest)
from federatedscope.core.message import SERVER_ID, Message

# data.<old>: (a non-default value, dataloader.<new>)
ALIAS_VALUES = {
    "loader": ("raw", "type"), "batch_size": (10, "batch_size"), "shuffle": (False, "shuffle"),
    "num_workers": (3, "num_workers"), "drop_last": (True, "drop_last"),
    "walk_length": (5, "walk_length"), "num_steps": (7, "num_steps"), "sizes": ([4, 3], "sizes"),
}


def test_every_fs_alias_is_covered():
    assert {old: new for old, (_, new) in ALIAS_VALUES.items()} == DEPRECATED_ALIASES


@pytest.mark.parametrize("old", sorted(ALIAS_VALUES))
def test_deprecated_alias_warns_and_sets_the_dataloader_key(old, caplog):
    value, new = ALIAS_VALUES[old]
    cfg = load_cfg(None, [f"data.{old}", repr(value)])
    before = get_default_cfg().dataloader[new]
    assert cfg.dataloader[new] == before != value
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        assert_data_cfg(cfg)
    assert cfg.dataloader[new] == value
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"data.{old} is deprecated" in warnings[0]
    assert f"dataloader.{new}={value!r}" in warnings[0]


@pytest.mark.parametrize("old", ["batch_size", "shuffle", "num_workers", "drop_last"])
def test_implemented_aliases_survive_finalize(old, caplog):
    value, new = ALIAS_VALUES[old]
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        cfg = finalize(load_cfg(None, [f"data.{old}", repr(value)]))
    assert cfg.dataloader[new] == value
    assert sum(f"data.{old} is deprecated" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("old", ["loader"])
def test_aliases_of_unimplemented_loader_keys_are_refused_under_their_new_name(old):
    value, new = ALIAS_VALUES[old]
    with pytest.raises(ConfigError, match=rf"dataloader\.{new}=.* is not implemented here"):
        finalize(load_cfg(None, [f"data.{old}", repr(value)]))


def test_default_values_of_the_aliases_warn_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        cfg = finalize(load_cfg(None, ["dataloader.batch_size", "32"]))
    assert cfg.dataloader.batch_size == 32
    assert not any("deprecated" in r.getMessage() for r in caplog.records)


def test_alias_and_new_key_that_disagree_are_an_error_naming_both():
    with pytest.raises(ConfigError, match=r"data\.batch_size=10 .*dataloader\.batch_size=32 "
                                          r"disagree.*remove data\.batch_size"):
        finalize(load_cfg(None, ["data.batch_size", "10", "dataloader.batch_size", "32"]))
    agree = finalize(load_cfg(None, ["data.batch_size", "10", "dataloader.batch_size", "10"]))
    assert agree.dataloader.batch_size == 10


# ------------------------------------------------------------------ data_idx: a partition index
def _client(*pairs):
    return load_cfg(None, ["federate.mode", "distributed", "distribute.role", "client"]
                    + list(pairs))


@pytest.mark.parametrize("idx", [-1, 0])
def test_data_idx_client_below_one_is_refused_before_any_data_is_read(idx):
    with pytest.raises(ConfigError, match=rf"distribute\.data_idx={idx} is not a partition.*"
                                          r"1\.\.number of partitions.*independent of "
                                          r"federate\.client_num"):
        finalize(_client("distribute.data_idx", str(idx), "data.root", "/nonexistent"))


def test_data_idx_is_never_required_where_it_is_not_consulted():
    finalize(_client("distributed_data.enabled", "True"))                  # shard mode
    finalize(load_cfg(None, ["federate.mode", "distributed", "distribute.role", "server"]))
    finalize(load_cfg(None, []))                                            # standalone


def test_data_idx_above_client_num_is_a_valid_partition():
    cfg = finalize(_client("federate.client_num", "3", "distribute.data_idx", "4"))
    assert cfg.distribute.data_idx == 4
    assert cfg.expname.endswith("_client_data_idx_4")   # the FS clients' runs stay apart


def test_expname_names_the_claimed_id_else_the_partition():
    assert finalize(_client("distribute.data_idx", "2", "distribute.client_id", "5")
                    ).expname.endswith("_client_5")
    assert finalize(load_cfg(None, ["federate.mode", "distributed", "distribute.role", "server"])
                    ).expname.endswith("_server")


# ------------------------------------------------------------------ the records and the dispatch
class _Loader:
    def __init__(self, cid):
        self.meta = type("Meta", (), {"client_id": cid})()
        self.datasets = {"train": "t", "test": "e"}


def test_records_answer_splits_and_claimed_id():
    cfg = finalize(_client("distribute.data_idx", "3"))
    named = finalize(_client("distribute.data_idx", "3", "distribute.client_id", "9"))
    shard = ClientShard(_Loader(4))
    assert shard.splits() == ({"train": "t", "test": "e"}, shard.loader)
    assert shard.claimed_id(cfg) == 4 and shard.claimed_id(named) == 9
    part = ClientData(None, train="x", test="z")
    idx = DataIdxClient(part, 3)
    assert idx.splits() == ({"train": "x", "test": "z"}, None)
    assert idx.claimed_id(cfg) == -1 and idx.claimed_id(named) == 9


@pytest.mark.parametrize("role", ["server", "client"])
def test_distributed_runner_dispatches_on_the_record_not_the_config(role, monkeypatch):
    from federatedscope.core.fed_runner import DistributedRunner
    monkeypatch.setattr(DistributedRunner, "_run_server", lambda self: "server")
    monkeypatch.setattr(DistributedRunner, "_run_client", lambda self: "client")
    cfg = finalize(load_cfg(None, ["federate.mode", "distributed", "distribute.role", role,
                                   "distributed_data.enabled", "True"]))
    for data, expected in [(ServerManifest(None, ""), "server"),
                           (ClientShard(_Loader(2)), "client"),
                           (DataIdxClient(ClientData(), 2), "client")]:
        assert DistributedRunner(data, object, object, cfg).run() == expected


def test_local_transport_is_fifo_and_freezes_broadcast_tensors():
    from federatedscope.core.communication.local import LocalBus, LocalClientComm, LocalServerComm
    bus = LocalBus()
    server, clients = LocalServerComm(bus), [LocalClientComm(bus, cid) for cid in (1, 2, 3, 4)]
    for c in reversed(clients):
        c.send(Message("join_in", c.client_id, SERVER_ID))
    live = {"w": torch.ones(3)}
    server.broadcast(Message("model_para", SERVER_ID, -1, 1, {}, live), [1, 2, 3, 4])
    live["w"].add_(5.0)                                   # the server's model moves on
    server.send(Message("finish", SERVER_ID, 2))
    server.send_to_conn(7, Message("refuse", SERVER_ID, -1))
    got = []
    while bus:
        got.append(bus.next())
    assert [(d, c, m.msg_type) for d, c, m in got] == (
        [(SERVER_ID, cid, "join_in") for cid in (4, 3, 2, 1)]
        + [(cid, SERVER_ID, "model_para") for cid in (1, 2, 3, 4)]
        + [(2, SERVER_ID, "finish"), (7, SERVER_ID, "refuse")])
    assert all(torch.equal(m.tensors["w"], torch.ones(3)) for _, _, m in got[4:8])


def test_standalone_run_over_the_local_transport_four_clients_three_rounds(femnist_root, tmp_path):
    """get_data -> StandaloneDataDict -> each client's .splits() -> workers over local.py."""
    import json
    import os
    from federatedscope.core.auxiliaries.data_builder import get_data
    from federatedscope.core.auxiliaries.outdir import update_logger
    from federatedscope.core.auxiliaries.runner_builder import get_runner
    from federatedscope.core.auxiliaries.worker_builder import get_client_cls, get_server_cls
    cfg = load_cfg(None, ["data.root", femnist_root, "federate.client_num", "4",
                          "federate.total_round_num", "3", "model.hidden", "16",
                          "model.out_channels", "62", "data.batch_size", "16",
                          "outdir", str(tmp_path / "exp")])
    update_logger(cfg)
    data, modified = get_data(cfg.clone())
    assert sorted(data) == [1, 2, 3, 4] and modified.federate.client_num == 4
    cfg.defrost()
    cfg.merge_from_other_cfg(modified)
    cfg.freeze()
    assert cfg.dataloader.batch_size == 16                  # the alias reached the trainer's key
    runner = get_runner(data=data, server_class=get_server_cls(cfg),
                        client_class=get_client_cls(cfg), config=cfg.clone())
    assert runner.run() == 0
    lines = [json.loads(line) for line in open(os.path.join(cfg.outdir, "eval_results.log"))]
    assert lines[-1]["Final"] is True and lines[-1]["Round"] == 3
