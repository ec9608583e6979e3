"""FS's registry and the builders that consult it, unit by unit, in process, against values worked
out by hand: the registry's lazy load of the built-in packages and its order (a package's own
callables before the built-ins'), ``get_model``/``get_data``/``get_aggregator``/
``get_client_cls``/``get_server_cls``/``get_runner`` (first answer that is not None, the
fall-back, the errors that name the key to set), and the small helpers of ``auxiliaries/utils``
(seeding, logging, atomic writes). Shards and manifests are written here with the shard format's
own writers (4 clients), not by the shard tool's process.
"""
import inspect
import logging
import os
import random
import re
import stat
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from federatedscope import register
from federatedscope.core.aggregators.fedavg import ClientsAvgAggregator, OnlineClientsAvgAggregator
from federatedscope.core.aggregators.fedopt import FedOptimizer
from federatedscope.core.aggregators.robust import RobustAggregator, RobustArgs
from federatedscope.core.auxiliaries import aggregator_builder as ab
from federatedscope.core.auxiliaries import data_builder as db
from federatedscope.core.auxiliaries import model_builder as mb
from federatedscope.core.auxiliaries import utils
from federatedscope.core.auxiliaries.runner_builder import get_runner
from federatedscope.core.auxiliaries.worker_builder import get_client_cls, get_server_cls
from federatedscope.core.configs.config import CN, ConfigError, global_cfg
from federatedscope.core.data import shard_format as sf
from federatedscope.core.data.base_data import (ClientData, ClientShard, ServerManifest,
                                                StandaloneDataDict)
from federatedscope.core.data.shard_format import split_file
from federatedscope.core.fed_runner import DistributedRunner, StandaloneRunner
from federatedscope.core.workers.client import Client
from federatedscope.core.workers.server import Server


def _cfg(**keys):
    """The default config with ``a__b=value`` keys set (not finalized: the builders' own checks
    are what is under test)."""
    cfg = global_cfg.clone()
    cfg.defrost()
    for dotted, value in keys.items():
        node = cfg
        *path, last = dotted.split("__")
        for part in path:
            node = getattr(node, part)
        setattr(node, last, value)
    return cfg


# =============================================================================== the registry
@pytest.fixture
def fresh_load(monkeypatch):
    """The built-in packages not loaded yet; importing one is recorded, not done."""
    imported = []
    monkeypatch.setattr(register, "_builtins_state", {"loaded": False})
    monkeypatch.setattr(register, "importlib", NS(import_module=imported.append))
    return imported


READS = [
    ("getitem", lambda r: r["a"], 1),
    ("contains", lambda r: "a" in r, True),
    ("iter", lambda r: list(iter(r)), ["a", "b"]),
    ("len", len, 2),
    ("get", lambda r: r.get("zz", 7), 7),
    ("get_present", lambda r: r.get("b", 7), 2),
    ("get_no_default", lambda r: r.get("zz"), None),
    ("keys", lambda r: list(r.keys()), ["a", "b"]),
    ("values", lambda r: list(r.values()), [1, 2]),
    ("items", lambda r: list(r.items()), [("a", 1), ("b", 2)]),
]


@pytest.mark.parametrize("name,read,want", READS, ids=[r[0] for r in READS])
def test_every_read_of_a_registry_loads_the_builtin_packages_once(fresh_load, name, read, want):
    reg = register.Registry()
    reg["a"], reg["b"] = 1, 2            # writes load nothing
    assert fresh_load == []
    assert read(reg) == want
    assert fresh_load == list(register.BUILTIN_PACKAGES) == ["federatedscope.cv",
                                                             "federatedscope.nlp"]
    assert read(reg) == want             # the second read imports nothing more
    assert fresh_load == ["federatedscope.cv", "federatedscope.nlp"]
    assert register._builtins_state == {"loaded": True}


def test_loaded_is_set_before_the_imports(monkeypatch):
    seen = []
    state = {"loaded": False}
    monkeypatch.setattr(register, "_builtins_state", state)
    monkeypatch.setattr(register, "importlib",
                        NS(import_module=lambda name: seen.append((name, dict(state)))))
    register.load_builtin_packages()
    # a package's own registrations read the registries: the load must not start again
    assert seen == [("federatedscope.cv", {"loaded": True}),
                    ("federatedscope.nlp", {"loaded": True})]


def _defined_in(module_name, tag):
    def fn(*args):
        return tag
    fn.__module__ = module_name
    return fn


@pytest.mark.parametrize("module_name,builtin", [
    ("federatedscope.cv", True), ("federatedscope.cv.model.cnn", True),
    ("federatedscope.nlp.trainer.trainer", True), ("federatedscope.core", True),
    ("federatedscope.core.trainers.trainer", True),
    ("federatedscope.contrib.model.my_cnn", False),      # FS's place for a user's own code
    ("federatedscope.cvx", False), ("federatedscope.nlpx.a", False),
    ("federatedscope.corex", False), ("federatedscope", False), ("my_pkg.federatedscope.cv", False),
    ("fs_user_script", False), (None, False)])
def test_builtin_means_defined_in_the_trees_own_packages(module_name, builtin):
    assert register.is_builtin(_defined_in(module_name, 0)) is builtin
    for plain in (object(), 5, "federatedscope.cv", None):   # no __module__ of their own
        assert register.is_builtin(plain) is False
    assert register.BUILTIN_MODULES == ("federatedscope.cv", "federatedscope.nlp",
                                        "federatedscope.core")


def test_a_packages_keys_are_asked_before_the_builtin_ones_in_registration_order(fresh_load):
    """FS asks what a package registered before its own built-in types: a package's callable
    for ``model.type convnet2`` under a key of its own must win over the built-in one."""
    reg = register.Registry()
    cv1, cv2 = _defined_in("federatedscope.cv.a", "cv1"), _defined_in("federatedscope.cv.b", "cv2")
    core = _defined_in("federatedscope.core.trainers.trainer", "core")
    register.register("cv1", cv1, reg)
    register.register("mine", _defined_in("pkg", "m1"), reg)
    register.register("core", core, reg)                 # a built-in registered late: last
    register.register("yours", _defined_in("pkg", "y1"), reg)
    register.register("cv2", cv2, reg)
    register.register("theirs", _defined_in("federatedscope.contrib", "t1"), reg)
    assert reg.builtin == {"cv1", "core", "cv2"}
    assert list(reg) == ["mine", "yours", "theirs", "cv1", "core", "cv2"]
    assert [f() for f in reg.values()] == ["m1", "y1", "t1", "cv1", "core", "cv2"]
    # overwriting a key keeps its place (a built-in replaced in place stays among the built-ins)
    register.register("yours", _defined_in("pkg", "y2"), reg)
    register.register("cv1", _defined_in("pkg", "cv1b"), reg)
    assert [f() for f in reg.values()] == ["m1", "y2", "t1", "cv1b", "core", "cv2"]
    assert reg.builtin == {"cv1", "core", "cv2"}


def test_a_plain_dict_registry_keeps_insertion_order():
    d = {}
    register.register("b", 2, d)
    register.register("a", 1, d)
    assert list(d.items()) == [("b", 2), ("a", 1)]


def test_overwriting_a_key_with_another_callable_warns_naming_the_key(logs):
    reg = register.Registry()

    def first():
        pass

    def second():
        pass
    register.register("my_cnn", first, reg)
    register.register("my_cnn", first, reg)        # the same callable again: no warning
    assert logs == []
    register.register("my_cnn", second, reg)
    assert reg["my_cnn"] is second
    assert logs == [("WARNING",
                     "Registry: key 'my_cnn' is already registered; overwritten")]


REGISTRARS = [("register_data", "data_dict"), ("register_model", "model_dict"),
              ("register_trainer", "trainer_dict"), ("register_worker", "worker_dict"),
              ("register_criterion", "criterion_dict"), ("register_splitter", "splitter_dict"),
              ("register_scheduler", "scheduler_dict"),
              ("register_aggregator", "aggregator_dict")]


@pytest.mark.parametrize("fn,dict_name", REGISTRARS)
def test_each_register_function_stores_into_its_own_registry_first(fn, dict_name, monkeypatch):
    registrar = getattr(register, fn)
    assert registrar.__name__ == registrar.__qualname__ == fn
    target = getattr(register, dict_name)
    before = {n: list(getattr(register, n)) for _, n in REGISTRARS}

    def mine(*args):
        return None
    registrar("unit_test_key", mine)
    try:
        assert target["unit_test_key"] is mine
        assert list(target)[0] == "unit_test_key"            # asked before the built-ins
        for _, n in REGISTRARS:
            if n != dict_name:
                assert list(getattr(register, n)) == before[n]
    finally:
        dict.pop(target, "unit_test_key")


def test_a_registrar_registers_into_its_dict_and_warns_on_an_overwrite(logs):
    d = register.Registry()
    registrar = register._registrar("register_unit_kind", d)
    assert registrar.__name__ == registrar.__qualname__ == "register_unit_kind"
    first, second = _defined_in("pkg", 1), _defined_in("pkg", 2)
    registrar("alpha", first)
    registrar("beta", second)
    assert list(d.items()) == [("alpha", first), ("beta", second)]
    registrar("alpha", second)
    assert d["alpha"] is second and logs == [
        ("WARNING", "Registry: key 'alpha' is already registered; overwritten")]


def test_dataset_specs_are_registered_under_the_lower_case_name(monkeypatch):
    spec = object()
    monkeypatch.delitem(register.dataset_spec_dict, "unit_mnist", raising=False)
    register.register_dataset_spec("Unit_MNIST", spec)
    try:
        assert register.dataset_spec_dict["unit_mnist"] is spec
        assert "Unit_MNIST" not in register.dataset_spec_dict
    finally:
        dict.pop(register.dataset_spec_dict, "unit_mnist")


# ================================================================================== get_model
class _Tagged(nn.Module):
    def __init__(self, tag):
        super().__init__()
        self.tag = tag


@pytest.fixture
def models(monkeypatch):
    """A model registry of three callables, each recording what it was asked."""
    asked = []

    def only(model_type, tag):
        def build(model_cfg, shape):
            asked.append((tag, model_cfg.type, shape))
            return _Tagged(tag) if model_cfg.type == model_type else None
        return build
    reg = {"a": only("mlp_a", "A"), "b": only("shared", "B"), "c": only("shared", "C")}
    monkeypatch.setattr(register, "model_dict", reg)
    return asked


def test_get_model_takes_the_first_answer_that_is_not_none_in_registry_order(models):
    cfg = _cfg(model__type="shared", model__input_shape=[3, 32, 32])
    model = mb.get_model(cfg)
    assert model.tag == "B"                                 # C would also answer: not asked
    assert models == [("A", "shared", (3, 32, 32)), ("B", "shared", (3, 32, 32))]


def test_get_model_without_a_builder_names_the_type_and_the_registered_keys(models):
    cfg = _cfg(model__type="resnet18", model__input_shape=[28, 28])
    with pytest.raises(ConfigError) as ei:
        mb.get_model(cfg)
    assert str(ei.value) == ("model.type='resnet18' has no registered builder; registered: "
                             "['a', 'b', 'c'] (a package adds one with "
                             "federatedscope.register.register_model)")
    assert [a[0] for a in models] == ["A", "B", "C"]


def test_the_builtin_convnet2_builds_from_the_spec_shape_and_a_package_can_take_it_over():
    cfg = _cfg(model__type="convnet2", data__type="femnist", model__out_channels=62,
               model__hidden=48)
    model = mb.get_model(cfg)
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 62)
    mine = _Tagged("mine")
    register.register_model("unit_convnet2", lambda mc, shape: mine if mc.type == "convnet2"
                            else None)
    try:
        assert mb.get_model(cfg) is mine
    finally:
        dict.pop(register.model_dict, "unit_convnet2")
    assert mb.get_model(cfg) is not mine


@pytest.mark.parametrize("given_shape,want", [
    ([28, 28], (1, 28, 28)),             # [height, width]: one channel
    ([3, 32, 32], (3, 32, 32)),
    (("5", "7"), (1, 5, 7)),             # YAML may give strings
    ([2, 9, 11], (2, 9, 11)),
])
def test_model_input_shape_from_the_config(given_shape, want):
    assert mb.input_shape(_cfg(model__input_shape=given_shape, data__type="no_such")) == want


@pytest.mark.parametrize("bad", [[784], [1, 3, 32, 32]])
def test_a_model_input_shape_of_other_length_is_refused_naming_the_key(bad):
    with pytest.raises(ConfigError) as ei:
        mb.input_shape(_cfg(model__input_shape=bad))
    key = "model.input_shape"
    assert str(ei.value) == f"{key}={bad} must be [channels, height, width] or [height, width]"


def test_model_input_shape_from_the_datasets_spec_else_an_error_naming_the_fix():
    assert mb.input_shape(_cfg(data__type="femnist")) == (1, 28, 28)
    assert mb.input_shape(_cfg(data__type="cifar10")) == (3, 32, 32)
    with pytest.raises(ConfigError) as ei:
        mb.input_shape(_cfg(data__type="unit_nope"))
    text = str(ei.value)
    assert text.startswith("cannot infer the model input shape: ")
    assert "unit_nope" in text and text.endswith("; set model.input_shape")
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


def test_count_flops_counts_two_per_multiply_accumulate_of_conv_and_linear():
    # input (2, 10, 12) -> conv1 (4, 8, 10), 3x3x2 MACs per output -> conv2 kernel (3, 2),
    # 4 / 2 groups = 2 input channels per output: (6, 6, 9) -> 9 -> 3
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, (3, 2), groups=2),
                          nn.Flatten(), nn.Linear(6 * 6 * 9, 9), nn.Linear(9, 3))
    model.train()
    conv1 = 2 * (3 * 3 * 2) * (4 * 8 * 10)
    conv2 = 2 * (3 * 2 * 2) * (6 * 6 * 9)
    lin = 2 * (6 * 6 * 9) * 9 + 2 * 9 * 3
    flops = mb.count_flops(model, (2, 10, 12))
    assert flops == conv1 + conv2 + lin and type(flops) is int
    assert model.training                                   # put back as it was
    model.eval()
    assert mb.count_flops(model, (2, 10, 12)) == conv1 + conv2 + lin
    assert not model.training
    # the hooks are gone: a forward pass afterwards counts nothing more
    assert all(not m._forward_hooks for m in model.modules())


# =================================================================================== get_data
def _clients(ids):
    return StandaloneDataDict({c: ClientData(None, train=f"train_{c}") for c in ids})


@pytest.fixture
def loaders(monkeypatch):
    """A data registry of three loaders: femnist-only, one that answers every type, a third."""
    asked = []

    def femnist_only(config, client_cfgs):
        asked.append(("femnist_only", config.data.type, client_cfgs))
        return (_clients([1, 2, 3, 4, 5, 6]), config) if config.data.type == "femnist" else None

    def every(config, client_cfgs):
        asked.append(("every", config.data.type, client_cfgs))
        return _clients([1, 2, 3, 4, 5]), config

    def never(config, client_cfgs):
        asked.append(("never", config.data.type, client_cfgs))
        return _clients([9]), config
    monkeypatch.setattr(register, "data_dict", {"femnist": femnist_only, "every": every,
                                                "zz_never": never})
    return asked


@pytest.mark.parametrize("client_num,kept", [(4, [1, 2, 3, 4]), (0, [1, 2, 3, 4, 5, 6]),
                                             (6, [1, 2, 3, 4, 5, 6]), (9, [1, 2, 3, 4, 5, 6]),
                                             (5, [1, 2, 3, 4, 5]), (1, [1])])
def test_standalone_fs_path_keeps_the_first_client_num_partitions(loaders, client_num, kept):
    cfg = _cfg(federate__mode="standalone", federate__client_num=client_num)
    cfg.freeze()
    data, modified = db.get_data(cfg, client_cfgs="per-client")
    assert isinstance(data, StandaloneDataDict) and sorted(data) == kept
    assert all(data[c]["train"] == f"train_{c}" for c in kept)
    assert modified.federate.client_num == len(kept)
    assert cfg.federate.client_num == client_num            # the caller's config is untouched
    assert loaders == [("femnist_only", "femnist", "per-client")]


def test_keep_first_drops_the_highest_ids_whatever_the_insertion_order():
    data = StandaloneDataDict({c: ClientData() for c in (5, 2, 7, 1, 3)})
    db.keep_first(data, 3)
    assert sorted(data) == [1, 2, 3]


def test_load_dataset_asks_each_loader_until_one_answers(loaders):
    cfg = _cfg(data__type="celeba", federate__mode="standalone", federate__client_num=3)
    data, modified = db.get_data(cfg)
    assert sorted(data) == [1, 2, 3]              # `every` answered: 5 partitions, 3 kept
    assert modified.federate.client_num == 3
    assert loaders == [("femnist_only", "celeba", None), ("every", "celeba", None)]


def test_a_data_type_nobody_loads_names_the_type_and_the_registered_loaders(monkeypatch):
    monkeypatch.setattr(register, "data_dict", {"zeta": lambda c, cc: None,
                                                "alpha": lambda c, cc: None})
    with pytest.raises(ConfigError) as ei:
        db.load_dataset(_cfg(data__type="unit_mnist"))
    assert str(ei.value) == ("data.type='unit_mnist' has no registered loader; registered: "
                             "['alpha', 'zeta'] (a package adds one with "
                             "federatedscope.register.register_data)")


def test_a_data_idx_client_on_the_fs_path_gets_its_partition(loaders):
    cfg = _cfg(federate__mode="distributed", distribute__role="client", distribute__data_idx=5,
               federate__client_num=2)
    data, modified = db.get_data(cfg)
    assert data.data_idx == 5 and data.data["train"] == "train_5"
    assert modified.federate.client_num == 2                # not a standalone run: unchanged


# ------------------------------------------------------------------ shard mode (4 real shards)
COUNTS = {"train": 8, "val": 2, "test": 4}
NCLS = 62


def _split(path, n, seed):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    y = torch.from_numpy(((np.arange(n) * 7 + seed) % NCLS).astype(np.int64))
    split_file.write_split(path, x, y)
    return sf.FileEntry(os.path.getsize(path), split_file.sha256_file(path))


def _write_shard(base, cid):
    d = base / f"client_{cid}"
    d.mkdir()
    counts = {s: n + cid for s, n in COUNTS.items()}   # each client its own sizes
    files, hist = {}, {}
    for i, (s, n) in enumerate(counts.items()):
        files[f"{s}.pt"] = _split(str(d / f"{s}.pt"), n, 10 * cid + i)
        ys = (np.arange(n) * 7 + 10 * cid + i) % NCLS
        hist[s] = np.bincount(ys, minlength=NCLS).tolist()
    meta = sf.ShardMeta(cid, "femnist", [f"w{cid}"], counts, hist, files, NCLS, [28, 28])
    meta.fingerprint = sf.compute_fingerprint(files, None)
    sf.write_meta(str(d), meta)
    return sf.ManifestEntry(cid, f"client_{cid}", dict(counts), meta.fingerprint,
                            hist["train"])


@pytest.fixture
def shard_set(tmp_path):
    """Clients 2, 4, 5, 7 (ids need not be 1..N), FEMNIST's sample type, and their manifest."""
    base = tmp_path / "set"
    base.mkdir()
    entries = {c: _write_shard(base, c) for c in (7, 2, 5, 4)}
    manifest = sf.Manifest("femnist", "writer", 3, [0.6, 0.2, 0.2], {}, entries, NCLS,
                           "uint8[28,28]")
    path = str(base / "manifest.json")
    sf.write_manifest(path, manifest)
    return base, path


def test_standalone_shard_simulation_loads_every_manifest_client_through_its_loader(shard_set):
    base, path = shard_set
    cfg = _cfg(federate__mode="standalone", distributed_data__enabled=True,
               distributed_data__manifest=path, federate__client_num=2,
               data__root="/nonexistent")
    client_cfgs = CN({"client_5": {"train": {"optimizer": {"lr": 0.25}}}})
    data, modified = db.get_data(cfg, client_cfgs)
    assert isinstance(data, StandaloneDataDict) and list(data) == [2, 4, 5, 7]
    assert data.manifest_path == path and sorted(data.manifest.clients) == [2, 4, 5, 7]
    assert modified.federate.client_num == 4                # every manifest client, not 2
    for cid, client in data.items():
        assert client.loader.meta.client_id == cid
        assert client.loader.shard_path == str(base / f"client_{cid}")
        assert len(client["train"]) == COUNTS["train"] + cid
        assert client.splits()[1] is client.loader
    assert data[5].client_cfg.train.optimizer.lr == 0.25
    assert all(data[c].client_cfg is None for c in (2, 4, 7))
    assert db.get_data(cfg)[0][4].client_cfg is None        # no per-client configs at all


def test_standalone_shard_simulation_refuses_an_entry_pointing_at_another_clients_shard(
        shard_set):
    from federatedscope.core.data.shard_format import ShardError
    base, path = shard_set
    manifest = sf.read_manifest(path)
    manifest.clients[4].shard_path = "client_5"
    sf.write_manifest(path, manifest)
    cfg = _cfg(federate__mode="standalone", distributed_data__enabled=True,
               distributed_data__manifest=path)
    with pytest.raises(ShardError) as ei:
        db.get_data(cfg)
    meta = base / "client_5" / "meta.json"
    assert str(ei.value) == (f"{meta} belongs to client 5, but this process is client 4; point "
                             f"distributed_data.shard_path at client_4's shard or fix "
                             f"distribute.client_id")


def test_standalone_shard_simulation_without_a_manifest_names_both_fixes():
    cfg = _cfg(federate__mode="standalone", distributed_data__enabled=True)
    with pytest.raises(ConfigError) as ei:
        db.get_data(cfg)
    assert str(ei.value) == ("standalone simulation of shards needs distributed_data.manifest "
                             "(or set distributed_data.enabled False for FS's data path)")


@pytest.mark.parametrize("client_num,want", [(0, 4), (-1, 4), (1, 1), (3, 3), (9, 9)])
def test_shard_server_reads_only_the_manifest_and_counts_its_clients_when_unset(
        shard_set, logs, client_num, want):
    base, path = shard_set
    os.remove(base / "client_2" / "train.pt")           # a server opens no shard file
    cfg = _cfg(federate__mode="distributed", distribute__role="server",
               distributed_data__enabled=True, distributed_data__manifest=path,
               federate__client_num=client_num)
    data, modified = db.get_data(cfg)
    assert isinstance(data, ServerManifest) and data.path == path
    assert sorted(data.manifest.clients) == [2, 4, 5, 7]
    assert modified.federate.client_num == want and cfg.federate.client_num == client_num
    assert ("INFO", "Server: distributed_data.enabled — no dataset is opened on the "
                          "server") in logs


def test_shard_server_without_a_manifest_has_none(logs):
    cfg = _cfg(federate__mode="distributed", distribute__role="server",
               distributed_data__enabled=True, federate__client_num=0)
    data, modified = db.get_data(cfg)
    assert data == ServerManifest(None, "") and modified.federate.client_num == 0


def test_shard_client_loads_its_own_shard_and_claims_its_id(shard_set):
    base, _ = shard_set
    cfg = _cfg(federate__mode="distributed", distribute__role="client", distribute__client_id=5,
               distributed_data__enabled=True, distributed_data__shard_path=str(base / "client_5"),
               data__root="/nonexistent", federate__client_num=3)
    data, modified = db.get_data(cfg)
    assert isinstance(data, ClientShard) and data.loader.meta.client_id == 5
    assert data.loader.num_samples == {s: n + 5 for s, n in COUNTS.items()}
    assert modified.federate.client_num == 3


def test_a_shard_of_another_sample_type_is_refused_naming_both_fixes(shard_set, monkeypatch):
    import dataclasses
    from federatedscope.core.data.shard_format import ShardError
    base, path = shard_set
    femnist = register.dataset_spec_dict["femnist"]
    monkeypatch.setitem(register.dataset_spec_dict, "femnist",
                        dataclasses.replace(femnist, sample_shape=(3, 32, 32)))
    shard = str(base / "client_4")
    cfg = _cfg(federate__mode="distributed", distribute__role="client", distribute__client_id=4,
               distributed_data__enabled=True, distributed_data__shard_path=shard)
    with pytest.raises(ShardError) as ei:
        db.get_data(cfg)
    assert str(ei.value) == (f"{shard}/meta.json: sample_type 'uint8[28,28]' is not femnist's "
                             f"'uint8[3,32,32]'; point distributed_data.shard_path at a femnist "
                             f"shard or set data.type to its dataset")
    sim = _cfg(federate__mode="standalone", distributed_data__enabled=True,
               distributed_data__manifest=path)
    with pytest.raises(ShardError, match=r"client_2/meta.json: sample_type 'uint8\[28,28\]'"):
        db.get_data(sim)


# ============================================================================ get_aggregator
def _agg_cfg(rule="fedavg", f=0, online=False, num=-1, rate=-1.0, method="FedAvg", bft=None,
             fedopt=None, ratio=2.0):
    """A config as a namespace: the keys get_aggregator reads, FedOpt's only when given."""
    cfg = NS(seed=5, federate=NS(method=method, online_aggr=online, sample_client_num=num,
                                 sample_client_rate=rate),
             aggregator=NS(robust_rule=rule, byzantine_node_num=f, max_sample_ratio=ratio,
                           BFT_args=dict(bft or {})),
             personalization=NS(local_param=[]))
    if fedopt is not None:
        cfg.fedopt = fedopt
    return cfg


@pytest.mark.parametrize("num,rate,expected,want", [
    (4, -1.0, 10, 4), (12, -1.0, 10, 10), (10, -1.0, 10, 10), (1, -1.0, 10, 1),
    (-1, 0.45, 10, 4),             # int(4.5)
    (-1, 0.05, 10, 1),             # never below one
    (-1, 0.5, 9, 4),
    (0, 0.0, 7, 7), (-1, -1.0, 6, 6),
    (3, 0.9, 10, 9),               # FS: a valid rate wins over a count
    (3, 1.0, 10, 10), (-1, 1.5, 10, 10),   # a rate above 1 is not a rate: every client
    (3, 1.5, 10, 3),               # ... and a valid count then applies
    (-1, 0.3, 200, 60),
])
def test_clients_per_round_follows_the_sampling_keys(num, rate, expected, want):
    assert ab.clients_per_round(_agg_cfg(num=num, rate=rate).federate, expected) == want


def test_a_registered_aggregator_is_asked_first_and_none_falls_through(monkeypatch):
    asked = []
    mine = object()

    def decline(method, config):
        asked.append(("decline", method, config))
        return None

    def accept(method, config):
        asked.append(("accept", method, config))
        return mine
    monkeypatch.setattr(register, "aggregator_dict", {"a": decline, "b": accept,
                                                      "c": lambda m, c: 1 / 0})
    cfg = _agg_cfg(rule="no_such_rule", method="MyFL")   # a built-in would refuse this rule
    assert ab.get_aggregator(cfg, 6) is mine
    assert asked == [("decline", "MyFL", cfg), ("accept", "MyFL", cfg)]
    monkeypatch.setattr(register, "aggregator_dict", {"a": decline})
    assert type(ab.get_aggregator(_agg_cfg(method="MyFL"), 6)) is ClientsAvgAggregator


def test_an_unknown_robust_rule_names_the_key_and_the_choices():
    with pytest.raises(ConfigError) as ei:
        ab.get_aggregator(_agg_cfg(rule="Geomed"), 8)
    assert str(ei.value) == ("aggregator.robust_rule='Geomed'; choose one of ['fedavg', 'krum', "
                             "'median', 'trimmedmean', 'bulyan', 'normbounding']")


@pytest.mark.parametrize("expected,online,kind", [
    (4, False, ClientsAvgAggregator), (63, False, ClientsAvgAggregator),
    (64, False, OnlineClientsAvgAggregator), (500, False, OnlineClientsAvgAggregator),
    (4, True, OnlineClientsAvgAggregator), (0, False, ClientsAvgAggregator)])
def test_fedavg_aggregates_online_when_asked_or_from_64_clients(expected, online, kind, logs):
    cfg = _agg_cfg(rule="FedAvg", online=online)
    agg = ab.get_aggregator(cfg, expected, distributed=False)
    assert type(agg) is kind and agg.server_optimizer is None and agg.distributed is False
    assert agg.cfg is cfg
    told = [m for _, m in logs if "aggregating online" in m]
    if kind is OnlineClientsAvgAggregator and not online:
        assert told == [f"Server: {expected} clients: aggregating online (memory O(model), not "
                        f"O(clients x model))"]
    else:
        assert told == []


@pytest.mark.parametrize("rate,num,expected,per_round", [
    (1.0, 3, 10, 10),        # a rate of exactly 1 is a rate: it wins over the count
    (0.5, 1, 10, 5),         # the smallest count
    (0.5, 10, 10, 5),        # a count of every client
    (0.05, 7, 30, 1),        # the rate's share rounds down, never below one
    (0.25, 6, 12, 3),
    # the count beside a rate above 1, of zero or unset is not overruled:
    (1.5, 3, 10, None), (0.0, 3, 10, None), (-1.0, 3, 10, None),
    (0.5, 0, 10, None), (0.5, -1, 10, None), (0.5, 11, 10, None),   # nor is a count out of range
])
def test_a_rate_and_a_count_both_set_is_warned_once_with_the_rate_s_clients_per_round(
        rate, num, expected, per_round, logs):
    agg = ab.get_aggregator(_agg_cfg(num=num, rate=rate), expected)
    assert agg.expected_clients == expected
    told = [(lvl, m) for lvl, m in logs if "are both set" in m]
    if per_round is None:
        assert told == []
    else:
        assert told == [("WARNING", f"federate.sample_client_rate={rate} and "
                                    f"federate.sample_client_num={num} are both set: the rate "
                                    f"wins, as in FS ({per_round} clients per round); remove one "
                                    f"of them")]


def test_the_built_aggregator_caps_an_unverified_claim_at_the_configured_ratio(logs):
    agg = ab.get_aggregator(_agg_cfg(ratio=1.5), 5)
    declared = [10, 20, 30, 40, 1000]             # median 30: cap int(1.5 x 30) = 45
    assert agg.distributed is True
    assert agg.weight(3, 1000, False, declared) == 45
    assert agg.weight(3, 1000, True, declared) == 1000
    assert agg.weight(4, 44, False, declared) == 44
    assert ab.get_aggregator(_agg_cfg(ratio=1.5), 5, distributed=False).weight(
        3, 1000, False, declared) == 1000         # a simulation has no untrusted peer


@pytest.mark.parametrize("rule", ["krum", "median", "trimmedmean", "bulyan", "normbounding"])
def test_robust_rules_need_every_update_at_once(rule):
    with pytest.raises(ConfigError) as ei:
        ab.get_aggregator(_agg_cfg(rule=rule.upper(), online=True), 20)
    assert str(ei.value) == (f"aggregator.robust_rule={rule} needs every update of a round at "
                             f"once; set federate.online_aggr False (or robust_rule fedavg)")


def test_a_robust_rule_gets_its_bft_args_and_the_distributed_flag():
    cfg = _agg_cfg(rule="Krum", f=1, bft={"krum_agg_num": 3, "trimmedmean_excluded_ratio": 0.25,
                                          "normbounding_norm_bound": 2.5})
    agg = ab.get_aggregator(cfg, 5, distributed=False)
    assert type(agg) is RobustAggregator and agg.rule == "krum" and agg.cfg is cfg
    assert agg.args == RobustArgs(1, 3, 0.25, 2.5)
    assert agg.distributed is False and agg.server_optimizer is None
    assert ab.get_aggregator(cfg, 5).distributed is True


def test_missing_bft_args_take_fs_defaults():
    agg = ab.get_aggregator(_agg_cfg(rule="median", f=2), 100)
    assert agg.args == RobustArgs(2, 1, 0.1, 10.0)
    assert type(agg.args.krum_agg_num) is int and type(agg.args.normbounding_norm_bound) is float


@pytest.mark.parametrize("f,bft", [
    (-1, {}), (0, {"krum_agg_num": 0}), (0, {"trimmedmean_excluded_ratio": 0.5}),
    (0, {"trimmedmean_excluded_ratio": -0.01}), (0, {"normbounding_norm_bound": 0.0}),
    (0, {"normbounding_norm_bound": -1.0})])
def test_out_of_range_bft_args_are_refused_naming_every_bound(f, bft):
    with pytest.raises(ConfigError) as ei:
        ab.get_aggregator(_agg_cfg(rule="median", f=f, bft=bft), 30)
    assert str(ei.value) == ("aggregator: byzantine_node_num >= 0, BFT_args.krum_agg_num >= 1, "
                             "0 <= BFT_args.trimmedmean_excluded_ratio < 0.5 and "
                             "BFT_args.normbounding_norm_bound > 0 are required")


def test_the_edges_of_the_bft_ranges_are_accepted():
    edge = {"krum_agg_num": 1, "trimmedmean_excluded_ratio": 0.0,
            "normbounding_norm_bound": 1e-9}
    assert ab.get_aggregator(_agg_cfg(rule="median", f=0, bft=edge), 4).args == \
        RobustArgs(0, 1, 0.0, 1e-9)
    near = {"trimmedmean_excluded_ratio": 0.499}
    assert ab.get_aggregator(_agg_cfg(rule="median", bft=near), 4).args.\
        trimmedmean_excluded_ratio == 0.499


def test_a_rule_that_cannot_keep_its_guarantee_for_the_sampled_clients_is_refused():
    # bulyan with f=1 needs 4f+3 = 7 updates; 10 clients but 6 sampled per round
    cfg = _agg_cfg(rule="bulyan", f=1, num=6)
    with pytest.raises(ConfigError) as ei:
        ab.get_aggregator(cfg, 10)
    assert str(ei.value) == ("aggregator.robust_rule=bulyan: bulyan tolerates "
                             "aggregator.byzantine_node_num=1 only with at least 7 clients per "
                             "round (have 6) (set aggregator.byzantine_node_num lower, or run "
                             "more clients)")
    assert type(ab.get_aggregator(_agg_cfg(rule="bulyan", f=1, num=7), 10)) is RobustAggregator
    # the rate counts too: int(0.5 x 12) = 6 < 7
    with pytest.raises(ConfigError, match=r"\(have 6\)"):
        ab.get_aggregator(_agg_cfg(rule="bulyan", f=1, rate=0.5), 12)


def test_without_a_client_count_a_rule_is_checked_against_none_sampled():
    # bulyan with f=0 needs 3 updates; a caller that does not say how many clients it expects
    # gets the rule refused rather than a count assumed for it
    with pytest.raises(ConfigError, match=r"at least 3 clients per round \(have 0\)"):
        ab.get_aggregator(_agg_cfg(rule="bulyan", f=0, num=5))
    assert type(ab.get_aggregator(_agg_cfg(rule="bulyan", f=0, num=5), 3)) is RobustAggregator


def test_fedopt_is_switched_on_by_its_key_or_by_the_method_name():
    fedopt = NS(use=True, optimizer=NS(type="sgd", lr=0.5, momentum=0.75))
    agg = ab.get_aggregator(_agg_cfg(fedopt=fedopt), 4)
    opt = agg.server_optimizer
    assert type(opt) is FedOptimizer and (opt.lr, opt.momentum) == (0.5, 0.75)
    off = NS(use=False, optimizer=NS(type="sgd", lr=0.5, momentum=0.75))
    assert ab.server_optimizer(_agg_cfg(fedopt=off)) is None
    assert ab.server_optimizer(_agg_cfg()) is None            # no fedopt keys: off
    by_name = ab.server_optimizer(_agg_cfg(method="FedOpt", fedopt=off))
    assert (by_name.lr, by_name.momentum) == (0.5, 0.75)
    # the method alone, on a config without fedopt keys: FS's SGD, lr 1.0, no momentum
    bare = ab.server_optimizer(_agg_cfg(method="FEDOPT"))
    assert type(bare) is FedOptimizer and (bare.lr, bare.momentum) == (1.0, 0.0)
    adam = NS(use=True, optimizer=NS(type="Adam", lr=0.5, momentum=0.0, betas=[0.8, 0.99]))
    built = ab.server_optimizer(_agg_cfg(fedopt=adam))     # every other key is Adam's argument
    assert built.general and built.spec == ("Adam", {"betas": [0.8, 0.99], "momentum": 0.0})
    unknown = NS(use=True, optimizer=NS(type="Adamz", lr=0.5, momentum=0.0))
    with pytest.raises(ConfigError, match=r"unknown optimizer type 'Adamz'"):
        ab.server_optimizer(_agg_cfg(fedopt=unknown))
    robust = ab.get_aggregator(_agg_cfg(rule="median", method="fedopt"), 6)
    assert type(robust) is RobustAggregator and robust.server_optimizer.lr == 1.0
    online = ab.get_aggregator(_agg_cfg(online=True, fedopt=fedopt), 6)
    assert type(online) is OnlineClientsAvgAggregator and online.server_optimizer.lr == 0.5


def test_the_real_config_builds_the_configured_aggregator():
    cfg = _cfg(aggregator__robust_rule="trimmedmean", aggregator__byzantine_node_num=1,
               federate__sample_client_num=8, aggregator__BFT_args__trimmedmean_excluded_ratio=0.2)
    agg = ab.get_aggregator(cfg, 12)
    assert type(agg) is RobustAggregator and agg.args == RobustArgs(1, 1, 0.2, 10.0)


# ====================================================================== workers and runners
class _C(Client):
    pass


class _S(Server):
    pass


def test_registered_workers_come_first_and_a_pair_without_the_role_falls_through(monkeypatch):
    asked = []

    def only_server(method):
        asked.append(("only_server", method))
        return {"client": None, "server": _S} if method == "MyFL" else None

    def pair(method):
        asked.append(("pair", method))
        return {"client": _C, "server": Server} if method == "MyFL" else None
    monkeypatch.setattr(register, "worker_dict", {"x": only_server, "y": pair})
    cfg = _cfg(federate__method="MyFL")
    assert get_client_cls(cfg) is _C
    assert asked == [("only_server", "MyFL"), ("pair", "MyFL")]
    assert get_server_cls(cfg) is _S
    other = _cfg(federate__method="FedAvg")
    assert get_client_cls(other) is Client and get_server_cls(other) is Server
    monkeypatch.setattr(register, "worker_dict", {"x": lambda m: {"server": _S}})
    assert get_client_cls(cfg) is Client and get_server_cls(cfg) is _S


@pytest.mark.parametrize("mode,kind", [("standalone", StandaloneRunner),
                                       ("Standalone", StandaloneRunner),
                                       ("DISTRIBUTED", DistributedRunner)])
def test_get_runner_picks_the_runner_of_the_mode_and_hands_it_everything(mode, kind, monkeypatch):
    got = {}

    def init(self, **kw):
        got.update(kw)
    monkeypatch.setattr(kind, "__init__", init)
    cfg, ccfg, data = _cfg(federate__mode=mode), CN({"client_3": {}}), _clients([1, 2, 3, 4])
    runner = get_runner(_S, _C, cfg, ccfg, data)
    assert type(runner) is kind
    assert got == {"data": data, "server_class": _S, "client_class": _C, "config": cfg,
                   "client_configs": ccfg}


def test_a_mode_without_a_runner_is_refused_naming_the_choices():
    with pytest.raises(ConfigError) as ei:
        get_runner(_S, _C, _cfg(federate__mode="Cross-Silo"))
    assert str(ei.value) == ("federate.mode='Cross-Silo' has no runner; choose 'standalone' or "
                             "'distributed'")


# ============================================================================ utils: seeding
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2 ** 40))
def test_setup_seed_seeds_python_numpy_and_torch(seed):
    utils.setup_seed(seed)
    got = (random.random(), np.random.random(), torch.rand(3))
    want_py = random.Random(seed).random()
    want_np = np.random.RandomState(seed % (2 ** 32)).random_sample()
    want_torch = torch.rand(3, generator=torch.Generator().manual_seed(seed))
    assert got[0] == want_py and got[1] == want_np and torch.equal(got[2], want_torch)


def test_setup_seed_keeps_numpys_seed_below_2_to_the_32():
    utils.setup_seed(2 ** 32 + 11)             # numpy refuses seeds >= 2**32
    a = np.random.random()
    np.random.seed(11)
    assert a == np.random.random()


# ============================================================================ utils: logging
def test_setup_logger_replaces_handlers_and_writes_fs_lines_to_a_new_directory(fs_logger,
                                                                              tmp_path):
    old = logging.NullHandler()
    fs_logger.addHandler(old)
    logfile = tmp_path / "new" / "deeper" / "run.log"
    utils.setup_logger(logging.WARNING, str(logfile))
    assert fs_logger.level == logging.WARNING and fs_logger.propagate is False
    assert old not in fs_logger.handlers and len(fs_logger.handlers) == 2
    stream, fh = fs_logger.handlers
    assert type(stream) is logging.StreamHandler and isinstance(fh, logging.FileHandler)
    assert fh.baseFilename == str(logfile)
    fmt = "%(asctime)s (%(filename)s:%(lineno)d) %(levelname)s: %(message)s"
    assert stream.formatter._fmt == fmt and fh.formatter._fmt == fmt
    fs_logger.info("not written")
    line = inspect.currentframe().f_lineno + 1
    fs_logger.warning("written %d", 4)
    fh.flush()
    text = logfile.read_text()
    assert "not written" not in text and text.count("\n") == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
                        rf"\(test_builder_units\.py:{line}\) WARNING: written 4\n", text), text
    again = tmp_path / "new" / "other.log"    # its directory exists now
    utils.setup_logger(logging.DEBUG, str(again))
    assert fs_logger.handlers[1].baseFilename == str(again) and fs_logger.level == logging.DEBUG
    utils.setup_logger()                       # again, no file: one stream handler, INFO
    assert fs_logger.level == logging.INFO and len(fs_logger.handlers) == 1
    assert type(fs_logger.handlers[0]) is logging.StreamHandler


# ======================================================================= utils: atomic writes
@pytest.fixture
def fsyncs(monkeypatch):
    """Every fsync: ('file', path) or ('dir', path)."""
    calls = []
    real = os.fsync

    def spy(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        calls.append(("dir" if os.path.isdir(path) else "file", path))
        real(fd)
    monkeypatch.setattr(os, "fsync", spy)
    return calls


def test_atomic_write_replaces_the_file_with_normal_permissions_and_fsyncs(tmp_path, fsyncs):
    target = tmp_path / "out" / "results.json"
    umask = os.umask(0o022)
    try:
        utils.atomic_write_bytes(str(target), b"first")
        assert stat.S_IMODE(target.stat().st_mode) == 0o644   # 0o666 & ~0o022
        os.umask(0o002)
        utils.atomic_write_bytes(str(target), b"second, longer")
        assert os.umask(0o002) == 0o002                       # the caller's umask is kept
    finally:
        os.umask(umask)
    assert target.read_bytes() == b"second, longer"
    assert stat.S_IMODE(target.stat().st_mode) == 0o664       # 0o666 & ~0o002
    assert os.listdir(target.parent) == ["results.json"]      # no temp file left
    d = str(target.parent)
    # each write: its temp file (renamed afterwards), then the directory
    assert [k for k, _ in fsyncs] == ["file", "dir", "file", "dir"]
    assert fsyncs[1] == fsyncs[3] == ("dir", d)
    assert all(os.path.basename(p).startswith(".results.json.") for _, p in
               (fsyncs[0], fsyncs[2]))


def test_atomic_write_not_durable_renames_without_fsync(tmp_path, fsyncs):
    target = tmp_path / "shard" / "meta.json"
    utils.atomic_write_bytes(str(target), b"{}", durable=False)
    assert target.read_bytes() == b"{}" and fsyncs == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")
    seen = []

    def fail(tmp):
        seen.append(tmp)
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt               # any BaseException, not only Exception
    with pytest.raises(KeyboardInterrupt):
        utils.atomic_write(str(target), fail)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["ckpt.pt"]
    name = os.path.basename(seen[0])
    assert name.startswith(".ckpt.pt.") and name.endswith(".tmp")
    assert os.path.dirname(seen[0]) == str(tmp_path)

    def gone(tmp):
        os.unlink(tmp)
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):           # nothing left to remove: no error
        utils.atomic_write(str(target), gone)
    assert target.read_bytes() == b"old"


def test_atomic_torch_save_round_trips_and_is_durable(tmp_path, fsyncs):
    path = tmp_path / "m" / "server.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3), "round": 4}
    utils.atomic_torch_save(str(path), state)
    back = torch.load(str(path), weights_only=True)
    assert torch.equal(back["w"], state["w"]) and back["round"] == 4
    assert [k for k, _ in fsyncs] == ["file", "dir"]


def test_fsync_dir_tolerates_a_directory_it_cannot_open_or_sync(tmp_path, monkeypatch):
    utils.fsync_dir(str(tmp_path / "missing"))                # open fails: nothing to do
    closed = []
    real_close = os.close

    def bad_fsync(fd):
        raise OSError("EINVAL")

    def close(fd):
        closed.append(fd)
        real_close(fd)
    monkeypatch.setattr(os, "fsync", bad_fsync)
    monkeypatch.setattr(os, "close", close)
    utils.fsync_dir(str(tmp_path))
    assert len(closed) == 1                                   # the descriptor is still closed


def test_sync_tree_is_one_syncfs_else_every_file_and_directory(tmp_path, fsyncs, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("x.pt", "a/y.pt", "a/b/z.pt", "a/b/w.pt"):
        (tmp_path / rel).write_bytes(b"1")
    asked = []
    monkeypatch.setattr(utils, "_syncfs", lambda top: asked.append(top) or True)
    utils.sync_tree(str(tmp_path))
    assert asked == [str(tmp_path)] and fsyncs == []
    monkeypatch.setattr(utils, "_syncfs", lambda top: False)
    utils.sync_tree(str(tmp_path))
    files = sorted(p for k, p in fsyncs if k == "file")
    dirs = sorted(p for k, p in fsyncs if k == "dir")
    assert files == sorted(str(tmp_path / r) for r in ("x.pt", "a/y.pt", "a/b/z.pt", "a/b/w.pt"))
    assert dirs == sorted([str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")])


def test_syncfs_calls_the_c_library_on_the_path_and_reports_its_answer(tmp_path, monkeypatch):
    import ctypes
    assert utils._syncfs(str(tmp_path)) is True               # Linux has syncfs
    answers, fds = [0, -1], []

    class Lib:
        def __init__(self, name, use_errno=False):
            assert name is None and use_errno is True

        def syncfs(self, fd):
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
            return answers.pop(0)
    monkeypatch.setattr(ctypes, "CDLL", Lib)
    assert utils._syncfs(str(tmp_path)) is True
    assert utils._syncfs(str(tmp_path)) is False
    assert fds == [str(tmp_path)] * 2

    class NoSyncfs:
        def __init__(self, name, use_errno=False):
            pass
    monkeypatch.setattr(ctypes, "CDLL", NoSyncfs)
    assert utils._syncfs(str(tmp_path)) is False

    def no_libc(name, use_errno=False):
        raise OSError("no libc")
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert utils._syncfs(str(tmp_path)) is False


def test_append_line_adds_exactly_one_newline_and_fsyncs(tmp_path, fsyncs, monkeypatch):
    real_open = open

    def ascii_locale_open(file, mode="r", encoding=None, **kw):
        # what open() does where the locale's encoding is ASCII: the log must not depend on it
        return real_open(file, mode, encoding=encoding or "ascii", **kw)
    monkeypatch.setattr(utils, "open", ascii_locale_open, raising=False)
    path = tmp_path / "exp" / "eval_results.log"
    utils.append_line(str(path), '{"round": 1}')
    utils.append_line(str(path), '{"round": 2}\n')
    utils.append_line(str(path), '{"round": 3}\n\n')
    utils.append_line(str(path), 'ü {"round": 4}')
    utils.append_line(str(path), '{"round": 5, "tag": "X"} \t')     # other whitespace is kept
    utils.append_line(str(path), 'ends in X')
    assert path.read_bytes().decode("utf-8") == ('{"round": 1}\n{"round": 2}\n{"round": 3}\n'
                                                 'ü {"round": 4}\n{"round": 5, "tag": "X"} \t\n'
                                                 'ends in X\n')
    assert fsyncs == [("file", str(path))] * 6
