"""Client-side algorithms of the trainer against written-out SGD: training metrics and the short
accumulation window, parameters without a gradient, clipping and where each pull sits relative
to it (FedProx before, Ditto after), Ditto's two streams, and fine-tuning (its seed, epoch mode,
accumulation, scheduler, tiny splits). Helpers and the smaller units: test_trainer_units.py.
"""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from federatedscope.core.configs.config import finalize, load_cfg
from federatedscope.core.data.datasets import TensorSplit
from federatedscope.core.trainers.ditto import ditto_class
from federatedscope.core.trainers.optimizer import PlainSGD
from federatedscope.core.trainers.trainer import GeneralTorchTrainer, get_trainer
from test_trainer_units import _batches, _cfg, _close, _sgd, _split, _trainer


def _by_hand(model, windows, lr, momentum=0.0, wd=0.0):
    """torch's SGD rule over accumulation windows, written out: each step on the mean gradient
    of its window's batches, a parameter without a gradient skipped (no decay, no momentum);
    returns the (summed loss, samples, correct) of every batch, as the trainer counts them."""
    params, bufs, seen = list(model.parameters()), {}, []
    for window in windows:
        for p in params:
            p.grad = None
        for xb, yb in window:
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            seen.append((float(loss.detach()) * len(yb), len(yb),
                         int((out.argmax(1) == yb).sum())))
            (loss / len(window)).backward()
        with torch.no_grad():
            for i, p in enumerate(params):
                if p.grad is None:
                    continue
                d = p.grad + wd * p
                bufs[i] = d.clone() if i not in bufs else momentum * bufs[i] + d
                p.sub_(lr * bufs[i])
    return seen


def test_train_metrics_and_the_short_last_window_over_two_rounds():
    # one epoch of 5 batches of 4, grad_accum_count 3: windows of 3 and 2 batches
    t = get_trainer(nn.Linear(6, 4), {"train": _split(3, n=20)}, "cpu",
                    _cfg("grad.grad_accum_count", 3, "train.batch_or_epoch", "epoch",
                         "train.local_update_steps", 1, "train.optimizer.lr", 0.5))
    ref = copy.deepcopy(t.model)
    for rnd in range(2):
        bs = _batches(t.data["train"], 5)
        seen = _by_hand(ref, [bs[:3], bs[3:]], 0.5)
        n, up, m = t.train(seed=rnd)
        assert n == 20 and _close(up, ref), rnd
        loss, correct = sum(x[0] for x in seen), sum(x[2] for x in seen)
        assert 0 < correct < 20
        assert m["train_total"] == 20 and m["train_acc"] == correct / 20
        assert m["train_loss"] == pytest.approx(loss, rel=1e-5)
        assert m["train_avg_loss"] == pytest.approx(loss / 20, rel=1e-5)


class TwoHeads(nn.Module):
    """A head per batch parity: each step leaves one head without a gradient."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return (self.a if self.calls % 2 else self.b)(x)


def test_a_parameter_without_a_gradient_in_a_step_is_not_decayed_or_pushed():
    lr, m, wd = 0.5, 0.9, 0.1
    torch.manual_seed(1)
    model = TwoHeads()
    ref = copy.deepcopy(model)
    t = get_trainer(model, {"train": _split(2, n=16)}, "cpu",
                    _cfg("train.local_update_steps", 4, "train.optimizer.lr", lr,
                         "train.optimizer.momentum", m, "train.optimizer.weight_decay", wd))
    bs = _batches(t.data["train"], 4)
    _by_hand(ref, [[b] for b in bs], lr, m, wd)      # torch: a None gradient skips the step
    assert _close(t.train(seed=0)[1], ref)


def test_the_optimizer_defaults_are_the_train_optimizer_over_the_global_model():
    t = _trainer(_cfg("train.optimizer.lr", 0.3, "train.optimizer.momentum", 0.5,
                      "train.optimizer.weight_decay", 0.01))
    opt = t._optimizer()
    assert opt.params == list(t.model.parameters())
    assert (opt.lr, opt.momentum, opt.weight_decay) == (0.3, 0.5, 0.01)
    assert t._optimizer(lr=0.7).lr == 0.7


def test_a_proximal_mu_without_its_type_is_off():
    t = _trainer(_cfg("regularizer.mu", 0.2, "train.local_update_steps", 2))
    plain = _trainer(_cfg("train.local_update_steps", 2))
    assert t._prox() is None
    a, b = t.train(seed=0)[1], plain.train(seed=0)[1]
    assert all(torch.equal(a[k], b[k]) for k in a)


# -------------------------------------------------------------------------- clip and pulls
@pytest.mark.parametrize("clip", ["0.05", "0.0"])
def test_grad_clip_bounds_the_step_and_zero_means_off(clip):
    lr, steps = 0.5, 4
    t = _trainer(_cfg("grad.grad_clip", clip, "train.optimizer.lr", lr,
                      "train.local_update_steps", steps))
    ref = copy.deepcopy(t.model)
    for b in _batches(t.data["train"], steps):
        _sgd(ref, b, lr, clip=float(clip) if float(clip) > 0 else None)
    assert _close(t.train(seed=0)[1], ref)


def test_fedprox_pull_is_clipped_with_the_gradient_over_two_rounds():
    lr, mu, clip = 0.5, 2.0, 0.05
    t = _trainer(_cfg("fedprox.use", "True", "fedprox.mu", mu, "grad.grad_clip", clip,
                      "train.optimizer.lr", lr, "train.local_update_steps", 3))
    ref = copy.deepcopy(t.model)
    for rnd in range(2):
        anchors = [p.detach().clone() for p in ref.parameters()]
        for b in _batches(t.data["train"], 3):
            _sgd(ref, b, lr, pull=(mu, anchors), clip=clip)
        _, up, _ = t.train(seed=rnd)
        assert _close(up, ref), rnd
        t.set_state(up)


def test_ditto_pull_comes_after_clipping_and_only_on_the_personal_model():
    rw, p_lr, lr, clip, mu = 1.5, 0.3, 0.2, 0.05, 2.0
    cfg = _cfg("federate.method", "Ditto", "personalization.regular_weight", rw,
               "personalization.lr", p_lr, "personalization.local_update_steps", 2,
               "train.local_update_steps", 3, "train.optimizer.lr", lr, "grad.grad_clip", clip,
               "fedprox.use", "True", "fedprox.mu", mu)
    t = _trainer(cfg)
    personal, shared = copy.deepcopy(t.model), copy.deepcopy(t.model)
    for rnd in range(3):
        anchors = [p.detach().clone() for p in shared.parameters()]
        bs = _batches(t.data["train"], 5)
        for b in bs[:2]:
            _sgd(personal, b, p_lr, pull=(rw, anchors), clip=clip, pull_after_clip=True)
        for b in bs[2:]:                        # FedProx pulls the global model (before clip)
            _sgd(shared, b, lr, pull=(mu, anchors), clip=clip)
        n, up, m = t.train(seed=rnd)
        assert n == 8 and m["train_total"] == 12 and m["train_total_local_model"] == 8
        assert _close(up, shared), rnd
        assert _close(t.personal_model.state_dict(), personal), rnd
        g = {k: v + 0.125 * (rnd + 1) for k, v in up.items()}     # the server's next global
        t.set_state(g)
        shared.load_state_dict(g)


def test_ditto_epoch_mode_personal_epochs_then_global_epochs():
    cfg = _cfg("federate.method", "Ditto", "train.batch_or_epoch", "epoch",
               "personalization.local_update_steps", 1, "train.local_update_steps", 2,
               "personalization.lr", 0.3, "train.optimizer.lr", 0.2,
               "personalization.regular_weight", 0.0)
    t = _trainer(cfg)
    personal, shared = copy.deepcopy(t.model), copy.deepcopy(t.model)
    bs = _batches(t.data["train"], 6)          # 2 batches per epoch, 3 epochs
    for b in bs[:2]:
        _sgd(personal, b, 0.3)
    for b in bs[2:]:
        _sgd(shared, b, 0.2)
    n, up, m = t.train(seed=4)
    assert m["train_total"] == 16 and m["train_total_local_model"] == 8
    assert _close(up, shared) and _close(t.personal_model.state_dict(), personal)


def test_ditto_scheduler_drives_the_global_model_only(tmp_path, monkeypatch):
    y = tmp_path / "s.yaml"
    y.write_text("federate:\n  method: Ditto\ntrain:\n  local_update_steps: 3\n  optimizer:\n"
                 "    lr: 0.4\n  scheduler:\n    type: StepLR\n    step_size: 1\n    gamma: 0.5\n"
                 "personalization:\n  local_update_steps: 2\n  lr: 0.3\n")
    t = get_trainer(nn.Linear(6, 4), {"train": _split(0)}, "cpu",
                    finalize(load_cfg(str(y), ["dataloader.batch_size", "4",
                                               "dataloader.shuffle", "False"])))
    seen = []
    original = PlainSGD.step
    monkeypatch.setattr(PlainSGD, "step",
                        lambda self, closure=None: (seen.append(self.lr), original(self))[1])
    t.train(seed=0)
    assert seen == [0.3, 0.3, 0.4, 0.2, 0.1]


def test_ditto_personal_state_loads_into_its_own_copy_and_must_be_complete():
    cfg = _cfg("federate.method", "Ditto", "personalization.local_update_steps", 2)
    t = _trainer(cfg)
    t.train(seed=0)
    state = t.personal_state()
    assert set(state) == {"ditto_personal.weight", "ditto_personal.bias"}
    fresh = _trainer(cfg)
    own = fresh.get_state()
    fresh.load_personal_state(state)
    assert all(torch.equal(fresh.get_state()[k], own[k]) for k in own)   # the global untouched
    assert torch.equal(fresh.personal_model.weight.detach(), state["ditto_personal.weight"])
    assert not torch.equal(fresh.personal_model.weight.detach(), own["weight"])
    with pytest.raises(RuntimeError, match="Missing key"):
        _trainer(cfg).load_personal_state({"ditto_personal.weight": state["ditto_personal.weight"]})


def test_ditto_training_invalidates_the_finetuned_copy():
    t = _trainer(_cfg("federate.method", "Ditto", "finetune.before_eval", "True",
                      "finetune.local_update_steps", 1))
    g = t.get_state()
    t.set_state(g)
    v0 = t._version
    seen = [t._finetuned_model()]
    for rnd in range(3):
        t.train(seed=rnd)
        assert t._version == v0 + 1 + 2 * rnd
        seen.append(t._finetuned_model())
        t.set_state({k: v + 0.5 for k, v in g.items()})
        seen.append(t._finetuned_model())
    assert len({id(m) for m in seen}) == len(seen)      # every change: a new fine-tuned copy


def test_ditto_state_without_a_personal_model_and_the_class_cache():
    t = _trainer(_cfg("federate.method", "Ditto"))
    assert t.personal_state() == {}
    t.load_personal_state({})                   # nothing saved yet: still no personal model
    assert t.personal_model is None and t.eval_model() is t.model
    assert ditto_class(GeneralTorchTrainer) is ditto_class(GeneralTorchTrainer) is type(t)
    assert type(t).__name__ == "DittoGeneralTorchTrainer"
    with pytest.raises(ValueError) as e:
        ditto_class(dict)
    assert str(e.value) == ("federate.method Ditto needs a trainer derived from "
                            "GeneralTorchTrainer; trainer.type gives dict")


# ------------------------------------------------------------------------------- fine-tuning
class SeedLog(TensorSplit):
    """A split that records the shuffle seed of each pass."""

    def __init__(self, split):
        super().__init__(split.x, split.y, split.transform)
        self.seeds = []

    def iter_batches(self, batch_size, shuffle, seed, *args, **kwargs):
        self.seeds.append((batch_size, shuffle, seed))
        return super().iter_batches(batch_size, shuffle, seed, *args, **kwargs)


def _finetune_trainer(tmp_path, *pairs, n=8, yaml=""):
    y = tmp_path / "ft.yaml"
    y.write_text(yaml or "finetune:\n  before_eval: true\n")
    cfg = finalize(load_cfg(str(y), ["dataloader.batch_size", "4", "dataloader.shuffle", "False",
                                     "finetune.before_eval", "True"] + [str(p) for p in pairs]))
    torch.manual_seed(123)
    return get_trainer(nn.Linear(6, 4), {"train": SeedLog(_split(0, n)), "test": _split(50)},
                       "cpu", cfg)


def _tuned(t, batches, lr, steps=None):
    ref = copy.deepcopy(t.model)
    for i, b in enumerate(batches):
        _sgd(ref, b, lr if steps is None else steps[i])
    return ref


def test_finetuning_shuffles_with_its_own_seed(tmp_path):
    t = _finetune_trainer(tmp_path, "dataloader.shuffle", "True", "finetune.local_update_steps", 6,
                          "finetune.batch_or_epoch", "batch")
    t._finetuned_model()                      # before any round: as if the last seed were 0
    assert t.data["train"].seeds == [(4, True, 17 * 1000003 + e) for e in range(3)]
    t.train(seed=5)
    t.data["train"].seeds.clear()
    t._finetuned_model()
    s = 5 * 31 + 17                           # not the round's own seeds (5 * 1000003 + e)
    assert t.data["train"].seeds == [(4, True, s * 1000003 + e) for e in range(3)]


def test_finetuning_in_epoch_mode_and_with_accumulation(tmp_path):
    t = _finetune_trainer(tmp_path, "finetune.batch_or_epoch", "epoch",
                          "finetune.local_update_steps", 2, "finetune.optimizer.lr", 0.5)
    bs = _batches(t.data["train"], 4)          # 2 epochs of 2 batches
    assert _close(t._finetuned_model().state_dict(), _tuned(t, bs, 0.5))
    acc = _finetune_trainer(tmp_path, "grad.grad_accum_count", 2, "finetune.local_update_steps",
                            2, "finetune.optimizer.lr", 0.5, "finetune.batch_or_epoch", "batch")
    # 2 steps of 2 accumulated batches of 4 == 2 steps on the 8 samples
    whole = _batches(acc.data["train"], 2, bs=8)
    assert _close(acc._finetuned_model().state_dict(), _tuned(acc, whole, 0.5))


def test_finetuning_follows_its_scheduler(tmp_path):
    t = _finetune_trainer(tmp_path, "finetune.local_update_steps", 3, "finetune.batch_or_epoch",
                          "batch", yaml="finetune:\n  before_eval: true\n  optimizer:\n"
                          "    lr: 0.4\n  scheduler:\n    type: StepLR\n    step_size: 1\n"
                          "    gamma: 0.5\n")
    bs = _batches(t.data["train"], 3)
    assert _close(t._finetuned_model().state_dict(), _tuned(t, bs, None, [0.4, 0.2, 0.1]))


@pytest.mark.parametrize("n", [0, 1])
def test_finetuning_needs_a_train_sample(tmp_path, n):
    t = _finetune_trainer(tmp_path, "finetune.local_update_steps", 2, n=n)
    tuned = t._finetuned_model().state_dict()
    if n == 0:                                  # nothing to tune on: the model as it is
        assert _close(tuned, t.model)
    else:                                       # one sample is a batch: two steps on it
        one = next(t.data["train"].iter_batches(4, False, 0))
        t.data["train"].seeds.clear()
        assert _close(tuned, _tuned(t, [one, one], t.cfg.finetune.optimizer.lr))
    del t.data["train"]
    t._version += 1
    assert _close(t._finetuned_model().state_dict(), t.model)
