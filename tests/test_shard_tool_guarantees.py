"""The shard tool's guarantees that used to be easy to break, each proved by a failing attempt:
--resume refuses a changed --subsample / --assignment (also against a manifest that did not
record an option); no staged set is swapped in unverified; --overwrite never keeps a stale
.staging/; sequential groups have the right sizes; the generic CLI; the manifest's dataset."""
import ast
import glob
import json
import os
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federatedscope.core.data import shard_format as sf
from federatedscope.core.data import sharding_output as so
from federatedscope.core.data.dataset_spec import get_spec
from federatedscope.core.data.sharding_plan import assign, group_bounds
from test_sharding import (ROOT, WRITERS, leaf_copy, leaf_source, run,  # noqa: F401
                           snapshot, write_leaf)
from harness.procs import run_script

CLI = os.path.join(ROOT, "scripts", "tools", "prepare_shards.py")


@pytest.fixture
def leaf(leaf_source, tmp_path):
    return leaf_copy(leaf_source, tmp_path)[0]


def test_resume_refuses_changed_subsample_and_assignment(leaf, tmp_path):
    out = tmp_path / "out"
    run(leaf, out, clients=3, subsample=0.9, seed=5)
    before = snapshot(out)
    with pytest.raises(ValueError) as ei:
        run(leaf, out, clients=3, subsample=0.5, seed=5, resume=True)
    assert "--subsample is 0.9 there, 0.5 here" in str(ei.value) and snapshot(out) == before
    # manual assignment: the same ids but another file content is another partition
    a = tmp_path / "assign.json"
    ids = sorted(WRITERS)
    a.write_text(json.dumps({"1": ids[:2], "2": ids[2:5], "3": ids[5:]}))
    out2 = tmp_path / "out2"
    run(leaf, out2, clients=3, strategy="manual", assignment=str(a))
    before = snapshot(out2)
    a.write_text(json.dumps({"1": ids[:3], "2": ids[3:5], "3": ids[5:]}))
    with pytest.raises(ValueError, match="--assignment: the file's content differs"):
        run(leaf, out2, clients=3, strategy="manual", assignment=str(a), resume=True)
    assert snapshot(out2) == before


def test_resume_refuses_when_the_set_did_not_record_an_option(leaf, tmp_path):
    """A manifest without recorded options (an older tool's) cannot prove --subsample is the
    same, so --resume refuses rather than keeping shards of another writer subset."""
    out = tmp_path / "out"
    run(leaf, out, clients=3)
    p = out / "manifest.json"
    m = sf.read_manifest(str(p))
    del m.source["options"]
    sf.write_manifest(str(p), m)
    with pytest.raises(ValueError, match="--subsample: that run did not record it"):
        run(leaf, out, clients=3, resume=True)


def test_swap_in_refuses_an_unverified_staged_set(leaf, tmp_path):
    out = tmp_path / "out"
    run(leaf, out, clients=3)
    before = snapshot(out)
    stage = out / so.STAGE
    shutil.copytree(out, stage, ignore=shutil.ignore_patterns(".lock", so.STAGE))
    p = stage / "client_2" / "val.pt"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit: only a sha256 check sees it
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="client_2 did not verify.*sha256 differs"):
        so.swap_in(str(out), str(stage))
    assert snapshot(out) == before  # nothing of the old set moved


def test_overwrite_drops_a_stale_staging(leaf, tmp_path):
    out = tmp_path / "out"
    run(leaf, out, clients=3)
    stale = out / so.STAGE / "client_9"
    stale.mkdir(parents=True)
    (stale / "meta.json").write_text("{}")
    (out / so.STAGE / "options.json").write_text(json.dumps({"clients": 9}))
    s = run(leaf, out, clients=2, overwrite=True)
    assert s.written == [1, 2] and not (out / so.STAGE).exists()
    assert sorted(n for n in os.listdir(out) if n.startswith("client_")) == ["client_1", "client_2"]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300), st.integers(1, 40))
def test_group_bounds_sizes(items, groups):
    b = group_bounds(items, groups)
    sizes = [hi - lo for lo, hi in b]
    assert len(b) == groups and b[0][0] == 0 and b[-1][1] == items
    assert all(b[i][1] == b[i + 1][0] for i in range(groups - 1))  # contiguous, in order
    q, r = divmod(items, groups)
    assert sizes == [q + 1] * r + [q] * (groups - r)  # larger groups first, differ by <= 1


def test_sequential_assignment_hand_computed():
    ids = [f"w{i:02d}" for i in range(10)]
    got = assign(ids, ids, 4, "sequential", 0, "")
    assert got == {1: ids[0:3], 2: ids[3:6], 3: ids[6:8], 4: ids[8:10]}


def test_generic_cli_records_dataset_and_sample_type(leaf, tmp_path):
    out = tmp_path / "cli"
    r = run_script([CLI, "--dataset", "femnist", "--root", leaf, "--clients",
                        "4", "--out", str(out), "--no-progress"],
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    m = sf.read_manifest(str(out / "manifest.json"))
    assert (m.dataset, m.sample_type, m.num_classes, m.total_clients) == \
        ("femnist", "uint8[28,28]", 62, 4)
    assert all(sf.read_meta(str(out / f"client_{k}")).dataset == "femnist" for k in range(1, 5))
    r = run_script([CLI, "--dataset", "nosuch", "--root", leaf, "--clients",
                        "2", "--out", str(tmp_path / "x"), "--no-progress"], cwd=ROOT, timeout=300)
    assert r.returncode == 1 and "'nosuch'" in r.stderr and "femnist" in r.stderr


def test_a_shard_of_another_dataset_is_refused(leaf, tmp_path):
    out = tmp_path / "out"
    run(leaf, out, clients=3)
    man = sf.read_manifest(str(out / "manifest.json"))
    meta = sf.read_meta(str(out / "client_1"))
    meta.dataset = "celeba"  # same files and fingerprint: only the dataset differs
    sf.write_meta(str(out / "client_1"), meta)
    with pytest.raises(sf.ShardError, match="dataset 'celeba' != manifest 'femnist'"):
        sf.verify_shard(str(out / "client_1"), entry=man.clients[1])
    sf.verify_shard(str(out / "client_2"), entry=man.clients[2])


def test_get_spec_names_the_known_types():
    assert get_spec("FEMNIST").sample_type == "uint8[28,28]"
    with pytest.raises(ValueError, match=r"known: \[.*'femnist'"):
        get_spec("nosuch")


def test_core_data_never_imports_a_domain_package():
    """The shard format, tool and loader read datasets only through registered specs (the
    builders in core/auxiliaries are DATAHOUSE's, checked by the import-linter contract)."""
    bad = []
    for path in glob.glob(os.path.join(ROOT, "federatedscope", "core", "data", "**", "*.py"),
                          recursive=True):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path}: {n}" for n in names if n.startswith(("federatedscope.cv",
                                                                   "federatedscope.nlp"))]
    assert bad == []
