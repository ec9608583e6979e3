"""Every rule of ``leaf_checks`` (one parsed LEAF file: labels, images, the users/num_samples/
user_data bookkeeping) with the exact message an operator reads, in process, over 4-5 writers
of realistic ids. Nothing is coerced: each case is one way a file can be wrong."""
import numpy as np
import pytest

from federatedscope.cv.dataset.leaf_checks import (FIX, NUM_CLASSES, check_users, images,
                                                   json_number, labels)

W = "all_data_3.json, writer f0413_27"


def test_valid_labels_come_back_as_int64_in_order():
    got = labels([0, 61, 7, 7, 30], W)
    assert got.dtype == np.int64 and got.tolist() == [0, 61, 7, 7, 30]


@pytest.mark.parametrize("ys,sample,shown", [
    ([3, 62, 1], 1, "62"), ([-1, 5], 0, "-1"), ([4, 5, 61, 99], 3, "99"),
    ([1, 2 ** 62], 1, str(2 ** 62)), ([2 ** 63, 0], 0, str(2 ** 63)),     # past int64: still named
    ([0, -(2 ** 63) - 1], 1, str(-(2 ** 63) - 1))])
def test_a_label_outside_the_classes_names_its_sample(ys, sample, shown):
    with pytest.raises(ValueError) as e:
        labels(ys, W)
    assert str(e.value) == (f"{W}, sample {sample}: label {shown} is outside [0, {NUM_CLASSES}); "
                            f"{FIX}")


@pytest.mark.parametrize("bad,shown,kind", [
    (2.0, "2.0", "number with a fraction"), (b"\xff", "1.0", "number with a fraction"),
    (True, "True", "boolean"), ("3", "'3'", "string"), (None, "None", "null"),
    ([1], "[1]", "array"), ({"y": 1}, "{'y': 1}", "object"), (1j, "1j", "complex")])
def test_a_label_that_is_not_a_json_integer_is_named_by_its_json_kind(bad, shown, kind):
    with pytest.raises(ValueError) as e:
        labels([5, 9, bad, 2], W)
    assert str(e.value) == (f"{W}, sample 2: label {shown} is a JSON {kind}; labels must be JSON "
                            f"integers in [0, {NUM_CLASSES}) (nothing is rounded or converted); "
                            f"{FIX}")


def test_json_number_reads_back_the_hooks_bytes_and_passes_the_rest():
    assert [json_number(bytes((k,))) for k in (0, 51, 255)] == [0.0, 0.2, 1.0]
    assert [json_number(v) for v in (3, 0.5, "x", None)] == [3, 0.5, "x", None]


@pytest.mark.parametrize("row,says", [
    ("abc", "sample 1: image is a JSON string, not an array of 784 numbers"),
    (None, "sample 1: image is a JSON null, not an array of 784 numbers"),
    ([0.0] * 785, "sample 1: image has 785 values, expected 784 (28x28)"),
    ([0.0] * 10 + [None] + [0.0] * 773, "sample 1, pixel 10: None is a JSON null, not a number"),
    ([0.0] * 783 + [[1.0]], "sample 1, pixel 783: [1.0] is a JSON array, not a number")])
def test_a_bad_image_names_its_sample_and_pixel(row, says):
    with pytest.raises(ValueError) as e:
        images([[0.0] * 784, row, [1.0] * 784], W)
    assert str(e.value) == f"{W}, {says}; {FIX}"


def test_images_give_float64_rows_and_a_json_boolean_is_never_a_pixel():
    xs = [[k / 255 for k in range(784)], [1] * 784, [0.0] * 784]
    got = images(xs, W)
    assert got.dtype == np.float64 and got.shape == (3, 784)
    assert np.array_equal(got, np.asarray(xs, dtype=np.float64))
    assert images([[1] * 784, [0] * 784], W).dtype == np.float64     # JSON integers 0/1 too
    with pytest.raises(ValueError, match=r"sample 2, pixel 5: True is a JSON boolean"):
        images(xs[:2] + [[0.0] * 5 + [True] + [0.0] * 778], W)


def _raw(users, counts, data):
    raw = {"user_data": data}
    if users is not None:
        raw["users"] = users
    if counts is not None:
        raw["num_samples"] = counts
    return raw


def _d(*ns):
    return {f"f{1000 + i}_0{i}": {"x": [[0.0] * 784] * n, "y": [1] * n} for i, n in enumerate(ns)}


P = "/data/femnist/raw/all_data_7.json"


def test_agreeing_bookkeeping_gives_the_users_order():
    data = _d(3, 1, 2, 5)
    order = ["f1003_03", "f1000_00", "f1002_02", "f1001_01"]
    assert check_users(_raw(order, [5, 3, 2, 1], data), P) == order
    assert check_users(_raw(None, None, data), P) == list(data)      # users: user_data's order


@pytest.mark.parametrize("users,counts,says", [
    ("f1000_00", None, "'users' must be a list of writer id strings"),
    (["f1000_00", 7, "f1002_02", "f1003_03"], None, "'users' must be a list of writer id strings"),
    (["f1000_00", "f1001_01", "f1002_02", "f1001_01", "f1003_03"], None,
     "writer f1001_01 is listed twice in 'users'"),
    (["f1000_00", "f1001_01", "f1009_09", "f1002_02", "f1003_03"], None,
     "writer f1009_09 is in 'users' but not in 'user_data'"),
    (["f1000_00", "f1001_01", "f1002_02", "f1003_03"], [3, 1, 2],
     "'num_samples' must list one count per writer in 'users' (4), got [3, 1, 2]"),
    (["f1000_00", "f1001_01", "f1002_02", "f1003_03"], "3,1,2,5",
     "'num_samples' must list one count per writer in 'users' (4), got '3,1,2,5'"),
    (["f1000_00", "f1001_01", "f1002_02", "f1003_03"], [bytes((51,)), 1, 2],  # 0.2, as hooked
     "'num_samples' must list one count per writer in 'users' (4), got [0.2, 1, 2]"),
    (["f1000_00", "f1001_01", "f1002_02", "f1003_03"], [1000] * 10,         # 60 chars: whole
     "'num_samples' must list one count per writer in 'users' (4), got [" +
     ", ".join(["1000"] * 10) + "]"),
    (["f1000_00", "f1001_01", "f1002_02", "f1003_03"], [1000] * 9 + [10000],  # 61: cut at 57
     "'num_samples' must list one count per writer in 'users' (4), got "
     "[1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 10..."),
    (["f1000_00", "f1001_01", "f1002_02", "f1003_03"], [3, 1, 4, 5],
     ", writer f1002_02: 'num_samples' says 4 but user_data holds 2 labels"),
    (["f1000_00", "f1001_01", "f1002_02", "f1003_03"], [3, 1.0, 2, 5],
     ", writer f1001_01: 'num_samples' says 1.0 but user_data holds 1 labels"),
    (["f1000_00", "f1001_01", "f1002_02", "f1003_03"], [3, "1", 2, 5],
     ", writer f1001_01: 'num_samples' says '1' but user_data holds 1 labels")])
def test_each_bookkeeping_mismatch_is_named(users, counts, says):
    with pytest.raises(ValueError) as e:
        check_users(_raw(users, counts, _d(3, 1, 2, 5)), P)
    sep = "" if says.startswith(",") else ": "
    assert str(e.value) == f"{P}{sep}{says}; {FIX}"


def test_a_writer_missing_from_users_would_be_dropped_and_is_named_with_its_count():
    data = dict(_d(3, 1, 2, 5), f1111_11="not an object")
    with pytest.raises(ValueError) as e:
        check_users(_raw(["f1000_00", "f1001_01"], None, data), P)
    assert str(e.value) == (f"{P}: writer f1002_02 (2 samples) is in 'user_data' but not in "
                            f"'users' (3 such writer(s)); it would be dropped silently: add it to "
                            f"'users' and 'num_samples', or remove it from 'user_data'")
    with pytest.raises(ValueError, match=r"writer f1111_11 \(\? samples\) is in 'user_data' but "
                                         r"not in 'users' \(1 such"):
        check_users(_raw(list(_d(3, 1, 2, 5)), None, data), P)
