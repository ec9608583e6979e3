"""Issue 13's sharding rows: nothing lost (a failed re-cut keeps the old set byte-identical),
nothing silently coerced (every bad sample names file, writer and index), tokens survive a re-cut.
All in-process and fast."""
import hashlib
import json
import logging
import os
import stat
import sys

import pytest

from federatedscope.core.data import shard_format as mu
from federatedscope.core.data.sharding import ShardingError
from test_sharding import (ROOT, TOOL, WRITERS, check_partition, leaf_copy,  # noqa: F401
                           leaf_source, run, snapshot, write_leaf)

sys.path.insert(0, os.path.join(ROOT, "scripts", "tools"))
from make_client_tokens import make_tokens  # noqa: E402
from harness.procs import run_script


@pytest.fixture
def leaf(leaf_source, tmp_path):
    return leaf_copy(leaf_source, tmp_path)


def _leaf_file(path, users, user_data, num_samples=None):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    d = {"users": users, "user_data": user_data}
    if num_samples is not None:
        d["num_samples"] = num_samples
    with open(path, "w") as f:
        json.dump(d, f)
    return str(path)


def _img(v=0.0, n=784):
    return [v] * n


# ----------------------------------------------------------------------------- nothing lost
@pytest.mark.parametrize("change", ["too_many_clients", "subsample_nan", "malformed_input",
                                    "bad_label_in_new_input"])
def test_failed_overwrite_leaves_old_set_byte_identical(leaf, tmp_path, change):
    root, truth, raw = leaf
    out = tmp_path / "out"
    run(root, out, clients=3)
    before = snapshot(out)
    kw = {"clients": 3}
    if change == "too_many_clients":
        kw["clients"] = 400
    elif change == "subsample_nan":
        kw["subsample"] = float("nan")
    elif change == "malformed_input":
        (raw / "all_data_2.json").write_text('{"users": ["w"], "user_data": {"w": ')
    else:
        _leaf_file(raw / "all_data_2.json", ["w9"], {"w9": {"x": [_img()], "y": [3.7]}}, [1])
    with pytest.raises((ShardingError, ValueError)):
        run(root, out, overwrite=True, **kw)
    assert snapshot(out) == before
    check_partition(out, truth, 3)  # still loads and verifies


def test_failed_overwrite_cli_exits_1_and_keeps_the_set(leaf, tmp_path):
    root, _, _ = leaf
    out = tmp_path / "out"
    run(root, out, clients=3)
    before = snapshot(out)
    r = run_script([TOOL, "--root", root, "--clients", "400", "--out", str(out),
                        "--overwrite", "--no-progress"])
    assert r.returncode == 1 and "--clients 400" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(out) == before


def test_resume_with_changed_options_refused(leaf, tmp_path, monkeypatch):
    root, truth, _ = leaf
    out = tmp_path / "out"
    run(root, out, clients=5)
    before = snapshot(out)
    for kw, says in (({"clients": 3}, "--clients is 5 there, 3 here"),
                     ({"clients": 5, "splits": (0.5, 0.3, 0.2)}, "--splits is 0.6,0.2,0.2 there"),
                     ({"clients": 5, "strategy": "random"}, "--strategy is sequential there"),
                     ({"clients": 5, "link": True}, "--link is False there")):
        with pytest.raises(ShardingError) as ei:
            run(root, out, resume=True, **kw)
        assert says in str(ei.value) and "--overwrite" in str(ei.value), str(ei.value)
        assert snapshot(out) == before  # client_4 and client_5 were not silently kept or lost
    monkeypatch.setattr(mu, "now_iso", lambda: "2099-01-01T00:00:00Z")  # a later second
    s = run(root, out, clients=5, resume=True)  # the same options: verified, nothing rewritten
    assert s.reused == [1, 2, 3, 4, 5] and s.written == [] and snapshot(out) == before


def test_foreign_files_in_out_survive_overwrite(leaf, tmp_path):
    root, truth, _ = leaf
    out = tmp_path / "out"
    run(root, out, clients=3)
    (out / "NOTES.txt").write_text("mine")
    run(root, out, clients=2, overwrite=True)
    assert (out / "NOTES.txt").read_text() == "mine" and not (out / "client_3").exists()
    check_partition(out, truth, 2)


def test_writer_ids_recorded_per_client(leaf, tmp_path):
    root, truth, _ = leaf
    run(root, tmp_path / "out", clients=3)
    man = str(tmp_path / "out" / "manifest.json")
    for k in (1, 2, 3):
        assert mu.read_writer_ids(man, k) == mu.read_meta(str(tmp_path / "out" / f"client_{k}")).writer_ids
    assert sorted(sum(mu.read_manifest(man).writer_ids.values(), [])) == sorted(truth)


# ----------------------------------------------------------------------------- tokens
def _hashes(out):
    return {k: e.token_hash for k, e in mu.load_manifest(str(out / "manifest.json")).items()}


def test_token_hashes_survive_resume_and_overwrite(leaf, tmp_path):
    root, truth, _ = leaf
    out = tmp_path / "out"
    run(root, out, clients=3)
    make_tokens(str(out / "manifest.json"), str(out / "tokens"))
    hashes = _hashes(out)
    assert all(len(h) == 64 for h in hashes.values())
    assert mu.read_writer_ids(str(out / "manifest.json"), 2)  # the rewrite kept writer ids
    with open(out / "client_2" / "val.pt", "r+b") as f:  # damage: --resume redoes client 2
        f.seek(900)
        f.write(b"\xff")
    s = run(root, out, clients=3, resume=True)
    assert s.written == [2] and _hashes(out) == hashes
    run(root, out, clients=3, overwrite=True, seed=5)
    assert _hashes(out) == hashes
    before = snapshot(out)
    with pytest.raises(ShardingError) as ei:  # client 4 would join without a token
        run(root, out, clients=4, overwrite=True)
    assert "client(s) 4" in str(ei.value) and "--tokens" in str(ei.value)
    assert snapshot(out) == before
    tok = tmp_path / "tok"
    run(root, out, clients=4, overwrite=True, tokens=str(tok))
    new = _hashes(out)
    assert sorted(new) == [1, 2, 3, 4] and not set(new.values()) & set(hashes.values())
    for k, h in new.items():
        p = tok / f"client_{k}.token"
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
        assert hashlib.sha256(p.read_text().strip().encode()).hexdigest() == h
    assert not [n for n in os.listdir(tok) if n.endswith(".new")]
    check_partition(out, truth, 4)


def test_failed_recut_with_tokens_keeps_old_tokens(leaf, tmp_path):
    root, _, _ = leaf
    out, tok = tmp_path / "out", tmp_path / "tok"
    run(root, out, clients=3, tokens=str(tok))
    files = {n: (tok / n).read_bytes() for n in os.listdir(tok)}
    before = snapshot(out)
    with pytest.raises(ShardingError):
        run(root, out, clients=400, overwrite=True, tokens=str(tok))
    assert snapshot(out) == before and {n: (tok / n).read_bytes() for n in os.listdir(tok)} == files


# ----------------------------------------------------------------------------- nothing coerced
@pytest.mark.parametrize("label,kind", [(3.7, "fraction"), ("3", "string"), (True, "boolean"),
                                        (5.0, "fraction"), (62, "outside"), (-1, "outside")])
def test_labels_must_be_json_integers_in_range(tmp_path, label, kind):
    raw = tmp_path / "data" / "femnist" / "raw"
    path = _leaf_file(raw / "a.json", ["w1", "w2"],
                      {"w1": {"x": [_img()] * 2, "y": [1, 2]},
                       "w2": {"x": [_img()] * 3, "y": [4, label, 5]}}, [2, 3])
    with pytest.raises(ValueError) as ei:
        run(str(tmp_path / "data"), tmp_path / "out", clients=2)
    msg = str(ei.value)
    assert path in msg and "writer w2" in msg and "sample 1" in msg and kind in msg, msg
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("image,says", [
    (_img(n=783), "image has 783 values, expected 784"),
    ([0.0] * 783 + [True], "pixel 783: True is a JSON boolean"),
    ([0.0] * 10 + ["0.5"] + [0.0] * 773, "pixel 10: '0.5' is a JSON string"),
    ("abc", "image is a JSON string"),
    ([0.0] * 5 + [0.3] + [0.0] * 778, "sample 2 pixel 5"),  # 0.3 is not k/255
])
def test_bad_images_name_file_writer_and_sample(tmp_path, image, says):
    raw = tmp_path / "data" / "femnist" / "raw"
    path = _leaf_file(raw / "a.json", ["w1"], {"w1": {"x": [_img(), _img(), image],
                                                      "y": [1, 2, 3]}}, [3])
    with pytest.raises(ValueError) as ei:
        run(str(tmp_path / "data"), tmp_path / "out", clients=1)
    msg = str(ei.value)
    assert path in msg and "writer w1" in msg and "sample 2" in msg and says in msg, msg


@pytest.mark.parametrize("users,nums,says", [
    (["w1"], [2], "writer w2 (3 samples) is in 'user_data' but not in 'users'"),
    (["w1", "w2", "w3"], [2, 3, 1], "writer w3 is in 'users' but not in 'user_data'"),
    (["w1", "w2"], [2, 4], "writer w2: 'num_samples' says 4 but user_data holds 3"),
    (["w1", "w2"], [2], "'num_samples' must list one count per writer"),
    (["w1", "w1", "w2"], None, "writer w1 is listed twice"),
])
def test_users_num_samples_user_data_must_agree(tmp_path, users, nums, says):
    raw = tmp_path / "data" / "femnist" / "raw"
    path = _leaf_file(raw / "a.json", users, {"w1": {"x": [_img()] * 2, "y": [1, 2]},
                                              "w2": {"x": [_img()] * 3, "y": [1, 2, 3]}}, nums)
    with pytest.raises(ValueError) as ei:
        run(str(tmp_path / "data"), tmp_path / "out", clients=1)
    assert path in str(ei.value) and says in str(ei.value), str(ei.value)


def test_zero_sample_writer_skipped_with_warning_in_both_paths(tmp_path, caplog):
    from federatedscope.cv.dataset.leaf_femnist import load_femnist_tasks
    raw = tmp_path / "data" / "femnist" / "raw"
    _leaf_file(raw / "a.json", ["w0", "w1", "w2"],
               {"w0": {"x": [_img(1 / 255)] * 4, "y": [1, 2, 3, 4]}, "w1": {"x": [], "y": []},
                "w2": {"x": [_img(2 / 255)] * 5, "y": [5] * 5}}, [4, 0, 5])
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        s = run(str(tmp_path / "data"), tmp_path / "out", clients=2)
    assert any("skipped 1 writer(s) with 0 samples (w1)" in r.getMessage() for r in caplog.records)
    man = str(tmp_path / "out" / "manifest.json")
    assert mu.read_writer_ids(man, 1) == ["w0"] and mu.read_writer_ids(man, 2) == ["w2"]
    assert s.samples == 9
    tasks = load_femnist_tasks(str(tmp_path / "data"), [0.6, 0.2, 0.2], 1.0, 0)
    assert len(tasks) == 2  # the standalone path skips the same writer


def test_empty_users_says_the_input_is_empty(tmp_path):
    raw = tmp_path / "data" / "femnist" / "raw"
    _leaf_file(raw / "a.json", [], {}, [])
    with pytest.raises(ShardingError, match="the input is empty"):
        run(str(tmp_path / "data"), tmp_path / "out", clients=2)


def test_no_input_lists_every_place_looked(tmp_path):
    with pytest.raises(ShardingError) as ei:
        run(str(tmp_path / "nothing"), tmp_path / "out", clients=2)
    for place in ("femnist/raw/*.json", "femnist/raw/all_data/*.json", "femnist/data/all_data/*.json",
                  "femnist/data/train/*.json + femnist/data/test/*.json", "femnist/processed/task_<k>"):
        assert place in str(ei.value)


@pytest.mark.parametrize("layout", ["all_data", "train_test"])
def test_leaf_own_output_tree_is_found(tmp_path, layout):
    data = tmp_path / "data" / "femnist" / "data"
    ws = {"f0001_1": 10, "f0002_2": 12}
    if layout == "all_data":
        truth = write_leaf(str(data / "all_data" / "all_data_0.json"), ws, seed=1)
    else:
        truth = write_leaf(str(data / "train" / "t.json"), ws, seed=1)
        write_leaf(str(data / "test" / "t.json"), {w: 3 for w in ws}, seed=2)
    s = run(str(tmp_path / "data"), tmp_path / "out", clients=2)
    man = mu.read_manifest(str(tmp_path / "out" / "manifest.json"))
    assert man.source["root"] == str(tmp_path / "data")
    assert man.source["path"] == str(data / "all_data" if layout == "all_data" else data)
    assert man.source["kind"] == ("unsplit" if layout == "all_data" else "train_test")
    if layout == "all_data":
        check_partition(tmp_path / "out", truth, 2)
    else:
        assert s.samples == 22 + 6


def test_zero_train_clients_refused_unless_allowed(leaf, tmp_path):
    root, _, _ = leaf
    with pytest.raises(ShardingError) as ei:
        run(root, tmp_path / "out", clients=3, splits=(0.0, 0.0, 1.0))
    msg = str(ei.value)
    assert "client(s) 1, 2, 3 would have 0 train samples" in msg and "--allow-empty-train" in msg
    assert not (tmp_path / "out" / "manifest.json").exists()
    run(root, tmp_path / "out", clients=3, splits=(0.0, 0.0, 1.0), allow_empty_train=True)
    man = mu.load_manifest(str(tmp_path / "out" / "manifest.json"))
    assert all(e.num_samples["train"] == 0 for e in man.values())


def test_plot_over_60_clients_labels_ticks_with_client_ids():
    pytest.importorskip("matplotlib")
    from federatedscope.core.data.sharding_plot import partition_figure
    hists = {k: [k % 5] * 62 for k in range(1, 131)}
    ax = partition_figure(hists).axes[0]
    ticks = [(int(round(t)), lab.get_text()) for t, lab in zip(ax.get_yticks(), ax.get_yticklabels())]
    assert len(ticks) > 10
    assert all(lab == str(row + 1) for row, lab in ticks)  # row r shows client r+1, not r
    assert ticks[0] == (0, "1") and ticks[-1] == (129, "130")
    hists = {k: [1] * 62 for k in (3, 7, 9)}  # sparse ids: labels are the ids themselves
    ax = partition_figure(hists).axes[0]
    assert [lab.get_text() for lab in ax.get_yticklabels()] == ["3", "7", "9"]


def test_link_resume_and_failed_overwrite_keep_the_packed_set(leaf, tmp_path, monkeypatch):
    root, truth, _ = leaf
    out = tmp_path / "out"
    run(root, out, clients=3, link=True)
    before = snapshot(out)
    monkeypatch.setattr(mu, "now_iso", lambda: "2099-01-01T00:00:00Z")  # a later second
    s = run(root, out, clients=3, link=True, resume=True)  # adopts shards and packed file
    assert s.reused == [1, 2, 3] and s.written == [] and snapshot(out) == before
    with pytest.raises(ShardingError):
        run(root, out, clients=99, link=True, overwrite=True)
    assert snapshot(out) == before
    man = mu.read_manifest(str(out / "manifest.json"))
    assert man.packed is not None and (out / man.packed["path"]).is_file()
