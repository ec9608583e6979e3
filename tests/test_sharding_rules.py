"""The shard tool's rules spelled out independently: the per-writer shuffle's key (seed and
the first 8 bytes of sha256(writer id), little-endian), the cut of a LEAF train/test writer
that has no test part, the int64 indices every caller indexes with, and the plan id's exact
formula (a changed formula makes --resume rewrite every shard of an unchanged partition)."""
import hashlib
import json
import os

import numpy as np

from federatedscope.core.data.sharding_plan import plan_id, writer_split


def _key(seed, wid):
    return [seed, int.from_bytes(hashlib.sha256(wid.encode()).digest()[:8], "little")]


def test_an_unsplit_writer_is_shuffled_by_its_seed_and_id_key_then_cut():
    for wid, seed in (("f0000_0", 12345), ("task_17", 3), ("ĉ-writer", 2 ** 40)):
        perm = np.random.default_rng(_key(seed, wid)).permutation(10)
        got = writer_split({None: 10}, (0.5, 0.3, 0.2), seed, wid)
        assert [got[s][0] for s in ("train", "val", "test")] == [None, None, None]
        assert got["train"][1].tolist() == perm[:5].tolist()
        assert got["val"][1].tolist() == perm[5:8].tolist()
        assert got["test"][1].tolist() == perm[8:].tolist()


def test_a_leaf_writer_without_test_data_keeps_val_from_train_and_an_empty_test():
    got = writer_split({"train": 5}, (0.6, 0.2, 0.2), 9, "w7")
    perm = np.random.default_rng(_key(9, "w7")).permutation(5)
    # val = floor(5 * 0.2 / 0.8) = 1 sample of the shuffled train, train the other 4
    assert got["val"][0] == "train" and got["val"][1].tolist() == perm[:1].tolist()
    assert got["train"][0] == "train" and got["train"][1].tolist() == perm[1:].tolist()
    assert got["test"][0] == "test" and got["test"][1].tolist() == []
    for part in (got, writer_split({"test": 3}, (0.6, 0.2, 0.2), 9, "w7"),
                 writer_split({"train": 2, "val": 1, "test": 0}, (0.6, 0.2, 0.2), 9, "w7")):
        assert all(idx.dtype == np.int64 for _, idx in part.values())   # callers index with it


def test_the_plan_id_is_the_sha256_of_its_sorted_json_blob(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "y.json").write_text("22")
    (tmp_path / "dir" / "x.json").write_text("1")
    times = {"a.json": 1_600_000_000_000_000_001, "dir/x.json": 1_600_000_000_000_000_002,
             "dir/y.json": 1_600_000_000_000_000_003}
    for rel, ns in times.items():
        os.utime(tmp_path / rel, ns=(ns, ns))
    options = {"seed": 4, "clients": 2, "splits": [0.6, 0.2, 0.2]}   # not in sorted order
    clients = {2: ["w3"], 1: ["w1", "w2"]}
    got = plan_id(options, "femnist", str(tmp_path),
                  [str(tmp_path / "a.json"), str(tmp_path / "dir")], clients)
    blob = ('{"clients": {"1": ["w1", "w2"], "2": ["w3"]}, "dataset": "femnist", "inputs": '
            '[["a.json", 2, 1600000000000000001], ["dir/x.json", 1, 1600000000000000002], '
            '["dir/y.json", 2, 1600000000000000003]], "options": {"clients": 2, "seed": 4, '
            '"splits": [0.6, 0.2, 0.2]}, "v": 2}')
    assert json.loads(blob)["v"] == 2
    assert got == hashlib.sha256(blob.encode()).hexdigest()[:32]
