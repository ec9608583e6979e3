"""The trainer's pieces against hand computations: the round's batch stream (epochs, seeds,
dataloader keys), accumulation windows, metrics, evaluation, state checks and their texts, the
registry fallbacks, the one-line description, PlainSGD / ParamPull / scheduler units. Tiny
linear models: milliseconds per test. The algorithms (pulls, Ditto, fine-tuning):
test_trainer_algorithm_units.py, which imports the helpers below.
"""
import copy
import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import federatedscope.core.trainers.trainer as trainer_mod
from federatedscope.core.configs.config import finalize, load_cfg
from federatedscope.core.data.datasets import TensorSplit
from federatedscope.core.trainers.optimizer import PlainSGD
from federatedscope.core.trainers.regularizer import ParamPull
from federatedscope.core.trainers.scheduler import (build_scheduler, get_scheduler,
                                                    probe_scheduler, scheduler_kwargs)
from federatedscope.core.trainers.trainer import (GeneralTorchTrainer, _Tally, describe,
                                                  get_trainer, resolve_criterion, resolve_device,
                                                  resolve_trainer_class)

# The first torch.optim optimizer built in a process imports torch._dynamo (seconds of CPU; the
# scheduler tests in test_algorithms.py build one as their reference). Paid here, at collection,
# mutmut's fork server pays it once; otherwise every forked per-mutant run that reaches such a
# test pays it again (~20 s each under load).
torch.optim.lr_scheduler.StepLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), 1)


def _cfg(*pairs):
    base = ["dataloader.batch_size", "4", "dataloader.shuffle", "False",
            "train.batch_or_epoch", "batch"]
    return finalize(load_cfg(None, base + [str(p) for p in pairs]))


def _split(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    return TensorSplit(torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g),
                       lambda x: x)


def _trainer(cfg, n=8, seed=0):
    torch.manual_seed(123)
    return get_trainer(nn.Linear(6, 4), {"train": _split(seed, n), "test": _split(seed + 50)},
                       "cpu", cfg)


class Recorder:
    """A BatchSource that records each pass's arguments and yields numbered one-row batches."""

    def __init__(self, n):
        self.n, self.calls = n, []

    def __len__(self):
        return self.n

    def iter_batches(self, batch_size, shuffle, seed, num_workers=0, drop_last=False,
                     pin_memory=False):
        self.calls.append((batch_size, shuffle, seed, num_workers, drop_last, pin_memory))
        full, rest = divmod(self.n, batch_size)
        for b in range(full + (1 if rest and not drop_last else 0)):
            yield torch.tensor([len(self.calls) * 100 + b]), torch.tensor([0])


def _sgd(model, batch, lr, pull=None, clip=None, pull_after_clip=False):
    """One SGD step by hand; optional pull (weight, anchors) before or after clipping."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(batch[0]), batch[1]).backward()
    params = list(model.parameters())
    grads = [p.grad.clone() for p in params]

    def add_pull():
        for i, p in enumerate(params):
            grads[i] += pull[0] * (p.detach() - pull[1][i])
    if pull is not None and not pull_after_clip:
        add_pull()
    if clip is not None:
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        scale = min(1.0, clip / (float(norm) + 1e-6))
        grads = [g * scale for g in grads]
    if pull is not None and pull_after_clip:
        add_pull()
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g)


def _batches(split, k, bs=4):
    out = []
    while len(out) < k:
        out += list(split.iter_batches(bs, False, 0))
    return out[:k]


def _close(state, model):
    return all(torch.allclose(state[k], v, atol=1e-6) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------ the batch stream
def test_batch_mode_continues_into_further_epochs_each_with_its_own_seed():
    cfg = _cfg("dataloader.shuffle", "True", "dataloader.drop_last", "True",
               "dataloader.batch_size", "3", "dataloader.num_workers", "0",
               "dataloader.pin_memory", "True")
    t = _trainer(cfg)
    src = Recorder(10)                           # 3 full batches of 3 per pass (drop_last)
    got = list(t._round_batches(src, 7, 7, False))
    assert [u for u, _ in got] == list(range(7))
    assert [int(b[0]) for _, b in got] == [100, 101, 102, 200, 201, 202, 300]
    assert src.calls == [(3, True, 7 * 1000003 + e, 0, True, True) for e in range(3)]
    # steps that end with an epoch open no further pass
    src = Recorder(10)
    assert len(list(t._round_batches(src, 1, 6, False))) == 6 and len(src.calls) == 2


def test_epoch_mode_runs_whole_epochs_numbered_by_epoch():
    t = _trainer(_cfg("dataloader.batch_size", "4"))
    src = Recorder(10)                           # 4, 4, 2: three batches per epoch
    got = list(t._round_batches(src, 2, 3, True))
    assert [u for u, _ in got] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [c[2] for c in src.calls] == [2000006, 2000007, 2000008]


def test_a_split_smaller_than_a_dropped_batch_yields_nothing_and_ends():
    t = _trainer(_cfg("dataloader.batch_size", "16", "dataloader.drop_last", "True"))
    assert list(t._round_batches(Recorder(10), 0, 5, False)) == []
    assert list(t._round_batches(Recorder(10), 0, 2, True)) == []


def test_accumulation_windows_in_batch_and_epoch_mode():
    t = _trainer(_cfg("grad.grad_accum_count", "3", "dataloader.batch_size", "2"))
    batch = [w for _, w in t._accumulated(Recorder(10), 0, 2, False)]     # 2 steps x 3 batches
    assert batch == [(0, 3, False), (1, 3, False), (2, 3, True)] * 2
    epoch = [w for _, w in t._accumulated(Recorder(10), 0, 1, True)]      # one epoch: 5 batches
    assert epoch == [(0, 3, False), (1, 3, False), (2, 3, True), (0, 3, False), (1, 3, True)]


# ---------------------------------------------------------------------------------- metrics
def test_tally_metrics():
    t = _Tally()
    t.add(2.0, 4, 3)
    t.add(1.0, 4, 1)
    assert t.metrics("val") == {"val_loss": 3.0, "val_total": 8, "val_avg_loss": 0.375,
                                "val_acc": 0.5}
    assert t.metrics("test", with_correct=True)["test_correct"] == 4
    one = _Tally()
    one.add(0.75, 1, 1)                        # a single sample is its own mean
    assert one.metrics("train")["train_avg_loss"] == 0.75 and one.metrics("train")["train_acc"] == 1
    assert _Tally().metrics("train") == {"train_loss": 0.0, "train_total": 0,
                                         "train_avg_loss": 0.0, "train_acc": 0.0}


def test_evaluate_sums_over_batches_of_at_least_64():
    t = _trainer(_cfg("dataloader.batch_size", "4"))
    big = _split(9, n=70)
    t.data["val"] = big
    res = t.evaluate("val")
    with torch.no_grad():
        out = t.model(big.x)
    assert res["val_total"] == 70
    assert res["val_loss"] == pytest.approx(float(F.cross_entropy(out, big.y, reduction="sum")),
                                            rel=1e-5)
    correct = int((out.argmax(1) == big.y).sum())
    assert res["val_correct"] == correct and res["val_acc"] == correct / 70
    rec = Recorder(70)
    t.data["val"] = rec
    with pytest.raises(Exception):
        t.evaluate("val")                         # the recorder's rows are not model inputs
    assert rec.calls[0][:3] == (64, False, 0)
    t2 = _trainer(_cfg("dataloader.batch_size", "100"))
    t2.data["val"] = rec2 = Recorder(70)
    with pytest.raises(Exception):
        t2.evaluate("val")
    assert rec2.calls[0][0] == 100
    t.data["empty"] = _split(0, n=0)
    assert t.evaluate("empty") == {} and t.evaluate("nosuchsplit") == {}


def test_no_train_samples_means_no_training():
    for cls_cfg in (_cfg(), _cfg("federate.method", "Ditto")):
        t = _trainer(cls_cfg)
        before = t.get_state()
        t.data["train"] = _split(0, n=0)
        n, up, metrics = t.train(seed=1)
        assert n == 0 and metrics == {"train_total": 0}
        assert all(torch.equal(before[k], up[k]) for k in before)
        assert t.num_samples("test") == 8 and t.num_samples("train") == 0
        del t.data["train"]
        assert t.train(seed=1)[0] == 0 and t.num_samples("train") == 0
    assert getattr(t, "personal_model", None) is None and t.eval_model() is t.model


# ------------------------------------------------------------------------ state and texts
def test_a_state_mismatch_lists_at_most_five_keys_of_each_kind():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(4)])     # 8 keys: 0.weight .. 3.bias
    t = get_trainer(model, {}, "cpu", _cfg())
    state = {f"x{i}": torch.zeros(1) for i in range(7)}
    state.update({"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2)})
    with pytest.raises(ValueError) as e:
        t.set_state(state)
    assert str(e.value).startswith(
        "global state does not fit this model: unknown keys ['x0', 'x1', 'x2', 'x3', 'x4'], "
        "missing keys ['1.bias', '1.weight', '2.bias', '2.weight', '3.bias'] (")
    every = get_trainer(nn.Sequential(*[nn.Linear(2, 2) for _ in range(4)]), {}, "cpu",
                        _cfg("personalization.local_param", "['.']"))    # all 8 keys local
    with pytest.raises(ValueError) as e:
        every.load_personal_state({f"x{i}": torch.zeros(1) for i in range(7)})
    assert str(e.value).startswith(
        "personal state keys ['x0', 'x1', 'x2', 'x3', 'x4'] do not match this trainer's "
        "['0.bias', '0.weight', '1.bias', '1.weight', '2.bias'] (")


def test_state_checks_name_the_keys_and_the_likely_cause():
    t = _trainer(_cfg("personalization.local_param", "['bias']"))
    assert t.local_keys == {"bias"} and set(t.upload_state()) == {"weight"}
    with pytest.raises(ValueError) as e:
        t.set_state({"weight": torch.zeros(4, 6), "extra": torch.zeros(1)})
    assert str(e.value) == ("global state does not fit this model: unknown keys ['extra'], "
                            "missing keys [] (same model.* config on server and clients? same "
                            "personalization.local_param?)")
    with pytest.raises(ValueError) as e:
        t.load_personal_state({"weight": torch.zeros(4, 6)})
    assert str(e.value) == ("personal state keys ['weight'] do not match this trainer's "
                            "['bias'] (personalization.local_param or federate.method changed "
                            "since it was saved?)")
    bias = t.model.bias.detach().clone()
    t.set_state({"weight": torch.ones(4, 6), "bias": torch.zeros(4)})   # local key kept
    assert torch.equal(t.model.bias.detach(), bias) and torch.equal(t.model.weight.detach(),
                                                                     torch.ones(4, 6))
    t.load_personal_state({"bias": torch.full((4,), 3.0)})
    assert t.personal_state()["bias"].tolist() == [3.0] * 4


def test_each_state_change_invalidates_the_finetuned_copy():
    t = _trainer(_cfg("finetune.before_eval", "True", "finetune.local_update_steps", 2))
    v0 = t._version
    t.set_state(t.get_state())
    t.train(seed=0)
    assert t._version == v0 + 2
    tuned = t._finetuned_model()
    t.load_personal_state({})
    assert t._version == v0 + 3 and t._finetuned_model() is not tuned


# -------------------------------------------------------------------- registry and device
def test_device_fallback_and_builtin_lookups(caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        assert resolve_device("cuda:1") == "cpu"
        assert resolve_device("cpu") == "cpu"
    assert caplog.messages == ["device cuda:1 requested (use_gpu) but CUDA is not available; "
                               "training on cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda:1") == "cuda:1"
    for name in ("general", "General", "cvtrainer", "CVTrainer"):
        assert resolve_trainer_class(name) is GeneralTorchTrainer
    assert resolve_trainer_class("nosuchtrainer") is None

    class Mine(GeneralTorchTrainer):
        pass
    from federatedscope import register
    monkeypatch.setitem(register.trainer_dict, "zz_mine",
                        lambda ttype: Mine if ttype == "general" else None)
    assert resolve_trainer_class("general") is Mine     # registered entries answer first
    assert isinstance(resolve_criterion("crossentropyloss", "cpu"), nn.CrossEntropyLoss)
    assert resolve_criterion("MSELoss", "cpu") is None
    cfg = _cfg()
    cfg.defrost()
    cfg.trainer.type = "nosuchtrainer"
    with pytest.raises(ValueError, match=r"^trainer.type='nosuchtrainer' is not registered$"):
        get_trainer(nn.Linear(6, 4), {}, "cpu", cfg)


def test_the_description_names_every_active_algorithm_once_per_process(caplog, monkeypatch):
    monkeypatch.setattr(trainer_mod, "_DESCRIBED", set())
    cfg = _cfg("federate.method", "Ditto", "fedprox.use", "True", "fedprox.mu", 0.25,
               "personalization.local_param", "['bias']", "personalization.regular_weight", 0.5,
               "personalization.lr", 0.3, "personalization.local_update_steps", 2,
               "finetune.before_eval", "True", "finetune.local_update_steps", 3,
               "finetune.batch_or_epoch", "batch")
    with caplog.at_level(logging.INFO, logger="federatedscope"):
        t = _trainer(cfg)
        _trainer(cfg)
    want = ("Trainer: DittoGeneralTorchTrainer, on cpu, proximal term mu=0.25, 1 local keys kept "
            "on the client, Ditto personal model (regular_weight=0.5, lr=0.3, "
            "local_update_steps=2), fine-tuning 3 batch(s) before evaluation")
    assert [m for m in caplog.messages if m.startswith("Trainer:")] == [want]
    cfg.defrost()
    cfg.train.scheduler.type = "StepLR"
    assert describe(t) == want.replace(", fine-tuning", ", scheduler StepLR, fine-tuning")
    plain = _trainer(_cfg())
    assert describe(plain) == "Trainer: GeneralTorchTrainer, on cpu"
    # a registered trainer need not have a device or local keys; a mu without its type is off
    bare = type("BareTrainer", (), {"cfg": _cfg("regularizer.mu", 0.2)})()
    assert describe(bare) == "Trainer: BareTrainer, on ?"


# -------------------------------------------------------------- optimizer, pull, scheduler
def test_plain_sgd_skips_gradless_parameters_and_zeroes_in_place():
    a, b = nn.Parameter(torch.tensor([1.0, 2.0])), nn.Parameter(torch.tensor([3.0]))
    frozen = nn.Parameter(torch.tensor([5.0]), requires_grad=False)
    opt = PlainSGD([a, frozen, b], lr=0.5, momentum=0.5, weight_decay=0.25)
    assert opt.params == [a, b] and opt.lr == 0.5
    a.grad = torch.tensor([1.0, -1.0])
    opt.step()                                  # b has no gradient: untouched, no buffer
    # d = g + 0.25 * w = [1.25, -0.5]; buf = d; a -= 0.5 * d
    assert a.detach().tolist() == [0.375, 2.25] and b.item() == 3.0 and set(opt.buffers) == {0}
    opt.zero_grad(set_to_none=False)
    assert a.grad.tolist() == [0.0, 0.0] and b.grad is None
    opt.param_groups[0]["lr"] = 1.0             # what a scheduler changes
    a.grad = torch.tensor([0.0, 0.0])
    opt.step()                                  # d = 0.25 * w; buf = 0.5 * buf + d
    assert a.detach().tolist() == [0.375 - (0.625 + 0.09375), 2.25 - (-0.25 + 0.5625)]
    opt.zero_grad()
    assert a.grad is None


def test_plain_sgd_defaults_to_no_momentum_and_no_decay():
    a = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = PlainSGD([a], lr=0.5)
    for g, want in (([1.0, 1.0], [0.5, -2.5]), ([-1.0, 2.0], [1.0, -3.5])):
        a.grad = torch.tensor(g)
        opt.step()
        assert a.detach().tolist() == want
    assert opt.buffers == {}


def test_momentum_cycling_schedulers_drive_plain_sgd_as_they_drive_torch_sgd():
    torch.manual_seed(0)
    m1 = nn.Linear(4, 3)
    m2 = copy.deepcopy(m1)
    o1 = PlainSGD(m1.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
    kw = {"max_lr": 0.5, "total_steps": 6, "base_momentum": 0.5, "max_momentum": 0.9}
    s1 = get_scheduler(o1, "OneCycleLR", **kw)
    s2 = torch.optim.lr_scheduler.OneCycleLR(o2, **kw)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    momenta = []
    for m, o, s in ((m1, o1, s1), (m2, o2, s2)):
        for _ in range(5):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
            s.step()
            momenta.append(o.param_groups[0]["momentum"])
    assert len(set(momenta[:5])) > 1 and momenta[:5] == momenta[5:]
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


def test_param_pull_adds_weight_times_distance_and_checks_its_anchors():
    m = nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, -2.0]]))
        m.bias.fill_(0.5)
    pull = ParamPull(m, [torch.tensor([[0.0, 0.0]]), torch.tensor([1.0])], 0.5)
    m.weight.grad = torch.tensor([[1.0, 1.0]])
    pull.apply()                                # bias has no gradient: skipped
    assert m.weight.grad.tolist() == [[1.5, 0.0]] and m.bias.grad is None
    ParamPull(m, [torch.zeros(1, 2), torch.zeros(1)], 0.0).apply()
    assert m.weight.grad.tolist() == [[1.5, 0.0]]
    here = ParamPull.toward_current(m, 3.0)
    assert here.weight == 3.0 and torch.equal(here.anchors[0], m.weight.detach())
    with pytest.raises(ValueError, match=r"^1 anchors for 2 parameters$"):
        ParamPull(m, [torch.zeros(1, 2)], 1.0)


def test_scheduler_arguments_registry_and_refusals(monkeypatch):
    from federatedscope import register
    node = {"type": "MultiStepLR", "warmup_ratio": 0.1, "milestones": (2, 4), "gamma": 0.5}
    assert scheduler_kwargs(node) == {"milestones": [2, 4], "gamma": 0.5}
    opt = PlainSGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    assert get_scheduler(opt, "") is None
    with pytest.raises(ValueError) as e:
        get_scheduler(opt, "ReduceLROnPlateau")
    assert str(e.value) == ("scheduler 'ReduceLROnPlateau' is not supported here: it steps on a "
                            "validation metric, not per batch")
    with pytest.raises(ValueError) as e:
        probe_scheduler("Optimizer", {})        # an attribute of lr_scheduler, not a scheduler
    assert str(e.value) == ("unknown scheduler type 'Optimizer' (not registered, and not a class "
                            "of torch.optim.lr_scheduler)")
    # the probe's stand-in optimizer has a learning rate (LinearLR scales it at construction)
    probe_scheduler("LinearLR", {"start_factor": 0.5, "total_iters": 4})
    with pytest.raises(TypeError, match="step_sise"):
        probe_scheduler("StepLR", {"step_sise": 2})
    with pytest.raises(ValueError, match="unknown scheduler type 'NoSuchLR'"):
        get_scheduler(opt, "NoSuchLR")
    marker = object()
    monkeypatch.setitem(register.scheduler_dict, "mine",
                        lambda o, type, **kw: marker if (o is opt and type == "mine"
                                                         and kw == {"k": 1}) else None)
    assert get_scheduler(opt, "mine", k=1) is marker

    class Node(dict):
        type = "mine"
    assert build_scheduler(opt, Node(type="mine", warmup_ratio=0.0, k=1)) is marker
