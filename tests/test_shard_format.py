"""shard_format records and files: round trips, every bad input, declarations, scale."""
import json
import os
import random
import stat
import time

import numpy as np
import pytest

from federatedscope.core.data import shard_format as mu
from federatedscope.core.data.shard_format import split_file
from federatedscope.core.data.shard_format import (FileEntry, Manifest, ManifestEntry,
                                                            ManifestError, ShardDeclaration, ShardMeta)

SHA_A, SHA_B = "a" * 64, "b" * 64
U8 = "uint8[28,28]"


def _hist(total, ncls=62, seed=0):
    rnd = random.Random(seed)
    h = [0] * ncls
    for _ in range(total):
        h[rnd.randrange(ncls)] += 1
    return h


def _entry(cid, train=10):
    return ManifestEntry(cid, f"client_{cid}", {"train": train, "val": 3, "test": 4}, SHA_A,
                         _hist(train, seed=cid), sample_type=U8, dataset="femnist")


def M(strategy, seed, source, clients, **kw):
    """A FEMNIST-shaped manifest (the records carry no dataset defaults)."""
    return Manifest("femnist", strategy, seed, [0.6, 0.2, 0.2], source, clients, 62, U8, **kw)


def _manifest(n=3):
    return M("sequential", 7, {"kind": "unsplit"}, {k: _entry(k, 10 + k) for k in range(1, n + 1)})


def _meta(cid=2):
    files = {"train.pt": FileEntry(100, SHA_A), "val.pt": FileEntry(50, SHA_B),
             "test.pt": FileEntry(60, SHA_A)}
    m = ShardMeta(client_id=cid, dataset="femnist", writer_ids=["w1", "w2"],
                  num_samples={"train": 5, "val": 2, "test": 1},
                  label_hist={"train": _hist(5), "val": _hist(2), "test": _hist(1)}, files=files,
                  num_classes=62, sample_shape=[28, 28], created=mu.now_iso())
    m.fingerprint = mu.compute_fingerprint(files)
    return m


def _write_raw(path, obj):
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def _raw_manifest(tmp_path):
    p = tmp_path / "manifest.json"
    mu.write_manifest(str(p), _manifest())
    with open(p) as f:
        return json.load(f)


def _expect(path, field, *more):
    """Read ``path`` and assert the error names the file, the field and a fix command."""
    with pytest.raises(ManifestError) as ei:
        mu.read_manifest(path) if os.path.basename(path).startswith("manifest") else mu.read_meta(path)
    msg = str(ei.value)
    # the field as the message quotes it: a renamed field ('XXlabel_hist') must not pass
    quoted = field if field == "malformed JSON" else f"field '{field}"
    assert str(path) in msg and quoted in msg and "prepare_shards.py" in msg, msg
    for m in more:
        assert m in msg, msg
    return msg


# ----------------------------------------------------------------------------- round trips
def test_manifest_round_trip(tmp_path):
    p = str(tmp_path / "manifest.json")
    m = _manifest(5)
    mu.write_manifest(p, m)
    got = mu.read_manifest(p)
    assert got.total_clients == 5 and got.clients == m.clients
    assert (got.dataset, got.strategy, got.seed, got.splits) == ("femnist", "sequential", 7, [0.6, 0.2, 0.2])
    assert mu.load_manifest(p)[3].shard_path == "client_3"
    assert mu.shard_dir(p, got.clients[2]) == os.path.join(str(tmp_path), "client_2")
    assert not [n for n in os.listdir(tmp_path) if n != "manifest.json"]  # no temp files left


def test_token_hash_is_optional_and_checked(tmp_path):
    p = str(tmp_path / "manifest.json")
    m = _manifest(2)
    m.clients[2].token_hash = SHA_B
    mu.write_manifest(p, m)
    got = mu.load_manifest(p)
    assert got[2].token_hash == SHA_B and got[1].token_hash == ""
    with open(p) as f:
        d = json.load(f)
    assert "token_hash" not in d["clients"][0]
    d["clients"][1]["token_hash"] = "my-secret-token"  # a token, not its hash: refused
    _expect(_write_raw(tmp_path / "manifest.json", d), "clients[1].token_hash")


def test_meta_round_trip_and_fingerprint(tmp_path):
    m = _meta()
    mu.write_meta(str(tmp_path), m)
    got = mu.read_meta(str(tmp_path / "meta.json"))
    assert got.files == m.files and got.label_hist == m.label_hist and got.client_id == 2
    assert got.fingerprint == mu.compute_fingerprint(m.files)
    assert got.sample_type == "uint8[28,28]"
    # order of files does not matter; a different sha does
    rev = dict(reversed(list(m.files.items())))
    assert mu.compute_fingerprint(rev) == m.fingerprint
    assert mu.compute_fingerprint({**m.files, "val.pt": FileEntry(50, SHA_A)}) != m.fingerprint


def test_fingerprint_is_pinned():
    """Existing shards carry fingerprints: the formula (sorted 'name\\0sha\\n' lines, a --link
    shard's packed file as 'packed:<path>') must never change."""
    import hashlib
    files = {"val.pt": FileEntry(5, SHA_B), "train.pt": FileEntry(9, SHA_A)}
    packed = {"path": "../packed/data.pt", "bytes": 3, "sha256": SHA_B}
    lines = [f"packed:../packed/data.pt\0{SHA_B}\n", f"train.pt\0{SHA_A}\n", f"val.pt\0{SHA_B}\n"]
    assert mu.compute_fingerprint(files, packed) == hashlib.sha256("".join(lines).encode()).hexdigest()
    assert mu.compute_fingerprint(files) == hashlib.sha256("".join(lines[1:]).encode()).hexdigest()


_WRITERS = {
    "meta": lambda d, **kw: mu.write_meta(os.path.join(d, "meta.json"), _meta(), **kw),
    "split": lambda d, **kw: split_file.write_split_chunks(
        os.path.join(d, "train.pt"), np.array([1, 0, 2, 1]), (3,),
        [np.arange(12, dtype=np.uint8).reshape(4, 3)], **kw),
    "index": lambda d, **kw: split_file.write_index(os.path.join(d, "train.pt"),
                                                    np.array([4, 0, 9]), **kw),
}


@pytest.mark.parametrize("writer", sorted(_WRITERS))
def test_shard_writers_fsync_unless_told_not_to(tmp_path, monkeypatch, writer):
    """By default a write is durable: the file, then its directory (the rename), are fsynced.
    The shard tool passes durable=False and syncs its whole staged tree once instead."""
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)))
    for k, (kw, want) in enumerate([({}, [False, True]), ({"durable": True}, [False, True]),
                                    ({"durable": False}, [])]):
        d = tmp_path / str(k)
        d.mkdir()
        synced.clear()
        _WRITERS[writer](str(d), **kw)
        assert synced == want, kw
        assert len(os.listdir(d)) == 1          # the file itself, no temp file left behind


# ----------------------------------------------------------------------------- bad manifests
def test_malformed_json(tmp_path):
    p = _write_raw(tmp_path / "manifest.json", '{"format_version": 1, "clients": [')
    with pytest.raises(ManifestError) as ei:
        mu.load_manifest(p)
    assert p in str(ei.value) and "malformed JSON" in str(ei.value)
    assert "prepare_shards.py" in str(ei.value)


def test_missing_manifest_file(tmp_path):
    with pytest.raises(ManifestError, match="file not found"):
        mu.load_manifest(str(tmp_path / "manifest.json"))


@pytest.mark.parametrize("path", ["../client_1", "client_1/../../x", "/abs/client_1", ".."])
def test_shard_path_escape_rejected(tmp_path, path):
    d = _raw_manifest(tmp_path)
    d["clients"][0]["shard_path"] = path
    p = _write_raw(tmp_path / "manifest.json", d)
    _expect(p, "clients[0].shard_path")


def test_inner_dotdot_that_stays_inside_is_allowed(tmp_path):
    d = _raw_manifest(tmp_path)
    d["clients"][0]["shard_path"] = "sub/../client_1"
    p = _write_raw(tmp_path / "manifest.json", d)
    assert mu.load_manifest(p)[1].shard_path == "sub/../client_1"


def test_duplicate_client_id(tmp_path):
    d = _raw_manifest(tmp_path)
    d["clients"][2]["client_id"] = 1
    p = _write_raw(tmp_path / "manifest.json", d)
    _expect(p, "clients[2].client_id", "duplicates client id 1")


def test_unknown_format_version(tmp_path):
    d = _raw_manifest(tmp_path)
    d["format_version"] = 2
    p = _write_raw(tmp_path / "manifest.json", d)
    _expect(p, "format_version", "format 1")


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.pop("clients"), "clients"),
    (lambda d: d["clients"][1].pop("fingerprint"), "clients[1].fingerprint"),
    (lambda d: d["clients"][1].update(client_id="2"), "clients[1].client_id"),
    (lambda d: d["clients"][1].update(client_id=0), "clients[1].client_id"),
    (lambda d: d["clients"][1]["num_samples"].update(train=-1), "clients[1].num_samples.train"),
    (lambda d: d["clients"][1]["num_samples"].update(train=1.5), "clients[1].num_samples.train"),
    (lambda d: d["clients"][1]["num_samples"].pop("val"), "clients[1].num_samples"),
    (lambda d: d["clients"][1].update(fingerprint="xyz"), "clients[1].fingerprint"),
    (lambda d: d["clients"][1]["label_hist"].pop(), "clients[1].label_hist"),
    (lambda d: d["clients"][1]["label_hist"].__setitem__(0, "3"), "clients[1].label_hist"),
    (lambda d: d["clients"][1].update(shard_path=7), "clients[1].shard_path"),
    (lambda d: d.update(total_clients=4), "total_clients"),
    (lambda d: d.update(seed="7"), "seed"),
    (lambda d: d.update(splits=[0.5, 0.5]), "splits"),
    (lambda d: d.update(clients={}), "clients"),
    (lambda d: d["clients"].__setitem__(1, 5), "clients[1]' must be a JSON object"),
    (lambda d: d.update(dataset=["femnist"]), "dataset' must be a string, got list"),
    (lambda d: d.update(strategy=1), "strategy' must be a string, got int"),
    (lambda d: d.update(clients={"1": {}}), "clients' must be a list of client entries"),
    (lambda d: d.update(clients=[]), "clients' lists no clients (a partition needs at least one)"),
    (lambda d: d.update(total_clients=-3), "total_clients' must be a non-negative integer"),
    (lambda d: d.update(total_clients=5), "total_clients' is 5 but 'clients' lists 3 entries"),
    (lambda d: d.update(packed={"path": "../packed/data.pt", "bytes": 1, "sha256": SHA_A}),
     "packed.path' is '../packed/data.pt', which escapes"),
    (lambda d: d.update(splits=[0.6, -0.1, 0.5]), "splits' must be 3 non-negative fractions, got "
                                                  "[0.6, -0.1, 0.5]"),
    (lambda d: d.update(seed=7.0), "seed' must be an integer, got 7.0"),
    (lambda d: d.update(source="unsplit"), "source' must be a JSON object, got str"),
    (lambda d: d["clients"][1]["label_hist"].append(0),
     "clients[1].label_hist' has 63 bins, expected num_classes=62"),
])
def test_wrong_or_missing_fields(tmp_path, mutate, field):
    d = _raw_manifest(tmp_path)
    mutate(d)
    _expect(_write_raw(tmp_path / "manifest.json", d), field)


def test_count_vs_histogram_mismatch(tmp_path):
    d = _raw_manifest(tmp_path)
    d["clients"][0]["num_samples"]["train"] += 1
    _expect(_write_raw(tmp_path / "manifest.json", d), "clients[0].label_hist", "sums to")


def test_top_level_not_an_object(tmp_path):
    _expect(_write_raw(tmp_path / "manifest.json", [1, 2]), "manifest")


# ----------------------------------------------------------------------------- bad meta
@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.update(format_version=99), "format_version"),
    (lambda d: d.update(client_id=-1), "client_id"),
    (lambda d: d["num_samples"].update(train=6), "label_hist.train"),
    (lambda d: d["files"]["train.pt"].update(sha256="0" * 64), "fingerprint"),
    (lambda d: d["files"].update({"../evil.pt": {"bytes": 1, "sha256": SHA_A}}),
     "files.../evil.pt' is not one of ['train.pt', 'val.pt', 'test.pt']"),
    (lambda d: d.update(sample_dtype="float64"), "sample_dtype"),
    (lambda d: d.update(sample_shape=[28, 0]), "sample_shape"),
    (lambda d: d.pop("writer_ids"), "writer_ids"),
    (lambda d: d.update(packed={"path": "/abs/data.pt", "bytes": 1, "sha256": SHA_A}),
     "packed.path' must be relative to the shard directory"),
    (lambda d: d.update(packed={"path": "../p.pt", "bytes": 1, "sha256": "x"}),
     "packed.sha256' must be 64 lower-case hex digits"),
    (lambda d: d.update(packed={"path": 5, "bytes": 1, "sha256": SHA_A}),
     "packed.path' must be a string, got int"),
    (lambda d: d.update(num_samples=[5, 2, 1]), "num_samples'"),
    (lambda d: d.update(num_classes=0), "num_classes'"),
    (lambda d: d.update(label_hist=[1]), "label_hist'"),
    (lambda d: d["label_hist"].update(train=[5, 0]), "label_hist.train' has 2 bins, expected "
                                                     "num_classes=62"),
    (lambda d: d.update(files=["train.pt"]), "files'"),
    (lambda d: d["files"]["train.pt"].update(bytes=-1), "files.train.pt.bytes'"),
    (lambda d: d.update(fingerprint="F" * 64), "fingerprint' must be 64"),
    (lambda d: d.update(fingerprint="0" * 64), "fingerprint' does not match the sha256s listed "
                                               "under 'files' (meta.json was edited)"),
    (lambda d: d.pop("client_id"), "client_id' is missing"),
    (lambda d: d.update(client_id="2"), "client_id' must be a positive integer"),
    (lambda d: d.update(dataset=5), "dataset' must be a string, got int"),
    (lambda d: d.update(writer_ids=["w1", 2]), "writer_ids' must be a list of strings"),
    (lambda d: d["files"].update({"val.pt": 50}), "files.val.pt' must be a JSON object"),
    (lambda d: d.update(packed="../packed/data.pt"), "packed' must be a JSON object, got str"),
    (lambda d: d.update(packed={"path": "../p.pt", "bytes": 1}), "packed.sha256' is missing"),
    (lambda d: d.update(packed={"path": "../p.pt", "bytes": -1, "sha256": SHA_A}),
     "packed.bytes' must be a non-negative integer, got -1"),
    (lambda d: d["files"]["val.pt"].pop("sha256"), "files.val.pt.sha256' is missing"),
    (lambda d: d["files"]["val.pt"].update(sha256="z"), "files.val.pt.sha256' must be 64"),
])
def test_bad_meta(tmp_path, mutate, field):
    p = tmp_path / "client_2" / "meta.json"
    mu.write_meta(str(p), _meta())
    with open(p) as f:
        d = json.load(f)
    mutate(d)
    _expect(_write_raw(p, d), field)


def test_meta_not_an_object(tmp_path):
    _expect(_write_raw(tmp_path / "meta.json", [1]), "meta' must be a JSON object, got list")


def test_meta_malformed_json(tmp_path):
    p = _write_raw(tmp_path / "meta.json", "{nope")
    _expect(p, "malformed JSON")


# ----------------------------------------------------------------------------- declarations
def test_declaration_round_trip_and_match():
    e = _entry(4)
    d = ShardDeclaration(4, dict(e.num_samples), e.fingerprint, list(e.label_hist), U8, "femnist")
    back = ShardDeclaration.from_dict(json.loads(json.dumps(d.to_dict())))
    assert back == d
    assert mu.check_declaration(e, back) == []


def test_declaration_mismatches():
    e = _entry(4)
    ok = ShardDeclaration(4, dict(e.num_samples), e.fingerprint, list(e.label_hist), U8)
    assert "not listed in the manifest" in mu.check_declaration(None, ok)[0]
    bad = ShardDeclaration(4, {**e.num_samples, "test": 99}, SHA_B, list(e.label_hist), U8)
    reasons = mu.check_declaration(e, bad)
    assert any("test count 99 != manifest 4" in r for r in reasons)
    assert any("fingerprint" in r for r in reasons)
    h = list(e.label_hist)
    i = next(i for i, v in enumerate(h) if v > 0)
    h[i], h[(i + 1) % len(h)] = h[i] - 1, h[(i + 1) % len(h)] + 1  # same total, moved label
    r = mu.check_declaration(e, ShardDeclaration(4, dict(e.num_samples), e.fingerprint, h, U8))
    assert len(r) == 1 and "label_hist" in r[0] and f"class {i}" in r[0]
    r = mu.check_declaration(e, ShardDeclaration(4, dict(e.num_samples), e.fingerprint,
                                                 list(e.label_hist), "float32[784]"))
    assert r and "sample type" in r[0]
    r = mu.check_declaration(e, ShardDeclaration(4, dict(e.num_samples), e.fingerprint,
                                                 list(e.label_hist), U8, "celeba"))
    assert len(r) == 1 and "dataset 'celeba' != manifest 'femnist'" in r[0]


@pytest.mark.parametrize("bad", [
    None, [], {"client_id": 1},
    {"client_id": "1", "num_samples": {"train": 1, "val": 0, "test": 0}, "fingerprint": SHA_A,
     "label_hist": [1], "sample_type": "uint8[28,28]"},
    {"client_id": 1, "num_samples": {"train": 1, "val": 0}, "fingerprint": SHA_A,
     "label_hist": [1], "sample_type": "uint8[28,28]"},
    {"client_id": 1, "num_samples": {"train": 1, "val": 0, "test": 0}, "fingerprint": "zz",
     "label_hist": [1], "sample_type": "uint8[28,28]"},
    {"client_id": 1, "num_samples": {"train": 2, "val": 0, "test": 0}, "fingerprint": SHA_A,
     "label_hist": [1], "sample_type": "uint8[28,28]"},
    {"client_id": 1, "num_samples": {"train": 1, "val": 0, "test": 0}, "fingerprint": SHA_A,
     "label_hist": [1.0], "sample_type": "uint8[28,28]"},
    {"client_id": 1, "num_samples": {"train": 1, "val": 0, "test": 0}, "fingerprint": SHA_A,
     "label_hist": [1], "sample_type": 5},
])
def test_declaration_from_network_is_strict(bad):
    with pytest.raises(ManifestError):
        ShardDeclaration.from_dict(bad)


# ----------------------------------------------------------------------------- scale
def test_10000_clients_load_under_half_a_second(tmp_path):
    p = str(tmp_path / "manifest.json")
    n = 10_000
    mu.write_manifest(p, M("random", 1, {"kind": "unsplit"},
                           {k: _entry(k, 40) for k in range(1, n + 1)}))
    best = float("inf")
    for _ in range(3):  # best of 3, in CPU time: the machine is shared (xdist, other jobs)
        t = time.process_time()
        entries = mu.load_manifest(p)
        best = min(best, time.process_time() - t)
    assert len(entries) == n and entries[n].client_id == n
    assert best < 0.5, f"loading {n} clients took {best:.3f} s"


# ----------------------------------------------------------------------------- issue 13 rows
def test_zero_client_manifest_refused(tmp_path):
    p = str(tmp_path / "manifest.json")
    mu.write_manifest(p, M("sequential", 7, {}, {}))
    msg = _expect(p, "clients", "lists no clients")
    with pytest.raises(ManifestError, match="lists no clients"):
        mu.load_manifest(p)  # the server's and the loader's entry point too
    assert msg


def test_shard_path_symlink_outside_refused(tmp_path):
    base = tmp_path / "shards"
    base.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, base / "client_1")
    (base / "client_2").mkdir()
    p = str(base / "manifest.json")
    mu.write_manifest(p, M("sequential", 7, {}, {1: _entry(1), 2: _entry(2)}))
    man = mu.read_manifest(p)  # lexically fine: 'client_1' has no '..'
    with pytest.raises(ManifestError) as ei:
        mu.shard_dir(p, man.clients[1])
    assert "symlink" in str(ei.value) and str(outside) in str(ei.value) and "client 1" in str(ei.value)
    assert mu.shard_dir(p, man.clients[2]) == os.path.realpath(base / "client_2")
    # a caller's resolved base (verify_staged resolves it once for all shards) checks the same
    real_base = mu.manifest_base(p)
    assert real_base == os.path.realpath(base)
    assert mu.shard_dir(p, man.clients[2], real_base) == os.path.realpath(base / "client_2")
    with pytest.raises(ManifestError, match="symlink"):
        mu.shard_dir(p, man.clients[1], real_base)
    inner = base / "inner"
    inner.mkdir()
    os.symlink(inner, base / "client_3")  # a link that stays inside is fine
    assert mu.shard_dir(p, _entry(3)) == os.path.realpath(inner)


def test_check_declaration_compares_sample_type_without_being_told(tmp_path):
    """The server calls check_declaration(entry, decl): the entry carries the manifest's type."""
    p = str(tmp_path / "manifest.json")
    m = _manifest()
    m.sample_type = "uint8[28,28]"
    mu.write_manifest(p, m)
    e = mu.load_manifest(p)[2]
    assert e.sample_type == "uint8[28,28]"
    good = ShardDeclaration(2, dict(e.num_samples), e.fingerprint, list(e.label_hist), U8)
    assert mu.check_declaration(e, good) == []
    bad = ShardDeclaration(2, dict(e.num_samples), e.fingerprint, list(e.label_hist),
                           "float32[3,224,224]")
    r = mu.check_declaration(e, bad)
    assert len(r) == 1 and "float32[3,224,224]" in r[0] and "uint8[28,28]" in r[0]
    m.sample_type = "uint8[32,32]"  # another dataset's manifest: its type reaches the entries
    mu.write_manifest(p, m)
    assert mu.check_declaration(mu.load_manifest(p)[2], good) != []


def test_declaration_of_meta_matches_its_manifest_entry():
    meta = _meta(2)
    e = ManifestEntry(2, "client_2", dict(meta.num_samples), meta.fingerprint,
                      list(meta.label_hist["train"]), sample_type=U8, dataset="femnist")
    assert mu.check_declaration(e, ShardDeclaration.of_meta(meta)) == []


def _manifest_with_writers(p, n):
    wids = {k: [f"f{k:05d}_{j}" for j in range(3)] for k in range(1, n + 1)}
    mu.write_manifest(p, M("random", 1, {"kind": "unsplit"},
                           {k: _entry(k, 40) for k in range(1, n + 1)}, writer_ids=wids))
    return wids


def test_writer_ids_round_trip_as_json(tmp_path):
    p = str(tmp_path / "manifest.json")
    n = 2_000
    wids = _manifest_with_writers(p, n)
    assert mu.read_writer_ids(p, 1_999) == wids[1_999]
    assert mu.read_manifest(p).writer_ids == wids
    with pytest.raises(ManifestError, match="not listed"):
        mu.read_writer_ids(p, n + 1)
    with open(p) as f:
        d = json.load(f)
    del d["clients"][4]["writer_ids"]  # an older tool's entry: refused by name, not guessed
    _write_raw(p, d)
    with pytest.raises(ManifestError, match="client 5's entry has no 'writer_ids'"):
        mu.read_writer_ids(p, 5)


def test_writer_ids_validated_and_hand_edited_layout(tmp_path):
    p = str(tmp_path / "manifest.json")
    _manifest_with_writers(p, 3)
    with open(p) as f:
        d = json.load(f)
    with open(p, "w") as f:
        json.dump(d, f, indent=2)  # any JSON layout reads the same (no line-prefix parsing)
    assert mu.read_writer_ids(p, 2) == ["f00002_0", "f00002_1", "f00002_2"]
    d["clients"][1]["writer_ids"] = [1, 2]
    _expect(_write_raw(tmp_path / "manifest.json", d), "clients[1].writer_ids")


def test_server_admission_refuses_another_sample_type(tmp_path):
    """The server's own call (Admission -> check_declaration(entry, decl)) now sees the type."""
    from federatedscope.core.workers.admission import Admission
    p = str(tmp_path / "manifest.json")
    mu.write_manifest(p, _manifest())
    adm = Admission(mu.load_manifest(p), strict=True)
    e = mu.load_manifest(p)[1]
    decl = ShardDeclaration(1, dict(e.num_samples), e.fingerprint, list(e.label_hist),
                            "float32[3,224,224]")
    d = adm.admit({"client_id": 1, "declaration": decl.to_dict()}, set())
    assert not d.accepted  # (the reason text is the server's business)
    decl.sample_type = "uint8[28,28]"
    d = adm.admit({"client_id": 1, "declaration": decl.to_dict()}, set())
    assert d.accepted, d.reason
