"""The shard format's errors are its interface with an operator: each names the source, the
field and the fix. Declarations off the wire, meta.json fields, the writer-id lookup and the
declaration-vs-manifest reasons, each at the exact text an operator reads."""
import json

import pytest

from federatedscope.core.data import shard_format as sf

FIX = "fix: the client's shard (re-run the client after fixing it)"
FP_A, FP_B = "0123456789ab" + "c" * 52, "fedcba987654" + "3" * 52


def _decl(**kw):
    d = {"client_id": 3, "num_samples": {"train": 4, "val": 1, "test": 2}, "fingerprint": FP_A,
         "label_hist": [1, 0, 3], "sample_type": "uint8[28,28]", "dataset": "femnist"}
    d.update(kw)
    return d


@pytest.mark.parametrize("bad,field", [
    ("nope", "declaration"),
    ({k: v for k, v in _decl().items() if k != "fingerprint"}, "declaration.fingerprint"),
    (_decl(num_samples={"train": 4, "val": -1, "test": 2}), "num_samples.val"),
    (_decl(num_samples=[4, 1, 2]), "num_samples"),
    (_decl(fingerprint="F" * 64), "fingerprint"),
    (_decl(label_hist=[1, 0, 2]), "label_hist"),
    (_decl(sample_type=7), "sample_type"),
    (_decl(dataset=["femnist"]), "dataset"),
    (_decl(sample_type="u" * 65), "sample_type/dataset/label_hist"),
    (_decl(dataset="d" * 65), "sample_type/dataset/label_hist"),
    (_decl(label_hist=[0] * 100_000 + [4]), "sample_type/dataset/label_hist"),
])
def test_declaration_errors_name_the_field_and_the_fix(bad, field):
    with pytest.raises(sf.ManifestError) as ei:
        sf.ShardDeclaration.from_dict(bad)
    msg = str(ei.value)
    assert msg.startswith(f"join declaration: field '{field}' ") and msg.endswith(FIX), msg


def test_declaration_size_limits_are_inclusive():
    d = sf.ShardDeclaration.from_dict(_decl(sample_type="u" * 64, dataset="d" * 64,
                                            label_hist=[0] * 99_999 + [4]))
    assert (len(d.sample_type), len(d.dataset), len(d.label_hist)) == (64, 64, 100_000)


def _meta_dict(tmp_path, **kw):
    files = {"train.pt": sf.FileEntry(10, FP_A)}
    m = sf.ShardMeta(2, "femnist", ["w"], {"train": 4, "val": 0, "test": 0},
                     {"train": [4, 0], "val": [0, 0], "test": [0, 0]}, files, 2, [28, 28])
    m.fingerprint = sf.compute_fingerprint(files)
    d = m.to_dict()
    d.pop("created", None), d.pop("plan_id", None)
    d.update(kw)
    shard = tmp_path / "set" / "client_2"
    shard.mkdir(parents=True)
    (shard / "meta.json").write_text(json.dumps(d))
    return shard, m


@pytest.mark.parametrize("kw,field", [({"sample_dtype": "int16"}, "sample_dtype"),
                                      ({"sample_shape": []}, "sample_shape"),
                                      ({"sample_shape": 28}, "sample_shape"),
                                      ({"sample_shape": [28, 0]}, "sample_shape")])
def test_meta_sample_type_fields(tmp_path, kw, field):
    shard, _ = _meta_dict(tmp_path, **kw)
    with pytest.raises(sf.ManifestError) as ei:
        sf.read_meta(str(shard))
    msg = str(ei.value)
    assert msg.startswith(f"{shard / 'meta.json'}: field '{field}' is "
                          if field == "sample_dtype" else
                          f"{shard / 'meta.json'}: field '{field}' must be a list of positive "
                          f"integers, got {kw[field]!r}"), msg
    if field == "sample_dtype":
        assert "is 'int16'; supported: ['uint8', 'int64', 'float32']" in msg
    # read_meta of the directory: the fix re-creates the set the shard belongs to
    assert msg.endswith(f"--dataset NAME --root data --clients N --out {shard.parent} --resume")


def test_read_meta_takes_the_shard_directory(tmp_path):
    shard, m = _meta_dict(tmp_path)
    assert sf.read_meta(str(shard)) == sf.read_meta(str(shard / "meta.json")) == m
    assert (m.created, m.plan_id) == ("", "")   # optional fields: absent reads as empty
    (shard / "meta.json").write_text(json.dumps({**m.to_dict(), "created": 5, "plan_id": [1]}))
    got = sf.read_meta(str(shard))
    assert (got.created, got.plan_id) == ("", "")   # and a hand-edited non-string is dropped
    (shard / "meta.json").write_text(json.dumps({**m.to_dict(), "created": "T", "plan_id": "p"}))
    assert (sf.read_meta(str(shard)).created, sf.read_meta(str(shard)).plan_id) == ("T", "p")


def test_writer_id_lookup_errors_name_the_recut(tmp_path):
    clients = {k: sf.ManifestEntry(k, f"client_{k}", {"train": 2, "val": 0, "test": 0}, FP_A,
                                   [1, 1]) for k in range(1, 5)}
    man = sf.Manifest("celeba", "random", 3, [0.8, 0.1, 0.1], {"kind": "unsplit"}, clients, 2,
                      "uint8[3,8,8]", writer_ids={k: [f"w{k}"] for k in range(1, 4)})
    p = str(tmp_path / "manifest.json")
    sf.write_manifest(p, man)
    assert sf.read_writer_ids(p, 2) == ["w2"]
    fix = f"--dataset celeba --root data --clients 4 --out {tmp_path} --overwrite"
    for cid, what in ((4, "client 4's entry has no 'writer_ids'"), (9, "client 9 is not listed")):
        with pytest.raises(sf.ManifestError) as ei:
            sf.read_writer_ids(p, cid)
        assert str(ei.value).startswith(f"{p}: {what}") and str(ei.value).endswith(fix)


def _entry():
    return sf.ManifestEntry(3, "client_3", {"train": 4, "val": 1, "test": 2}, FP_B, [1, 0, 3],
                            sample_type="uint8[28,28]", dataset="femnist")


def test_declaration_reasons_read_exactly():
    decl = sf.ShardDeclaration.from_dict(_decl(label_hist=[1, 0, 3, 0]))
    assert sf.check_declaration(_entry(), decl) == [
        "fingerprint 0123456789ab... != manifest fedcba987654... (the shard differs from the "
        "one prepared)",
        "train label_hist differs from the manifest (4 bins vs 3)"]


def test_a_given_sample_type_overrides_the_entry():
    decl = sf.ShardDeclaration.from_dict(_decl(fingerprint=FP_B))
    assert sf.check_declaration(_entry(), decl) == []
    assert sf.check_declaration(_entry(), decl, sample_type="int64[80]") == [
        "sample type 'uint8[28,28]' != manifest 'int64[80]'"]
    # a shard not known by path: its set is the current directory; the default flag resumes
    assert sf.recreate_message("gone", "/sets/a/client_1") == (
        "gone; re-create it with: python scripts/tools/prepare_shards.py --dataset NAME --root data "
        "--clients N --out /sets/a --resume")
    assert sf.shard_fix("") == ("python scripts/tools/prepare_shards.py --dataset NAME --root data "
                                "--clients N --out . --resume")
