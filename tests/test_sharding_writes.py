"""The shard tool's writers called directly, value by value: ``write_shard`` (a client's three
split files + meta.json, the rows gathered from the spill in the given order, the label
histograms, the temp directory beside the output), ``write_packed`` (--link's one copy of
every used sample, client by client, writer by writer, train|val|test), and
``shard_verifies`` (what --resume may keep). Samples are int64 pairs, not the uint8 default,
and nothing is fsynced file by file: the tool syncs the whole staged set once (sync_tree)."""
import os

import numpy as np
import pytest

from federatedscope.core.data import shard_format as sf
from federatedscope.core.data import sharding
from federatedscope.core.data.dataset_spec import DatasetSpec, WriterSamples
from federatedscope.core.data.shard_format import split_file
from federatedscope.core.data.sharding_input import Spill
from federatedscope.core.data.sharding_plan import Plan, plan_id

SPEC = DatasetSpec(name="toy", sample_dtype="int64", sample_shape=(2,), num_classes=5,
                   model_input=(2,), iter_writers=lambda root: iter(()),
                   list_inputs=lambda root: [])
PID = "p" * 64
# spill row r holds the sample [1000 + 2r, 1001 + 2r] with label r % 5
X = 1000 + np.arange(48, dtype=np.int64).reshape(24, 2)


def sample(r):
    return [1000 + 2 * r, 1001 + 2 * r]


@pytest.fixture
def spill(tmp_path):
    s = Spill(str(tmp_path / "spill.bin"), SPEC)
    s.add(X, "toy")
    yield s
    s.close()


@pytest.fixture
def quiet(tmp_path, monkeypatch):
    """An empty working directory (a path must be the output's, never the cwd's) and a count
    of fsyncs (a per-file fsync cost more than parsing the input at 3,550 shards)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    fsyncs = []
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd))
    yield fsyncs
    assert os.listdir(cwd) == [] and fsyncs == []


def _rows(rows):
    rows = np.array(rows, np.int64)
    return rows, rows % 5


# client k: writers wKa, wKb; train rows k-1, k+3, k+7 (out of order for k=3), val k+11,
# test k+15, k+19
def _client(k):
    train = [k - 1, k + 3, k + 7] if k != 3 else [k + 7, k - 1, k + 3]
    return {"train": _rows(train), "val": _rows([k + 11]), "test": _rows([k + 15, k + 19])}


def test_write_shard_gathers_the_rows_in_order_and_records_them(tmp_path, spill, quiet,
                                                                monkeypatch):
    monkeypatch.setattr(sf, "now_iso", lambda: "2031-02-03T04:05:06Z")
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f"client_3.tmp-{os.getpid()}"        # a killed run of the same pid left this
    stale.mkdir()
    (stale / "junk.pt").write_bytes(b"old")
    (out / "client_4").mkdir()                         # an older shard of client 4 is replaced
    (out / "client_4" / "stale.pt").write_bytes(b"old")
    metas = {k: sharding.write_shard(str(out), k, [f"w{k}a", f"w{k}b"], _client(k), spill, PID,
                                     SPEC, None) for k in (1, 2, 3, 4)}
    assert sorted(os.listdir(out)) == ["client_1", "client_2", "client_3", "client_4"]
    for k in (1, 2, 3, 4):
        d = out / f"client_{k}"
        assert sorted(os.listdir(d)) == ["meta.json", "test.pt", "train.pt", "val.pt"]
        assert sf.read_meta(str(d)) == metas[k]
        for s, (rows, y) in _client(k).items():
            x, got_y = split_file.read_split(str(d / f"{s}.pt"))
            assert x.tolist() == [sample(r) for r in rows] and got_y.tolist() == y.tolist()
            assert metas[k].files[f"{s}.pt"] == sf.FileEntry(
                os.path.getsize(d / f"{s}.pt"), split_file.sha256_file(str(d / f"{s}.pt")))
        assert sf.verify_shard(str(d), client_id=k) == metas[k]
    m = metas[3]          # train rows 10, 2, 6 -> labels 0, 2, 1; val 14 -> 4; test 18, 22 -> 3, 2
    assert split_file.read_split(str(out / "client_3" / "train.pt"))[0].tolist() == \
        [[1020, 1021], [1004, 1005], [1012, 1013]]
    assert (m.client_id, m.dataset, m.writer_ids, m.plan_id, m.packed) == \
        (3, "toy", ["w3a", "w3b"], PID, None)
    assert m.num_samples == {"train": 3, "val": 1, "test": 2}
    assert m.label_hist == {"train": [1, 1, 1, 0, 0], "val": [0, 0, 0, 0, 1],
                            "test": [0, 0, 1, 1, 0]}
    assert (m.num_classes, m.sample_shape, m.sample_dtype) == (5, [2], "int64")
    assert m.created == "2031-02-03T04:05:06Z"
    assert m.fingerprint == sf.compute_fingerprint(m.files, None)


def test_write_packed_is_client_by_client_writer_by_writer_train_val_test(tmp_path, spill,
                                                                         quiet):
    out = tmp_path / "out"
    # clients given out of order; client 2 has two writers, in writer order wb before wa
    plan = Plan(clients={3: ["c"], 1: ["a"], 4: ["d"], 2: ["wb", "wa"]}, source={}, id=PID)
    per_writer = {"a": {"train": _rows([5, 0]), "val": _rows([1]), "test": _rows([])},
                  "wa": {"train": _rows([2]), "val": _rows([]), "test": _rows([3])},
                  "wb": {"train": _rows([7, 6]), "val": _rows([8]), "test": _rows([9])},
                  "c": {"train": _rows([11]), "val": _rows([]), "test": _rows([12])},
                  "d": {"train": _rows([20, 21]), "val": _rows([22]), "test": _rows([23])}}
    info = sharding.write_packed(str(out), plan, per_writer, spill, SPEC)
    order = [5, 0, 1, 7, 6, 8, 9, 2, 3, 11, 12, 20, 21, 22, 23]
    path = out / "packed" / "data.pt"
    x, y = split_file.read_split(str(path))
    assert x.tolist() == [sample(r) for r in order] and y.tolist() == [r % 5 for r in order]
    assert str(x.dtype) == "torch.int64"
    assert info == {"path": "packed/data.pt", "bytes": os.path.getsize(path),
                    "sha256": split_file.sha256_file(str(path))}
    pos = sharding._packed_positions(plan, per_writer)
    assert pos[("wb", "train")].tolist() == [3, 4] and pos[("wa", "test")].tolist() == [8]
    assert pos[("a", "test")].tolist() == [] and pos[("d", "test")].tolist() == [14]
    # a --link shard holds positions into that file, and its meta the file's size and sha
    packed = dict(info, path="../" + info["path"])
    rows = {s: sharding._client_rows(plan.clients[2], per_writer, s, pos) for s in sf.SPLITS}
    meta = sharding.write_shard(str(out), 2, ["wb", "wa"], rows, spill, PID, SPEC, packed)
    d = out / "client_2"
    assert split_file.read_index(str(d / "train.pt")).tolist() == [3, 4, 7]
    assert split_file.read_index(str(d / "test.pt")).tolist() == [6, 8]
    assert meta.packed == packed and meta.label_hist["train"] == [0, 1, 2, 0, 0]
    assert sharding.shard_verifies(str(d), 2, ["wb", "wa"], PID, info["sha256"])
    assert not sharding.shard_verifies(str(d), 2, ["wb", "wa"], PID, "0" * 64)


def test_resume_keeps_a_shard_only_for_its_client_writers_plan_and_files(tmp_path, spill):
    out = tmp_path / "out"
    out.mkdir()
    for k in (1, 2, 3, 4):
        sharding.write_shard(str(out), k, [f"w{k}a", f"w{k}b"], _client(k), spill, PID, SPEC,
                             None)
    d2 = str(out / "client_2")
    assert sharding.shard_verifies(d2, 2, ["w2a", "w2b"], PID, None)
    # client 2's shard copied to client 3's place, even with client 3 given its writers
    assert not sharding.shard_verifies(d2, 3, ["w2a", "w2b"], PID, None)
    assert not sharding.shard_verifies(d2, 2, ["w2b", "w2a"], PID, None)       # writer order
    assert not sharding.shard_verifies(d2, 2, ["w2a", "w2b"], "q" * 64, None)  # another plan
    assert not sharding.shard_verifies(d2, 2, ["w2a", "w2b"], PID, "ab" * 32)  # --link's sha
    assert not sharding.shard_verifies(str(out / "client_9"), 9, ["w9a"], PID, None)
    p = out / "client_4" / "val.pt"
    data = bytearray(p.read_bytes())
    data[-30] ^= 0x01                                   # same size, another sha256
    p.write_bytes(bytes(data))
    assert not sharding.shard_verifies(str(out / "client_4"), 4, ["w4a", "w4b"], PID, None)
    assert sharding.shard_verifies(str(out / "client_1"), 1, ["w1a", "w1b"], PID, None)


def test_resume_keeps_staged_shards_in_place_and_adopts_the_published_ones(tmp_path, spill):
    """--resume without --link: a packed file lying in the output is no reason to drop a shard
    (only --link shards name one); a staged shard that verifies is kept as it is (not rebuilt),
    one that only verifies in the published set is hard-linked into the stage."""
    from federatedscope.core.data import sharding_output as so
    out = tmp_path / "out"
    stage = out / so.STAGE
    stage.mkdir(parents=True)
    writers = {k: [f"w{k}a", f"w{k}b"] for k in (1, 2, 3, 4)}

    def shard(where, k, pid=PID):
        sharding.write_shard(str(where), k, writers[k], _client(k), spill, pid, SPEC, None)
    shard(stage, 1)
    shard(out, 2)                                   # only in the published set
    shard(stage, 4, pid="q" * 64)                   # staged by a run of another plan ...
    shard(out, 4)                                   # ... but published for this one
    for d in (stage, out):                          # strays from an earlier --link set
        (d / "packed").mkdir()
        (d / "packed" / "data.pt").write_bytes(b"not this run's")
    staged_dir = os.stat(stage / "client_1").st_ino
    args = sharding.ShardArgs(dataset="toy", out=str(out), clients=4, resume=True)
    plan = Plan(clients=writers, source={}, id=PID)
    assert sharding._resume_keep(args, plan, str(stage)) == ([1, 2, 4], None)
    assert os.stat(stage / "client_1").st_ino == staged_dir          # kept, not rebuilt
    for k in (2, 4):
        assert os.stat(stage / f"client_{k}" / "train.pt").st_ino == \
            os.stat(out / f"client_{k}" / "train.pt").st_ino         # hard-linked
        assert sf.read_meta(str(stage / f"client_{k}")).plan_id == PID
    assert not (stage / "client_3").exists()
    assert sharding._resume_keep(sharding.ShardArgs(dataset="toy", out=str(out)), plan,
                                 str(stage)) == ([], None)            # not --resume: nothing


def _train_labels(n_by_writer):
    return {w: {"train": _rows(list(range(n)))} for w, n in n_by_writer.items()}


@pytest.mark.parametrize("empty,listed", [
    (range(2, 11), "2, 3, 4, 5, 6, 7, 8, 9 ..."),        # nine: eight shown, then dots
    (range(3, 11), "3, 4, 5, 6, 7, 8, 9, 10"),           # eight: all shown
])
def test_clients_without_train_samples_are_refused_by_id(empty, listed):
    # ten clients of two writers each; client k's writers hold 0 + 0 train samples if k is
    # listed as empty, else 0 + 2 (one empty writer does not make its client empty)
    clients = {k: [f"w{k}a", f"w{k}b"] for k in range(1, 11)}
    per_writer = _train_labels({w: 0 if (k in empty or w.endswith("a")) else 2
                                for k, ws in clients.items() for w in ws})
    plan = Plan(clients=clients, source={}, id=PID)
    args = sharding.ShardArgs(dataset="toy", clients=10, splits=(0.05, 0.15, 0.8))
    with pytest.raises(sharding.ShardingError) as err:
        sharding._check_train(args, plan, per_writer)
    assert str(err.value) == (
        f"client(s) {listed} would have 0 train samples (--splits 0.05,0.15,0.8); they would "
        f"train on nothing every round. Nothing was changed. Give train a larger fraction "
        f"(e.g. --splits 0.6,0.2,0.2) or fewer --clients, or pass --allow-empty-train if this "
        f"is intended")
    args.allow_empty_train = True
    assert sharding._check_train(args, plan, per_writer) is None
    full = _train_labels({w: 1 for ws in clients.values() for w in ws})
    assert sharding._check_train(sharding.ShardArgs(dataset="toy"), plan, full) is None


# ----------------------------------------------------------------------------- whole runs
from test_sharding import leaf_copy, leaf_source, run  # noqa: E402,F401


@pytest.fixture
def leaf(leaf_source, tmp_path):
    return leaf_copy(leaf_source, tmp_path)


def _bytes_on_disk(out):
    """Every file of the set: manifest, the clients' files, the packed file (not the lock)."""
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(out)
               for n in names if n != ".lock")


@pytest.mark.parametrize("link", [False, True])
def test_the_summary_names_the_output_and_counts_its_bytes(leaf, tmp_path, monkeypatch, link):
    root, truth, _ = leaf
    monkeypatch.setattr(sf, "now_iso", lambda: "2031-02-03T04:05:06Z")
    out = tmp_path / "out"
    s = run(root, out, clients=4, link=link, splits=(0.5, 0.25, 0.25))
    assert (s.out, s.manifest, s.plot) == (str(out), str(out / "manifest.json"), "")
    assert (s.clients, s.written, s.reused) == (4, [1, 2, 3, 4], [])
    assert s.samples == sum(len(y) for _, y, _ in truth.values())
    assert s.bytes == _bytes_on_disk(out) and 0 < s.seconds < 600   # this run, not a clock
    assert (out / "packed" / "data.pt").is_file() is link
    man = sf.read_manifest(str(out / "manifest.json"))
    assert man.created == "2031-02-03T04:05:06Z"
    assert man.source["options"] == {
        "dataset": "femnist", "clients": 4, "strategy": "sequential", "assignment_sha256": "",
        "seed": 12345, "splits": [0.5, 0.25, 0.25], "subsample": 1.0, "link": link}
    raw = os.path.join(root, "femnist", "raw")
    assert {k: v for k, v in man.source.items() if k != "options"} == {
        "kind": "unsplit", "root": os.path.abspath(root), "path": raw, "inputs": 2,
        "writers": 7, "writers_used": 7, "subsample": 1.0}
    inputs = [os.path.join(raw, f"all_data_{i}.json") for i in (0, 1)]
    pid = plan_id(man.source["options"], "femnist", raw, inputs, man.writer_ids)
    assert {sf.read_meta(str(out / f"client_{k}")).plan_id for k in range(1, 5)} == {pid}
    again = run(root, out, clients=4, link=link, splits=(0.5, 0.25, 0.25), resume=True)
    assert (again.written, again.reused, again.bytes) == ([], [1, 2, 3, 4], s.bytes)


def test_progress_bars_go_to_stderr_only_when_asked_and_are_cleared(leaf, tmp_path, capsys,
                                                                    monkeypatch):
    import tqdm
    root, _, _ = leaf
    # a quiet run makes no tqdm bar at all (even a disabled one costs its first-bar lock)
    with monkeypatch.context() as m:
        m.setattr(tqdm, "tqdm", lambda *a, **k: pytest.fail("a bar was made for a quiet run"))
        run(root, tmp_path / "quiet", clients=4)
    assert capsys.readouterr().err == ""
    run(root, tmp_path / "shown", clients=4, progress=True)
    err = capsys.readouterr().err
    assert "\rreading input:   0%|          | 0/2 [00:00<?, ?input/s]" in err   # 2 files
    assert "\rwriting shards:   0%|          | 0/4 [00:00<?, ?it/s]" in err
    # leave=False: each bar is wiped when done, no finished bar stays on the terminal
    assert "\n" not in err and err.endswith("\r") and err.split("\r")[-2].strip() == ""


def test_the_staged_set_hashes_the_packed_file_once_and_names_it_when_it_fails(
        leaf, tmp_path, monkeypatch):
    from federatedscope.core.data import sharding_output as so
    from federatedscope.core.data import distributed_loader as verify
    root, _, _ = leaf
    out = tmp_path / "out"
    run(root, out, clients=4, link=True)
    hashed = []
    real = verify.sha256_file
    monkeypatch.setattr(verify, "sha256_file", lambda p: hashed.append(p) or real(p))
    man = so.verify_staged(str(out))          # the published set has the staged layout
    assert sorted(man.clients) == [1, 2, 3, 4]
    packed = os.path.normpath(str(out / "packed" / "data.pt"))
    assert hashed.count(packed) == 1 and len(hashed) == 1 + 4 * 3   # + each client's 3 files
    data = bytearray(open(packed, "rb").read())
    data[len(data) // 2] ^= 0x01              # same size, another sha256
    with open(packed, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(sharding.ShardingError) as err:
        so.verify_staged(str(out))
    assert str(err.value) == (
        f"the new packed file did not verify ({packed}: sha256 differs from meta.json (the "
        f"file was modified after it was prepared)); the old set was left as it was")


def test_a_staged_shard_that_does_not_match_its_manifest_entry_is_refused(leaf, tmp_path):
    from federatedscope.core.data import sharding_output as so
    root, _, _ = leaf
    out = tmp_path / "out"
    run(root, out, clients=4)
    man = sf.read_manifest(str(out / "manifest.json"))
    hist = list(man.clients[3].label_hist)
    i = next(c for c, n in enumerate(hist) if n)
    hist[i], hist[i + 1] = hist[i] - 1, hist[i + 1] + 1   # one sample moved to the next class:
    man.clients[3].label_hist = hist                      # files intact, the entry disagrees
    sf.write_manifest(str(out / "manifest.json"), man)
    with pytest.raises(sharding.ShardingError) as err:
        so.verify_staged(str(out))
    text = str(err.value)
    assert text.startswith(f"the new client_3 did not verify ({out / 'client_3' / 'meta.json'} "
                           f"does not match the manifest: ")
    assert text.endswith("; the old set was left as it was")


def test_the_swap_moves_the_old_manifest_out_first_and_the_new_one_in_last(
        leaf, tmp_path, monkeypatch):
    from federatedscope.core.data import sharding_output as so
    root, _, _ = leaf
    out = tmp_path / "out"
    run(root, out, clients=4, link=True)    # packed/ sorts after manifest.json: order by key
    moves = []
    real = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: moves.append((str(a), str(b))) or real(a, b))
    run(root, out, clients=4, seed=7, link=True, overwrite=True)
    trash = str(out / f".old-{os.getpid()}")
    stage = str(out / so.STAGE)
    olds = [(a, b) for a, b in moves if os.path.dirname(b) == trash]
    news = [(a, b) for a, b in moves if os.path.dirname(a) == stage
            and os.path.dirname(b) == str(out)]
    assert olds[0] == (str(out / "manifest.json"), os.path.join(trash, "manifest.json"))
    assert sorted(os.path.basename(a) for a, _ in olds) == \
        ["client_1", "client_2", "client_3", "client_4", "manifest.json", "packed"]
    assert news[-1] == (os.path.join(stage, "manifest.json"), str(out / "manifest.json"))
    assert len(news) == 6 and not os.path.exists(trash) and not os.path.exists(stage)
    assert sf.read_manifest(str(out / "manifest.json")).seed == 7


def test_spill_reads_one_cluster_per_gap_over_8_rows_and_names_a_truncated_spill(spill,
                                                                                monkeypatch):
    from federatedscope.core.data import sharding_input as si
    reads = []
    real = si.pread_exact
    monkeypatch.setattr(si, "pread_exact", lambda fd, n, off, *a: reads.append((n, off))
                        or real(fd, n, off, *a))
    spill.f.flush()
    assert spill.gather(np.array([20, 0, 10])).tolist() == [sample(20), sample(0), sample(10)]
    assert reads == [(16, 0), (16, 160), (16, 320)]         # gaps of 10 rows: three reads
    reads.clear()
    assert spill.gather(np.array([8, 0])).tolist() == [sample(8), sample(0)]
    assert reads == [(9 * 16, 0)]                           # a gap of exactly 8: read through
    os.truncate(spill.path, 5 * 16)
    with pytest.raises(sf.ShardError) as err:
        spill.gather(np.array([0, 20]))
    assert str(err.value) == (f"{spill.path}: file ended at byte 320, expected 336 "
                              f"(truncated while reading?)")


def test_subsample_with_a_manual_assignment_is_refused_before_the_file_is_read(leaf, tmp_path):
    root, _, _ = leaf
    with pytest.raises(sharding.ShardingError) as err:
        run(root, tmp_path / "out", clients=4, strategy="manual", subsample=0.5,
            assignment=str(tmp_path / "none.json"))
    assert str(err.value) == ("--subsample cannot be combined with --strategy manual: the "
                              "assignment file already chooses the writers")


def test_lda_deals_by_the_given_alpha(leaf, tmp_path):
    root, _, _ = leaf
    sizes = {}
    for alpha in (0.05, 0.5, 0.05):
        out = tmp_path / f"a{alpha}-{len(sizes)}"
        run(root, out, clients=4, strategy="lda", alpha=alpha, seed=3)
        man = sf.read_manifest(str(out / "manifest.json"))
        assert man.source["options"]["alpha"] == alpha
        sizes.setdefault(alpha, []).append([man.clients[k].label_hist for k in range(1, 5)])
    assert sizes[0.05][0] == sizes[0.05][1]          # seeded: the same alpha deals the same
    assert sizes[0.05][0] != sizes[0.5][0]           # another alpha deals otherwise
    # --seed picks the deal too, not only each client's train/val/test cut: the clients'
    # totals (what the deal alone decides) differ
    totals = []
    for seed in (3, 4):
        run(root, tmp_path / f"seed{seed}", clients=4, strategy="lda", alpha=0.05, seed=seed)
        man = sf.read_manifest(str(tmp_path / f"seed{seed}" / "manifest.json"))
        totals.append([sum(man.clients[k].num_samples.values()) for k in range(1, 5)])
    assert totals[0] != totals[1]


def test_a_splitter_refusal_names_the_strategy_flag(leaf, tmp_path):
    root, _, _ = leaf
    with pytest.raises(sharding.ShardingError) as err:
        run(root, tmp_path / "out", clients=0, strategy="iid")
    assert str(err.value).startswith("--strategy iid: IIDSplitter: federate.client_num must "
                                     "be >= 1")


def test_defaults_the_lock_and_the_command_a_refusal_names(leaf, tmp_path):
    root, _, _ = leaf
    s = run(root, "", clients=4)                     # --out defaults to <root>/<dataset>/shards
    out = os.path.join(root, "femnist", "shards")
    assert s.out == out and os.path.isfile(os.path.join(out, "manifest.json"))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(os.path.join(out, ".lock")).st_mode & 0o777 == 0o644 & ~umask
    with pytest.raises(sharding.ShardingError) as err:
        run(root, "", clients=4)                     # again, without a flag
    cmd = sf.recreate_command(out, "femnist", 4, root=root)
    assert f"; to replace them run: {cmd} --overwrite   (or finish" in str(err.value)


def test_random_assignment_keeps_each_clients_writers_in_input_order():
    from federatedscope.core.data.sharding_plan import assign
    ids = [f"w{i}" for i in range(6, 16)]            # w9 before w10: input, not string, order
    for seed in range(4):
        got = assign(ids, ids, 3, "random", seed, "")
        assert sorted(w for ws in got.values() for w in ws) == sorted(ids)
        assert all(ws == sorted(ws, key=ids.index) for ws in got.values())


def test_a_recut_refuses_when_client_1_would_lose_its_token(tmp_path):
    from types import SimpleNamespace as NS
    from federatedscope.core.data import sharding_output as so
    man = NS(clients={k: NS(token_hash="cd" * 32) for k in (2, 3, 4)})
    args = sharding.ShardArgs(dataset="toy", out=str(tmp_path), clients=4)
    with pytest.raises(sharding.ShardingError) as err:
        so.carry_tokens(args, so.Existing([], man, None), "CMD")
    assert "but client(s) 1 of the new partition would have none" in str(err.value)


def test_the_plot_is_named_in_the_output_and_a_lost_token_refusal_names_the_command(
        leaf, tmp_path):
    root, _, _ = leaf
    out = tmp_path / "out"
    s = run(root, out, clients=3, plot=True, tokens=str(tmp_path / "tok"))
    assert s.plot == str(out / "label_distribution.png")
    assert open(s.plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(sharding.ShardingError) as err:
        run(root, out, clients=4, overwrite=True)
    cmd = sf.recreate_command(str(out), "femnist", 4, root=root)
    assert str(err.value).endswith(f"new token: {cmd} --overwrite --tokens {out / 'tokens'}")


def test_resume_with_other_options_names_them_and_an_unreadable_manifest_is_logged(
        leaf, tmp_path):
    import logging
    from federatedscope.core.data import sharding_output as so
    root, _, _ = leaf
    out = tmp_path / "out"
    run(root, out, clients=4, seed=1)
    with pytest.raises(sharding.ShardingError) as err:
        run(root, out, clients=4, seed=2, link=True, resume=True)
    assert str(err.value).startswith(
        f"--resume would change the partition in {out}: --seed is 1 there, 2 here; --link is "
        f"False there, True here. Nothing was changed. To finish it, ")
    (out / "manifest.json").write_text("{")
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())
    log = logging.getLogger("federatedscope")
    keep, level = Keep(), log.level
    log.addHandler(keep)
    log.setLevel(logging.WARNING)
    try:
        assert so.look(str(out)).manifest is None
    finally:
        log.removeHandler(keep)
        log.setLevel(level)
    path = str(out / "manifest.json")
    assert len(seen) == 1 and seen[0].startswith(f"the existing {path} is unreadable ({path}")
    assert seen[0].endswith("); it is not kept")


def test_a_refused_or_failed_run_leaves_an_interrupted_runs_staging_alone(leaf, tmp_path,
                                                                          monkeypatch):
    """A .staging this run did not make is not its to remove: refused before it looks (no
    flag), or failing after --resume adopted it, the interrupted run's options stay for the
    next --resume."""
    import json
    from federatedscope.core.data import sharding_output as so
    root, _, _ = leaf
    out = tmp_path / "out"
    stage = out / so.STAGE
    stage.mkdir(parents=True)
    args = sharding.ShardArgs(dataset="femnist", root=root, out=str(out), clients=3,
                              resume=True, progress=False)
    (stage / so.OPTIONS).write_text(json.dumps(so.run_options(args), sort_keys=True))
    with pytest.raises(sharding.ShardingError, match="an interrupted run's .staging/"):
        run(root, out, clients=3)
    assert (stage / so.OPTIONS).is_file()

    def broken(*a, **kw):
        raise RuntimeError("input went away")
    monkeypatch.setattr(sharding, "read_input", broken)
    with pytest.raises(RuntimeError, match="input went away"):
        run(root, out, clients=3, resume=True)
    assert (stage / so.OPTIONS).is_file()


def test_the_spill_lives_in_the_stage_and_staged_tokens_go_when_the_swap_fails(
        leaf, tmp_path, monkeypatch):
    """The spill file sits in <out>/.staging (the output's file system, never the cwd); a run
    whose swap fails after the tokens were staged leaves no token file behind, committed or
    staged, and raises the swap's own error."""
    from federatedscope.core.data import sharding_output as so
    root, _, _ = leaf
    out, tok = tmp_path / "out", tmp_path / "tok"
    spills = []
    real_spill = sharding.Spill

    def spill(path, spec):
        spills.append(path)
        return real_spill(path, spec)

    def no_room(out_dir, stage):
        assert sorted(os.listdir(tok)) == [f"client_{k}.token.new" for k in (1, 2, 3)]
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(sharding, "Spill", spill)
    monkeypatch.setattr(so, "swap_in", no_room)
    with pytest.raises(OSError, match="No space left on device"):
        run(root, out, clients=3, tokens=str(tok))
    assert [os.path.dirname(p) for p in spills] == [str(out / so.STAGE)]
    assert os.listdir(tok) == []


class _Bar:
    """tqdm's interface as read_input uses it, recording every update."""
    made: list = []

    def __init__(self, **kw):
        self.kw, self.updates = kw, []
        _Bar.made.append(self)

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.closed = True


def _toy_reader(sources, bad=None):
    def iter_writers(root):
        for i, (src, n) in enumerate(sources):
            x = np.full((n, 2), i, np.int64) if src != bad else np.zeros((n, 3), np.int64)
            yield WriterSamples(f"w{i}", x, np.arange(n, dtype=np.uint8) % 5, src, None)
    return DatasetSpec(name="toy", sample_dtype="int64", sample_shape=(2,), num_classes=5,
                       model_input=(2,), iter_writers=iter_writers, list_inputs=lambda root: [])


def test_reading_counts_each_input_once_keeps_int64_labels_and_names_a_bad_file(
        tmp_path, monkeypatch):
    """3 inputs with 2, 1 and 2 writers: the bar advances once per input read (the last one
    too), labels the reader gives as uint8 are kept as int64, and a sample of the wrong shape is
    refused naming its file."""
    import tqdm
    from federatedscope.core.data.sharding_input import read_input
    monkeypatch.setattr(tqdm, "tqdm", _Bar)
    _Bar.made = []
    sources = [("a.json", 3), ("a.json", 2), ("b.json", 4), ("c.json", 1), ("c.json", 2)]
    s = Spill(str(tmp_path / "spill.bin"), SPEC)
    try:
        parts, kind = read_input(_toy_reader(sources), "root", ["a", "b", "c"], s, True)
        [bar] = _Bar.made
        assert bar.kw["total"] == 3 and bar.closed
        assert bar.updates == [0, 1, 1, 1] and sum(bar.updates) == 3
        assert kind == "unsplit" and sorted(parts) == ["w0", "w1", "w2", "w3", "w4"]
        assert [parts[f"w{i}"][None].row for i in range(5)] == [0, 3, 5, 9, 10]
        assert all(parts[w][None].y.dtype == np.int64 for w in parts)
        assert parts["w2"][None].y.tolist() == [0, 1, 2, 3] and parts["w2"][None].source == "b.json"
        with pytest.raises(sharding.ShardingError) as err:
            read_input(_toy_reader(sources, bad="b.json"), "root", ["a", "b", "c"], s, False)
        assert str(err.value) == ("b.json: the reader gave samples int64[3], but the dataset's "
                                  "spec says int64[2]")
        assert len(_Bar.made) == 1  # that read was quiet: no bar made
        _Bar.made = []          # inputs that hold no writer: nothing was read, the bar stays at 0
        with pytest.raises(sharding.ShardingError, match="the input is empty"):
            read_input(_toy_reader([]), "root", ["a", "b"], s, True)
        assert _Bar.made[0].updates == [0]
    finally:
        s.close()


def test_a_resumed_stage_loses_a_killed_runs_stale_files_and_dirs(leaf, tmp_path):
    """A killed run leaves temp names in the output (a spill file, an atomic-write temp, a
    half-written shard dir); the next run removes files and directories alike."""
    root, _, _ = leaf
    out = tmp_path / "out"
    run(root, out, clients=3)
    (out / ".spill-4242.bin").write_bytes(b"x" * 10)
    (out / ".manifest.json.tmp").write_bytes(b"{")
    (out / "client_2.tmp-4242").mkdir()
    (out / "client_2.tmp-4242" / "train.pt").write_bytes(b"")
    again = run(root, out, clients=3, resume=True)
    assert again.reused == [1, 2, 3]
    assert sorted(n for n in os.listdir(out) if n.startswith(".") or "tmp" in n) == [".lock"]
