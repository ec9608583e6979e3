"""Property tests of the shard format: every record survives to_dict -> JSON -> from_dict
unchanged, and verify_shard refuses any single-byte change of any split file of a shard
(meta.json is covered by its own checks: fingerprint recomputed, every field validated)."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federatedscope.core.data import shard_format as sf
from federatedscope.core.data.shard_format import split_file

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
sha = st.text("0123456789abcdef", min_size=64, max_size=64)
ncls = st.integers(1, 8)
wid = st.text("abcdefghij_0123456789", min_size=1, max_size=12)


@st.composite
def hist_and_count(draw, k):
    h = draw(st.lists(st.integers(0, 50), min_size=k, max_size=k))
    return h, sum(h)


@st.composite
def metas(draw):
    k = draw(ncls)
    hs = {s: draw(hist_and_count(k)) for s in sf.SPLITS}
    files = {n: sf.FileEntry(draw(st.integers(0, 10 ** 9)), draw(sha))
             for n in draw(st.sets(st.sampled_from(sf.SPLIT_FILES), min_size=1))}
    packed = draw(st.none() | st.fixed_dictionaries(
        {"path": st.just("../packed/data.pt"), "bytes": st.integers(0, 10 ** 9), "sha256": sha}))
    m = sf.ShardMeta(draw(st.integers(1, 10 ** 6)), draw(st.sampled_from(["femnist", "celeba"])),
                     draw(st.lists(wid, max_size=5)), {s: hs[s][1] for s in sf.SPLITS},
                     {s: hs[s][0] for s in sf.SPLITS}, files, k,
                     draw(st.lists(st.integers(1, 64), min_size=1, max_size=3)),
                     draw(st.sampled_from(sf.SAMPLE_DTYPES)), "", draw(st.text(max_size=20)),
                     packed, draw(st.text("0123456789abcdef", max_size=32)))
    m.fingerprint = sf.compute_fingerprint(files, packed)
    return m


@st.composite
def manifests(draw):
    k = draw(ncls)
    ids = draw(st.lists(st.integers(1, 10 ** 5), min_size=1, max_size=8, unique=True))
    st_type = draw(st.sampled_from(["uint8[28,28]", "int64[80]", "uint8[3,32,32]"]))
    clients, writers = {}, {}
    for cid in ids:
        h, n = draw(hist_and_count(k))
        clients[cid] = sf.ManifestEntry(
            cid, f"client_{cid}", {"train": n, "val": draw(st.integers(0, 9)),
                                   "test": draw(st.integers(0, 9))}, draw(sha), h,
            draw(st.just("") | sha), st_type, "femnist")
        if draw(st.booleans()):
            writers[cid] = draw(st.lists(wid, max_size=4))
    return sf.Manifest("femnist", draw(st.sampled_from(["sequential", "random", "manual"])),
                       draw(st.integers(-2 ** 40, 2 ** 40)),
                       draw(st.lists(st.floats(0, 1), min_size=3, max_size=3)),
                       {"kind": "unsplit", "n": draw(st.integers())}, clients, k, st_type,
                       None, draw(st.text(max_size=20)), writer_ids=writers)


def _json(d):
    return json.loads(json.dumps(d))


@SETTINGS
@given(metas())
def test_shard_meta_round_trip(m):
    assert sf.ShardMeta.from_dict(_json(m.to_dict()), sf.Checker("meta.json", "fix")) == m


@SETTINGS
@given(manifests())
def test_manifest_round_trip_in_memory_and_on_disk(tmp_path, m):
    assert sf.Manifest.from_dict(_json(m.to_dict()), sf.Checker("manifest.json", "fix")) == m
    p = str(tmp_path / "manifest.json")
    sf.write_manifest(p, m)
    assert sf.read_manifest(p) == m


@SETTINGS
@given(manifests(), st.sampled_from(["", "femnist"]))
def test_declaration_round_trip_and_matches_its_entry(m, ds):
    for e in m.clients.values():
        d = sf.ShardDeclaration(e.client_id, dict(e.num_samples), e.fingerprint,
                                list(e.label_hist), e.sample_type, ds)
        assert sf.ShardDeclaration.from_dict(_json(d.to_dict())) == d
        assert sf.check_declaration(e, d) == []


@SETTINGS
@given(st.integers(0, 10 ** 12), sha)
def test_file_entry_round_trip(n, h):
    e = sf.FileEntry(n, h)
    assert sf.FileEntry.from_dict(_json(e.to_dict()), sf.Checker("x", "y"), "f") == e


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """A real 3-split shard (sizes as the tool writes them) with its meta."""
    d = tmp_path_factory.mktemp("shard") / "client_1"
    d.mkdir()
    rng = np.random.default_rng(0)
    files, hist, counts = {}, {}, {}
    for s, n in zip(sf.SPLITS, (12, 4, 5)):
        x = torch.from_numpy(rng.integers(0, 256, (n, 6, 6), dtype=np.uint8))
        y = torch.from_numpy(rng.integers(0, 5, n).astype(np.int64))
        p = str(d / f"{s}.pt")
        split_file.write_split(p, x, y)
        files[f"{s}.pt"] = sf.FileEntry(os.path.getsize(p), split_file.sha256_file(p))
        hist[s], counts[s] = torch.bincount(y, minlength=5).tolist(), n
    m = sf.ShardMeta(1, "toy", ["w1"], counts, hist, files, 5, [6, 6])
    m.fingerprint = sf.compute_fingerprint(files)
    sf.write_meta(str(d), m)
    return d


@SETTINGS
@given(st.sampled_from(sf.SPLIT_FILES), st.floats(0, 1, exclude_max=True), st.integers(1, 255))
def test_verify_shard_refuses_any_single_byte_change(shard, tmp_path, name, where, xor):
    d = tmp_path / "c"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(shard, d)
    sf.verify_shard(str(d))  # the copy verifies
    p = d / name
    data = bytearray(p.read_bytes())
    i = int(where * len(data))
    data[i] ^= xor
    p.write_bytes(bytes(data))
    with pytest.raises(sf.ShardError, match=f"{name}: sha256 differs"):
        sf.verify_shard(str(d))
    sf.verify_shard(str(d), check_sha=False)  # size alone cannot see it: the hash is the check
