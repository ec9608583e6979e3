"""What the server accepts from a joined client (``validation.py``), in-process: an update's keys,
shapes, dtypes and finiteness, and (``Admission.check_sample_size``) its sample size; metrics'
names, ranges and totals against the counts declared at join. Each refusal's exact reason is pinned (it is the server's log line)."""
import pytest
import torch

from federatedscope.core.workers.admission import Admission
from federatedscope.core.workers.validation import (check_metrics, check_update,
                                                    update_reference)


# ------------------------------------------------------------------ updates
def _state():
    return {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "bn.weight": torch.ones(3),
            "bn.num_batches": torch.tensor(5), "head.bias": torch.zeros(2)}


def test_an_update_must_match_keys_shapes_and_dtypes():
    ref = _state()
    assert check_update(ref, _state()) is None
    missing = {k: v for k, v in _state().items() if k != "w"}
    assert check_update(ref, missing) == ("state keys differ from the global model "
                                          "(1 differ, e.g. ['w'])")
    extra = {**_state(), "a": torch.ones(1), "b": torch.ones(1), "c": torch.ones(1)}
    assert check_update(ref, extra) == ("state keys differ from the global model "
                                        "(3 differ, e.g. ['a', 'b', 'c'])")
    assert check_update(ref, None) == ("state keys differ from the global model (4 "
                                       "differ, e.g. ['bn.num_batches', 'bn.weight', "
                                       "'head.bias'])")
    assert check_update(ref, {**_state(), "w": torch.zeros(4)}) == \
        "w: torch.float32[4] != torch.float32[2, 2]"
    assert check_update(ref, {**_state(), "bn.num_batches": torch.tensor(5.0)}) == \
        "bn.num_batches: torch.float32[] != torch.int64[]"
    assert check_update(ref, {**_state(), "head.bias": torch.tensor([0.0, float("-inf")])}) == \
        "head.bias has non-finite values"


def test_an_update_weighs_exactly_the_train_count_its_client_declared():
    """Five data_idx clients declare different train counts; each update's sample_size must be
    its own client's count (not another's), an int but not a bool; a client that declared
    nothing weighs 0."""
    adm = Admission(None, strict=False, max_clients=5)
    counts = {1: 12, 2: 0, 3: 7, 4: 2 ** 40, 5: 1}
    for cid, n in counts.items():
        decision = adm.admit({"client_id": cid, "num_samples": {"train": n, "test": 3}}, set())
        assert decision.accepted and decision.train_samples == n
    for cid, n in counts.items():
        assert adm.check_sample_size(cid, n) is None
        assert adm.check_sample_size(cid, n + 1) == \
            f"sample_size {n + 1} != declared train count {n}"
        for bad in (float(n), str(n), None, [n]):
            assert adm.check_sample_size(cid, bad) == "sample_size is not an integer"
    assert adm.check_sample_size(1, 7) == "sample_size 7 != declared train count 12"  # 3's count
    assert adm.check_sample_size(5, True) == "sample_size is not an integer"   # bool, though 1
    assert adm.check_sample_size(2, False) == "sample_size is not an integer"  # bool, though 0
    assert adm.check_sample_size(9, 0) is None        # never admitted: declared nothing
    assert adm.check_sample_size(9, 1) == "sample_size 1 != declared train count 0"


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)
        self.bn = torch.nn.BatchNorm1d(4)     # float buffers and an int64 counter
        self.head = torch.nn.Linear(4, 3, bias=False)


def test_the_reference_taken_once_judges_like_the_live_model():
    """The server takes the model's keys/shapes/dtypes once (storage-less meta tensors); every
    verdict must equal the one against the live state_dict, also after the model's values change."""
    net = _Net()
    ref = update_reference(net)
    live = net.state_dict()
    assert list(ref) == list(live)
    assert all(r.is_meta and r.shape == v.shape and r.dtype == v.dtype for r, v in
               zip(ref.values(), live.values()))
    good = {k: torch.ones_like(v) for k, v in live.items()}
    net.load_state_dict(good)     # a round's aggregate: values change, structure does not
    wrong_shape = {**good, "fc.weight": torch.ones(4, 5)}
    wrong_dtype = {**good, "bn.num_batches_tracked": torch.tensor(1.0)}
    no_head = {k: v for k, v in good.items() if k != "head.weight"}
    nan = {**good, "bn.running_var": torch.full((4,), float("nan"))}
    for update in (good, wrong_shape, wrong_dtype, no_head, nan):
        assert check_update(ref, update) == check_update(net.state_dict(), update)
    assert check_update(ref, good) is None
    assert check_update(ref, wrong_shape) == \
        "fc.weight: torch.float32[4, 5] != torch.float32[4, 6]"
    assert check_update(ref, no_head, local_param=["head"]) is None


def test_an_update_may_omit_exactly_the_local_keys():
    ref = _state()
    shared = {k: v for k, v in _state().items() if not k.startswith("bn.")}
    assert check_update(ref, shared, ["bn.", ""]) is None
    assert check_update(ref, shared) is not None              # no local_param: all keys
    half = {k: v for k, v in _state().items() if k != "bn.weight"}
    assert check_update(ref, half, ["bn."]) is not None       # all local keys or none


def test_large_finite_values_whose_sum_overflows_are_accepted():
    ref = {"w": torch.zeros(2)}
    big = {"w": torch.tensor([3e38, 3e38])}                          # float32 sum is inf
    assert check_update(ref, big) is None
    assert check_update(ref, {"w": torch.tensor([3e38, float("nan")])}) is not None


# ------------------------------------------------------------------ metrics
DECL = {"train": 30, "val": 5, "test": 6}


def test_metrics_consistent_with_the_declaration_pass():
    ok = {"test_acc": 1.0, "test_total": 6, "test_correct": 6, "test_loss": 0.0,
          "val_acc": 0.0, "val_total": 5, "val_correct": 0, "val_avg_loss": 2.5}
    assert check_metrics(ok, DECL, ["val", "test"]) is None
    assert check_metrics({"train_total": 30, "train_acc": 0.5}, DECL, ["train"]) is None


@pytest.mark.parametrize("results,reason", [
    ({}, "no metrics"),
    ([("test_total", 6)], "no metrics"),
    ({5: 1.0}, "metric name '5' is not <split>_<metric> for a split in eval.split"),
    ({"test": 1.0}, "metric name 'test' is not <split>_<metric> for a split in eval.split"),
    ({"test_": 1.0}, "metric name 'test_' is not <split>_<metric> for a split in eval.split"),
    ({"train_acc": 0.5, "train_total": 30},
     "metric name 'train_acc' is not <split>_<metric> for a split in eval.split"),
    ({"x" * 60: 1.0}, f"metric name {'x' * 40!r} is not <split>_<metric> for a split in "
                      f"eval.split"),
    ({"test_total": 6, "test_acc": True}, "test_acc is not a finite number"),
    ({"test_total": 6, "test_acc": "0.5"}, "test_acc is not a finite number"),
    ({"test_total": 6, "test_loss": float("inf")}, "test_loss is not a finite number"),
    ({"test_total": 6, "test_acc": 1.01}, "test_acc=1.01 is outside [0, 1]"),
    ({"test_total": 6, "test_acc": -0.01}, "test_acc=-0.01 is outside [0, 1]"),
    ({"test_total": 6, "test_loss": -0.5}, "test_loss=-0.5 is negative"),
    ({"test_total": 6, "test_avg_loss": -1}, "test_avg_loss=-1 is negative"),
    ({"test_total": 6, "test_correct": -1}, "test_correct=-1 is negative"),
    ({"test_total": -6}, "test_total=-6 is negative"),
    ({"test_acc": 0.5}, "test_total is missing"),
    ({"test_total": 6, "val_acc": 0.5}, "val_total is missing"),
    ({"test_total": 7}, "test_total=7 != the 6 test samples declared at join"),
    ({"val_total": 5, "test_total": 5}, "test_total=5 != the 6 test samples declared at join"),
    ({"test_total": 6, "test_correct": 7}, "test_correct=7 exceeds test_total=6"),
])
def test_each_bad_metric_is_refused_with_its_reason(results, reason):
    assert check_metrics(results, DECL, ["val", "test"]) == reason


def test_a_split_the_client_did_not_declare_must_report_zero():
    assert check_metrics({"test_total": 0}, {"train": 3}, ["test"]) is None
    assert check_metrics({"test_total": 1}, {"train": 3}, ["test"]) == \
        "test_total=1 != the 0 test samples declared at join"
    assert check_metrics({"test_total": 6, "test_mse": -3.0}, DECL, ["test"]) is None


def test_all_refused_names_each_client_and_the_fix_for_its_kind_of_refusal():
    from federatedscope.core.workers.validation import all_refused
    diverged = all_refused(7, {3: "non-finite values in fc.weight", 1: "shape of fc.bias"})
    assert diverged == (
        "every update of round 7 was refused (client #1: shape of fc.bias; client #3: "
        "non-finite values in fc.weight); the model diverged: lower train.optimizer.lr or set "
        "grad.grad_clip, then restart with federate.restore_from")
    differ = all_refused(2, {4: "shape of fc.bias", 2: "missing key fc.weight"})
    assert differ == (
        "every update of round 2 was refused (client #2: missing key fc.weight; client #4: shape "
        "of fc.bias); check that the clients run the same model and data configuration")
    # many clients: the reasons are cut at 300 characters, the fix is always there
    many = {c: "shape of fc.bias" for c in range(1, 41)}
    reasons = "; ".join(f"client #{c}: shape of fc.bias" for c in range(1, 41))
    assert len(reasons) == 9 * 27 + 31 * 28 + 39 * 2      # 1,189: over the 300 kept
    assert all_refused(5, many) == (
        f"every update of round 5 was refused ({reasons[:300]}...[{len(reasons)} chars]); "
        f"check that the clients run the same model and data configuration")
