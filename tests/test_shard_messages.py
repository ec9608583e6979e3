"""The shard format's errors are its interface with an operator: each names the source, the
field and the fix. Declarations off the wire, meta.json fields, the writer-id lookup and the
declaration-vs-manifest reasons, each at the exact text an operator reads."""
import json
import re

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
    (_decl(label_hist=[5, -1, 0]), "label_hist"),        # sums to 4, but a negative bin
    (_decl(label_hist=(1, 0, 3)), "label_hist"),         # a tuple is not a JSON list
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


def _raw_manifest(tmp_path, dataset="femnist", ncls=2):
    clients = {k: sf.ManifestEntry(k, f"client_{k}", {"train": 2, "val": 0, "test": 1}, FP_A,
                                   [1, 1] + [0] * (ncls - 2)) for k in range(1, 5)}
    man = sf.Manifest(dataset, "random", 3, [0.8, 0.1, 0.1], {"kind": "unsplit"}, clients, ncls,
                      "int64[5]")
    p = tmp_path / "manifest.json"
    sf.write_manifest(str(p), man)
    return p, json.loads(p.read_text())


def _read_raw(p, d):
    p.write_text(json.dumps(d))
    return sf.read_manifest(str(p))


def test_manifest_dataset_defaults(tmp_path):
    # an unregistered dataset is fine when the manifest records num_classes and sample_type
    p, d = _raw_manifest(tmp_path, dataset="toy_unregistered")
    m = _read_raw(p, d)
    assert (m.num_classes, m.sample_type) == (2, "int64[5]")
    # an older manifest without sample_type takes it from the registered spec, keeping its own
    # num_classes
    p, d = _raw_manifest(tmp_path, ncls=62)
    del d["sample_type"]
    m = _read_raw(p, d)
    assert (m.num_classes, m.sample_type) == (62, "uint8[28,28]")
    d["num_classes"], d["sample_type"] = 0, "int64[5]"
    with pytest.raises(sf.ManifestError, match=r"field 'num_classes' must be a positive integer"):
        _read_raw(p, d)
    d["num_classes"], d["sample_type"] = 62, 5
    with pytest.raises(sf.ManifestError, match=r"field 'sample_type' must be a string, got int"):
        _read_raw(p, d)


@pytest.mark.parametrize("path,why", [
    ("C:client_1", "it must be a path relative to the manifest's directory"),
    ("c:/client_1", "it must be a path relative to the manifest's directory"),
    ("\\\\abs\\\\client_1", "it must be a path relative to the manifest's directory"),
    ("", "it must be a path relative to the manifest's directory"),
    ("sub\\\\..\\\\..\\\\x", "which escapes the manifest's directory ('..'); shards must live under "
                        "the directory holding manifest.json"),
])
def test_shard_paths_of_other_systems_refused(tmp_path, path, why):
    p, d = _raw_manifest(tmp_path)
    d["clients"][2]["shard_path"] = path
    with pytest.raises(sf.ManifestError) as ei:
        _read_raw(p, d)
    assert f"field 'clients[2].shard_path' is {path!r}" in str(ei.value)
    assert why in str(ei.value), str(ei.value)


def test_a_colon_later_in_the_name_is_a_relative_path(tmp_path):
    p, d = _raw_manifest(tmp_path)
    d["clients"][0]["shard_path"] = "client_1:v2"
    assert _read_raw(p, d).clients[1].shard_path == "client_1:v2"


def test_declaration_of_another_client_id():
    entry = _entry()
    decl = sf.ShardDeclaration.from_dict(_decl(client_id=4, fingerprint=FP_B))
    assert sf.check_declaration(entry, decl) == ["client id 4 != manifest entry 3"]
    with pytest.raises(sf.ManifestError, match=r"^join declaration: field 'client_id' must be a "
                                               r"positive integer, got 0"):
        sf.ShardDeclaration.from_dict(_decl(client_id=0))
    with pytest.raises(sf.ManifestError, match=r"field 'sample_type/dataset/label_hist' is "
                                               r"implausibly large; fix"):
        sf.ShardDeclaration.from_dict(_decl(dataset="d" * 65))


@pytest.mark.parametrize("drop,set_,err", [
    ("num_classes", {}, None),
    ("num_classes", {"sample_type": 5}, "field 'sample_type' must be a string, got int"),
    ("sample_type", {"num_classes": 0}, "field 'num_classes' must be a positive integer, got 0"),
    ("sample_type", {"num_classes": 62, "sample_type": None}, None),
])
def test_older_manifest_fields_from_the_spec(tmp_path, drop, set_, err):
    p, d = _raw_manifest(tmp_path, ncls=62)
    del d[drop]
    d.update(set_)
    if set_.get("sample_type", "") is None:
        del d["sample_type"]
    if err is None:
        m = _read_raw(p, d)
        assert m.num_classes == 62
        assert m.sample_type == ("int64[5]" if drop == "num_classes" else "uint8[28,28]")
    else:
        with pytest.raises(sf.ManifestError, match=re.escape(err)):
            _read_raw(p, d)


def test_older_manifest_of_an_unregistered_dataset(tmp_path):
    p, d = _raw_manifest(tmp_path, dataset="toy_unregistered")
    del d["num_classes"], d["sample_type"]
    with pytest.raises(sf.ManifestError) as ei:
        _read_raw(p, d)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: field 'num_classes' is missing and ") and "toy_unregistered" in msg


def test_manifest_packed_round_trip_and_compact_client_lines(tmp_path):
    p, d = _raw_manifest(tmp_path)
    m = _read_raw(p, d)
    m.packed = {"path": "packed/data.pt", "bytes": 3, "sha256": FP_A}
    sf.write_manifest(str(p), m)
    assert sf.read_manifest(str(p)).packed == m.packed
    text = p.read_text()
    assert '\n  {"client_id":2,"shard_path":"client_2","num_samples":{"train":2,"val":0,"test":1},' \
           in text


def test_manifest_errors_recut_with_its_own_client_count(tmp_path):
    p, d = _raw_manifest(tmp_path)
    d["seed"] = "x"
    with pytest.raises(sf.ManifestError) as ei:
        _read_raw(p, d)
    assert str(ei.value).endswith(f"--dataset femnist --root data --clients 4 --out {tmp_path} "
                                  f"--overwrite")
    del d["total_clients"]
    with pytest.raises(sf.ManifestError) as ei:
        _read_raw(p, d)
    assert str(ei.value).endswith(f"--dataset femnist --root data --clients N --out {tmp_path} "
                                  f"--overwrite")


def test_manifest_created_is_optional(tmp_path):
    p, d = _raw_manifest(tmp_path)
    d.pop("created", None)
    assert _read_raw(p, d).created == ""
    d["created"] = "2026-01-02T03:04:05Z"
    assert _read_raw(p, d).created == "2026-01-02T03:04:05Z"


def test_manifest_without_a_dataset_recut_names_a_placeholder(tmp_path):
    p, d = _raw_manifest(tmp_path)
    del d["dataset"]
    for bad in (d, [d]):
        with pytest.raises(sf.ManifestError) as ei:
            _read_raw(p, bad)
        assert str(ei.value).endswith(f"--dataset NAME --root data --clients "
                                      f"{4 if bad is d else 'N'} --out {tmp_path} --overwrite")


@pytest.mark.parametrize("edit,clients,dataset", [
    ({"total_clients": 0}, "N", "femnist"),        # not a count to re-cut with
    ({"total_clients": 1}, "1", "femnist"),
    ({"dataset": 5}, "4", "NAME"),                  # not a name to re-cut with
])
def test_manifest_fix_uses_only_plausible_header_values(tmp_path, edit, clients, dataset):
    p, d = _raw_manifest(tmp_path)
    d.update(edit, seed="x")
    with pytest.raises(sf.ManifestError) as ei:
        _read_raw(p, d)
    assert str(ei.value).endswith(f"--dataset {dataset} --root data --clients {clients} "
                                  f"--out {tmp_path} --overwrite"), str(ei.value)


def test_fix_command_defaults(tmp_path, monkeypatch):
    assert sf.recreate_command("") == ("python scripts/tools/prepare_shards.py --dataset NAME "
                                       "--root data --clients N --out .")
    monkeypatch.chdir(tmp_path)
    assert sf.manifest_fix("manifest.json") == (
        f"python scripts/tools/prepare_shards.py --dataset NAME --root data --clients N "
        f"--out {tmp_path} --overwrite")


def test_unreadable_manifest_files(tmp_path):
    p = tmp_path / "manifest.json"
    p.write_bytes(b'{"dataset": "\xff"}')           # not UTF-8
    with pytest.raises(sf.ManifestError, match=f"^{p}: malformed JSON"):
        sf.read_manifest(str(p))
    with pytest.raises(sf.ManifestError, match=rf"^{tmp_path}: cannot read \(Is a directory\); "
                                               rf"fix: python scripts/tools/prepare_shards.py"):
        sf.read_manifest(str(tmp_path))


def test_meta_json_layout_one_compact_field_a_line(tmp_path):
    shard, m = _meta_dict(tmp_path)
    sf.write_meta(str(shard), m)
    lines = (shard / "meta.json").read_text().splitlines()
    assert ' "num_samples": {"train":4,"val":0,"test":0},' in lines
    assert ' "label_hist": {"train":[4,0],"val":[0,0],"test":[0,0]},' in lines


def test_count_and_histogram_texts():
    with pytest.raises(sf.ManifestError, match=r"field 'num_samples' must have exactly the keys "
                                               r"\['train', 'val', 'test'\], got \['test', 'train'\]"):
        sf.ShardDeclaration.from_dict(_decl(num_samples={"train": 4, "test": 2}))
    with pytest.raises(sf.ManifestError, match=r"field 'label_hist' must be a list of "
                                               r"non-negative integers; fix"):
        sf.ShardDeclaration.from_dict(_decl(label_hist=[5, -1, 0]))
    # zero counts are valid (a client may hold no validation samples)
    d = sf.ShardDeclaration.from_dict(_decl(num_samples={"train": 4, "val": 0, "test": 0}))
    assert d.num_samples == {"train": 4, "val": 0, "test": 0}
