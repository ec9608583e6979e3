"""The shard tool makes its staged set durable once, before publishing it, not once per file:
an fsync per file waits for a journal commit each, which at 3,550 shards cost more than parsing
the input (bench/results/fullsize.json)."""
import os

from federatedscope.core.auxiliaries import utils
from federatedscope.core.data.sharding import ShardArgs, prepare_shards
from tests.test_sharding import write_leaf

WRITERS = {f"f{i:04d}_{i % 5}": 10 + 2 * i for i in range(8)}  # 8 writers, 10..24 samples
REAL_FSYNC = os.fsync


def _cut(tmp_path, monkeypatch, clients):
    root = tmp_path / f"data{clients}"
    write_leaf(str(root / "femnist" / "raw" / "all_data_0.json"), WRITERS, seed=5)
    out = tmp_path / f"shards{clients}"
    calls = {"fsync": 0, "sync": []}

    def fsync(fd):
        calls["fsync"] += 1
        return REAL_FSYNC(fd)

    def syncfs(path):
        # what exists when the staged set is made durable: every shard staged, none published
        staged = os.path.join(str(out), ".staging")
        calls["sync"].append((sorted(n for n in os.listdir(staged) if n.startswith("client_")),
                              os.path.exists(os.path.join(str(out), "manifest.json"))))
        return True
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(utils, "_syncfs", syncfs)
    prepare_shards(ShardArgs(dataset="femnist", root=str(root), clients=clients, out=str(out),
                             seed=1, progress=False))
    return calls, out


def test_one_sync_before_the_swap_and_fsyncs_do_not_grow_with_the_shards(tmp_path, monkeypatch):
    few, _ = _cut(tmp_path, monkeypatch, 4)
    many, out = _cut(tmp_path, monkeypatch, 8)
    assert len(many["sync"]) == 1
    staged, published = many["sync"][0]
    assert staged == [f"client_{k}" for k in sorted(range(1, 9), key=str)] and not published
    assert os.path.exists(os.path.join(str(out), "manifest.json"))
    # 8 shards x 4 files written, yet the same fsyncs as 4 shards (options, manifest, swap dirs)
    assert many["fsync"] == few["fsync"] <= 8, (few, many)
