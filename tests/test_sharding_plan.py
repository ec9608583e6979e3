"""The shard tool's pure parts, value by value: writer order, the writer subset, the assignment
(sequential group sizes, the seeded random order, manual files), THE per-writer split rule at
its rounding edges, the plan id, the recorded options and how --resume compares them, which
names a swap owns, the spill's windowed reads and the plot's tick rows. Every refusal's text
is read whole: it tells the operator what to run instead."""
import hashlib
import json
import os

import numpy as np
import pytest

from federatedscope.core.data import sharding_output as so
from federatedscope.core.data.sharding import PrepareSummary, ShardArgs
from federatedscope.core.data.sharding_plan import (Part, ShardingError, assign, group_bounds,
                                                    load_assignment, natural_key, plan_id,
                                                    split_rows, subsample_writers, writer_order,
                                                    writer_split)
from federatedscope.core.data.sharding_plot import tick_rows

IDS = [f"w{i}" for i in range(10)]


def _refused(fn, text):
    with pytest.raises(ShardingError) as err:
        fn()
    assert str(err.value) == text


# ----------------------------------------------------------------------------- writer order
def test_writer_order_is_numeric_for_one_prefix_else_lexicographic():
    assert writer_order(["task_10", "task_9", "task_1", "task_100"]) == \
        ["task_1", "task_9", "task_10", "task_100"]
    # two prefixes, or names that are not prefix+number: plain string order
    assert writer_order(["b2", "a10", "a9"]) == ["a10", "a9", "b2"]
    assert writer_order(["f10_x", "f9_x"]) == ["f10_x", "f9_x"]
    assert writer_order(["10", "9"]) == ["9", "10"]
    assert writer_order([]) == []
    assert natural_key("task_10b2") == ["task_", 10, "b", 2, ""]


# ----------------------------------------------------------------------------- subsample
def test_subsample_keeps_ceil_of_the_fraction_in_input_order():
    assert subsample_writers(IDS, 1.0, 3, "sequential") == IDS
    kept = subsample_writers(IDS, 0.25, 3, "random")
    assert len(kept) == 3 and kept == sorted(kept, key=IDS.index)     # ceil(2.5), input order
    assert len(subsample_writers(IDS, 0.01, 3, "sequential")) == 1    # never zero writers
    assert len(subsample_writers(IDS, 0.91, 3, "sequential")) == 10   # ceil(9.1)
    assert subsample_writers(IDS, 0.5, 3, "sequential") == subsample_writers(IDS, 0.5, 3, "x")
    assert subsample_writers(IDS, 0.5, 3, "sequential") != subsample_writers(IDS, 0.5, 4, "x")
    # a seed beyond numpy's range is folded, not refused
    assert subsample_writers(IDS, 0.5, -1, "sequential") == \
        subsample_writers(IDS, 0.5, 2 ** 63 - 1, "sequential")
    # the same subset as FS's loader for (subsample, seed): pinned, a partition must not move
    assert subsample_writers(IDS, 0.25, 3, "sequential") == ["w0", "w6", "w9"]


@pytest.mark.parametrize("value", [0.0, -0.5, 1.0000001, float("nan")])
def test_subsample_outside_the_unit_interval_is_refused(value):
    _refused(lambda: subsample_writers(IDS, value, 0, "sequential"),
             f"--subsample {value} must be in (0, 1]")


def test_subsample_with_a_manual_assignment_is_refused():
    _refused(lambda: subsample_writers(IDS, 0.5, 0, "manual"),
             "--subsample cannot be combined with --strategy manual: the assignment file "
             "already chooses the writers")
    assert subsample_writers(IDS, 1.0, 0, "manual") == IDS


# ----------------------------------------------------------------------------- assignment
@pytest.mark.parametrize("items,groups,sizes", [
    (10, 4, [3, 3, 2, 2]), (7, 7, [1] * 7), (5, 2, [3, 2]), (9, 3, [3, 3, 3]), (3, 5, [1, 1, 1, 0, 0]),
])
def test_group_bounds_hand_computed(items, groups, sizes):
    b = group_bounds(items, groups)
    assert [hi - lo for lo, hi in b] == sizes and b[0][0] == 0 and b[-1][1] == items


def test_sequential_assignment_of_a_subset_keeps_input_order():
    got = assign(["w1", "w4", "w5", "w8", "w9"], IDS, 4, "sequential", 0, "")
    assert got == {1: ["w1", "w4"], 2: ["w5"], 3: ["w8"], 4: ["w9"]}


def test_random_assignment_is_seeded_and_sorted_within_a_client():
    got = assign(IDS, IDS, 3, "random", 7, "")
    # pinned: the same seed gives the same partition in every version (plan ids, --resume)
    assert got == {1: ["w0", "w6", "w8", "w9"], 2: ["w1", "w3", "w7"], 3: ["w2", "w4", "w5"]}
    assert [len(v) for v in got.values()] == [4, 3, 3]
    assert assign(IDS, IDS, 3, "random", -1, "") == assign(IDS, IDS, 3, "random", 2 ** 63 - 1, "")
    assert assign(IDS, IDS, 3, "random", 8, "") != got
    assert assign(IDS, IDS, 3, "sequential", 7, "") == \
        {1: IDS[0:4], 2: IDS[4:7], 3: IDS[7:10]}


def test_assign_refusals_are_exact(tmp_path):
    _refused(lambda: assign(IDS, IDS, 2, "roundrobin", 0, ""),
             "--strategy 'roundrobin': choose one of ['sequential', 'random', 'manual']")
    _refused(lambda: assign(IDS, IDS, 0, "sequential", 0, ""), "--clients 0 must be >= 1")
    _refused(lambda: assign(IDS, IDS, 2, "manual", 0, ""),
             "--strategy manual needs --assignment FILE.json ({\"1\": [writer ids], \"2\": "
             "[...], ...})")
    _refused(lambda: assign(IDS, IDS, 2, "random", 0, "a.json"),
             "--assignment is only used with --strategy manual")
    _refused(lambda: assign(IDS[:3], IDS, 4, "sequential", 0, ""),
             "--clients 4 but only 3 writers are available; writers are never split across "
             "clients, so use --clients <= 3")
    assert len(assign(IDS[:3], IDS, 3, "sequential", 0, "")) == 3   # exactly enough writers
    assert assign(IDS, IDS, 1, "sequential", 0, "") == {1: IDS}


def _assignment(tmp_path, raw):
    p = tmp_path / "assign.json"
    p.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return str(p)


def test_manual_assignment_follows_the_input_order_not_string_order(tmp_path):
    known = ["task_2", "task_9", "task_10", "task_11"]          # writer_order's numeric order
    p = _assignment(tmp_path, {"1": ["task_10", "task_2"], "2": ["task_11", "task_9"]})
    assert load_assignment(p, 2, known) == {1: ["task_2", "task_10"], 2: ["task_9", "task_11"]}


def test_manual_assignment_with_many_wrong_ids_shows_the_first_ten(tmp_path):
    p = _assignment(tmp_path, {str(k): [f"w{k % 10}"] for k in range(1, 13)})
    _refused(lambda: load_assignment(p, 2, IDS),
             f"--assignment {p}: client ids must be exactly 1..2 (--clients 2), got "
             f"[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]")


def test_manual_assignment_is_sorted_by_input_order(tmp_path):
    p = _assignment(tmp_path, {"2": ["w9", "w1"], "1": ["w5", "w0", "w3"]})
    assert load_assignment(p, 2, IDS) == {1: ["w0", "w3", "w5"], 2: ["w1", "w9"]}
    assert assign(["w0"], IDS, 2, "manual", 0, p) == {1: ["w0", "w3", "w5"], 2: ["w1", "w9"]}


@pytest.mark.parametrize("raw,text", [
    ("{\"1\": [", "malformed JSON"),
    (["w1"], "must be a JSON object mapping client id to a list of writer ids"),
    ({"0": ["w1"]}, "client id '0' is not a positive integer"),
    ({"01": ["w1"]}, "client id '01' is not a positive integer"),
    ({"1a": ["w1"]}, "client id '1a' is not a positive integer"),
    ({"1": "w1"}, "client 1 needs a non-empty list of writer id strings"),
    ({"1": []}, "client 1 needs a non-empty list of writer id strings"),
    ({"1": ["w1", 2]}, "client 1 needs a non-empty list of writer id strings"),
    ({"1": ["w1"], "3": ["w2"]}, "client ids must be exactly 1..2 (--clients 2), got [1, 3]"),
    ({"1": ["w1"]}, "client ids must be exactly 1..2 (--clients 2), got [1]"),
    ({"1": ["w1"], "2": ["nobody"]}, "writer 'nobody' (client 2) is not in the input data"),
    ({"1": ["w1", "w2"], "2": ["w3", "w2"]},
     "writer 'w2' is assigned twice (clients 1 and 2); writers are never split"),
])
def test_manual_assignment_refusals_name_the_file_and_the_fault(tmp_path, raw, text):
    p = _assignment(tmp_path, raw)
    with pytest.raises(ShardingError) as err:
        load_assignment(p, 2, IDS)
    msg = str(err.value)
    assert msg.startswith(f"--assignment {p}: ") and text in msg, msg
    if text != "malformed JSON":
        assert msg == f"--assignment {p}: {text}"


def test_missing_assignment_file_is_named(tmp_path):
    p = str(tmp_path / "none.json")
    _refused(lambda: load_assignment(p, 2, IDS), f"--assignment {p}: file not found")


# ----------------------------------------------------------------------------- the split rule
def _sizes(split):
    return {s: len(idx) for s, (_, idx) in split.items()}


@pytest.mark.parametrize("n,splits,want", [
    (10, (0.6, 0.2, 0.2), {"train": 6, "val": 2, "test": 2}),
    (5, (0.6, 0.2, 0.2), {"train": 3, "val": 1, "test": 1}),
    # 100 x 0.29 is 28.999999999999996 in floats: the tolerance makes it 29, not 28
    (100, (0.29, 0.29, 0.42), {"train": 29, "val": 29, "test": 42}),
    (3, (0.7, 0.3, 0.0), {"train": 2, "val": 0, "test": 1}),
    (7, (1.0, 0.0, 0.0), {"train": 7, "val": 0, "test": 0}),
    (0, (0.6, 0.2, 0.2), {"train": 0, "val": 0, "test": 0}),
])
def test_unsplit_writer_is_cut_by_floor_of_each_fraction(n, splits, want):
    got = writer_split({None: n}, splits, 11, "w")
    assert _sizes(got) == want
    idx = np.concatenate([got[s][1] for s in ("train", "val", "test")])
    assert sorted(idx.tolist()) == list(range(n)) and all(k is None for k, _ in got.values())


def test_the_shuffle_is_keyed_by_seed_and_writer_id_only():
    a = writer_split({None: 30}, (0.6, 0.2, 0.2), 5, "alice")["train"][1]
    assert np.array_equal(a, writer_split({None: 30}, (0.6, 0.2, 0.2), 5, "alice")["train"][1])
    assert not np.array_equal(a, writer_split({None: 30}, (0.6, 0.2, 0.2), 6, "alice")["train"][1])
    assert not np.array_equal(a, writer_split({None: 30}, (0.6, 0.2, 0.2), 5, "bob")["train"][1])
    assert not np.array_equal(a, np.arange(18))            # shuffled, not the first 18
    folded = writer_split({None: 30}, (0.6, 0.2, 0.2), -1, "alice")["train"][1]
    assert np.array_equal(folded, writer_split({None: 30}, (0.6, 0.2, 0.2), 2 ** 63 - 1,
                                               "alice")["train"][1])


def test_train_val_test_input_is_kept_as_it_is():
    got = writer_split({"train": 4, "val": 2, "test": 3}, (0.6, 0.2, 0.2), 1, "w")
    assert {s: (k, idx.tolist()) for s, (k, idx) in got.items()} == {
        "train": ("train", [0, 1, 2, 3]), "val": ("val", [0, 1]), "test": ("test", [0, 1, 2])}
    # a writer with no test part in such input gets an empty test split
    got = writer_split({"train": 2, "val": 1}, (0.6, 0.2, 0.2), 1, "w")
    assert got["test"][0] == "test" and len(got["test"][1]) == 0 and got["test"][1].dtype == np.int64


@pytest.mark.parametrize("n,splits,n_val", [
    (10, (0.6, 0.2, 0.2), 2),     # 10 x 0.2 / 0.8 = 2.5 -> 2
    (8, (0.6, 0.2, 0.2), 2),      # 8 x 0.25 = 2
    (12, (0.5, 0.5, 0.0), 6),
    (9, (0.8, 0.0, 0.2), 0),
    (9, (0.0, 0.0, 1.0), 0),      # train and val fractions 0: no val, train keeps the rest
])
def test_leaf_train_test_input_carves_val_from_train(n, splits, n_val):
    got = writer_split({"train": n, "test": 4}, splits, 2, "w")
    assert got["test"][0] == "test" and got["test"][1].tolist() == [0, 1, 2, 3]
    assert got["val"][0] == got["train"][0] == "train"
    assert (len(got["val"][1]), len(got["train"][1])) == (n_val, n - n_val)
    assert sorted(np.concatenate([got["val"][1], got["train"][1]]).tolist()) == list(range(n))


def test_leaf_writer_with_only_test_data_has_empty_train_and_val():
    got = writer_split({"test": 3}, (0.6, 0.2, 0.2), 2, "w")
    assert {s: (k, len(idx)) for s, (k, idx) in got.items()} == {
        "test": ("test", 3), "train": ("train", 0), "val": ("train", 0)}


def test_split_rows_offsets_by_the_part_and_takes_its_labels():
    parts = {"train": Part(100, np.array([5, 6, 7, 8], np.int64), "a"),
             "test": Part(40, np.array([1, 2], np.int64), "a")}
    got = split_rows(parts, (0.5, 0.5, 0.0), 3, "w")
    idx = writer_split({"train": 4, "test": 2}, (0.5, 0.5, 0.0), 3, "w")
    assert got["test"][0].tolist() == [40, 41] and got["test"][1].tolist() == [1, 2]
    assert got["val"][0].tolist() == (100 + idx["val"][1]).tolist()
    assert got["val"][1].tolist() == [5 + i for i in idx["val"][1]]
    assert got["train"][0].tolist() == (100 + idx["train"][1]).tolist()
    only_test = split_rows({"test": Part(9, np.array([3], np.int64), "b")}, (0.6, 0.2, 0.2), 1, "v")
    for s in ("train", "val"):
        assert only_test[s][0].dtype == np.int64 and len(only_test[s][0]) == 0
        assert only_test[s][1].dtype == np.int64 and len(only_test[s][1]) == 0


# ----------------------------------------------------------------------------- plan id
def test_plan_id_changes_with_everything_that_decides_a_shard(tmp_path):
    a = tmp_path / "a.json"
    a.write_text("{}")
    opts = {"seed": 1}
    base = plan_id(opts, "femnist", str(tmp_path), [str(a)], {1: ["w1"], 2: ["w2"]})
    assert len(base) == 32 and int(base, 16) >= 0
    assert base == plan_id({"seed": 1}, "femnist", str(tmp_path), [str(a)], {2: ["w2"], 1: ["w1"]})
    others = [plan_id({"seed": 2}, "femnist", str(tmp_path), [str(a)], {1: ["w1"], 2: ["w2"]}),
              plan_id(opts, "celeba", str(tmp_path), [str(a)], {1: ["w1"], 2: ["w2"]}),
              plan_id(opts, "femnist", str(tmp_path), [str(a)], {1: ["w2"], 2: ["w1"]})]
    a.write_text("{} ")                          # the input file changed size
    others.append(plan_id(opts, "femnist", str(tmp_path), [str(a)], {1: ["w1"], 2: ["w2"]}))
    assert base not in others and len(set(others)) == 4
    d = tmp_path / "dir"
    d.mkdir()
    (d / "x.json").write_text("1")
    one = plan_id(opts, "femnist", str(tmp_path), [str(d)], {1: ["w1"]})
    (d / "y.json").write_text("2")                # a folder input: its files are listed
    assert plan_id(opts, "femnist", str(tmp_path), [str(d)], {1: ["w1"]}) != one


# ----------------------------------------------------------------------------- options / resume
def _args(**kw):
    kw.setdefault("dataset", "femnist")
    return ShardArgs(**kw)


def test_run_options_record_what_decides_a_partition(tmp_path):
    a = tmp_path / "a.json"
    a.write_bytes(b'{"1": ["w"]}')
    assert so.run_options(_args(clients=4, seed=9, splits=(0.5, 0.3, 0.2), subsample=0.5)) == {
        "dataset": "femnist", "clients": 4, "strategy": "sequential", "assignment_sha256": "",
        "seed": 9, "splits": [0.5, 0.3, 0.2], "subsample": 0.5, "link": False}
    got = so.run_options(_args(strategy="lda", alpha=0.3, consistent=True, link=True,
                               assignment=str(a)))
    assert got["alpha"] == 0.3 and got["consistent"] is True and got["link"] is True
    assert got["assignment_sha256"] == hashlib.sha256(b'{"1": ["w"]}').hexdigest()
    assert "alpha" not in so.run_options(_args(strategy="iid", alpha=0.3))
    assert "consistent" not in so.run_options(_args(consistent=False))
    assert so.run_options(_args(assignment=str(tmp_path / "none.json")))["assignment_sha256"] == ""


def test_differences_name_each_changed_option():
    have = so.run_options(_args(clients=3, seed=5, subsample=0.9, splits=(0.6, 0.2, 0.2)))
    want = so.run_options(_args(clients=4, seed=5, subsample=0.5, splits=(0.5, 0.3, 0.2),
                                link=True))
    assert so._differences(have, want) == [
        "--clients is 3 there, 4 here", "--splits is 0.6,0.2,0.2 there, 0.5,0.3,0.2 here",
        "--subsample is 0.9 there, 0.5 here", "--link is False there, True here"]
    assert so._differences(have, dict(have)) == []
    lda = so.run_options(_args(strategy="lda", alpha=0.5))
    assert so._differences(lda, dict(lda, alpha=0.1)) == ["--alpha is 0.5 there, 0.1 here"]
    assert so._differences(dict(have, assignment_sha256="x"), have) == \
        ["--assignment: the file's content differs from the one used"]
    # an option the set did not record cannot be shown to be the same
    old = {k: v for k, v in have.items() if k != "subsample"}
    assert so._differences(old, have) == \
        ["--subsample: that run did not record it, so it cannot be shown to be the same"]
    assert so._differences(have, dict(have, consistent=True)) == [
        "--consistent-label-distribution: that run did not record it, so it cannot be shown "
        "to be the same"]


def test_options_of_an_old_manifest_are_what_its_fields_tell():
    class M:
        source = {"kind": "unsplit"}
        dataset, total_clients, strategy, seed, splits, packed = \
            "femnist", 3, "random", 4, (0.6, 0.2, 0.2), {"path": "packed/data.pt"}
    assert so._options_of_manifest(M) == {"dataset": "femnist", "clients": 3,
                                          "strategy": "random", "seed": 4,
                                          "splits": [0.6, 0.2, 0.2], "link": True}
    M.source = {"options": {"seed": 1}}
    assert so._options_of_manifest(M) == {"seed": 1}


@pytest.mark.parametrize("name,mine", [
    ("manifest.json", True), ("packed", True), ("label_distribution.png", True),
    ("client_1", True), ("client_12", True), ("client_x", False), ("client_1.tmp-5", False),
    ("tokens", False), ("notes.txt", False), (".staging", False), ("manifest.json.bak", False),
])
def test_a_swap_owns_only_the_sets_entries(name, mine):
    assert so.owned(name) is mine


def test_existing_output_without_a_flag_is_refused_naming_both_ways_out(tmp_path):
    out = tmp_path / "out"
    for n in ("client_1", "client_2", "client_3", "client_4", "client_5"):
        (out / n).mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    args = _args(out=str(out))
    ex = so.look(str(out))
    assert ex.names == ["client_1", "client_2", "client_3", "client_4", "client_5"]
    assert ex.manifest is None and ex.staged is None
    _refused(lambda: so.check_flags(args, ex, "CMD"),
             f"{out} already holds shards (client_1, client_2, client_3, client_4...); to "
             f"replace them run: CMD --overwrite   (or finish an interrupted run with: CMD "
             f"--resume)")
    so.check_flags(_args(out=str(out), overwrite=True), ex, "CMD")
    so.check_flags(_args(out=str(out), resume=True), ex, "CMD")   # nothing recorded to compare
    empty = tmp_path / "empty"
    (empty / so.STAGE).mkdir(parents=True)
    _refused(lambda: so.check_flags(_args(out=str(empty)), so.look(str(empty)), "CMD"),
             f"{empty} already holds shards (an interrupted run's .staging/...); to replace "
             f"them run: CMD --overwrite   (or finish an interrupted run with: CMD --resume)")
    so.check_flags(_args(out=str(tmp_path / "new")), so.Existing([], None, None), "CMD")


def test_resume_against_a_staging_with_other_options_is_refused(tmp_path):
    out = tmp_path / "out"
    (out / so.STAGE).mkdir(parents=True)
    (out / so.STAGE / so.OPTIONS).write_text(json.dumps(so.run_options(_args(clients=3))))
    ex = so.look(str(out))
    assert ex.staged["clients"] == 3
    so.check_flags(_args(out=str(out), clients=3, resume=True), ex, "CMD")
    _refused(lambda: so.check_flags(_args(out=str(out), clients=4, resume=True), ex, "CMD"),
             "--resume would change the interrupted run in .staging/: --clients is 3 there, 4 "
             "here. Nothing was changed. To finish it, repeat its options with --resume; to "
             "re-cut with the new options run: CMD --overwrite")
    (out / so.STAGE / so.OPTIONS).write_text("{torn")
    torn = so.look(str(out))
    assert torn.staged == {}
    with pytest.raises(ShardingError, match="--dataset: that run did not record it"):
        so.check_flags(_args(out=str(out), clients=3, resume=True), torn, "CMD")


def test_drop_stage_if_empty_keeps_a_stage_with_a_finished_shard(tmp_path):
    stage = tmp_path / so.STAGE
    (stage / "client_3.tmp-9").mkdir(parents=True)
    so.drop_stage_if_empty(str(tmp_path))
    assert not stage.exists()
    (stage / "client_3").mkdir(parents=True)
    so.drop_stage_if_empty(str(tmp_path))
    assert (stage / "client_3").is_dir()
    so.drop_stage_if_empty(str(tmp_path / "nothing"))     # no stage: nothing to do


def test_open_stage_clears_a_killed_runs_temp_names_and_keeps_finished_shards(tmp_path):
    out = tmp_path / "out"
    stage = out / so.STAGE
    for d in ("client_1", "client_2.tmp-77", "packed"):
        (stage / d).mkdir(parents=True)
    (stage / "client_1" / "meta.json").write_text("{}")
    (stage / "manifest.json").write_text("{}")
    (stage / ".spill-12.bin").write_bytes(b"x")
    (stage / ".spill-12-3.bin").write_bytes(b"x")     # a reading worker's (piece 3)
    (stage / "packed" / ".data.pt.abc.tmp").write_bytes(b"x")
    (stage / "packed" / "data.pt").write_bytes(b"x")
    (out / "client_4.tmp-3").mkdir()
    (out / ".old-5").mkdir()
    (out / "notes.txt").write_text("mine")
    args = _args(out=str(out), resume=True, clients=2)
    assert so.open_stage(args) == str(stage)
    assert sorted(os.listdir(stage)) == ["client_1", "options.json", "packed"]
    assert os.listdir(stage / "packed") == ["data.pt"]
    assert sorted(os.listdir(out)) == [".staging", "notes.txt"]
    assert json.loads((stage / "options.json").read_text()) == so.run_options(args)
    so.open_stage(_args(out=str(out), clients=2))          # not resuming: started anew
    assert sorted(os.listdir(stage)) == ["options.json"]


def test_a_second_run_on_the_same_output_is_refused(tmp_path):
    fd = so.lock_out(str(tmp_path))
    try:
        _refused(lambda: so.lock_out(str(tmp_path)),
                 f"another prepare_shards.py run is writing {tmp_path}; wait for it to finish "
                 f"(or stop it) and try again")
    finally:
        os.close(fd)
    os.close(so.lock_out(str(tmp_path)))                  # released: the next run may start


def test_adopt_links_the_verified_files_and_replaces_what_was_there(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a.pt").write_bytes(b"A")
    (src / "meta.json").write_bytes(b"M")
    dst.mkdir()
    (dst / "old.pt").write_bytes(b"O")
    (tmp_path / f"dst.tmp-{os.getpid()}").mkdir()            # left by a killed adopt
    (tmp_path / f"dst.tmp-{os.getpid()}" / "junk").write_bytes(b"J")
    so.adopt(str(src), str(dst))
    assert sorted(os.listdir(dst)) == ["a.pt", "meta.json"]
    assert os.stat(dst / "a.pt").st_ino == os.stat(src / "a.pt").st_ino   # a link, not a copy
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    f = tmp_path / "p" / "data.pt"
    so.adopt_file(str(src / "a.pt"), str(f))
    so.adopt_file(str(src / "meta.json"), str(f))          # an existing target is replaced
    assert f.read_bytes() == b"M"


# ----------------------------------------------------------------------------- summary / plot
def test_summary_line_reports_rates_and_counts():
    s = PrepareSummary("o", "o/manifest.json", 3, 1000, 784_500, 2.0, [1, 2], [3])
    assert s.bytes_per_sample == 784.5 and s.samples_per_s == 500.0
    assert s.line() == ("clients=3 samples=1000 bytes/sample=784.5 seconds=2.00 samples/s=500 "
                        "written=2 reused=1 manifest=o/manifest.json")
    empty = PrepareSummary("o", "m", 0, 0, 10, 0.0)
    assert empty.bytes_per_sample == 10.0 and empty.samples_per_s == 0.0


@pytest.mark.parametrize("n,first,last,count", [
    (1, [0], [0], 1), (60, [0, 1, 2], [58, 59], 60), (61, [0, 1, 2], [59, 60], 60),
    (200, [0, 3, 7, 10], [196, 199], 60),
])
def test_tick_rows_label_every_row_up_to_60_else_60_spread_rows(n, first, last, count):
    rows = tick_rows(n)
    assert len(rows) == count and rows[:len(first)] == first and rows[-len(last):] == last
    assert rows == sorted(set(rows))


# ----------------------------------------------------------------------------- whole runs
from test_sharding import (Killed, check_partition, leaf_copy, leaf_source,  # noqa: E402,F401
                           rows_of, run)
from federatedscope.core.data import sharding  # noqa: E402
from federatedscope.core.data import shard_format as sf  # noqa: E402


@pytest.fixture
def leaf(leaf_source, tmp_path):
    return leaf_copy(leaf_source, tmp_path)


def _all_rows(out, k):
    from test_sharding import load_client
    parts = load_client(out, k)
    return [r for s in sf.SPLITS for r in rows_of(*parts[s])]


@pytest.mark.parametrize("strategy", ["iid", "lda"])
def test_splitter_strategies_deal_every_sample_to_exactly_one_client(leaf, tmp_path, strategy):
    root, truth, _ = leaf
    out = tmp_path / "out"
    s = run(root, out, clients=4, strategy=strategy, alpha=0.5, seed=3)
    assert s.written == [1, 2, 3, 4] and s.samples == sum(len(t[1]) for t in truth.values())
    man = sf.read_manifest(str(out / "manifest.json"))
    assert man.strategy == strategy and man.source["options"]["strategy"] == strategy
    assert ("alpha" in man.source["options"]) is (strategy == "lda")
    got = sorted(r for k in range(1, 5) for r in _all_rows(out, k))
    want = sorted(r for x, y, _ in truth.values()
                  for r in rows_of(__import__("torch").from_numpy(x),
                                   __import__("torch").from_numpy(y)))
    assert got == want                                   # nothing lost, nothing twice
    assert [man.writer_ids[k] for k in range(1, 5)] == [[f"client_{k}"] for k in range(1, 5)]
    sizes = [sum(man.clients[k].num_samples.values()) for k in range(1, 5)]
    if strategy == "iid":                                # iid: sizes differ by at most one
        assert max(sizes) - min(sizes) <= 1
    again = tmp_path / "again"
    run(root, again, clients=4, strategy=strategy, alpha=0.5, seed=3)
    assert [sf.read_meta(str(again / f"client_{k}")).fingerprint for k in range(1, 5)] == \
        [sf.read_meta(str(out / f"client_{k}")).fingerprint for k in range(1, 5)]


def test_splitter_strategies_deal_the_writers_subsample_keeps(leaf, tmp_path):
    """--subsample picks writers (as data.subsample does) before --strategy lda pools and deals
    their samples: exactly the kept writers' samples, each to one client."""
    from federatedscope.core.data.sharding_plan import subsample_writers, writer_order
    root, truth, _ = leaf
    out = tmp_path / "half"
    kept = subsample_writers(writer_order(list(truth)), 0.5, 3, "sequential")
    assert 0 < len(kept) < len(truth)
    s = run(root, out, clients=4, strategy="lda", alpha=0.5, subsample=0.5, seed=3)
    assert s.samples == sum(len(truth[w][1]) for w in kept)
    got = sorted(r for k in range(1, 5) for r in _all_rows(out, k))
    want = sorted(r for w in kept for r in rows_of(__import__("torch").from_numpy(truth[w][0]),
                                                   __import__("torch").from_numpy(truth[w][1])))
    assert got == want


def test_splitter_strategies_refuse_bad_arguments(leaf, tmp_path):
    root, _, _ = leaf
    for alpha in (0.0, -1.0, float("nan")):
        _refused(lambda: run(root, tmp_path / "o2", clients=4, strategy="lda", alpha=alpha),
                 f"--alpha {alpha} must be > 0 (the Dirichlet concentration of --strategy lda; "
                 f"FS's baseline is 0.5)")
    run(root, tmp_path / "o3", clients=4, strategy="iid", alpha=-1.0)   # iid ignores --alpha
    for d in ("o2",):   # a refused run leaves nothing behind
        assert not (tmp_path / d / "manifest.json").exists()
        assert not (tmp_path / d / so.STAGE).exists()


def test_unknown_dataset_and_exclusive_flags_are_refused(leaf, tmp_path):
    root, _, _ = leaf
    with pytest.raises(ShardingError) as err:
        prepare = sharding.prepare_shards
        prepare(ShardArgs(dataset="nosuch", root=root, out=str(tmp_path / "o"), progress=False))
    assert str(err.value).startswith("--dataset 'nosuch': ") and "femnist" in str(err.value)
    _refused(lambda: run(root, tmp_path / "o", clients=2, overwrite=True, resume=True),
             "--overwrite and --resume exclude each other: --overwrite starts over, --resume "
             "keeps the shards that verify")


def _verify_all(out, n):
    man = sf.read_manifest(str(out / "manifest.json"))
    assert sorted(man.clients) == list(range(1, n + 1))
    for k, e in man.clients.items():
        sf.verify_shard(str(out / e.shard_path), entry=e)


def test_link_resume_after_a_kill_keeps_the_finished_shard_and_packed_file(leaf, tmp_path,
                                                                             monkeypatch):
    root, truth, _ = leaf
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)        # paths are the output's, never the working directory's
    real = sharding.write_shard
    calls = []

    def dies_after_first(*a, **k):
        if calls:
            raise Killed("simulated kill")
        calls.append(a[1])
        return real(*a, **k)
    monkeypatch.setattr(sharding, "write_shard", dies_after_first)
    with pytest.raises(Killed):
        run(root, out, clients=3, link=True)
    packed = out / so.STAGE / "packed" / "data.pt"
    assert packed.is_file() and not (out / "packed").exists()
    inode = os.stat(packed).st_ino
    done = []
    monkeypatch.setattr(sharding, "write_shard", lambda *a, **k: done.append(a[1]) or real(*a, **k))
    s = run(root, out, clients=3, link=True, resume=True)
    assert s.reused == [1] and s.written == [2, 3] and done == [2, 3]
    assert os.stat(out / "packed" / "data.pt").st_ino == inode   # the staged file, not a rewrite
    _verify_all(out, 3)


def test_link_resume_with_no_shard_that_verifies_rewrites_the_staged_packed_file(
        leaf, tmp_path, monkeypatch):
    root, truth, _ = leaf
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
        run(root, out, clients=3, link=True)
    monkeypatch.setattr(sharding, "write_shard", real)
    p = out / so.STAGE / "client_1" / "train.pt"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01                   # the one staged shard no longer verifies
    p.write_bytes(bytes(data))
    s = run(root, out, clients=3, link=True, resume=True)
    assert s.reused == [] and s.written == [1, 2, 3]
    _verify_all(out, 3)


def test_link_resume_without_a_packed_file_writes_everything_again(leaf, tmp_path):
    root, truth, _ = leaf
    out = tmp_path / "out"
    run(root, out, clients=3, link=True)
    os.remove(out / "packed" / "data.pt")
    s = run(root, out, clients=3, link=True, resume=True)
    assert s.reused == [] and s.written == [1, 2, 3]
    _verify_all(out, 3)


def test_tokens_missing_for_many_new_clients_are_listed_eight_then_dots(tmp_path):
    from types import SimpleNamespace as NS
    man = NS(clients={k: NS(token_hash="ab" * 32) for k in (1, 2, 3)})
    ex = so.Existing([], man, None)
    args = _args(out=str(tmp_path), clients=12)
    _refused(lambda: so.carry_tokens(args, ex, "CMD"),
             f"{tmp_path}/manifest.json gives its clients tokens (token_hash), but client(s) "
             f"4, 5, 6, 7, 8, 9, 10, 11 ... of the new partition would have none, and the "
             f"server would admit them without one. Nothing was changed. Re-cut and give every "
             f"client a new token: CMD --overwrite --tokens {os.path.join(str(tmp_path), 'tokens')}")
    assert so.carry_tokens(_args(out=str(tmp_path), clients=3), ex, "CMD") == \
        {k: "ab" * 32 for k in (1, 2, 3)}
    assert so.carry_tokens(_args(out=str(tmp_path), clients=12, tokens="t"), ex, "CMD") == {}
    assert so._ids([4, 5]) == "4, 5" and so._ids(list(range(1, 10))) == \
        "1, 2, 3, 4, 5, 6, 7, 8 ..."
    assert so._ids(list(range(1, 9))) == "1, 2, 3, 4, 5, 6, 7, 8"     # eight: all shown
    none = NS(clients={1: NS(token_hash=""), 2: NS(token_hash="")})
    assert so.carry_tokens(args, so.Existing([], none, None), "CMD") == {}


def test_adopt_copies_where_hard_links_fail(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.pt").write_bytes(b"A")

    def no_links(a, b):
        raise OSError("cross-device link")
    monkeypatch.setattr(os, "link", no_links)
    so.adopt(str(src), str(tmp_path / "dst"))
    so.adopt_file(str(src / "a.pt"), str(tmp_path / "p" / "a.pt"))
    for p in (tmp_path / "dst" / "a.pt", tmp_path / "p" / "a.pt"):
        assert p.read_bytes() == b"A" and os.stat(p).st_ino != os.stat(src / "a.pt").st_ino


# ----------------------------------------------------------------------------- input side
from federatedscope.core.data import sharding_input as si  # noqa: E402
from federatedscope.core.data.dataset_spec import DatasetSpec, WriterSamples  # noqa: E402


def _toy_spec(writers, inputs=("in.bin",), has_writers=True, fail=None):
    """A registered-spec stand-in: int64 samples of shape [2]; ``writers`` are WriterSamples."""
    def iter_writers(root):
        yield from writers
        if fail is not None:
            raise fail

    return DatasetSpec(name="toy", sample_dtype="int64", sample_shape=(2,), num_classes=5,
                       model_input=(2,), iter_writers=iter_writers,
                       list_inputs=lambda root: [os.path.join(root, i) for i in inputs],
                       has_writers=has_writers)


def _ws(wid, n, start, split=None, source="a.bin"):
    x = np.arange(start, start + 2 * n, dtype=np.int64).reshape(n, 2)
    return WriterSamples(wid, x, np.arange(n) % 5, source, split)


def test_spill_reads_rows_back_in_any_order_with_one_read_per_cluster(tmp_path, monkeypatch):
    spill = si.Spill(str(tmp_path / "s.bin"), _toy_spec([]))
    x = np.arange(60, dtype=np.int64).reshape(30, 2)
    assert spill.add(x[:10], "a") == 0 and spill.add(x[10:], "b") == 10 and spill.rows == 30
    assert spill.add(x[:0], "empty") == 30 and spill.rows == 30
    reads = []
    real = si.pread_exact
    monkeypatch.setattr(si, "pread_exact", lambda fd, n, off, *a: reads.append((n, off))
                        or real(fd, n, off, *a))
    spill.f.flush()
    rows = np.array([8, 0, 3, 8])
    assert spill.gather(rows).tolist() == x[[8, 0, 3, 8]].tolist()
    assert reads == [(9 * 16, 0)]                  # rows 0..8: gaps <= GAP are read through
    reads.clear()
    assert spill.gather(np.array([9, 0])).tolist() == x[[9, 0]].tolist()
    assert reads == [(16, 0), (16, 9 * 16)]         # a gap of 9 rows > GAP: two reads
    reads.clear()
    assert spill.gather(np.array([], np.int64)).shape == (0, 2) and reads == []
    monkeypatch.setattr(si, "WINDOW", 4)
    chunks = list(spill.chunks(np.arange(29, -1, -1)))
    assert [len(c) for c in chunks] == [4] * 7 + [2]
    assert np.concatenate(chunks).tolist() == x[::-1].tolist()
    path = spill.path
    spill.close()
    assert not os.path.exists(path)


def test_spill_refuses_samples_the_spec_does_not_describe(tmp_path):
    spill = si.Spill(str(tmp_path / "s.bin"), _toy_spec([]))
    _refused(lambda: spill.add(np.zeros((2, 3), np.int64), "f.bin writer w"),
             "f.bin writer w: the reader gave samples int64[3], but the dataset's spec says "
             "int64[2]")
    _refused(lambda: spill.add(np.zeros((2, 2), np.uint8), "f.bin writer w"),
             "f.bin writer w: the reader gave samples uint8[2], but the dataset's spec says "
             "int64[2]")
    spill.close()


@pytest.mark.parametrize("splits,kind", [([None], "unsplit"), (["train", "test"], "train_test"),
                                         (["train", "val", "test"], "train_val_test")])
def test_read_input_keeps_each_writers_parts_and_the_input_kind(tmp_path, splits, kind):
    writers = [_ws(w, n, 100 * i + 10 * j, s) for i, (w, n) in enumerate([("w1", 2), ("w2", 3)])
               for j, s in enumerate(splits)]
    spec = _toy_spec(writers)
    spill = si.Spill(str(tmp_path / "s.bin"), spec)
    parts, got = si.read_input(spec, str(tmp_path), ["a.bin"], spill, False)
    assert got == kind and sorted(parts) == ["w1", "w2"]
    spill.f.flush()
    at = 0
    for ws in writers:
        p = parts[ws.writer_id][ws.split]
        assert (p.row, p.y.tolist(), p.source) == (at, ws.y.tolist(), "a.bin")
        assert spill.gather(np.arange(at, at + len(ws.y))).tolist() == ws.x.tolist()
        at += len(ws.y)
    spill.close()


def test_read_input_refusals_are_exact(tmp_path):
    dup = _toy_spec([_ws("w1", 2, 0, "train", "a.json"), _ws("w1", 1, 0, "train", "b.json")])
    spill = si.Spill(str(tmp_path / "s.bin"), dup)
    _refused(lambda: si.read_input(dup, "R", ["a", "b"], spill, False),
             "writer w1 appears twice in the train data: a.json and b.json")
    dup = _toy_spec([_ws("w1", 2, 0, None, "a.json"), _ws("w1", 1, 0, None, "b.json")])
    _refused(lambda: si.read_input(dup, "R", ["a", "b"], spill, False),
             "writer w1 appears twice in the unsplit data: a.json and b.json")
    _refused(lambda: si.read_input(_toy_spec([]), "R", ["a", "b"], spill, False),
             "the input is empty: 2 input(s) under R hold no writers with samples")
    bad = _toy_spec([_ws("w1", 1, 0)], fail=ValueError("a.json: writer w2 sample 3: bad pixel"))
    _refused(lambda: si.read_input(bad, "R", ["a"], spill, False),
             "a.json: writer w2 sample 3: bad pixel")
    own = _toy_spec([], fail=ShardingError("as it is"))
    _refused(lambda: si.read_input(own, "R", ["a"], spill, False), "as it is")
    spill.close()


def test_find_inputs_names_the_common_folder_or_refuses(tmp_path):
    spec = _toy_spec([], inputs=("x/a.json", "x/y/b.json"))
    assert si.find_inputs(spec, str(tmp_path)) == (
        str(tmp_path / "x"), [str(tmp_path / "x" / "a.json"), str(tmp_path / "x" / "y" / "b.json")])
    _refused(lambda: si.find_inputs(_toy_spec([], inputs=()), "ROOT"),
             "no toy input under ROOT (the dataset's reader found no input files); check --root "
             "and --dataset")
    broken = DatasetSpec("toy", "int64", (2,), 5, (2,), lambda r: iter(()),
                         lambda r: (_ for _ in ()).throw(OSError("cannot list ROOT/raw")))
    _refused(lambda: si.find_inputs(broken, "ROOT"), "cannot list ROOT/raw")


def test_a_dataset_without_writers_needs_a_splitter(tmp_path, monkeypatch):
    from federatedscope.register import dataset_spec_dict
    spec = _toy_spec([_ws(f"b{i}", 4, 10 * i) for i in range(4)], has_writers=False)
    monkeypatch.setitem(dataset_spec_dict, "toy", spec)
    (tmp_path / "in.bin").write_bytes(b"")          # the input the plan id lists
    out = tmp_path / "out"
    _refused(lambda: prepare_toy(tmp_path, out, "sequential"),
             "--dataset toy has no writers to assign to clients; deal its samples with "
             "--strategy lda --alpha 0.5 (FS's baseline splitter) or --strategy iid")
    assert not (out / so.STAGE).exists()
    # --subsample chooses writers: without any it is refused, naming the fix
    _refused(lambda: sharding.prepare_shards(ShardArgs(
        dataset="toy", root=str(tmp_path), out=str(out), clients=4, strategy="iid",
        subsample=0.5, progress=False)),
        "--subsample 0.5 chooses writers, and --dataset toy has none: drop --subsample")
    assert not (out / so.STAGE).exists()
    s = prepare_toy(tmp_path, out, "iid")
    assert s.clients == 4 and s.samples == 16
    assert sorted(sf.read_manifest(str(out / "manifest.json")).writer_ids[1]) == ["client_1"]
    # --link: the packed file holds the spec's dtype (int64 here), every sample once
    linked = tmp_path / "linked"
    sharding.prepare_shards(ShardArgs(dataset="toy", root=str(tmp_path), out=str(linked),
                                      clients=4, strategy="iid", link=True, progress=False))
    from federatedscope.core.data.shard_format import split_file
    x, y = split_file.read_split(str(linked / "packed" / "data.pt"))
    assert x.dtype == __import__("torch").int64 and tuple(x.shape) == (16, 2)
    assert sorted(map(tuple, x.tolist())) == sorted(
        tuple(r) for i in range(4) for r in np.arange(10 * i, 10 * i + 8).reshape(4, 2).tolist())


def prepare_toy(root, out, strategy):
    return sharding.prepare_shards(ShardArgs(dataset="toy", root=str(root), out=str(out),
                                             clients=4, strategy=strategy, progress=False))


def test_consistent_label_distribution_makes_the_test_pool_follow_train(tmp_path, monkeypatch):
    from federatedscope.register import dataset_spec_dict
    rng = np.random.default_rng(0)

    def ws(wid, split, n):
        return WriterSamples(wid, rng.integers(0, 9, (n, 2)), rng.integers(0, 5, n), "a.bin",
                             split)
    writers = [ws(f"b{i}", s, 40) for i in range(3) for s in ("train", "test")]
    monkeypatch.setitem(dataset_spec_dict, "toy", _toy_spec(writers, has_writers=False))
    (tmp_path / "in.bin").write_bytes(b"")
    hists = {}
    for consistent in (False, True):
        out = tmp_path / f"out{consistent}"
        sharding.prepare_shards(ShardArgs(dataset="toy", root=str(tmp_path), out=str(out),
                                          clients=4, strategy="lda", alpha=0.3, seed=2,
                                          consistent=consistent, progress=False))
        man = sf.read_manifest(str(out / "manifest.json"))
        assert man.source["options"].get("consistent", False) is consistent
        hists[consistent] = [sf.read_meta(str(out / f"client_{k}")).label_hist["test"]
                             for k in range(1, 5)]
    assert hists[True] != hists[False]   # the test pool was dealt by the train shares


def test_resume_redoes_a_shard_whose_meta_names_another_client(leaf, tmp_path):
    root, truth, _ = leaf
    out = tmp_path / "out"
    run(root, out, clients=3)
    meta = sf.read_meta(str(out / "client_1"))
    meta.client_id = 9                      # same files, plan and writers: only the id is wrong
    sf.write_meta(str(out / "client_1"), meta)
    s = run(root, out, clients=3, resume=True)
    assert s.written == [1] and s.reused == [2, 3]
    assert sf.read_meta(str(out / "client_1")).client_id == 1
