"""verify_shard, the one shard check, on a real 4-client set: plain and --link (packed) shards,
the loader's ``strict_check False`` (missing split files), the shared-file hash memo, the
client-id and manifest-entry checks, and the fix command each error ends with."""
import calendar
import os
import re
import shutil
import time

import numpy as np
import pytest
import torch

from federatedscope.core.data import shard_format as sf
from federatedscope.core.data import distributed_loader as verify
from federatedscope.core.data.shard_format import split_file

COUNTS = {"train": 6, "val": 2, "test": 3}
NCLS = 4


def _split(path, n, seed):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, (n, 5, 5), dtype=np.uint8))
    y = torch.from_numpy((np.arange(n) % NCLS).astype(np.int64))
    split_file.write_split(path, x, y)
    return sf.FileEntry(os.path.getsize(path), split_file.sha256_file(path))


def _shard(base, cid, packed=None):
    d = base / f"client_{cid}"
    d.mkdir()
    files = {f"{s}.pt": _split(str(d / f"{s}.pt"), n, 10 * cid + i)
             for i, (s, n) in enumerate(COUNTS.items())}
    hist = {s: np.bincount(np.arange(n) % NCLS, minlength=NCLS).tolist()
            for s, n in COUNTS.items()}
    m = sf.ShardMeta(cid, "femnist", [f"w{cid}"], dict(COUNTS), hist, files, NCLS, [5, 5],
                     packed=packed)
    m.fingerprint = sf.compute_fingerprint(files, packed)
    sf.write_meta(str(d), m)
    return m


def _entry(m, **kw):
    e = dict(client_id=m.client_id, shard_path=f"client_{m.client_id}",
             num_samples=dict(m.num_samples), fingerprint=m.fingerprint,
             label_hist=list(m.label_hist["train"]), sample_type=m.sample_type, dataset="femnist")
    e.update(kw)
    return sf.ManifestEntry(**e)


@pytest.fixture
def shards(tmp_path):
    """Clients 1-2 plain, 3-4 --link shards sharing ``packed/data.pt`` (as the tool lays out)."""
    base = tmp_path / "set"
    base.mkdir()
    (base / "packed").mkdir()
    pk = _split(str(base / "packed" / "data.pt"), 40, 99)
    packed = {"path": "../packed/data.pt", "bytes": pk.bytes, "sha256": pk.sha256}
    metas = {c: _shard(base, c, packed if c > 2 else None) for c in (1, 2, 3, 4)}
    return base, metas


def _raises(shard, match, **kw):
    with pytest.raises(sf.ShardError) as ei:
        sf.verify_shard(str(shard), **kw)
    assert re.search(match, str(ei.value)), str(ei.value)
    return str(ei.value)


def test_every_client_of_the_set_verifies_against_its_entry(shards):
    base, metas = shards
    for cid, m in metas.items():
        got = sf.verify_shard(str(base / f"client_{cid}"), entry=_entry(m), client_id=cid)
        assert got == m


def test_packed_file_of_a_link_shard_is_checked(shards):
    base, _ = shards
    pk = base / "packed" / "data.pt"
    packed_path = os.path.normpath(str(base / "client_3" / "../packed/data.pt"))
    data = bytearray(pk.read_bytes())
    data[len(data) // 2] ^= 0x5A
    pk.write_bytes(bytes(data))
    _raises(base / "client_3", re.escape(f"{packed_path}: sha256 differs"))
    sf.verify_shard(str(base / "client_1"))           # a plain shard does not use it
    pk.write_bytes(bytes(data[:-7]))
    _raises(base / "client_4", re.escape(f"{packed_path}: {len(data) - 7} bytes but meta.json "
                                         f"says {len(data)}"), check_sha=False)
    pk.unlink()
    _raises(base / "client_3", re.escape(f"missing {packed_path}"), missing_splits_ok=True)


def test_sha_memo_hashes_a_shared_packed_file_once(shards, monkeypatch):
    base, metas = shards
    calls = []
    real = verify.sha256_file
    monkeypatch.setattr(verify, "sha256_file", lambda p: calls.append(p) or real(p))
    memo = {}
    for cid in (3, 4):
        sf.verify_shard(str(base / f"client_{cid}"), sha_memo=memo)
    packed_path = os.path.normpath(str(base / "packed" / "data.pt"))
    # 2 shards x 3 split files, and the packed file once
    assert len(calls) == 7 and calls.count(packed_path) == 1
    assert memo[packed_path] == metas[3].packed["sha256"]
    # the memo is trusted: a stale hash in it is reported, not recomputed
    memo[packed_path] = "0" * 64
    _raises(base / "client_4", re.escape(f"{packed_path}: sha256 differs"), sha_memo=memo)


def test_missing_split_files_only_with_missing_splits_ok(shards):
    base, _ = shards
    c2 = base / "client_2"
    (c2 / "val.pt").unlink()
    msg = _raises(c2, re.escape(f"missing {c2 / 'val.pt'} (meta.json lists it)"))  # the default
    # --resume re-creates just the damaged shards of the set, of the meta's dataset
    assert msg.endswith(f"lists it); re-create it with: python scripts/tools/prepare_shards.py "
                        f"--dataset femnist --root data --clients N --out {base} --resume"), msg
    sf.verify_shard(str(c2), missing_splits_ok=True)
    # a missing split does not end the check: a later (sorted) file is still looked at
    (c2 / "test.pt").unlink()
    tr = c2 / "train.pt"
    tr.write_bytes(tr.read_bytes()[:-1])
    _raises(c2, re.escape(f"{tr}: "), missing_splits_ok=True)
    both = _raises(c2, "missing")          # every problem, one sentence each
    assert re.search(re.escape(f"missing {c2 / 'test.pt'} (meta.json lists it); {tr}: "), both)
    # a split that is there but damaged is reported even when missing ones are allowed
    c1 = base / "client_1"
    va = c1 / "val.pt"
    va.write_bytes(va.read_bytes() + b"\0")
    _raises(c1, re.escape(f"{va}: "), missing_splits_ok=True)


def test_missing_shard_directory_names_the_fix(shards):
    base, metas = shards
    gone = base / "client_9"
    msg = _raises(gone, "does not exist", entry=_entry(metas[1], client_id=9))
    assert str(gone) in msg and f"(cwd {os.getcwd()})" in msg
    # no --overwrite/--resume: there is nothing to keep or replace; the set is the parent
    assert msg.endswith(f"--dataset femnist --root data --clients N --out {base}"), msg
    assert _raises(gone, "does not exist").endswith(
        f"--dataset NAME --root data --clients N --out {base}")


def test_unreadable_meta_names_the_overwrite_fix(shards):
    base, metas = shards
    c4 = base / "client_4"
    (c4 / "meta.json").write_text("{not json")
    msg = _raises(c4, "malformed JSON", entry=_entry(metas[4]))
    assert str(c4 / "meta.json") in msg
    assert msg.endswith(f"--dataset femnist --root data --clients N --out {base} --overwrite")
    assert _raises(c4, "malformed JSON").endswith(
        f"--dataset NAME --root data --clients N --out {base} --overwrite")


def test_shard_of_another_client_is_refused(shards):
    base, _ = shards
    msg = _raises(base / "client_2", "belongs to client", client_id=3)
    assert msg.startswith(f"{base / 'client_2' / 'meta.json'} belongs to client 2, but this "
                          f"process is client 3; point distributed_data.shard_path at client_3")


def test_shard_that_differs_from_its_manifest_entry(shards):
    base, metas = shards
    m = metas[2]
    bad = _entry(m, num_samples={"train": 6, "val": 3, "test": 3})
    msg = _raises(base / "client_2", "does not match the manifest", entry=bad)
    assert f"{base / 'client_2' / 'meta.json'} does not match the manifest: val count 2 != " \
           f"manifest 3" in msg
    # a shard cut from another dataset: the declaration carries the meta's dataset
    assert sf.ShardDeclaration.of_meta(m).dataset == "femnist"
    _raises(base / "client_2", re.escape("dataset 'femnist' != manifest 'celeba'"),
            entry=_entry(m, dataset="celeba"))


def test_symlink_escape_fix_names_the_dataset(tmp_path):
    base = tmp_path / "shards"
    base.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", base / "client_1")
    e = sf.ManifestEntry(1, "client_1", dict(COUNTS), "a" * 64, [6], dataset="celeba")
    with pytest.raises(sf.ManifestError, match="outside the manifest's directory") as ei:
        sf.shard_dir(str(base / "manifest.json"), e)
    assert "--dataset celeba " in str(ei.value)


def test_now_iso_is_utc_whatever_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        stamp = sf.now_iso()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp), stamp
    assert abs(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) - time.time()) < 60


def test_loader_is_re_exported_lazily():
    from federatedscope.core.data.distributed_loader import DistributedShardLoader
    assert sf.DistributedShardLoader is DistributedShardLoader
    with pytest.raises(AttributeError, match="shard_format' has no attribute 'Loader'"):
        getattr(sf, "Loader")
