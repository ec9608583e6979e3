"""prepare_femnist_shards: strategies, fidelity, resume, refusal, --link, input layouts, --plot."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from federatedscope.core.data import shard_format as mu
from federatedscope.core.data import sharding
from federatedscope.core.data.shard_format import split_file as shard_io
from federatedscope.core.data.sharding import ShardArgs, ShardingError, prepare_shards
from harness.procs import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "scripts", "tools", "prepare_femnist_shards.py")
WRITERS = {f"f{i:04d}_{i % 7}": 9 + 3 * i for i in range(7)}  # 7 writers, 9..27 samples


def write_leaf(path, writers, seed=0):
    """A LEAF JSON file; returns {writer: (uint8 [n,28,28], int64 [n], floats [n,784])}."""
    rng = np.random.default_rng(seed)
    data, truth = {}, {}
    for wid, n in writers.items():
        k = rng.integers(0, 256, (n, 784))
        y = rng.integers(0, 62, n)
        floats = (k / 255).tolist()
        data[wid] = {"x": floats, "y": y.tolist()}
        truth[wid] = (k.astype(np.uint8).reshape(n, 28, 28), y.astype(np.int64), floats)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"users": list(writers), "num_samples": list(writers.values()), "user_data": data}, f)
    return truth


@pytest.fixture(scope="session")
def leaf_source(tmp_path_factory):
    """The 7-writer LEAF input, written once per session (JSON floats are slow to write; the
    mutation runs rerun these tests per mutant); each test gets its own copy (leaf_copy)."""
    root = tmp_path_factory.mktemp("leaf_source") / "data"
    raw = root / "femnist" / "raw"
    truth = write_leaf(str(raw / "all_data_0.json"), dict(list(WRITERS.items())[:4]), seed=1)
    truth.update(write_leaf(str(raw / "all_data_1.json"), dict(list(WRITERS.items())[4:]), seed=2))
    return root, truth


def leaf_copy(leaf_source, tmp_path):
    """(root, truth, raw folder) of a private copy of the session's LEAF input."""
    src, truth = leaf_source
    root = tmp_path / "data"
    shutil.copytree(src, root)
    return str(root), truth, root / "femnist" / "raw"


@pytest.fixture
def leaf_root(leaf_source, tmp_path):
    return leaf_copy(leaf_source, tmp_path)[:2]


def run(root, out, **kw):
    kw.setdefault("progress", False)
    return prepare_shards(ShardArgs(dataset="femnist", root=root, out=str(out), **kw))


def load_client(out, k):
    d = os.path.join(str(out), f"client_{k}")
    return {s: shard_io.read_split(os.path.join(d, f"{s}.pt")) for s in mu.SPLITS}


def rows_of(x, y):
    """Samples as a sorted list of bytes (pixels + label): a multiset that ignores order."""
    return sorted(bytes(x[i].numpy().tobytes()) + bytes([int(y[i])]) for i in range(len(y)))


def snapshot(out):
    """{relative path: bytes} of every file of a shard set (not the lock or the staging area)."""
    got = {}
    for d, dirs, files in os.walk(str(out)):
        dirs[:] = [x for x in dirs if x != ".staging"]
        for f in files:
            if f != ".lock":
                p = os.path.join(d, f)
                with open(p, "rb") as fh:
                    got[os.path.relpath(p, str(out))] = fh.read()
    return got


def check_partition(out, truth, n):
    """Every manifest entry verifies; writers never split; samples reproduce the input exactly."""
    man = mu.read_manifest(os.path.join(str(out), "manifest.json"))
    assert sorted(man.clients) == list(range(1, n + 1))
    seen = []
    for k, e in man.clients.items():
        meta = mu.read_meta(os.path.join(str(out), e.shard_path))
        assert meta.fingerprint == e.fingerprint and meta.client_id == k
        for name, fe in meta.files.items():
            assert shard_io.sha256_file(os.path.join(str(out), e.shard_path, name)) == fe.sha256
        seen += meta.writer_ids
        parts = load_client(out, k)
        got = [r for s in mu.SPLITS for r in rows_of(*parts[s])]
        want = [r for w in meta.writer_ids for r in rows_of(torch.from_numpy(truth[w][0]),
                                                                torch.from_numpy(truth[w][1]))]
        assert sorted(got) == sorted(want)
        assert {s: len(parts[s][1]) for s in mu.SPLITS} == e.num_samples
    assert sorted(seen) == sorted(truth) and len(seen) == len(set(seen))  # never split
    return man


def test_sequential(leaf_root, tmp_path):
    root, truth = leaf_root
    s = run(root, tmp_path / "out", clients=3)
    man = check_partition(tmp_path / "out", truth, 3)
    groups = [mu.read_meta(str(tmp_path / "out" / f"client_{k}")).writer_ids for k in (1, 2, 3)]
    assert sum(groups, []) == sorted(truth)  # contiguous blocks of sorted writers
    assert s.samples == sum(WRITERS.values()) and s.clients == 3 and man.strategy == "sequential"


def test_bit_exact_reconstruction(leaf_root, tmp_path):
    root, truth = leaf_root
    run(root, tmp_path / "out", clients=2)
    floats = {}
    for w, (_, y, fl) in truth.items():
        for i in range(len(y)):
            floats[bytes(truth[w][0][i].tobytes())] = fl[i]
    x, _ = load_client(tmp_path / "out", 1)["train"]
    for row in x[:20]:
        want = torch.tensor(floats[bytes(row.numpy().tobytes())], dtype=torch.float32)
        assert torch.equal(row.reshape(-1).float() / 255.0, want)  # bit-exact, not approx


def test_random_is_deterministic_and_seeded(leaf_root, tmp_path):
    root, truth = leaf_root
    run(root, tmp_path / "a", clients=3, strategy="random", seed=5)
    run(root, tmp_path / "b", clients=3, strategy="random", seed=5)
    check_partition(tmp_path / "a", truth, 3)
    ma, mb = (mu.load_manifest(str(tmp_path / d / "manifest.json")) for d in "ab")
    assert {k: e.fingerprint for k, e in ma.items()} == {k: e.fingerprint for k, e in mb.items()}
    groups = set()
    for seed in range(6):
        run(root, tmp_path / f"s{seed}", clients=3, strategy="random", seed=seed)
        groups.add(tuple(tuple(mu.read_meta(str(tmp_path / f"s{seed}" / f"client_{k}")).writer_ids)
                         for k in (1, 2, 3)))
    assert len(groups) > 1


def test_manual_assignment(leaf_root, tmp_path):
    root, truth = leaf_root
    ids = sorted(truth)
    plan = {"1": [ids[6], ids[0]], "2": ids[1:6]}
    path = tmp_path / "assign.json"
    path.write_text(json.dumps(plan))
    run(root, tmp_path / "out", clients=2, strategy="manual", assignment=str(path))
    check_partition(tmp_path / "out", truth, 2)
    assert mu.read_meta(str(tmp_path / "out" / "client_1")).writer_ids == [ids[0], ids[6]]


@pytest.mark.parametrize("plan,msg", [
    ({"1": ["nobody"], "2": ["f0001_1"]}, "not in the input"),
    ({"1": ["f0000_0", "f0001_1"], "2": ["f0001_1"]}, "assigned twice"),
    ({"1": ["f0000_0"], "3": ["f0001_1"]}, "exactly 1..2"),
    ({"1": ["f0000_0"], "2": []}, "non-empty list"),
])
def test_manual_assignment_rejected(leaf_root, tmp_path, plan, msg):
    root, _ = leaf_root
    path = tmp_path / "assign.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(ShardingError, match=msg):
        run(root, tmp_path / "out", clients=2, strategy="manual", assignment=str(path))
    assert not os.path.exists(tmp_path / "out" / "manifest.json")


def test_too_many_clients(leaf_root, tmp_path):
    with pytest.raises(ShardingError, match="never split"):
        run(leaf_root[0], tmp_path / "out", clients=8)


def test_same_split_as_fs_style_tasks(leaf_root, tmp_path):
    """A shard holds exactly the FS-style path's per-writer train/val/test samples."""
    from federatedscope.cv.dataset.leaf_femnist import load_femnist_tasks
    root, truth = leaf_root
    run(root, tmp_path / "out", clients=7, seed=3)  # one writer per client
    tasks = load_femnist_tasks(root, [0.6, 0.2, 0.2], 1.0, 3)
    for k, task in enumerate(tasks, start=1):
        parts = load_client(tmp_path / "out", k)
        for s in mu.SPLITS:
            assert torch.equal(parts[s][0], task[s][0]) and torch.equal(parts[s][1], task[s][1])


def test_bytes_per_sample_within_800(tmp_path):
    raw = tmp_path / "data" / "femnist" / "raw"
    run_script([os.path.join(ROOT, "scripts", "tools", "generate_femnist_sample.py"),
                    "--out", str(raw), "--writers", "12", "--seed", "0"], check=True)
    s = run(str(tmp_path / "data"), tmp_path / "out", clients=2)
    assert s.bytes_per_sample <= 800, s.line()
    assert s.samples > 1000


class Killed(Exception):
    pass


def test_resume_after_kill(leaf_root, tmp_path, monkeypatch):
    root, truth = leaf_root
    out = tmp_path / "out"
    real = sharding.write_shard
    calls = []

    def dies_after_first(*a, **k):
        if calls:
            raise Killed("simulated kill")
        calls.append(a[1])
        return real(*a, **k)
    monkeypatch.setattr(sharding, "write_shard", dies_after_first)
    with pytest.raises(Killed):
        run(root, out, clients=3)
    assert not os.path.exists(out / "manifest.json")  # nothing listed before all shards exist
    assert not os.path.exists(out / "client_1")       # nothing swapped in before the end
    stage = out / ".staging"
    assert os.path.isdir(stage / "client_1") and not os.path.exists(stage / "client_2")
    before = os.stat(stage / "client_1" / "train.pt").st_mtime_ns
    os.makedirs(stage / "client_2.tmp-99999")  # half-written dir of a killed process
    (stage / "client_2.tmp-99999" / "train.pt").write_bytes(b"partial")
    (stage / ".manifest.json.k1ll3d.tmp").write_bytes(b"{")  # an atomic write cut short

    with pytest.raises(ShardingError, match="--resume"):
        run(root, out, clients=3)  # neither flag: refused, names both ways out
    done = []
    monkeypatch.setattr(sharding, "write_shard", lambda *a, **k: done.append(a[1]) or real(*a, **k))
    s = run(root, out, clients=3, resume=True)
    assert done == [2, 3] and s.reused == [1] and s.written == [2, 3]
    assert os.stat(out / "client_1" / "train.pt").st_mtime_ns == before
    assert not os.path.exists(stage)  # swapped in: temp names gone with it
    assert sorted(os.listdir(out)) == [".lock", "client_1", "client_2", "client_3", "manifest.json"]
    check_partition(out, truth, 3)


def test_resume_redoes_tampered_or_foreign_shards(leaf_root, tmp_path, monkeypatch):
    root, truth = leaf_root
    out = tmp_path / "out"
    run(root, out, clients=3)
    with open(out / "client_2" / "val.pt", "r+b") as f:  # bit rot in a finished shard
        f.seek(900)
        b = f.read(1)
        f.seek(900)
        f.write(bytes([b[0] ^ 0xFF]))
    s = run(root, out, clients=3, resume=True)
    assert s.written == [2] and s.reused == [1, 3]
    before = snapshot(out)
    with pytest.raises(ShardingError) as ei:  # --resume with another seed: refused, says how
        run(root, out, clients=3, resume=True, seed=99)
    assert "--seed is 12345 there, 99 here" in str(ei.value) and "--overwrite" in str(ei.value)
    assert snapshot(out) == before
    s = run(root, out, clients=3, overwrite=True, seed=99)  # other plan: nothing can be kept
    assert s.written == [1, 2, 3]
    check_partition(out, truth, 3)


def test_kill_inside_a_shard_leaves_no_listed_bad_shard(leaf_root, tmp_path, monkeypatch):
    root, truth = leaf_root
    out = tmp_path / "out"
    run(root, out, clients=3)
    real = shard_io.write_split_chunks
    n = []

    def dies(path, *a, **k):
        n.append(path)
        if len(n) == 5:  # inside client 2, after its train.pt
            raise Killed()
        return real(path, *a, **k)
    monkeypatch.setattr(shard_io, "write_split_chunks", dies)
    before = snapshot(out)
    with pytest.raises(Killed):
        run(root, out, clients=3, overwrite=True, seed=4)
    assert snapshot(out) == before  # the old set is untouched until the new one is whole
    monkeypatch.setattr(shard_io, "write_split_chunks", real)
    s = run(root, out, clients=3, resume=True, seed=4)
    assert s.written == [2, 3]
    check_partition(out, truth, 3)


def test_refuses_existing_output_without_flag(leaf_root, tmp_path):
    root, _ = leaf_root
    run(root, tmp_path / "out", clients=2)
    with pytest.raises(ShardingError) as ei:
        run(root, tmp_path / "out", clients=2)
    assert "--overwrite" in str(ei.value) and "--resume" in str(ei.value)
    s = run(root, tmp_path / "out", clients=3, overwrite=True)
    assert s.written == [1, 2, 3] and not os.path.exists(tmp_path / "out" / "client_4")


def test_cli_summary_and_refusal(leaf_root, tmp_path):
    root, _ = leaf_root
    cmd = [TOOL, "--root", root, "--clients", "2", "--out", str(tmp_path / "o"),
           "--no-progress"]
    r = run_script(cmd, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "clients=2" in r.stdout and "bytes/sample=" in r.stdout and "samples/s=" in r.stdout
    r = run_script(cmd, cwd=str(tmp_path))
    assert r.returncode != 0 and "--overwrite" in r.stderr


def test_link_mode(leaf_root, tmp_path):
    from federatedscope.core.configs.config import get_default_cfg
    from federatedscope.core.data.distributed_loader import DistributedShardLoader
    root, truth = leaf_root
    run(root, tmp_path / "copy", clients=3, seed=2)
    s = run(root, tmp_path / "link", clients=3, seed=2, link=True)
    man = mu.read_manifest(str(tmp_path / "link" / "manifest.json"))
    packed = tmp_path / "link" / man.packed["path"]
    assert packed.is_file() and shard_io.sha256_file(str(packed)) == man.packed["sha256"]
    for k in (1, 2, 3):
        meta = mu.read_meta(str(tmp_path / "link" / f"client_{k}"))
        assert meta.packed["path"] == "../packed/data.pt"
        idx = shard_io.read_index(str(tmp_path / "link" / f"client_{k}" / "train.pt"))
        assert idx.dtype == torch.int64 and len(idx) == meta.num_samples["train"]
        copy = load_client(tmp_path / "copy", k)
        for streaming in (False, True):
            cfg = get_default_cfg()
            cfg.distributed_data.shard_path = str(tmp_path / "link" / f"client_{k}")
            cfg.distributed_data.streaming = streaming
            ld = DistributedShardLoader.from_config(cfg)
            for sp in mu.SPLITS:
                xs, ys = zip(*ld.datasets[sp].iter_batches(8, False, 0)) if len(ld.datasets[sp]) else ((), ())
                x = (torch.cat(xs) * 255).round().to(torch.uint8).squeeze(1) if xs else torch.zeros(0, 28, 28, dtype=torch.uint8)
                y = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.int64)
                assert torch.equal(x, copy[sp][0]) and torch.equal(y, copy[sp][1])
    assert s.samples == sum(WRITERS.values())


def test_fs_processed_input(tmp_path):
    rng = np.random.default_rng(0)
    proc = tmp_path / "data" / "femnist" / "processed"
    want = {}
    for t in range(5):
        d = proc / f"task_{t}"
        d.mkdir(parents=True)
        for s, n in (("train", 6 + t), ("val", 2), ("test", 3)):
            k = rng.integers(0, 256, (n, 784))
            y = rng.integers(0, 62, n)
            torch.save((torch.tensor(k / 255, dtype=torch.float32), torch.tensor(y)), str(d / f"{s}.pt"))
            want[(f"task_{t}", s)] = (k.astype(np.uint8).reshape(n, 28, 28), y)
    run(str(tmp_path / "data"), tmp_path / "out", clients=2)
    seen = []
    for k in (1, 2):
        meta = mu.read_meta(str(tmp_path / "out" / f"client_{k}"))
        parts = load_client(tmp_path / "out", k)
        seen += meta.writer_ids
        for s in mu.SPLITS:  # FS's own split is kept as it is
            x = np.concatenate([want[(w, s)][0] for w in meta.writer_ids])
            y = np.concatenate([want[(w, s)][1] for w in meta.writer_ids])
            assert np.array_equal(parts[s][0].numpy(), x) and np.array_equal(parts[s][1].numpy(), y)
    assert seen == [f"task_{t}" for t in range(5)]
    assert mu.read_manifest(str(tmp_path / "out" / "manifest.json")).source["kind"] == "train_val_test"


def test_leaf_train_test_tree_input(tmp_path):
    raw = tmp_path / "data" / "femnist" / "raw"
    ws = {"f0001_1": 10, "f0002_2": 12, "f0003_3": 8}
    tr = write_leaf(str(raw / "train" / "d_train.json"), ws, seed=1)
    te = write_leaf(str(raw / "test" / "d_test.json"), {w: 4 for w in ws}, seed=2)
    run(str(tmp_path / "data"), tmp_path / "out", clients=3, splits=(0.6, 0.2, 0.2))
    man = mu.read_manifest(str(tmp_path / "out" / "manifest.json"))
    assert man.source["kind"] == "train_test"
    for k, w in enumerate(sorted(ws), start=1):
        parts = load_client(tmp_path / "out", k)
        assert np.array_equal(parts["test"][0].numpy(), te[w][0])  # LEAF's test kept as is
        got = rows_of(torch.cat([parts["train"][0], parts["val"][0]]),
                      torch.cat([parts["train"][1], parts["val"][1]]))
        assert got == rows_of(torch.from_numpy(tr[w][0]), torch.from_numpy(tr[w][1]))
        assert len(parts["val"][1]) == int(ws[w] * 0.25 + 1e-9)  # val:train = 0.2:0.6


def test_plot_png(leaf_root, tmp_path):
    s = run(leaf_root[0], tmp_path / "out", clients=3, plot=True)
    assert s.plot and open(s.plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_no_input_names_the_generator(tmp_path):
    with pytest.raises(ShardingError, match="generate_femnist_sample.py"):
        run(str(tmp_path / "empty"), tmp_path / "out", clients=2)
