"""Client-side FL algorithms against hand computations (tiny models, exact equality).

FedProx, FedBN (personalization.local_param), Ditto, train.scheduler, finetune.before_eval, the
trainer/criterion registry and the CPU fallback. Real-process runs: test_algorithms_e2e.py.
"""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import federatedscope.register as register
from federatedscope.core.configs.config import ConfigError, finalize, load_cfg
from federatedscope.core.data.datasets import TensorSplit
from federatedscope.core.trainers.trainer import GeneralTorchTrainer, get_trainer


class Tiny(nn.Module):
    """fc1 -> BatchNorm ("bn") -> ReLU -> fc2: a few parameters, one local-able layer."""

    def __init__(self, bn: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5) if bn else nn.Identity()
        self.fc2 = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x.flatten(1)))))


def _cfg(*pairs, yaml=None):
    base = ["dataloader.batch_size", "4", "dataloader.shuffle", "False",
            "train.batch_or_epoch", "batch"]
    return finalize(load_cfg(yaml, base + list(pairs)))


def _split(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    return TensorSplit(torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g),
                       lambda x: x)


def _trainer(cfg, seed=0, bn=False, model=None):
    torch.manual_seed(123)
    model = model if model is not None else Tiny(bn)
    return get_trainer(model, {"train": _split(seed), "test": _split(seed + 100)}, "cpu", cfg)


def _batches(split, k):
    """The first k batches of 4 of an unshuffled split, cycling through epochs."""
    out = []
    while len(out) < k:
        out += list(split.iter_batches(4, False, 0))
    return out[:k]


def _sgd_step(model, xb, yb, lr, pull=None):
    """One plain SGD step by hand; ``pull=(weight, anchors)`` adds weight*(w - anchor)."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(xb), yb).backward()
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            g = p.grad if pull is None else p.grad + (p - pull[1][i]) * pull[0]
            p.add_(g, alpha=-lr)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


# ------------------------------------------------------------------------------------ FedProx
def test_fedprox_gradient_is_plain_gradient_plus_mu_pull():
    mu, lr, steps = 0.3, 0.1, 3
    cfg = _cfg("fedprox.use", "True", "fedprox.mu", str(mu), "train.optimizer.lr", str(lr),
               "train.local_update_steps", str(steps))
    assert cfg.regularizer.type == "proximal_regularizer" and cfg.regularizer.mu == mu
    t = _trainer(cfg)
    ref = copy.deepcopy(t.model)
    w_global = _params(ref)
    for xb, yb in _batches(t.data["train"], steps):
        _sgd_step(ref, xb, yb, lr, pull=(mu, w_global))
    _, upload, _ = t.train(seed=5)
    plain = _trainer(_cfg("train.optimizer.lr", str(lr), "train.local_update_steps", str(steps)))
    _, plain_upload, _ = plain.train(seed=5)
    for (name, p) in ref.named_parameters():
        assert torch.equal(upload[name], p.detach()), name
    assert any(not torch.equal(upload[k], plain_upload[k]) for k in upload), "prox had no effect"


def test_regularizer_keys_directly_and_disagreeing_mu_refused():
    cfg = _cfg("regularizer.type", "proximal_regularizer", "regularizer.mu", "0.2")
    assert _trainer(cfg)._prox().weight == 0.2
    with pytest.raises(ConfigError, match="fedprox.mu"):
        _cfg("fedprox.use", "True", "fedprox.mu", "0.1", "regularizer.type",
             "proximal_regularizer", "regularizer.mu", "0.2")


# ------------------------------------------------------------------------------------ FedBN
def test_fedbn_local_layers_never_uploaded_and_stay_per_client():
    cfg = _cfg("personalization.local_param", "['bn', 'norms']", "train.local_update_steps", "2")
    clients = [_trainer(cfg, seed=k, bn=True) for k in range(4)]
    local = {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert clients[0].local_keys == local
    server = clients[0].get_state()          # the server's global keeps every key (C9)
    for rnd in range(3):
        uploads, kept = [], []
        for k, c in enumerate(clients):
            before = c.personal_state()
            c.set_state(server)
            after = c.personal_state()
            assert set(after) == local
            assert all(torch.equal(before[key], after[key]) for key in local), (rnd, k)
            n, up, _ = c.train(seed=rnd * 10 + k)
            assert not set(up) & local and set(up) == set(server) - local
            uploads.append(up)
            kept.append(c.personal_state())
        for key in uploads[0]:
            if uploads[0][key].is_floating_point():
                server[key] = sum(u[key] for u in uploads) / len(uploads)
        # each client's BN statistics are its own (different data -> different running means)
        assert not torch.equal(kept[0]["bn.running_mean"], kept[1]["bn.running_mean"])
    # the personal state travels to a fresh trainer (a restarted client, C10)
    fresh = _trainer(cfg, seed=0, bn=True)
    fresh.load_personal_state(clients[0].personal_state())
    fresh.set_state(server)
    assert all(torch.equal(fresh.get_state()[k], clients[0].get_state()[k]) for k in local)
    with pytest.raises(ValueError, match="missing keys"):
        fresh.set_state({k: v for k, v in server.items() if k != "fc1.weight"})


# ------------------------------------------------------------------------------------- Ditto
def test_ditto_personal_model_takes_the_regularised_step_toward_the_global():
    rw, p_lr, lr = 0.5, 0.2, 0.1
    cfg = _cfg("federate.method", "Ditto", "personalization.regular_weight", str(rw),
               "personalization.lr", str(p_lr), "personalization.local_update_steps", "1",
               "train.local_update_steps", "1", "train.optimizer.lr", str(lr))
    t = _trainer(cfg)
    b0, b1 = _batches(t.data["train"], 2)
    g0 = t.get_state()
    t.set_state(g0)
    personal, shared = copy.deepcopy(t.model), copy.deepcopy(t.model)
    _sgd_step(personal, *b0, p_lr)               # round 1: pull is zero (personal == global)
    _sgd_step(shared, *b1, lr)                   # global trains on the next batch
    _, up1, m1 = t.train(seed=1)
    assert all(torch.equal(up1[k], v) for k, v in shared.state_dict().items())
    assert m1["train_total"] == 4 and m1["train_total_local_model"] == 4
    # round 2: a new global arrives; the personal model is pulled toward it
    g1 = {k: v + 0.25 for k, v in up1.items()}
    t.set_state(g1)
    shared.load_state_dict(g1)
    anchors = _params(shared)
    _sgd_step(personal, *b0, p_lr, pull=(rw, anchors))
    _sgd_step(shared, *b1, lr)
    _, up2, _ = t.train(seed=2)
    assert all(torch.equal(up2[k], v) for k, v in shared.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(t.personal_model.parameters(),
                                                  personal.parameters()))
    # evaluation reports the personal model (FS's Ditto)
    xt, yt = t.data["test"].x, t.data["test"].y
    with torch.no_grad():
        want = float(F.cross_entropy(personal(xt), yt)) * len(yt)
    assert t.evaluate("test")["test_loss"] == pytest.approx(want, rel=1e-6)
    # the personal model is this client's personal state, and comes back from it
    state = t.personal_state()
    assert set(state) == {"ditto_personal." + k for k in personal.state_dict()}
    fresh = _trainer(cfg)
    fresh.load_personal_state(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.personal_model.parameters(),
                                                  personal.parameters()))


# --------------------------------------------------------------------------------- scheduler
def _lrs_seen(trainer, monkeypatch):
    from federatedscope.core.trainers import optimizer
    seen = []
    original = optimizer.PlainSGD.step
    monkeypatch.setattr(optimizer.PlainSGD, "step",
                        lambda self, closure=None: (seen.append(self.lr), original(self))[1])
    trainer.train(seed=0)
    return seen


def _torch_lrs(cls, steps, lr, **kwargs):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = cls(opt, **kwargs)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


@pytest.mark.parametrize("yaml_text,cls,kwargs", [
    ("type: StepLR\n    step_size: 2\n    gamma: 0.5", torch.optim.lr_scheduler.StepLR,
     {"step_size": 2, "gamma": 0.5}),
    ("type: MultiStepLR\n    milestones: [1, 4]\n    gamma: 0.3",
     torch.optim.lr_scheduler.MultiStepLR, {"milestones": [1, 4], "gamma": 0.3}),
])
def test_scheduler_lr_per_batch_equals_torch_and_restarts_each_round(
        tmp_path, monkeypatch, yaml_text, cls, kwargs):
    y = tmp_path / "sched.yaml"
    y.write_text(f"train:\n  optimizer:\n    lr: 0.2\n  local_update_steps: 6\n"
                 f"  scheduler:\n    {yaml_text}\n")
    t = _trainer(_cfg(yaml=str(y)))
    want = _torch_lrs(cls, 6, 0.2, **kwargs)
    assert len(set(want)) > 1
    assert _lrs_seen(t, monkeypatch) == want
    assert _lrs_seen(t, monkeypatch)[-6:] == want      # FS builds it anew every round


def test_misspelt_scheduler_argument_is_refused_naming_the_key(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("train:\n  scheduler:\n    type: StepLR\n    step_sise: 2\n")
    with pytest.raises(ConfigError, match=r"train\.scheduler: 'StepLR'.*step_sise"):
        _cfg(yaml=str(y))
    with pytest.raises(ConfigError, match="train.scheduler"):
        _cfg("train.scheduler.type", "NoSuchLR")


# ---------------------------------------------------------------------------------- finetune
def test_finetune_before_eval_evaluates_a_tuned_copy_and_leaves_the_upload_unchanged():
    ft_lr = 0.5
    cfg = _cfg("finetune.before_eval", "True", "finetune.local_update_steps", "3",
               "finetune.batch_or_epoch", "batch", "finetune.optimizer.lr", str(ft_lr),
               "train.local_update_steps", "2")
    t = _trainer(cfg)
    _, upload, _ = t.train(seed=3)
    tuned = copy.deepcopy(t.model)
    for xb, yb in _batches(t.data["train"], 3):
        _sgd_step(tuned, xb, yb, ft_lr)
    res = t.evaluate("test")
    assert all(torch.equal(t.get_state()[k], v) for k, v in upload.items())
    xt, yt = t.data["test"].x, t.data["test"].y
    with torch.no_grad():
        want = float(F.cross_entropy(tuned(xt), yt)) * len(yt)
        untuned = float(F.cross_entropy(t.model(xt), yt)) * len(yt)
    assert res["test_loss"] == pytest.approx(want, rel=1e-6) and want != untuned
    model = t._finetuned[1]
    t.evaluate("train")
    assert t._finetuned[1] is model          # one fine-tuning per evaluation, not per split
    t.set_state(upload)
    t.evaluate("test")
    assert t._finetuned[1] is not model      # a new global model is fine-tuned anew


# ------------------------------------------------------------------ registry, device, config
def test_registered_trainer_and_criterion_answer_before_the_builtins():
    calls = []

    class MyTrainer(GeneralTorchTrainer):
        pass

    def my_criterion(ctype, device):
        if ctype == "HalfCE":
            calls.append(device)
            return lambda out, y: 0.5 * F.cross_entropy(out, y)
        return None

    register.register_trainer("mine", lambda ttype: MyTrainer if ttype == "mytrainer" else None)
    register.register_criterion("mine", my_criterion)
    try:
        assert "general" in register.trainer_dict and "CrossEntropyLoss" in register.criterion_dict
        cfg = _cfg("trainer.type", "mytrainer", "criterion.type", "HalfCE")
        t = _trainer(cfg)
        assert type(t) is MyTrainer and set(calls) == {"cpu"}     # built for the device
        plain = _trainer(_cfg())
        assert t.evaluate("test")["test_loss"] == pytest.approx(
            0.5 * plain.evaluate("test")["test_loss"], rel=1e-6)
        ditto = _trainer(_cfg("trainer.type", "mytrainer", "federate.method", "Ditto"))
        assert isinstance(ditto, MyTrainer) and type(ditto).__name__ == "DittoMyTrainer"
    finally:
        del register.trainer_dict["mine"], register.criterion_dict["mine"]
    with pytest.raises(ConfigError, match="trainer.type='mytrainer'"):
        _cfg("trainer.type", "mytrainer")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a CPU-only host")
def test_use_gpu_without_cuda_trains_on_cpu():
    cfg = _cfg("use_gpu", "True", "device", "0")
    t = GeneralTorchTrainer(Tiny(), {"train": _split(0)}, "cuda:0", cfg)
    assert t.device == "cpu" and next(t.model.parameters()).device.type == "cpu"
    assert t.train(seed=0)[0] == 8


@pytest.mark.parametrize("method,key", [("pFedMe", "federate.method"), ("FedEM", "federate.method"),
                                        ("FedAvgX", "federate.method")])
def test_unimplemented_methods_are_refused_by_name(method, key):
    with pytest.raises(ConfigError, match=f"{key}='{method}'"):
        _cfg("federate.method", method)


def test_fs_derived_values():
    cfg = _cfg("federate.method", "FedOpt", "train.local_update_steps", "3",
               "train.optimizer.lr", "0.05")
    assert cfg.fedopt.use is True
    assert cfg.personalization.local_update_steps == 3 and cfg.personalization.lr == 0.05
    with pytest.raises(ConfigError, match="fedopt.optimizer.lr"):
        _cfg("fedopt.use", "True", "fedopt.optimizer.lr", "0.0")
    with pytest.raises(ConfigError, match="personalization.local_param"):
        _cfg("personalization.local_param", "['']")
