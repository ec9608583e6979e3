"""FS's per-client configs (``--client_cfg`` and ``client_<id>.*`` pairs): loaded apart from the
global config, every section checked at start naming the file, the section and the key, and each
client trains with its own section (standalone: every client; distributed: the process's own id)
and only that client."""
import os
from types import SimpleNamespace as NS

import pytest
import torch

from federatedscope.core import fed_runner as fr
from federatedscope.core.configs.client_cfg import (check_client_cfgs, check_client_ids,
                                                    load_client_cfgs, source_of,
                                                    split_client_opts)
from federatedscope.core.configs.config import ConfigError, finalize, load_cfg
from federatedscope.core.data.base_data import ClientData, StandaloneDataDict
from federatedscope.core.data.datasets import TensorSplit
from federatedscope.core.workers.client import Client

FIX = " (a section takes the keys of the global config; see doc/config.md)"


def _file(tmp_path, text, name="clients.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_client_pairs_are_split_off_by_key_only():
    own, client = split_client_opts(["seed", "3", "client_2.train.local_update_steps", "4",
                                     "expname", "client_run", "client_10.train.optimizer.lr",
                                     "0.5", "federate.client_num", "12"])
    assert own == ["seed", "3", "expname", "client_run", "federate.client_num", "12"]
    assert client == ["client_2.train.local_update_steps", "4", "client_10.train.optimizer.lr",
                      "0.5"]
    assert split_client_opts(["seed"]) == (["seed"], [])   # merge_from_list names the odd list


def test_file_and_pairs_make_one_tree_the_pairs_winning(tmp_path):
    path = _file(tmp_path, "client_1:\n  train:\n    local_update_steps: 3\n"
                           "client_2:\n  train:\n    optimizer:\n      lr: 0.5\n")
    tree = load_client_cfgs(path, ["client_2.train.optimizer.lr", "0.25",
                                   "client_4.dataloader.shuffle", "false"])
    assert sorted(tree) == ["client_1", "client_2", "client_4"]
    assert tree.client_1.train.local_update_steps == 3
    assert tree.client_2.train.optimizer.lr == 0.25 and tree.client_4.dataloader.shuffle is False
    assert load_client_cfgs("", []) is None
    assert source_of(path, []) == path and source_of("", ["k", "v"]) == "command line"
    assert source_of(path, ["k", "v"]) == f"{path} (and command-line client_<id>.* pairs)"


def _check(tmp_path, text, pairs=()):
    path = _file(tmp_path, text)
    tree = load_client_cfgs(path, list(pairs))
    check_client_cfgs(tree, load_cfg(None, ["federate.client_num", "4"]),
                      source_of(path, list(pairs)))
    return path


@pytest.mark.parametrize("text,pairs,error", [
    ("client_3:\n  train:\n    foo: 1\n", [],
     "{path}: section client_3: Non-existent config key: client_3.train.foo" + FIX),
    ("client_2:\n  train:\n    local_update_steps: many\n", [],
     "{path}: section client_2: Type mismatch (<class 'int'> vs. <class 'str'>) with values (1 vs. "
     "many) for config key: client_2.train.local_update_steps" + FIX),
    ("client_1: {}\n", ["client_1.grad.grad_accum_count", "0"],
     "{path} (and command-line client_<id>.* pairs): section client_1: grad.grad_accum_count=0 "
     "must be >= 1 (1: a step after every batch)"),
    ("client_2:\n  train:\n    optimizer:\n      type: Adam\n      nesterov: true\n", [],
     "{path}: section client_2: train.optimizer.nesterov: torch.optim.Adam takes no argument "
     "'nesterov'"),
    ("client_4:\n  finetune:\n    simple_tuning: true\n", [],
     "{path}: section client_4: finetune.simple_tuning=True is not implemented here"),
    ("clients:\n  client_1: {}\n", [],
     "{path}: top-level key 'clients' is not a client section; FS's per-client config has one "
     "section per client id (1..federate.client_num), e.g. client_1: {{train: "
     "{{local_update_steps: 3}}}}"),
    ("client_0:\n  seed: 2\n", [], "{path}: top-level key 'client_0' is not a client section"),
    ("client_1: 3\n", [], "{path}: section client_1 must be a group of config keys"),
])
def test_a_bad_section_is_refused_naming_file_section_and_key(tmp_path, text, pairs, error):
    path = str(tmp_path / "clients.yaml")
    with pytest.raises(ConfigError) as e:
        _check(tmp_path, text, pairs)
    assert str(e.value).startswith(error.format(path=path)), str(e.value)


def test_good_sections_pass_and_a_missing_file_names_the_option(tmp_path):
    _check(tmp_path, "client_2:\n  train:\n    optimizer:\n      type: Adam\n      betas: "
                     "[0.5, 0.75]\nclient_4:\n  dataloader:\n    batch_size: 8\n",
           ["client_1.train.local_update_steps", "5"])
    missing = str(tmp_path / "none.yaml")
    with pytest.raises(ConfigError) as e:
        load_client_cfgs(missing, [])
    assert str(e.value) == f"--client_cfg config file not found: {missing}"


def test_a_section_for_a_client_the_run_does_not_have_is_refused(tmp_path):
    tree = load_client_cfgs("", ["client_4.seed", "1", "client_5.seed", "2"])
    check_client_ids(tree, 5, "command line")
    check_client_ids(tree, 0, "command line")     # a process that does not know the count
    with pytest.raises(ConfigError) as e:
        check_client_ids(tree, 4, "command line")
    assert str(e.value) == ("command line: section client_5 is for client 5, but this run has "
                            "federate.client_num=4 clients (ids 1..4); remove the section or raise "
                            "federate.client_num")


# ------------------------------------------------------------------ standalone: it takes effect
class _Recording(Client):
    """The real client; each round records (id, steps in its config, samples it trained on,
    whether its uploaded weights equal the ones it received)."""
    log = []

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        client_id, trainer = self.ID, self.trainer
        train = trainer.train

        def recorded(seed):
            before = trainer.get_state(local=False)
            n, state, metrics = train(seed)
            weights = [name for name, _ in trainer.model.named_parameters()]   # not BN stats
            same = all(torch.equal(state[k], before[k]) for k in weights)
            _Recording.log.append((client_id, trainer.cfg.train.local_update_steps,
                                   metrics["train_total"], same))
            return n, state, metrics
        trainer.train = recorded


def _split(seed, n):
    g = torch.Generator().manual_seed(seed)
    return TensorSplit(torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % 3, lambda x: x)


def test_each_client_trains_with_its_own_section_and_no_other(tmp_path):
    from federatedscope.core.auxiliaries.worker_builder import get_server_cls
    raw = load_cfg(None, ["federate.client_num", "4", "federate.total_round_num", "3",
                          "model.input_shape", "[1, 4, 4]", "model.hidden", "8",
                          "model.out_channels", "3", "model.dropout", "0.0",
                          "dataloader.batch_size", "4", "train.local_update_steps", "2",
                          "eval.split", "['test']", "outdir", str(tmp_path / "run")])
    path = _file(tmp_path, "client_2:\n  train:\n    local_update_steps: 3\n"
                           "client_3:\n  train:\n    optimizer:\n      lr: 0.0\n")
    pairs = ["client_4.train.local_update_steps", "1"]
    own = load_client_cfgs(path, pairs)
    check_client_cfgs(own, raw, source_of(path, pairs))
    cfg = finalize(raw)
    cfg.defrost()
    os.makedirs(cfg.outdir)
    cfg.freeze()
    data = StandaloneDataDict({k: ClientData(None, train=_split(k, 16), test=_split(10 + k, 4))
                               for k in (1, 2, 3, 4)})
    _Recording.log = []
    assert fr.StandaloneRunner(data, get_server_cls(cfg), _Recording, cfg, own).run() == 0
    by_client = {}
    for cid, steps, total, same in _Recording.log:
        by_client.setdefault(cid, set()).add((steps, total, same))
    # 3 rounds each; steps x batch 4 samples; only lr 0 (client 3) uploads what it received
    assert by_client == {1: {(2, 8, False)}, 2: {(3, 12, False)}, 3: {(2, 8, True)},
                         4: {(1, 4, False)}}
    assert len(_Recording.log) == 12
    assert cfg.train.local_update_steps == 2 and cfg.train.optimizer.lr == 0.1   # global intact


# ------------------------------------------------------------------ distributed: the own id
def _distributed_client(monkeypatch, claimed, own):
    from federatedscope.core.communication import security
    made = []
    monkeypatch.setattr(fr, "_client_transport",
                        lambda cfg, inbox: NS(address="a:1", close=lambda: None))
    monkeypatch.setattr(fr, "_client_session", lambda *a: None)
    monkeypatch.setattr(fr, "get_model", lambda cfg: ("model", cfg))
    monkeypatch.setattr(security, "client_token", lambda cfg: "")

    def client_cls(ID, config, model, comm, loader, token="", **fs):
        made.append((config, ID, model))
        return NS(ID=ID, refused=False)
    cfg = finalize(load_cfg(None, ["train.local_update_steps", "2", "federate.client_num", "3"]))
    data = NS(splits=lambda: ({}, None), claimed_id=lambda c: claimed)
    assert fr.DistributedRunner(data, object, client_cls, cfg, own).run() == 0
    (got,) = made
    assert got[2] == ("model", got[0])            # the model (and trainer) from the same config
    return got[0], got[1], cfg


def test_a_distributed_client_gets_the_section_of_the_id_it_joins_with(monkeypatch):
    own = load_client_cfgs("", ["client_3.train.local_update_steps", "5",
                                "client_1.train.optimizer.lr", "0.5"])
    cfg3, cid, _ = _distributed_client(monkeypatch, 3, own)
    assert cid == 3 and cfg3.train.local_update_steps == 5 and cfg3.train.optimizer.lr == 0.1
    cfg2, cid, glob = _distributed_client(monkeypatch, 2, own)   # no section: the global config
    assert cid == 2 and cfg2 is glob and cfg2.train.local_update_steps == 2
    cfg1, cid, _ = _distributed_client(monkeypatch, 1, own)      # the first id has its own too
    assert cid == 1 and cfg1.train.optimizer.lr == 0.5 and cfg1.train.local_update_steps == 2


def test_a_data_idx_client_without_an_id_refuses_sections_it_cannot_pick(monkeypatch):
    own = load_client_cfgs("", ["client_1.train.local_update_steps", "5"])
    with pytest.raises(ConfigError):
        _distributed_client(monkeypatch, 0, own)                  # 0 is the server's id: none
    with pytest.raises(ConfigError) as e:
        _distributed_client(monkeypatch, -1, own)
    assert str(e.value) == (
        "per-client configs (--client_cfg / client_<id>.* pairs) are given, but this client has "
        "no id before the server assigns one in join order (data_idx mode, distribute.data_idx="
        "-1); set distribute.client_id to the id whose client_<id> section it should use")
    cfg, cid, glob = _distributed_client(monkeypatch, -1, None)   # none given: as before
    assert cid == -1 and cfg is glob


# ------------------------------------------------------------------ the pairs' own rules
def test_lower_case_true_from_the_command_line_is_a_boolean_in_every_spelling():
    """``client_<id>.key true`` is YAML's spelling; the tree must hold the bool, as the global
    config's pairs do (a string 'true' would fail the type check against shuffle's bool)."""
    tree = load_client_cfgs("", ["client_1.dataloader.shuffle", "true",
                                 "client_2.dataloader.shuffle", "TRUE",
                                 "client_3.dataloader.shuffle", "False",
                                 "client_4.dataloader.shuffle", "true_ish"])
    got = [tree[f"client_{c}"].dataloader.shuffle for c in (1, 2, 3, 4)]
    assert got == [True, True, False, "true_ish"]
    assert [type(v) for v in got] == [bool, bool, bool, str]


def test_a_pair_below_a_value_is_refused_naming_the_key_and_the_value():
    with pytest.raises(ConfigError) as e:
        load_client_cfgs("", ["client_4.seed", "3", "client_4.seed.lr", "0.5"])
    assert str(e.value) == "command line: client_4.seed.lr: seed is a value, not a group of keys"


@pytest.mark.parametrize("pairs,clients,source,text", [
    (["client_1.seed", "1", "client_2.seed", "2"], 1, "clients.yaml",
     "clients.yaml: section client_2 is for client 2, but this run has federate.client_num=1 "
     "clients (ids 1..1)"),
    (["client_4.seed", "1", "client_x.seed", "2"], 6,
     "run.yaml (and command-line client_<id>.* pairs)",
     "run.yaml (and command-line client_<id>.* pairs): top-level key 'client_x' is not a client "
     "section"),
])
def test_the_id_check_refuses_a_section_naming_its_source(pairs, clients, source, text):
    with pytest.raises(ConfigError) as e:
        check_client_ids(load_client_cfgs("", pairs), clients, source)
    assert str(e.value).startswith(text), str(e.value)


def test_a_section_the_checks_accept_takes_effect_or_is_refused():
    tree = load_client_cfgs("", ["client_01.train.local_update_steps", "5",
                                 "client_3.train.local_update_steps", "4"])
    raw = load_cfg(None, ["federate.client_num", "4"])
    try:
        check_client_cfgs(tree, raw, "command line")
        check_client_ids(tree, 4, "command line")
    except ConfigError as e:
        assert str(e).startswith("command line: top-level key 'client_01' is not a client "
                                 "section; write client_1; FS's per-client config"), str(e)
        return
    runner = NS(client_configs=tree, cfg=finalize(raw))
    steps = {cid: fr.BaseRunner._client_cfg(runner, cid).train.local_update_steps
             for cid in (1, 2, 3, 4)}
    assert steps == {1: 5, 2: 1, 3: 4, 4: 1}
