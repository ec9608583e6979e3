"""FS's data path in process, pinned by hand: ``spec_data`` (writers gathered, pooled, dealt by a
splitter and cut per writer), ``convert_data_mode`` (the data_idx partition), the records of
``base_data`` and ``DatasetSpec``. Toy datasets whose samples name their writer and index, so
every expected partition below is computed by hand from the rules in the docstrings."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from federatedscope.core.configs.config import ConfigError, get_default_cfg
from federatedscope.core.data import spec_data
from federatedscope.core.data.base_data import (ClientData, ClientShard, DataIdxClient,
                                                ServerManifest, StandaloneDataDict)
from federatedscope.core.data.dataset_spec import DatasetSpec, WriterSamples, get_spec
from federatedscope.core.data.sharding_plan import writer_split
from federatedscope.core.data.utils import convert_data_mode

NORM = [["ToTensor"], ["Normalize", {"mean": [0.5], "std": [0.25]}]]


def _samples(wnum, n, split=None, wid=None):
    """n uint8 [2, 2] samples [[wnum, i], [i % 4, 7]], labels i % 4."""
    i = np.arange(n)
    x = np.zeros((n, 2, 2), np.uint8)
    x[:, 0, 0], x[:, 0, 1], x[:, 1, 0], x[:, 1, 1] = wnum, i, i % 4, 7
    return WriterSamples(wid or f"w{wnum}", x, (i % 4).astype(np.int64), f"file_{wnum}.json",
                         split)


def _spec(writers, has_writers=True, name="toy"):
    def read(root):
        assert root == "/toy", root                   # the reader is given data.root
        return iter(writers())
    return DatasetSpec(name, "uint8", (2, 2), 4, (1, 2, 2), read, lambda root: [], has_writers,
                       (["ToTensor"],))


class RoundRobin:
    """A splitter by hand: client k gets indices k, k+4, k+8, ... (int32, to pin the cast);
    every call is recorded with its prior."""

    def __init__(self, n=4):
        self.n, self.calls = n, []

    def split_indices(self, labels, seed, prior=None):
        self.calls.append((list(np.asarray(labels)), seed,
                           None if prior is None else [list(p) for p in prior]))
        return [np.arange(k, len(labels), self.n, dtype=np.int32) for k in range(self.n)]


def test_a_writer_record_needs_one_label_per_sample():
    """Every consumer pairs sample i with label i; a reader's count mismatch is refused where the
    record is made, naming file and writer, whichever side is longer (equal counts, 0 included,
    pass)."""
    x = np.zeros((5, 2, 2), np.uint8)
    assert len(WriterSamples("f0042_13", x, np.arange(5), "all_data_7.json", "test").y) == 5
    assert len(WriterSamples("w0", x[:0], np.zeros(0, np.int64), "a.json", None).x) == 0
    for labels in (4, 6, 0):
        with pytest.raises(ValueError) as ei:
            WriterSamples("f0042_13", x, np.arange(labels), "all_data_7.json", "test")
        assert str(ei.value) == (f"all_data_7.json, writer f0042_13: the dataset's reader gave 5 "
                                 f"samples but {labels} labels; a reader must yield one label "
                                 f"per sample (fix the reader registered for this data.type)")


# ------------------------------------------------------------------ gather / pool / deal
def test_gather_writers_groups_by_writer_and_names_a_repeat():
    a, b, c = _samples(1, 3, "train"), _samples(1, 2, "test"), _samples(2, 4)
    got = spec_data.gather_writers([a, b, c], "unused")
    assert list(got) == ["w1", "w2"] and got["w1"] == {"train": a, "test": b}
    assert got["w2"] == {None: c}
    with pytest.raises(ValueError) as ei:
        spec_data.gather_writers([a, b, _samples(1, 5, "train")], "unused")
    assert str(ei.value) == ("writer w1 appears twice in the train data: file_1.json and "
                             "file_1.json")
    with pytest.raises(ValueError) as ei:
        spec_data.gather_writers([c, _samples(2, 1)], "unused")
    assert str(ei.value) == "writer w2 appears twice in the unsplit data: file_2.json and " \
                            "file_2.json"
    with pytest.raises(ValueError) as ei:
        spec_data.gather_writers(iter([]), "toy: nothing under data.root='/x'")
    assert str(ei.value) == "toy: nothing under data.root='/x'"


def test_pool_members_follow_writer_order_then_split_order():
    keys = {"w10": ["test", "train"], "w2": [None], "w1": ["test", "val", "train"],
            "w3": ["val", None]}
    out = spec_data.pool_members(keys)
    # writers w1, w2, w3, w10 (numeric); inside one writer: unsplit first, then train, val, test
    assert list(out.items()) == [("train", ["w1", "w10"]), ("val", ["w1", "w3"]),
                                 ("test", ["w1", "w10"]), (None, ["w2", "w3"])]
    assert list(spec_data.pool_members({"b": ["val", None]})) == [None, "val"]


@pytest.mark.parametrize("consistent", [False, True])
def test_sample_partition_splits_train_first_and_passes_its_labels_as_prior(consistent):
    labels = {"test": np.array([3, 2, 1, 0, 3, 2]), "train": np.arange(10) % 4,
              "val": np.array([1, 1, 2, 2, 0])}
    rr = RoundRobin()
    out = spec_data.sample_partition(labels, rr, 77, consistent)
    assert [c[0] for c in rr.calls] == [list(labels["train"]), list(labels["val"]),
                                        list(labels["test"])]
    assert all(c[1] == 77 for c in rr.calls)
    prior = [[0, 0, 0], [1, 1, 1], [2, 2], [3, 3]]     # train labels of clients 1..4
    assert [c[2] for c in rr.calls] == [None] + [prior if consistent else None] * 2
    assert sorted(out) == [1, 2, 3, 4]
    assert [list(out[k]) for k in (1, 2, 3, 4)] == [["train", "val", "test"]] * 4
    assert out[1]["train"].tolist() == [0, 4, 8] and out[4]["train"].tolist() == [3, 7]
    assert out[2]["val"].tolist() == [1] and out[3]["test"].tolist() == [2]
    assert out[4]["val"].tolist() == [3] and out[1]["val"].tolist() == [0, 4]
    assert out[1]["test"].tolist() == [0, 4] and out[4]["test"].tolist() == [3]
    assert all(a.dtype == np.int64 for c in out.values() for a in c.values())
    unsplit = spec_data.sample_partition({None: np.arange(5), "test": np.arange(2)},
                                         RoundRobin(2), 1, False)
    assert unsplit[1][None].tolist() == [0, 2, 4] and unsplit[2]["test"].tolist() == [1]


def test_split_writer_unsplit_and_leaf_parts_match_the_shard_rule():
    parts = {None: _samples(5, 10)}
    out = spec_data.split_writer(parts, [0.5, 0.3, 0.2], 9, "w5")
    rule = writer_split({None: 10}, [0.5, 0.3, 0.2], 9, "w5")
    assert {s: len(y) for s, (_, y) in out.items()} == {"train": 5, "val": 3, "test": 2}
    for s in ("train", "val", "test"):
        x, y = out[s]
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape[1:] == (2, 2)
        assert x[:, 0, 1].tolist() == rule[s][1].tolist()        # index i is sample i
        assert torch.equal(y, x[:, 0, 1] % 4) and bool((x[:, 0, 0] == 5).all())
        assert x.is_contiguous() and y.is_contiguous()
    leaf = spec_data.split_writer({"train": _samples(6, 8, "train"), "test": _samples(7, 3, "test")},
                                  [0.5, 0.3, 0.2], 9, "w6")
    # test kept whole; val = floor(8 * 0.3 / 0.8) = 3 rows carved from train
    assert leaf["test"][0][:, 0, 0].tolist() == [7] * 3
    assert leaf["test"][0][:, 0, 1].tolist() == [0, 1, 2]
    assert len(leaf["val"][1]) == 3 and len(leaf["train"][1]) == 5
    assert sorted(leaf["val"][0][:, 0, 1].tolist() + leaf["train"][0][:, 0, 1].tolist()) == \
        list(range(8))
    only_test = spec_data.split_writer({"test": _samples(8, 2, "test")}, [0.5, 0.3, 0.2], 9, "w8")
    assert [len(only_test[s][1]) for s in ("train", "val", "test")] == [0, 0, 2]
    assert only_test["train"][0].shape == (0, 2, 2)


def _cfg(**kv):
    cfg = get_default_cfg()
    cfg.data.type, cfg.data.root, cfg.data.seed = "toy", "/toy", 5
    cfg.data.splits = [0.5, 0.3, 0.2]
    cfg.data.transform = NORM
    cfg.federate.client_num = 4
    for k, v in kv.items():
        section, key = k.split("__")
        cfg[section][key] = v
    return cfg


def _writers():
    return [_samples(10, 20), _samples(1, 10), _samples(3, 6), _samples(2, 5)]


def _pixels(split):
    """(writer numbers, sample indices) of a TensorSplit, undoing Normalize(0.5, 0.25)."""
    x, y = split[torch.arange(len(split))]
    raw = ((x * 0.25 + 0.5) * 255).round().to(torch.int64)
    assert raw.shape == (len(split), 1, 2, 2) and torch.equal(y, raw[:, 0, 0, 1] % 4)
    return raw[:, 0, 0, 0].tolist(), raw[:, 0, 0, 1].tolist()


def test_fs_path_one_client_per_writer_in_writer_order():
    own = {"client_2": "cfg of client 2"}
    data, cfg = spec_data.load_spec_partitions(_cfg(), _spec(_writers), own)
    assert isinstance(data, StandaloneDataDict) and sorted(data) == [1, 2, 3, 4]
    assert data.manifest is None and cfg.data.type == "toy"
    # w1, w2, w3, w10 -> clients 1..4; splits 0.5/0.3/0.2 of 10, 5, 6, 20 samples (floor)
    sizes = {k: [len(data[k][s]) for s in ("train", "val", "test")] for k in data}
    assert sizes == {1: [5, 3, 2], 2: [2, 1, 2], 3: [3, 1, 2], 4: [10, 6, 4]}
    for k, (w, n) in zip((1, 2, 3, 4), ((1, 10), (2, 5), (3, 6), (10, 20))):
        rule = writer_split({None: n}, [0.5, 0.3, 0.2], 5, f"w{w}")
        for s in ("train", "val", "test"):
            writers, idx = _pixels(data[k][s])
            assert set(writers) <= {w} and idx == rule[s][1].tolist()
    assert [data[k].client_cfg for k in (1, 2, 3, 4)] == [None, "cfg of client 2", None, None]
    assert all(data[k].loader is None for k in data)
    none, _ = spec_data.load_spec_partitions(_cfg(), _spec(_writers))
    assert all(none[k].client_cfg is None for k in none)


def test_fs_path_subsample_keeps_the_shard_tools_writers():
    from federatedscope.core.data.sharding_plan import subsample_writers
    data, _ = spec_data.load_spec_partitions(_cfg(data__subsample=0.5), _spec(_writers))
    kept = subsample_writers(["w1", "w2", "w3", "w10"], 0.5, 5, "sequential")
    assert len(kept) == 2 and sorted(data) == [1, 2]
    assert [_pixels(data[k]["test"])[0][0] for k in (1, 2)] == [int(w[1:]) for w in kept]


@pytest.mark.parametrize("consistent", [False, True])
def test_fs_path_with_a_splitter_deals_the_pooled_samples(consistent, monkeypatch):
    import federatedscope.core.auxiliaries.splitter_builder as sb
    rr = RoundRobin()
    asked = []
    monkeypatch.setattr(sb, "get_splitter", lambda config: asked.append(config) or rr)

    def blocks():  # CIFAR-like: no writers, two train files and a test file
        return [_samples(1, 8, "train", "data_batch_1"), _samples(2, 4, "train", "data_batch_2"),
                _samples(9, 8, "test", "test_batch")]
    cfg = _cfg(data__splitter="rr", data__consistent_label_distribution=consistent)
    data, _ = spec_data.load_spec_partitions(cfg, _spec(blocks, has_writers=False))
    assert asked == [cfg]                                  # the splitter of this config
    assert sorted(data) == [1, 2, 3, 4] and [c[1] for c in rr.calls] == [5, 5]
    # train pool: batch 1 (8) then batch 2 (4); client k gets pool rows k-1, k+3, k+7
    train_pool = [(1, i) for i in range(8)] + [(2, i) for i in range(4)]
    for k in (1, 2, 3, 4):
        mine = [train_pool[r] for r in range(k - 1, 12, 4)]
        got = list(zip(*_pixels(data[k]["train"]))) + list(zip(*_pixels(data[k]["val"])))
        assert sorted(got) == sorted(mine)
        # 3 train rows: val = floor(3 * 0.3 / 0.8) = 1, train 2; test rows k-1, k+3 kept
        assert (len(data[k]["train"]), len(data[k]["val"])) == (2, 1)
        assert list(zip(*_pixels(data[k]["test"]))) == [(9, k - 1), (9, k + 3)]
    labels_of = [[i % 4 for _, i in train_pool[k::4]] for k in range(4)]
    assert rr.calls[1][2] == (labels_of if consistent else None)


def test_dealt_writers_are_named_clients_with_pooled_sources():
    by_writer = {"b": {"train": _samples(2, 3, "train", "b")},
                 "a": {"train": _samples(1, 2, "train", "a"), None: _samples(3, 2, None, "a")}}
    by_writer["a"]["train"].y = by_writer["a"]["train"].y.astype(np.int32)
    dealt = spec_data._dealt(by_writer, RoundRobin(2), 4, False)
    assert list(dealt) == ["client_1", "client_2"]
    c1 = dealt["client_1"]["train"]
    assert (c1.writer_id, c1.source, c1.split) == ("client_1", "pooled train", "train")
    assert dealt["client_2"][None].source == "pooled None"
    # pool a (2) then b (3): client 1 gets rows 0, 2, 4 = a0, b0, b2
    assert c1.x[:, 0, 0].tolist() == [1, 2, 2] and c1.x[:, 0, 1].tolist() == [0, 0, 2]
    assert c1.y.tolist() == [0, 0, 2] and c1.y.dtype == np.int64


def test_fs_path_errors_name_the_key_and_the_fix():
    with pytest.raises(ConfigError) as ei:
        spec_data.load_spec_partitions(_cfg(), _spec(_writers, has_writers=False))
    assert str(ei.value) == ("data.type='toy' has no writers to make clients of: set "
                             "data.splitter ('lda' with data.splitter_args [{'alpha': 0.5}], or "
                             "'iid') and federate.client_num")
    with pytest.raises(ValueError) as ei:
        spec_data.load_spec_partitions(_cfg(), _spec(lambda: []))
    assert str(ei.value) == "toy: no samples under data.root='/toy'"


def test_registered_loader_answers_only_its_types_case_blind():
    asked = []

    def spec_of(name):
        asked.append(name)
        return _spec(_writers)
    call = spec_data.registered_loader(["Toy", "other"], spec_of)
    assert call(_cfg(data__type="femnist")) is None and asked == []
    data, _ = call(_cfg(data__type="tOY"), {"client_3": "three"})
    assert asked == ["tOY"] and sorted(data) == [1, 2, 3, 4] and data[3].client_cfg == "three"


# ------------------------------------------------------------------ convert_data_mode
def _mode_cfg(mode="distributed", role="client", idx=3, global_eval=False, client_num=0):
    return SimpleNamespace(federate=SimpleNamespace(mode=mode, make_global_eval=global_eval,
                                                    client_num=client_num),
                           distribute=SimpleNamespace(role=role, data_idx=idx),
                           data=SimpleNamespace(root="/d", type="femnist", subsample=0.5))


def test_convert_data_mode_keeps_one_partition_by_data_idx(logs):
    data = StandaloneDataDict({k: ClientData(None, train=f"t{k}") for k in (1, 2, 3, 4)})
    assert convert_data_mode(data, _mode_cfg(mode="StandAlone")) is data
    server = convert_data_mode(data, _mode_cfg(role="server"))
    assert server == ServerManifest(None, "") and server.eval_data is None   # nothing kept
    # FS's server evaluates the global model on its data: with make_global_eval it keeps them all
    # ... those of the job's clients: the first federate.client_num, as standalone keeps them
    kept = convert_data_mode(data, _mode_cfg(role="server", global_eval=True)).eval_data
    assert kept == data and all(kept[k] is data[k] for k in data)
    kept = convert_data_mode(data, _mode_cfg(role="server", global_eval=True, client_num=3)).eval_data
    assert sorted(kept) == [1, 2, 3] and all(kept[k] is data[k] for k in kept)
    # a 1-client job evaluates on client 1's partition only (0 is "all", 1 is not)
    kept = convert_data_mode(data, _mode_cfg(role="server", global_eval=True,
                                             client_num=1)).eval_data
    assert list(kept) == [1] and kept[1] is data[1]
    out = convert_data_mode(data, _mode_cfg(idx="3"))
    assert isinstance(out, DataIdxClient) and out.data is data[3] and out.data_idx == 3
    assert logs == [("INFO", "Client: loaded the whole dataset (4 partitions) and kept data_idx=3")]
    assert convert_data_mode(data, _mode_cfg(idx=1)).data is data[1]
    assert convert_data_mode(data, _mode_cfg(idx=4)).data is data[4]


@pytest.mark.parametrize("idx", [0, 5])
def test_convert_data_mode_refuses_an_index_outside_the_partitions(idx):
    data = StandaloneDataDict({k: ClientData() for k in (1, 2, 3, 4)})
    with pytest.raises(ConfigError) as ei:
        convert_data_mode(data, _mode_cfg(idx=idx))
    assert str(ei.value) == (
        f"distribute.data_idx={idx} is not a partition of data.root='/d' (valid: 1..4, the 4 "
        f"partitions of data.type='femnist' with data.subsample=0.5; independent of "
        f"federate.client_num); set distribute.data_idx to one of them")
    with pytest.raises(ConfigError, match=r"\(valid: none: the dataset has no partition, the 0 "):
        convert_data_mode(StandaloneDataDict({}), _mode_cfg(idx=1))


# ------------------------------------------------------------------ records
def test_client_data_keeps_present_splits_only():
    cd = ClientData("own", train="a", val=None, test="c", loader="L")
    assert list(cd) == ["train", "test"] and cd.client_cfg == "own" and cd.loader == "L"
    assert (cd.train_data, cd.val_data, cd.test_data) == ("a", None, "c")
    splits, loader = cd.splits()
    assert splits == {"train": "a", "test": "c"} and type(splits) is dict and loader == "L"
    ld = SimpleNamespace(datasets={"test": "e", "val": "v", "train": "t"})
    fl = ClientData.from_loader(ld, "cfg5")
    assert dict(fl) == {"train": "t", "val": "v", "test": "e"} and list(fl) == ["train", "val",
                                                                              "test"]
    assert fl.loader is ld and fl.client_cfg == "cfg5"
    no_val = ClientData.from_loader(SimpleNamespace(datasets={"test": "e", "train": "t"}))
    assert list(no_val) == ["train", "test"] and no_val.client_cfg is None
    assert ClientData().splits() == ({}, None) and ClientData().client_cfg is None


def test_standalone_dict_and_server_manifest_defaults():
    d = StandaloneDataDict({1: ClientData()}, manifest="M", manifest_path="/m.json")
    assert (d.manifest, d.manifest_path, list(d)) == ("M", "/m.json", [1])
    plain = StandaloneDataDict({})
    assert (plain.manifest, plain.manifest_path) == (None, "")
    assert (ServerManifest().manifest, ServerManifest().path) == (None, "")


@pytest.mark.parametrize("cid, shard_id, idx_id", [(0, 6, -1), (1, 1, 1), (-1, 6, -1),
                                                   (9, 9, 9)])
def test_claimed_id_explicit_only_when_positive(cid, shard_id, idx_id):
    cfg = SimpleNamespace(distribute=SimpleNamespace(client_id=str(cid)))
    shard = ClientShard(SimpleNamespace(meta=SimpleNamespace(client_id="6"),
                                        datasets={"train": "t"}))
    assert shard.claimed_id(cfg) == shard_id and type(shard.claimed_id(cfg)) is int
    assert DataIdxClient(ClientData(), 2).claimed_id(cfg) == idx_id


# ------------------------------------------------------------------ DatasetSpec
def test_dataset_spec_sample_type_and_row_bytes():
    grey = _spec(_writers)
    assert grey.sample_type == "uint8[2,2]" and grey.row_bytes == 4
    tokens = DatasetSpec("tok", "int64", (80,), 80, (80,), None, None)
    assert tokens.sample_type == "int64[80]" and tokens.row_bytes == 640
    assert tokens.has_writers is True and tokens.default_transform == ()
    colour = DatasetSpec("c", "uint8", (3, 32, 32), 10, (3, 32, 32), None, None)
    assert colour.sample_type == "uint8[3,32,32]" and colour.row_bytes == 3072
    assert type(colour.row_bytes) is int


def test_get_spec_is_case_blind_and_names_the_known_types():
    assert get_spec("FEMNIST") is get_spec("femnist")
    assert get_spec("femnist").sample_type == "uint8[28,28]"
    with pytest.raises(ConfigError) as ei:
        get_spec("Mnistx")
    from federatedscope.register import dataset_spec_dict
    assert str(ei.value) == (f"data.type='Mnistx' has no registered dataset spec; known: "
                             f"{sorted(dataset_spec_dict)} (a domain package registers one with "
                             f"federatedscope.register.register_dataset_spec)")
