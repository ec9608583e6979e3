"""DistributedShardLoader: loading, the log line, every bad shard, strictness, streaming, refresh."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from federatedscope.core.data import shard_format as mu
from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.data.shard_format import split_file as shard_io
from federatedscope.core.data.datasets import BatchSource
from federatedscope.core.data.distributed_loader import DistributedShardLoader, ShardError
from federatedscope.core.data.streaming import StreamingSplit
from federatedscope.core.data.sharding import ShardArgs, prepare_shards

WRITERS = {f"f{i:04d}_{i}": 20 + 7 * i for i in range(6)}


def _write_leaf(path, seed=0):
    rng = np.random.default_rng(seed)
    data = {w: {"x": (rng.integers(0, 256, (n, 784)) / 255).tolist(),
                "y": rng.integers(0, 62, n).tolist()} for w, n in WRITERS.items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"users": list(WRITERS), "num_samples": list(WRITERS.values()), "user_data": data}, f)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("shards")
    _write_leaf(str(base / "data" / "femnist" / "raw" / "all_data_0.json"))
    prepare_shards(ShardArgs(dataset="femnist", root=str(base / "data"), clients=3, out=str(base / "shards"),
                             progress=False))
    return base


@pytest.fixture
def shards(prepared, tmp_path):
    """A private copy, so a test may damage it."""
    out = tmp_path / "shards"
    shutil.copytree(prepared / "shards", out)
    return out


def cfg_for(path, client_id=-1, streaming=False, strict=True, verify=True):
    cfg = get_default_cfg()
    cfg.federate.mode = "distributed"
    cfg.distributed_data.enabled = True
    cfg.distributed_data.shard_path = str(path)
    cfg.distributed_data.streaming = streaming
    cfg.distributed_data.strict_check = strict
    cfg.distributed_data.verify_checksum = verify
    cfg.distribute.client_id = client_id
    return cfg


def all_samples(ds, bs=16, shuffle=False, seed=0):
    xs, ys = [], []
    for x, y in ds.iter_batches(bs, shuffle, seed):
        xs.append((x * 255).round().to(torch.uint8).reshape(len(y), -1))
        ys.append(y)
    if not xs:
        return torch.zeros(0, 784, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.cat(xs), torch.cat(ys)


def multiset(x, y):
    return sorted(bytes(r.numpy().tobytes()) + bytes([int(v)]) for r, v in zip(x, y))


def rewrite_meta(shard, edit):
    """Edit meta.json and keep it self-consistent (fingerprint), as a careless tool would."""
    path = os.path.join(str(shard), "meta.json")
    with open(path) as f:
        d = json.load(f)
    edit(d)
    d["fingerprint"] = mu.compute_fingerprint({k: mu.FileEntry(**e) for k, e in d["files"].items()},
                                              d.get("packed"))
    with open(path, "w") as f:
        json.dump(d, f)


def refresh_file_entry(shard, name):
    p = os.path.join(str(shard), name)
    rewrite_meta(shard, lambda d: d["files"].__setitem__(
        name, {"bytes": os.path.getsize(p), "sha256": shard_io.sha256_file(p)}))


# ----------------------------------------------------------------------------- good shards
def test_loads_and_logs(shards, logs):
    shard = shards / "client_2"
    ld = DistributedShardLoader.from_config(cfg_for(shard, client_id=2))
    entry = mu.load_manifest(str(shards / "manifest.json"))[2]
    assert ld.num_samples == entry.num_samples and ld.fingerprint == entry.fingerprint
    assert ld.label_hist == entry.label_hist
    assert mu.check_declaration(entry, ld.declaration(), "uint8[28,28]") == []
    assert mu.ShardDeclaration.from_dict(ld.declaration().to_dict()) == ld.declaration()
    assert ld.last_modified == max(os.path.getmtime(os.path.join(shard, n)) for n in os.listdir(shard))
    for s in mu.SPLITS:
        assert isinstance(ld.datasets[s], BatchSource) and len(ld.datasets[s]) == entry.num_samples[s]
        assert ("INFO", f"Client 2 loaded {entry.num_samples[s]} {s} samples from "
                              f"{os.path.join(str(shard), s + '.pt')}") in logs
    x, y = next(ld.datasets["train"].iter_batches(8, True, 0))
    assert x.dtype == torch.float32 and x.shape == (8, 1, 28, 28) and y.dtype == torch.int64


def test_relative_shard_path_is_relative_to_cwd(shards, monkeypatch, logs):
    monkeypatch.chdir(shards)
    ld = DistributedShardLoader.from_config(cfg_for("client_1"))
    assert ld.meta.client_id == 1
    assert any(m.startswith("Client 1 loaded") and "from client_1/train.pt" in m for _, m in logs)


def test_transform_from_config(shards):
    cfg = cfg_for(shards / "client_1")
    cfg.data.transform = [["ToTensor"], ["Normalize", {"mean": [0.5], "std": [0.25]}]]
    x, _ = next(DistributedShardLoader.from_config(cfg).datasets["train"].iter_batches(4, False, 0))
    plain, _ = next(DistributedShardLoader.from_config(cfg_for(shards / "client_1")).datasets["train"]
                    .iter_batches(4, False, 0))
    assert torch.allclose(x, (plain - 0.5) / 0.25)


# ----------------------------------------------------------------------------- bad shards
def _raises(cfg, *parts):
    with pytest.raises(ShardError) as ei:
        DistributedShardLoader.from_config(cfg)
    msg = str(ei.value)
    for p in parts:
        assert p in msg, msg
    return msg


def test_missing_shard_dir(shards):
    missing = shards / "client_9"
    _raises(cfg_for(missing), str(missing), "prepare_shards.py", f"--out {shards}")
    _raises(cfg_for(missing, strict=False), str(missing))  # never a fallback


def test_empty_shard_path():
    _raises(cfg_for(""), "distributed_data.shard_path is empty", "prepare_shards.py")
    for empty in ("", None):
        with pytest.raises(ShardError) as ei:
            DistributedShardLoader(empty)
        assert str(ei.value) == (
            "distributed_data.shard_path is empty; set it to this client's shard directory "
            "(e.g. data/<dataset>/shards/client_1); make shards with: python "
            "scripts/tools/prepare_shards.py --dataset NAME --root data --clients N "
            "--out data/<dataset>/shards")


def test_missing_meta(shards):
    os.remove(shards / "client_1" / "meta.json")
    _raises(cfg_for(shards / "client_1"), "meta.json is missing", "--resume")


def test_missing_split_file_strict_and_not(shards, logs):
    shard = shards / "client_1"
    os.remove(shard / "val.pt")
    _raises(cfg_for(shard), str(shard / "val.pt"), "prepare_shards.py", "strict_check")
    ld = DistributedShardLoader.from_config(cfg_for(shard, strict=False))
    assert ld.num_samples["val"] == 0 and len(ld.datasets["val"]) == 0
    assert list(ld.datasets["val"].iter_batches(4, False, 0)) == []
    assert ld.num_samples["train"] > 0
    assert any(lvl == "WARNING" and "val.pt is missing" in m for lvl, m in logs)


def test_truncated_file(shards):
    p = shards / "client_1" / "train.pt"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _raises(cfg_for(shards / "client_1"), str(p), "truncated")
    refresh_file_entry(shards / "client_1", "train.pt")  # even with meta "agreeing"
    _raises(cfg_for(shards / "client_1"), str(p), "truncated or corrupt")
    with pytest.raises(ShardError, match="truncated or corrupt"):
        shard_io.read_split(str(p))


def test_tampered_sample(shards):
    p = shards / "client_3" / "train.pt"
    lay = shard_io.split_layout(str(p))
    with open(p, "r+b") as f:  # one pixel of sample 0, same size
        f.seek(lay.x_offset + 100)
        b = f.read(1)
        f.seek(lay.x_offset + 100)
        f.write(bytes([b[0] ^ 0x55]))
    _raises(cfg_for(shards / "client_3"), str(p), "sha256 differs", "--resume")
    _raises(cfg_for(shards / "client_3", streaming=True), "sha256 differs")
    ld = DistributedShardLoader.from_config(cfg_for(shards / "client_3", verify=False))  # the user opted out
    assert ld.num_samples["train"] == lay.n


def test_meta_count_differs_from_tensor(shards):
    def more(d):
        d["num_samples"]["train"] += 1
        d["label_hist"]["train"][0] += 1
    rewrite_meta(shards / "client_2", more)
    for streaming in (False, True):
        _raises(cfg_for(shards / "client_2", streaming=streaming), "num_samples.train", "holds")


def test_labels_out_of_range(shards):
    p = shards / "client_2" / "test.pt"
    x, y = shard_io.read_split(str(p))
    y = y.clone()
    y[0] = 70
    shard_io.write_split(str(p), x, y)
    refresh_file_entry(shards / "client_2", "test.pt")
    for streaming in (False, True):
        _raises(cfg_for(shards / "client_2", streaming=streaming), str(p), "outside [0, 62)", "70")


def test_wrong_dtype_in_split(shards):
    p = shards / "client_2" / "test.pt"
    x, y = shard_io.read_split(str(p))
    torch.save({"x": x.float(), "y": y}, str(p))
    refresh_file_entry(shards / "client_2", "test.pt")
    _raises(cfg_for(shards / "client_2"), str(p), "uint8")


def test_client_id_mismatch(shards):
    _raises(cfg_for(shards / "client_2", client_id=3), "belongs to client 2", "client 3")
    with pytest.raises(ShardError):
        DistributedShardLoader.from_config(cfg_for(shards / "client_2"), client_id=1)


def test_malformed_meta(shards):
    (shards / "client_1" / "meta.json").write_text("{ broken")
    _raises(cfg_for(shards / "client_1"), "meta.json", "malformed JSON", "prepare_shards.py")


# ----------------------------------------------------------------------------- streaming
def test_streaming_matches_in_memory(shards):
    mem = DistributedShardLoader.from_config(cfg_for(shards / "client_3"))
    st = DistributedShardLoader.from_config(cfg_for(shards / "client_3", streaming=True))
    assert st.num_samples == mem.num_samples and st.fingerprint == mem.fingerprint
    for s in mu.SPLITS:
        a, b = mem.datasets[s], st.datasets[s]
        assert isinstance(b, StreamingSplit) and isinstance(b, torch.utils.data.IterableDataset)
        assert torch.equal(all_samples(a)[0], all_samples(b)[0])  # unshuffled: same order
        assert multiset(*all_samples(a, shuffle=True, seed=1)) == multiset(*all_samples(b, shuffle=True, seed=1))


def test_streaming_block_shuffle(shards):
    st = DistributedShardLoader.from_config(cfg_for(shards / "client_3", streaming=True)).datasets["train"]
    st.block_rows = 10  # several blocks on a small shard
    n = len(st)
    batches = list(st.iter_batches(7, True, 5))
    assert len(batches) == math.ceil(n / 7) and all(len(y) == 7 for _, y in batches[:-1])
    again = all_samples(st, 7, True, 5)
    assert torch.equal(torch.cat([(x * 255).round().to(torch.uint8).reshape(len(y), -1)
                                  for x, y in batches]), again[0])  # deterministic in seed
    other = all_samples(st, 7, True, 6)
    plain = all_samples(st, 7, False, 0)
    assert not torch.equal(other[0], again[0]) and not torch.equal(plain[0], again[0])
    assert multiset(*other) == multiset(*plain)


def test_streaming_with_torch_dataloader(shards):
    st = DistributedShardLoader.from_config(cfg_for(shards / "client_1", streaming=True)).datasets["train"]
    got = sum(len(y) for _, y in DataLoader(st, batch_size=16))
    assert got == len(st)


# ----------------------------------------------------------------------------- refresh
def test_has_changed_after_rewrite(prepared, shards):
    shard = shards / "client_1"
    ld = DistributedShardLoader.from_config(cfg_for(shard, client_id=1))
    assert not ld.has_changed()
    os.utime(shard / "train.pt")  # touched, same bytes: not a change
    assert not ld.has_changed()
    old = ld.fingerprint
    prepare_shards(ShardArgs(dataset="femnist", root=str(prepared / "data"), clients=3, out=str(shards), seed=99,
                             overwrite=True, progress=False))
    assert ld.has_changed()
    ld.reload()
    assert ld.fingerprint != old and not ld.has_changed()
    assert ld.declaration().fingerprint == mu.load_manifest(str(shards / "manifest.json"))[1].fingerprint


def test_has_changed_detects_tamper_under_same_meta(shards):
    shard = shards / "client_1"
    ld = DistributedShardLoader.from_config(cfg_for(shard))
    p = shard / "val.pt"
    lay = shard_io.split_layout(str(p))
    with open(p, "r+b") as f:
        f.seek(lay.x_offset)
        b = f.read(1)
        f.seek(lay.x_offset)
        f.write(bytes([b[0] ^ 1]))
    assert ld.has_changed()
    before = dict(ld.num_samples)
    with pytest.raises(ShardError, match="sha256"):
        ld.reload()
    assert ld.num_samples == before  # a failed refresh keeps the last good shard
    assert sum(len(y) for _, y in ld.datasets["val"].iter_batches(8, False, 0)) == before["val"]
