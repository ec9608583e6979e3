"""DistributedShardLoader, pinned to the letter: exact error texts with their recreate command,
--link shards (packed file, row index, rows out of file order), empty and missing splits,
has_changed's cheap path, streaming reloads and block sizes. Fixtures and helpers are the
loader tests' own (test_distributed_loader.py)."""
import math
import os
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from federatedscope.core.data import shard_format as mu
from federatedscope.core.data.distributed_loader import DistributedShardLoader, ShardError
from federatedscope.core.data.streaming import StreamingSplit
from federatedscope.core.data.shard_format import split_file as shard_io
from federatedscope.core.data.sharding import ShardArgs, prepare_shards
from test_distributed_loader import (_raises, all_samples, cfg_for, prepared,  # noqa: F401
                                     refresh_file_entry, rewrite_meta, shards)


# ----------------------------------------------------------------------------- exact texts
def _fix(shards, dataset="femnist", flags="--resume"):
    return (f"re-create it with: python scripts/tools/prepare_shards.py --dataset {dataset} "
            f"--root data --clients N --out {shards} {flags}")


def test_errors_carry_the_exact_recreate_command(shards):
    def more(d):
        d["num_samples"]["train"] += 1
        d["label_hist"]["train"][0] += 1
    rewrite_meta(shards / "client_2", more)
    n = mu.read_meta(str(shards / "client_2" / "meta.json")).num_samples["train"]
    p = shards / "client_2" / "train.pt"
    for streaming in (False, True):
        msg = _raises(cfg_for(shards / "client_2", streaming=streaming))
        assert msg == (f"{p}: holds {n - 1} samples but meta.json says num_samples.train={n}; "
                       + _fix(shards))
    os.remove(shards / "client_1" / "meta.json")
    m = shards / "client_1" / "meta.json"
    assert _raises(cfg_for(shards / "client_1")) == (
        f"{m} is missing, so {shards / 'client_1'} is not a complete shard (interrupted run?); "
        + _fix(shards, "NAME"))


def test_missing_split_text_and_the_empty_split_it_leaves(shards, logs):
    shard = shards / "client_3"
    os.remove(shard / "train.pt")
    p = shard / "train.pt"
    assert _raises(cfg_for(shard)) == (
        f"{p} is missing (meta.json lists it), so the shard is incomplete; "
        + _fix(shards, flags="--resume  (or set distributed_data.strict_check False to run "
                             "without this split)"))
    for streaming in (False, True):
        del logs[:]
        ld = DistributedShardLoader.from_config(cfg_for(shard, strict=False, streaming=streaming))
        assert ("WARNING", f"{p} is missing (meta.json lists it), so the shard is "
                                 f"incomplete; strict_check is off, so the train split is empty"
                ) in logs
        assert not any("loaded" in m and "train samples" in m for _, m in logs)  # nothing read
        assert ld.label_hist == [0] * 62 and ld.num_samples["train"] == 0
        assert ld.declaration().num_samples["train"] == 0
        x, y = ld.datasets["train"][torch.arange(0)]           # the loader's transform applied
        assert x.dtype == torch.float32 and x.shape == (0, 1, 28, 28)
        assert y.dtype == torch.int64 and y.shape == (0,)
        assert ld.datasets["train"].x.dtype == torch.uint8


def test_streaming_histogram_is_of_ints_and_wrong_dtype_names_the_file(shards):
    ld = DistributedShardLoader.from_config(cfg_for(shards / "client_2", streaming=True))
    mem = DistributedShardLoader.from_config(cfg_for(shards / "client_2"))
    assert ld.label_hist == mem.label_hist and all(type(v) is int for v in ld.label_hist)
    assert ld.declaration().to_dict() == mem.declaration().to_dict()
    p = shards / "client_2" / "test.pt"
    x, y = shard_io.read_split(str(p))
    shard_io.write_split(str(p), x.to(torch.int64), y)
    refresh_file_entry(shards / "client_2", "test.pt")
    for streaming in (False, True):
        msg = _raises(cfg_for(shards / "client_2", streaming=streaming))
        assert msg.startswith(f"{p}: samples are int64[28,28] but meta.json says uint8[28,28]; ")


def test_iterating_a_streaming_split_gives_file_order_across_blocks(shards):
    st = DistributedShardLoader.from_config(
        cfg_for(shards / "client_3", streaming=True)).datasets["train"]
    st.block_rows = 6                           # several blocks, the last one partial
    assert len(st) % 6 != 0
    mem = DistributedShardLoader.from_config(cfg_for(shards / "client_3")).datasets["train"]
    want_x, want_y = mem[torch.arange(len(mem))]
    got = list(st)                              # the torch Dataset protocol: one sample at a time
    assert len(got) == len(mem)
    assert torch.equal(torch.stack([x for x, _ in got]), want_x)
    assert [int(y) for _, y in got] == want_y.tolist()
    loaded = list(DataLoader(st, batch_size=5))
    assert torch.equal(torch.cat([x for x, _ in loaded]), want_x)


# ----------------------------------------------------------------------------- --link shards
@pytest.fixture(scope="module")
def linked(prepared, tmp_path_factory):
    """The same 3 clients as ``prepared`` (same seed), as --link shards over one packed file."""
    out = tmp_path_factory.mktemp("linked") / "shards"
    prepare_shards(ShardArgs(dataset="femnist", root=str(prepared / "data"), clients=3,
                             out=str(out), progress=False, link=True))
    return out


@pytest.mark.parametrize("streaming", [False, True])
def test_link_shard_reads_the_same_samples_as_a_copy(prepared, linked, streaming, logs):
    for k in (1, 2, 3):
        copy = DistributedShardLoader.from_config(cfg_for(prepared / "shards" / f"client_{k}"))
        ld = DistributedShardLoader.from_config(cfg_for(linked / f"client_{k}", client_id=k,
                                                        streaming=streaming))
        assert ld.num_samples == copy.num_samples and ld.label_hist == copy.label_hist
        assert all(type(v) is int for v in ld.label_hist)
        packed = os.path.normpath(str(linked / "packed" / "data.pt"))
        for s in mu.SPLITS:
            assert torch.equal(all_samples(ld.datasets[s])[0], all_samples(copy.datasets[s])[0])
            assert torch.equal(all_samples(ld.datasets[s])[1], all_samples(copy.datasets[s])[1])
            assert ("INFO", f"Client {k} loaded {copy.num_samples[s]} {s} samples from "
                                  f"{linked / f'client_{k}' / (s + '.pt')} (rows of {packed})"
                    + (" (streaming)" if streaming else "")) in logs
        assert ld._packed == packed
        assert packed in ld._snapshot and ld.last_modified >= os.path.getmtime(packed)


def test_link_shard_sees_a_changed_packed_file(linked, tmp_path):
    out = tmp_path / "l"
    shutil.copytree(linked, out)
    ld = DistributedShardLoader.from_config(cfg_for(out / "client_2"))
    assert not ld.has_changed()
    packed = out / "packed" / "data.pt"
    lay = shard_io.split_layout(str(packed))
    with open(packed, "r+b") as f:                      # one pixel, same size
        f.seek(lay.x_offset + 3)
        b = f.read(1)
        f.seek(lay.x_offset + 3)
        f.write(bytes([b[0] ^ 0x10]))
    assert ld.has_changed()
    with pytest.raises(ShardError, match="sha256"):
        ld.reload()


@pytest.mark.parametrize("past_end", [None, 0])
def test_link_row_index_out_of_range_names_both_files(linked, tmp_path, past_end):
    """Row -1 or row n (one past the packed file's last row) is refused before any read."""
    out = tmp_path / "l"
    shutil.copytree(linked, out)
    p = out / "client_1" / "val.pt"
    packed = os.path.normpath(str(out / "packed" / "data.pt"))
    n = shard_io.split_layout(packed).n
    rows = shard_io.read_index(str(p)).numpy().copy()
    rows[-1] = -1 if past_end is None else n + past_end
    shard_io.write_index(str(p), rows)
    refresh_file_entry(out / "client_1", "val.pt")
    for streaming in (False, True):
        msg = _raises(cfg_for(out / "client_1", streaming=streaming))
        assert msg == (f"{p}: row index out of range for packed file {packed} ({n} rows); "
                       + _fix(out))


def test_streaming_rows_out_of_file_order_come_back_in_dataset_order(tmp_path):
    """--link rows that go backwards inside a block are read in file order and put back."""
    p = str(tmp_path / "packed.pt")
    i = torch.arange(30)
    shard_io.write_split(p, torch.stack([i, 2 * i, 3 * i], 1), i % 7)
    rows = np.array([29, 3, 17, 4, 0, 28, 11, 12, 5, 21, 9, 14], np.int64)
    st = StreamingSplit(shard_io.split_layout(p), rows, lambda x: x, block_rows=4)
    try:
        assert len(st) == 12
        got = [int(x[0]) for x, _ in st]
        assert got == rows.tolist()
        plain = list(st.iter_batches(3, False, 0))
        assert [b[0][:, 0].tolist() for b in plain] == [[29, 3, 17], [4, 0, 28], [11, 12, 5],
                                                       [21, 9, 14]]
        assert all(torch.equal(y, x[:, 0] % 7) for x, y in plain)
        shuf = [v for x, y in st.iter_batches(4, True, 2) for v in x[:, 0].tolist()]
        # block = 4 rows: each run of 4 is one block of rows, permuted inside
        blocks = [sorted(rows[b * 4:(b + 1) * 4].tolist()) for b in range(3)]
        assert sorted(sorted(shuf[j:j + 4]) for j in range(0, 12, 4)) == sorted(blocks)
        assert shuf != rows.tolist()
        # exactly: block order, then each block's seeded permutation of its rows in dataset order
        from federatedscope.core.data.datasets import shuffled_order
        want = [int(rows[b * 4 + j]) for b in shuffled_order(3, True, 2).tolist()
                for j in shuffled_order(4, True, 2 * 1_000_003 + b).tolist()]
        assert shuf == want
    finally:
        st.close()
    assert st._fd is None
    st.close()                                             # closing twice is harmless
    with pytest.raises(ShardError) as ei:
        list(st.iter_batches(4, False, 0))
    assert str(ei.value) == (f"{p}: this streaming split was closed (its shard was reloaded); "
                             f"use the loader's current datasets")


def test_declaration_names_the_dataset_and_the_sample_type(shards):
    ld = DistributedShardLoader.from_config(cfg_for(shards / "client_3"))
    d = ld.declaration()
    assert (d.client_id, d.dataset, d.sample_type) == (3, "femnist", "uint8[28,28]")
    assert ld.sample_type == "uint8[28,28]" and ld.train_data is ld.datasets["train"]


@pytest.mark.parametrize("streaming", [False, True])
def test_label_equal_to_num_classes_is_refused_and_zero_is_not(shards, streaming):
    p = shards / "client_1" / "train.pt"
    x, y = shard_io.read_split(str(p))
    y = y.clone()
    y[:3] = 0
    y[-1] = 62                                             # one past the last class
    shard_io.write_split(str(p), x, y)
    refresh_file_entry(shards / "client_1", "train.pt")
    msg = _raises(cfg_for(shards / "client_1", streaming=streaming))
    assert msg.startswith(f"{p}: 1 label(s) outside [0, 62) (first: 62); ")
    y[-1] = 61                                             # the last class is a class
    shard_io.write_split(str(p), x, y)
    refresh_file_entry(shards / "client_1", "train.pt")
    msg = _raises(cfg_for(shards / "client_1", streaming=streaming))
    assert "label histogram differs from meta.json label_hist.train" in msg


def test_has_changed_reads_meta_only_when_the_files_moved(shards, monkeypatch):
    shard = shards / "client_2"
    ld = DistributedShardLoader.from_config(cfg_for(shard))
    reads = []
    real = mu.read_meta
    monkeypatch.setattr(mu, "read_meta", lambda p: reads.append(p) or real(p))
    assert not ld.has_changed() and reads == []
    os.utime(shard / "test.pt", (1, 1))                   # touched: the meta is read once ...
    assert not ld.has_changed() and len(reads) == 1
    assert not ld.has_changed() and len(reads) == 1       # ... and the new stat remembered
    (shard / "meta.json").write_text("{ half written")
    assert ld.has_changed()                                # damaged: reload() will say why
    with pytest.raises(ShardError, match="malformed JSON"):
        ld.reload()
    ld.acknowledge_disk_state()
    assert not ld.has_changed()


def test_has_changed_remembers_the_packed_file_of_a_link_shard(linked, tmp_path, monkeypatch):
    out = tmp_path / "l"
    shutil.copytree(linked, out)
    ld = DistributedShardLoader.from_config(cfg_for(out / "client_1"))
    reads = []
    real = mu.read_meta
    monkeypatch.setattr(mu, "read_meta", lambda p: reads.append(p) or real(p))
    os.utime(out / "packed" / "data.pt", (5, 5))
    assert not ld.has_changed() and len(reads) == 1
    assert not ld.has_changed() and len(reads) == 1
    os.utime(out / "packed" / "data.pt", (6, 6))
    ld.acknowledge_disk_state()                            # the packed file's new stat too
    assert not ld.has_changed() and len(reads) == 1


def test_sha_mismatch_hints_at_verify_checksum_and_other_errors_do_not(shards):
    hint = " (distributed_data.verify_checksum False skips the sha256 check)"
    p = shards / "client_3" / "train.pt"
    lay = shard_io.split_layout(str(p))
    with open(p, "r+b") as f:
        f.seek(lay.x_offset + 7)
        b = f.read(1)
        f.seek(lay.x_offset + 7)
        f.write(bytes([b[0] ^ 0x01]))
    assert _raises(cfg_for(shards / "client_3")).endswith(hint)
    q = shards / "client_1" / "val.pt"
    q.write_bytes(q.read_bytes()[:100])
    for verify in (True, False):
        msg = _raises(cfg_for(shards / "client_1", verify=verify), str(q))
        assert "sha256" not in msg and msg.endswith(_fix(shards))    # nothing appended


def test_streaming_default_block_is_4_mib_of_rows(shards):
    st = DistributedShardLoader.from_config(
        cfg_for(shards / "client_1", streaming=True)).datasets["train"]
    assert st.block_rows == (4 << 20) // 784 == 5349      # ~5,300 FEMNIST rows per window
    assert len(st) == st.n == st.layout.n
    pinned = list(st.iter_batches(16, True, 3, pin_memory=True))
    plain = list(st.iter_batches(16, True, 3))
    assert len(pinned) == len(plain) == math.ceil(len(st) / 16)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(pinned, plain))


@pytest.mark.parametrize("streaming", [False, True])
def test_an_empty_split_file_loads_as_zero_samples(shards, streaming):
    p = shards / "client_2" / "val.pt"
    # (split_file.write_split refuses n=0 today: memoryview cannot cast an empty chunk)
    torch.save({"x": torch.zeros((0, 28, 28), dtype=torch.uint8),
                "y": torch.zeros(0, dtype=torch.int64)}, str(p))

    def empty(d):
        d["num_samples"]["val"] = 0
        d["label_hist"]["val"] = [0] * 62
        d["files"]["val.pt"] = {"bytes": os.path.getsize(p), "sha256": shard_io.sha256_file(str(p))}
    rewrite_meta(shards / "client_2", empty)
    ld = DistributedShardLoader.from_config(cfg_for(shards / "client_2", streaming=streaming))
    assert ld.num_samples["val"] == 0 and ld._hist["val"] == [0] * 62
    assert list(ld.datasets["val"].iter_batches(4, True, 0)) == []


def test_streaming_histogram_adds_up_every_label_window(shards, monkeypatch):
    monkeypatch.setattr(shard_io, "CHUNK", 64)             # 8 labels a window: many windows
    mem = DistributedShardLoader.from_config(cfg_for(shards / "client_1"))
    st = DistributedShardLoader.from_config(cfg_for(shards / "client_1", streaming=True))
    assert mem.num_samples["train"] > 3 * 8
    assert st.label_hist == mem.label_hist and sum(st.label_hist) == mem.num_samples["train"]


def test_direct_construction_defaults_and_from_config_overrides(shards):
    import pathlib
    ld = DistributedShardLoader(pathlib.Path(shards / "client_2"))
    assert ld.shard_path == str(shards / "client_2") and ld.client_id is None
    assert (ld.strict, ld.verify, ld.streaming) == (True, True, False)
    x, _ = next(ld.datasets["train"].iter_batches(4, False, 0))
    assert x.dtype == torch.float32 and x.shape == (4, 1, 28, 28)     # ToTensor by default
    assert float(x.max()) <= 1.0
    assert DistributedShardLoader(str(shards / "client_2"), client_id=0).client_id is None
    assert DistributedShardLoader(str(shards / "client_2"), client_id=2).client_id == 2
    cfg = cfg_for(shards / "client_1", client_id=1)          # the config names client 1 ...
    other = DistributedShardLoader.from_config(cfg, client_id=3, shard_path=str(shards / "client_3"))
    assert other.meta.client_id == 3 and other.client_id == 3   # ... the simulation's entry wins
    with pytest.raises(ShardError, match="belongs to client 3"):
        DistributedShardLoader.from_config(cfg, shard_path=str(shards / "client_3"))
    nocheck = cfg_for(shards / "client_3", strict=False, verify=False, streaming=True)
    ld3 = DistributedShardLoader.from_config(nocheck)
    assert (ld3.strict, ld3.verify, ld3.streaming) == (False, False, True)


def test_streaming_reload_closes_the_old_splits_and_a_failed_one_keeps_them(prepared, shards):
    shard = shards / "client_1"
    ld = DistributedShardLoader.from_config(cfg_for(shard, streaming=True))
    old = dict(ld.datasets)
    prepare_shards(ShardArgs(dataset="femnist", root=str(prepared / "data"), clients=3,
                             out=str(shards), seed=7, overwrite=True, progress=False))
    ld.reload()
    assert all(old[s]._fd is None for s in mu.SPLITS)
    assert all(ld.datasets[s]._fd is not None for s in mu.SPLITS)
    with pytest.raises(ShardError, match="was closed"):
        list(old["train"].iter_batches(4, False, 0))
    kept = dict(ld.datasets)
    (shard / "meta.json").write_text("{ broken")
    with pytest.raises(ShardError):
        ld.reload()
    assert all(ld.datasets[s] is kept[s] and kept[s]._fd is not None for s in mu.SPLITS)
    assert sum(len(y) for _, y in ld.datasets["train"].iter_batches(8, False, 0)) == \
        ld.num_samples["train"]


def _rewrite_packed(out, edit):
    """Rewrite the packed file of a --link set through ``edit(x, y) -> (x, y)`` and make client
    1's meta.json agree with its new size and sha256 (a tool that rewrote it carelessly)."""
    packed = out / "packed" / "data.pt"
    x, y = shard_io.read_split(str(packed))
    shard_io.write_split(str(packed), *edit(x.clone(), y.clone()))
    rewrite_meta(out / "client_1", lambda d: d["packed"].update(
        bytes=os.path.getsize(packed), sha256=shard_io.sha256_file(str(packed))))
    return os.path.normpath(str(packed))


def test_link_packed_file_of_another_sample_type_names_the_packed_file(linked, tmp_path):
    out = tmp_path / "l"
    shutil.copytree(linked, out)
    packed = _rewrite_packed(out, lambda x, y: (x.to(torch.int64), y))
    for streaming in (False, True):
        msg = _raises(cfg_for(out / "client_1", streaming=streaming))
        assert msg == (f"{packed}: samples are int64[28,28] but meta.json says uint8[28,28]; "
                       + _fix(out))


def test_link_label_out_of_range_names_the_index_file(linked, tmp_path):
    out = tmp_path / "l"
    shutil.copytree(linked, out)
    rows = shard_io.read_index(str(out / "client_1" / "test.pt")).numpy()

    def bad_label(x, y):
        y[int(rows[1])] = 62
        return x, y
    _rewrite_packed(out, bad_label)
    msg = _raises(cfg_for(out / "client_1"))
    assert msg.startswith(f"{out / 'client_1' / 'test.pt'}: 1 label(s) outside [0, 62) "
                          f"(first: 62); ")


# ----------------------------------------------------------------------------- per-split transforms
# data.transform / data.val_transform / data.test_transform, each a different Normalize after
# ToTensor, so a split given another split's transform (or the loader's default) gives other numbers
SPLIT_TRANSFORMS = {
    "train": [["ToTensor"], ["Normalize", {"mean": [0.25], "std": [0.25]}]],
    "val": [["ToTensor"], ["Normalize", {"mean": [0.5], "std": [0.25]}]],
    "test": [["ToTensor"], ["Normalize", {"mean": [0.5], "std": [0.5]}]],
}
# pixels 255, 51, 0 -> ToTensor 1.0, 0.2, 0.0 -> (v - mean) / std, by hand:
WANT_PIXELS = {"train": [3.0, -0.2, -1.0], "val": [2.0, -1.2, -2.0], "test": [1.0, -0.6, -1.0]}


def _split_cfg(path, **kw):
    cfg = cfg_for(path, **kw)
    cfg.data.transform = SPLIT_TRANSFORMS["train"]
    cfg.data.val_transform = SPLIT_TRANSFORMS["val"]
    cfg.data.test_transform = SPLIT_TRANSFORMS["test"]
    return cfg


def _assert_own_transforms(ld):
    x = torch.zeros((1, 28, 28), dtype=torch.uint8)
    x[0, 0, 0], x[0, 0, 1] = 255, 51
    for s in mu.SPLITS:
        out = ld.datasets[s].transform(x)
        got = [float(out[0, 0, 0, 0]), float(out[0, 0, 0, 1]), float(out[0, 0, 1, 0])]
        assert got == pytest.approx(WANT_PIXELS[s], abs=1e-6), s


def _assert_batches_use_own_transforms(ld, plain):
    """The samples a split gives are its own transform of the raw pixels (``plain``: the loader
    with the default ToTensor), so the transform is the one iteration applies."""
    for s in mu.SPLITS:
        x, _ = next(ld.datasets[s].iter_batches(4, False, 0))
        p, _ = next(plain.datasets[s].iter_batches(4, False, 0))
        mean, std = {"train": (0.25, 0.25), "val": (0.5, 0.25), "test": (0.5, 0.5)}[s]
        assert torch.allclose(x, (p - mean) / std, atol=1e-6), s


@pytest.mark.parametrize("streaming", [False, True])
def test_each_split_gets_its_own_transform_in_memory_and_streaming(shards, streaming):
    ld = DistributedShardLoader.from_config(_split_cfg(shards / "client_2", streaming=streaming))
    if streaming:
        assert all(isinstance(ld.datasets[s], StreamingSplit) for s in mu.SPLITS)
    _assert_own_transforms(ld)
    plain = DistributedShardLoader.from_config(cfg_for(shards / "client_2", streaming=streaming))
    _assert_batches_use_own_transforms(ld, plain)


@pytest.mark.parametrize("streaming", [False, True])
def test_each_missing_split_left_empty_keeps_its_own_transform(shards, streaming):
    shard = shards / "client_3"
    for s in mu.SPLITS:
        os.remove(shard / f"{s}.pt")
    ld = DistributedShardLoader.from_config(_split_cfg(shard, strict=False, streaming=streaming))
    assert ld.num_samples == {"train": 0, "val": 0, "test": 0}
    _assert_own_transforms(ld)


@pytest.mark.parametrize("streaming", [False, True])
def test_each_link_split_gets_its_own_transform(linked, streaming):
    ld = DistributedShardLoader.from_config(_split_cfg(linked / "client_1", client_id=1,
                                                       streaming=streaming))
    assert isinstance(ld.datasets["val"], StreamingSplit) == streaming
    _assert_own_transforms(ld)
    plain = DistributedShardLoader.from_config(cfg_for(linked / "client_1", client_id=1,
                                                       streaming=streaming))
    _assert_batches_use_own_transforms(ld, plain)


def test_link_split_maps_the_packed_file_instead_of_reading_it(linked, monkeypatch):
    """A client of a --link cut copies its rows out of the packed file (600 MB for the 3,550
    FEMNIST writers): the file is opened with mmap=True, never read whole."""
    from federatedscope.core.data import distributed_loader as dl
    calls = []

    class Spy:   # the loader's own calls only (split_layout's read of the file is not one)
        def __getattr__(self, name):
            return getattr(shard_io, name)

        @staticmethod
        def read_split(path, *args, **kwargs):
            calls.append((os.path.normpath(str(path)), args, kwargs))
            return shard_io.read_split(path, *args, **kwargs)
    monkeypatch.setattr(dl, "split_file", Spy())
    ld = DistributedShardLoader.from_config(cfg_for(linked / "client_2", client_id=2))
    packed = os.path.normpath(str(linked / "packed" / "data.pt"))
    assert calls == [(packed, (), {"mmap": True})] * 3      # once per split, always mapped
    assert sum(ld.num_samples.values()) > 0


def test_direct_construction_applies_the_given_transform_to_splits_without_their_own(shards):
    """``transform=`` is the loader's default: every split without an entry in ``transforms``
    (here train and test) uses it; val uses its own."""
    from federatedscope.core.data.transforms import build_transform
    common = build_transform(SPLIT_TRANSFORMS["train"])
    own_val = build_transform(SPLIT_TRANSFORMS["val"])
    ld = DistributedShardLoader(str(shards / "client_1"), transform=common,
                                transforms={"val": own_val})
    assert ld.transform is common
    assert ld.datasets["train"].transform is common and ld.datasets["test"].transform is common
    assert ld.datasets["val"].transform is own_val
    x = torch.zeros((1, 28, 28), dtype=torch.uint8)
    x[0, 0, 0] = 255                                  # (1.0 - 0.25) / 0.25
    assert float(ld.datasets["test"].transform(x)[0, 0, 0, 0]) == pytest.approx(3.0)
