"""FS's open optimizer nodes (``train.optimizer``, ``finetune.optimizer``, ``fedopt.optimizer``):
any torch.optim class (or a registered optimizer) by name, every further key its argument,
checked at start naming the key; the steps below are written out by hand."""
import io

import pytest
import torch
from torch import nn

from federatedscope.core.aggregators.fedopt import FedOptimizer
from federatedscope.core.auxiliaries.aggregator_builder import server_optimizer
from federatedscope.core.configs.config import ConfigError, finalize, load_cfg
from federatedscope.core.data.datasets import TensorSplit
from federatedscope.core.trainers.optimizer import PlainSGD
from federatedscope.core.trainers.trainer import get_trainer

N, D, K = 24, 5, 3


def _cfg(tmp_path, yaml_text, *pairs):
    path = tmp_path / "job.yaml"
    path.write_text(yaml_text)
    return finalize(load_cfg(str(path), list(pairs)))


def _trainer(cfg):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(N, D, generator=g), torch.randint(0, K, (N,), generator=g)
    torch.manual_seed(0)
    split = TensorSplit(x, y, lambda t: t)
    return get_trainer(nn.Linear(D, K), {"train": split, "test": split}, "cpu", cfg), x, y


def _gradient(w, b, x, y):
    """The mean cross-entropy's gradient, written out: d/dlogits = softmax - onehot."""
    p = torch.softmax(x @ w.T + b, dim=1)
    p[torch.arange(len(y)), y] -= 1.0
    return (p.T @ x) / len(y), p.mean(0)


# one batch of all 24 samples per step, two steps (the same batch twice)
ONE_BATCH = ("dataloader.batch_size", "24", "dataloader.shuffle", "False",
             "train.local_update_steps", "2")


def test_adam_gets_its_arguments_and_takes_the_hand_computed_steps(tmp_path):
    lr, b1, b2, eps = 0.05, 0.5, 0.75, 0.01
    cfg = _cfg(tmp_path, f"train:\n  optimizer:\n    type: Adam\n    lr: {lr}\n"
                         f"    betas: [{b1}, {b2}]\n    eps: {eps}\n", *ONE_BATCH)
    t, x, y = _trainer(cfg)
    opt = t._optimizer()
    assert type(opt) is torch.optim.Adam
    group = opt.param_groups[0]
    assert (group["lr"], tuple(group["betas"]), group["eps"]) == (lr, (b1, b2), eps)
    w, b = t.model.weight.detach().clone(), t.model.bias.detach().clone()
    _, state, metrics = t.train(seed=1)
    assert metrics["train_total"] == 48
    params, m, v = [w, b], [0, 0], [0, 0]
    for step in (1, 2):
        grads = _gradient(params[0], params[1], x, y)
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1 ** step), v[i] / (1 - b2 ** step)
            params[i] = params[i] - lr * m_hat / (v_hat.sqrt() + eps)
    assert torch.allclose(state["weight"], params[0], atol=1e-6)
    assert torch.allclose(state["bias"], params[1], atol=1e-6)


def test_sgd_with_nesterov_momentum_takes_the_hand_computed_steps_and_matches_torch(tmp_path):
    lr, m, wd = 0.5, 0.9, 0.1
    cfg = _cfg(tmp_path, f"train:\n  optimizer:\n    type: SGD\n    lr: {lr}\n    momentum: {m}\n"
                         f"    weight_decay: {wd}\n    nesterov: true\n", *ONE_BATCH)
    t, x, y = _trainer(cfg)
    opt = t._optimizer()
    assert type(opt) is PlainSGD and opt.param_groups[0]["nesterov"] is True
    w, b = t.model.weight.detach().clone(), t.model.bias.detach().clone()
    twin = [nn.Parameter(w.clone()), nn.Parameter(b.clone())]
    _, state, _ = t.train(seed=1)
    params, buf = [w, b], [None, None]
    for _ in (1, 2):
        grads = _gradient(params[0], params[1], x, y)
        for i, g in enumerate(grads):
            d = g + wd * params[i]
            buf[i] = d if buf[i] is None else m * buf[i] + d
            params[i] = params[i] - lr * (d + m * buf[i])
    assert torch.allclose(state["weight"], params[0], atol=1e-6)
    assert torch.allclose(state["bias"], params[1], atol=1e-6)
    # torch.optim.SGD with the same arguments takes the same steps
    ref = torch.optim.SGD(twin, lr=lr, momentum=m, weight_decay=wd, nesterov=True)
    for _ in (1, 2):
        twin[0].grad, twin[1].grad = _gradient(twin[0].detach(), twin[1].detach(), x, y)
        ref.step()
    assert torch.allclose(state["weight"], twin[0].detach(), atol=1e-6)


def test_plain_sgd_with_dampening_is_torchs_sgd_step_for_step():
    g = torch.Generator().manual_seed(5)
    start = torch.randn(4, generator=g)
    mine, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    a = PlainSGD([mine], lr=0.3, momentum=0.8, dampening=0.25, weight_decay=0.05)
    b = torch.optim.SGD([theirs], lr=0.3, momentum=0.8, dampening=0.25, weight_decay=0.05)
    for _ in range(4):
        grad = torch.randn(4, generator=g)
        mine.grad, theirs.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    assert torch.allclose(mine.detach(), theirs.detach(), atol=1e-7)
    assert not torch.equal(mine.detach(), start)


def test_fs_sgd_recipes_keep_the_plain_sgd_and_other_sgd_arguments_reach_torchs(tmp_path):
    t, _, _ = _trainer(_cfg(tmp_path, "train:\n  optimizer:\n    lr: 0.2\n    momentum: 0.5\n"))
    assert type(t._optimizer()) is PlainSGD
    t, _, _ = _trainer(_cfg(tmp_path, "train:\n  optimizer:\n    maximize: true\n"))
    opt = t._optimizer()
    assert type(opt) is torch.optim.SGD and opt.param_groups[0]["maximize"] is True


def test_finetune_and_ditto_build_their_optimizers_from_their_nodes(tmp_path):
    cfg = _cfg(tmp_path, "train:\n  optimizer:\n    type: AdamW\n    betas: [0.6, 0.7]\n"
                         "finetune:\n  optimizer:\n    type: Adagrad\n    lr: 0.3\n"
                         "    lr_decay: 0.125\n",
               "federate.method", "Ditto", "personalization.lr", "0.7")
    t, _, _ = _trainer(cfg)
    tune = t._optimizer(t.model, cfg.finetune.optimizer.lr, cfg.finetune.optimizer)
    assert type(tune) is torch.optim.Adagrad
    assert (tune.param_groups[0]["lr"], tune.param_groups[0]["lr_decay"]) == (0.3, 0.125)
    personal = t._optimizer(t.model, cfg.personalization.lr)   # Ditto's personal model
    assert type(personal) is torch.optim.AdamW and personal.param_groups[0]["lr"] == 0.7
    assert tuple(personal.param_groups[0]["betas"]) == (0.6, 0.7)


@pytest.mark.parametrize("yaml_text,error", [
    ("train:\n  optimizer:\n    type: Adam\n    nesterov: true\n",
     "train.optimizer.nesterov: torch.optim.Adam takes no argument 'nesterov' (it takes amsgrad, "
     "betas, capturable, decoupled_weight_decay, differentiable, eps, foreach, fused, lr, maximize, "
     "weight_decay); remove train.optimizer.nesterov from the YAML or set train.optimizer.type to "
     "an optimizer that takes it (see doc/algorithms.md)"),
    ("train:\n  optimizer:\n    type: Adam\n    momentum: 0.9\n",
     "train.optimizer.momentum: torch.optim.Adam takes no argument 'momentum'"),
    ("finetune:\n  optimizer:\n    type: Adamm\n",
     "finetune.optimizer: unknown optimizer type 'Adamm' (not registered with "
     "federatedscope.register.register_optimizer, and not a class of torch.optim, e.g. SGD, Adam, "
     "AdamW, RMSprop, Adagrad); set finetune.optimizer.type to a torch.optim class (or a "
     "registered optimizer) and give only its arguments as keys of finetune.optimizer"),
    ("train:\n  optimizer:\n    type: Adam\n    eps: tiny\n",
     "train.optimizer: 'Adam' with arguments {'momentum': 0.0, 'weight_decay': 0.0, 'eps': "
     "'tiny'} cannot be built: TypeError: "),
    ("train:\n  optimizer:\n    nesterov: true\n",
     "train.optimizer: SGD: nesterov momentum requires a momentum > 0 and zero dampening; set "
     "train.optimizer.type to a torch.optim class"),
    ("fedopt:\n  optimizer:\n    type: Adam\n    betas: [0.9, 1.5]\n",
     "fedopt.optimizer: Invalid beta parameter at index 1: 1.5"),
])
def test_a_bad_optimizer_is_refused_at_start_naming_the_key(tmp_path, yaml_text, error):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, yaml_text)
    assert str(e.value).startswith(error), str(e.value)


def test_checking_the_optimizers_leaves_the_seeded_rng_as_it_was(tmp_path):
    """The check builds a stand-in module after the seed is set: it must not draw from torch's
    global generator, or every model's initialisation shifts with the config check."""
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    _cfg(tmp_path, "train:\n  optimizer:\n    type: Adam\nfedopt:\n  use: true\n")
    assert torch.equal(torch.rand(4), expected)


def test_a_bad_optimizer_fails_the_process_before_training(tmp_path):
    import os
    from harness.procs import run_script
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    y = tmp_path / "adam.yaml"
    y.write_text("train:\n  optimizer:\n    type: Adam\n    nesterov: true\n")
    r = run_script([os.path.join(root, "federatedscope", "main.py"), "--cfg", str(y),
                    "outdir", str(tmp_path / "runs")], timeout=120)
    assert r.returncode == 1
    assert "train.optimizer.nesterov: torch.optim.Adam takes no argument" in r.stdout + r.stderr
    assert not (tmp_path / "runs").exists()     # refused before the run directory is made


def test_a_registered_optimizer_answers_first_with_the_nodes_arguments(tmp_path):
    import federatedscope.register as register
    asked = []

    def mine(model, type, lr, **kwargs):  # noqa: A002 (FS's signature)
        if type != "HalfSGD":
            return None
        asked.append((lr, kwargs))
        params = model.parameters() if isinstance(model, nn.Module) else model
        return torch.optim.SGD(params, lr=lr * kwargs["scale"])
    register.register_optimizer("half_sgd", mine)
    try:
        cfg = _cfg(tmp_path, "train:\n  optimizer:\n    type: HalfSGD\n    lr: 0.4\n"
                             "    scale: 0.5\n")
        t, _, _ = _trainer(cfg)
        opt = t._optimizer()
        assert type(opt) is torch.optim.SGD and opt.param_groups[0]["lr"] == 0.2
        assert asked[-1] == (0.4, {"momentum": 0.0, "weight_decay": 0.0, "scale": 0.5})
    finally:
        del register.optimizer_dict["half_sgd"]


def test_fedopt_adam_on_the_server_by_hand_and_resumed_from_its_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, "federate:\n  method: FedOpt\nfedopt:\n  optimizer:\n    type: Adam\n"
                         "    lr: 0.5\n    betas: [0.5, 0.75]\n    eps: 0.001\n")
    opt = server_optimizer(cfg)
    assert isinstance(opt, FedOptimizer) and opt.general
    lr, b1, b2, eps = 0.5, 0.5, 0.75, 0.001
    g = {"w": torch.tensor([1.0, -2.0]), "n": torch.tensor(4)}
    shifts = [torch.tensor([0.5, 1.0]), torch.tensor([-0.25, 2.0]), torch.tensor([1.0, 1.0])]
    w, m, v = g["w"].double(), 0, 0
    for r, shift in enumerate(shifts[:2], start=1):
        g = opt.step(g, {"w": g["w"] + shift, "n": g["n"] + 1})
        grad = -shift.double()                 # global - combined
        m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad * grad
        w = w - lr * (m / (1 - b1 ** r)) / ((v / (1 - b2 ** r)).sqrt() + eps)
        assert torch.allclose(g["w"], w.float(), atol=1e-6) and g["w"].dtype == torch.float32
        assert int(g["n"]) == 4 + r            # integer buffers take the combined value
    # through the checkpoint's own round trip (torch.save, weights_only load)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    resumed = server_optimizer(cfg)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    nxt = {"w": g["w"] + shifts[2], "n": g["n"]}
    assert torch.equal(resumed.step(dict(g), dict(nxt))["w"], opt.step(dict(g), dict(nxt))["w"])


# ------------------------------------------------------------------ PlainSGD is torch's SGD
@pytest.mark.parametrize("kwargs", [
    {"lr": -0.1}, {"lr": 0.1, "momentum": -0.5}, {"lr": 0.1, "weight_decay": -0.01},
    {"lr": 0.0}, {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
    {"lr": 0.1, "nesterov": True}, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True},
    {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "nesterov": True},
])
def test_plain_sgd_refuses_exactly_the_values_torchs_sgd_refuses(kwargs):
    def outcome(cls):
        try:
            cls([nn.Parameter(torch.zeros(3))], **kwargs)
        except ValueError:
            return "refused"
        return "built"
    assert outcome(PlainSGD) == outcome(torch.optim.SGD)


def test_a_negative_sgd_value_is_refused_at_start_naming_each_value(tmp_path):
    for key, value, got in [("lr", "-0.1", "lr=-0.1, momentum=0.0, weight_decay=0.0"),
                            ("momentum", "-0.5", "lr=0.1, momentum=-0.5, weight_decay=0.0"),
                            ("weight_decay", "-0.01", "lr=0.1, momentum=0.0, weight_decay=-0.01")]:
        with pytest.raises(ConfigError) as e:
            _cfg(tmp_path, "", f"train.optimizer.{key}", value)
        assert str(e.value).startswith(f"train.optimizer: SGD needs lr, momentum and weight_decay "
                                       f">= 0 (got {got})"), str(e.value)


def test_a_client_at_lr_zero_builds_and_keeps_its_weights(tmp_path):
    """lr 0 is a frozen client (torch's SGD takes it): its step moves nothing."""
    t, _, _ = _trainer(_cfg(tmp_path, "train:\n  optimizer:\n    lr: 0.0\n    momentum: 0.9\n",
                            *ONE_BATCH))
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    _, state, _ = t.train(seed=1)
    assert all(torch.equal(state[k], before[k]) for k in before)


def test_sgd_with_all_four_plain_arguments_stays_plain_and_steps_as_torchs(tmp_path):
    """momentum, weight_decay, dampening and nesterov together are still PlainSGD's (not torch's
    class, whose construction imports torch._dynamo), and it takes torch's steps."""
    cfg = _cfg(tmp_path, "train:\n  optimizer:\n    type: sgd\n    lr: 0.25\n    momentum: 0.75\n"
                         "    weight_decay: 0.05\n    dampening: 0.0\n    nesterov: true\n",
               *ONE_BATCH)
    t, x, y = _trainer(cfg)
    opt = t._optimizer()
    assert type(opt) is PlainSGD
    twin = [nn.Parameter(p.detach().clone()) for p in (t.model.weight, t.model.bias)]
    _, state, _ = t.train(seed=1)
    ref = torch.optim.SGD(twin, lr=0.25, momentum=0.75, weight_decay=0.05, dampening=0.0,
                          nesterov=True)
    for _ in (1, 2):
        twin[0].grad, twin[1].grad = _gradient(twin[0].detach(), twin[1].detach(), x, y)
        ref.step()
    assert torch.allclose(state["weight"], twin[0].detach(), atol=1e-6)
    assert torch.allclose(state["bias"], twin[1].detach(), atol=1e-6)


@pytest.mark.parametrize("spelling,cls", [("adamw", torch.optim.AdamW),
                                          ("RMSPROP", torch.optim.RMSprop),
                                          ("Adagrad", torch.optim.Adagrad),
                                          ("nadam", torch.optim.NAdam)])
def test_a_type_is_found_in_any_case_as_fs_configs_write_it(tmp_path, spelling, cls):
    t, _, _ = _trainer(_cfg(tmp_path, f"train:\n  optimizer:\n    type: {spelling}\n"
                                      f"    lr: 0.03\n"))
    opt = t._optimizer()
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.03


def test_a_name_in_torch_optim_that_is_no_optimizer_class_is_unknown(tmp_path):
    for name in ("lr_scheduler", "Adam_", "adam_w"):
        with pytest.raises(ConfigError) as e:
            _cfg(tmp_path, f"train:\n  optimizer:\n    type: {name}\n")
        assert str(e.value).startswith(f"train.optimizer: unknown optimizer type '{name}'")


def test_an_optimizer_that_cannot_step_dense_gradients_is_refused_at_start(tmp_path):
    """SparseAdam builds but refuses the dense gradients every model here has: the check's one
    step on the stand-in (with gradients) finds it before any client trains."""
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, "train:\n  optimizer:\n    type: SparseAdam\n")
    assert str(e.value).startswith("train.optimizer: 'SparseAdam' with arguments {'momentum': 0.0, "
                                   "'weight_decay': 0.0} cannot be built: RuntimeError: SparseAdam "
                                   "does not support dense gradients"), str(e.value)


def test_fedopt_sgd_with_weight_decay_checkpoints_and_resumes_its_momentum(tmp_path):
    cfg = _cfg(tmp_path, "federate:\n  method: FedOpt\nfedopt:\n  optimizer:\n    type: SGD\n"
                         "    lr: 1.0\n    momentum: 0.5\n    weight_decay: 0.25\n")
    opt = server_optimizer(cfg)
    g = {"w": torch.tensor([1.0, -2.0, 0.5, 4.0])}
    for shift in ([0.5, 1.0, 0.0, -1.0], [-0.25, 2.0, 1.0, 0.0]):
        g = opt.step(g, {"w": g["w"] + torch.tensor(shift)})
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    resumed = server_optimizer(cfg)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    nxt = {"w": g["w"] + torch.tensor([1.0, 1.0, -1.0, 0.5])}
    assert torch.equal(resumed.step(dict(g), dict(nxt))["w"], opt.step(dict(g), dict(nxt))["w"])


def test_a_tuple_from_a_client_pair_reaches_adam_as_its_betas(tmp_path):
    """``client_3.train.optimizer.betas (0.5,0.75)`` is decoded as a tuple (literal_eval); the
    section's check and the client's optimizer take it like YAML's list."""
    from federatedscope.core.configs.client_cfg import check_client_cfgs, load_client_cfgs
    from federatedscope.core.configs.config import load_cfg as raw_cfg
    from federatedscope.core.trainers.optimizer import build_optimizer
    tree = load_client_cfgs("", ["client_3.train.optimizer.type", "Adam",
                                 "client_3.train.optimizer.betas", "(0.5, 0.75)",
                                 "client_3.train.optimizer.lr", "0.02"])
    glob = raw_cfg(None, ["federate.client_num", "4"])
    check_client_cfgs(tree, glob, "command line")
    merged = glob.clone()
    merged.merge_from_other_cfg(tree.client_3)
    opt = build_optimizer(nn.Linear(D, K), merged.train.optimizer)
    assert type(opt) is torch.optim.Adam
    assert (opt.param_groups[0]["lr"], tuple(opt.param_groups[0]["betas"])) == (0.02, (0.5, 0.75))


def test_a_capturable_adam_on_cpu_parameters_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, "train:\n  optimizer:\n    type: Adam\n    capturable: true\n")
    assert str(e.value).startswith("train.optimizer: 'Adam' with arguments"), str(e.value)


def test_a_fresh_default_config_takes_each_optimizers_own_arguments_from_yaml(tmp_path):
    """FS's optimizer nodes are open (CN(new_allowed=True)): train, finetune and fedopt take the
    class's own keys from a YAML merged into get_default_cfg(), as FS scripts build it."""
    from federatedscope.core.configs.config import get_default_cfg
    path = tmp_path / "open.yaml"
    path.write_text("train:\n  optimizer:\n    type: Adam\n    betas: [0.5, 0.75]\n"
                    "finetune:\n  optimizer:\n    type: Adagrad\n    lr_decay: 0.125\n"
                    "fedopt:\n  optimizer:\n    type: Adam\n    eps: 0.001\n")
    cfg = get_default_cfg()
    cfg.merge_from_file(str(path))
    assert (list(cfg.train.optimizer.betas), cfg.finetune.optimizer.lr_decay,
            cfg.fedopt.optimizer.eps) == ([0.5, 0.75], 0.125, 0.001)


def test_plain_sgds_state_is_torchs_sgd_state_both_ways():
    """The checkpoint format is torch.optim.SGD's: a PlainSGD state resumes in torch's SGD and
    back, step for step (momentum 0.5, weight decay 0.25, dampening 0.125, four tensors)."""
    torch.manual_seed(4)
    start = [torch.randn(3, 2) for _ in range(4)]
    grads = [[torch.randn(3, 2) for _ in range(4)] for _ in range(4)]
    hyper = dict(lr=0.3, momentum=0.5, weight_decay=0.25, dampening=0.125)

    def run(cls, params, steps):
        opt = cls(params, **hyper)
        for g in steps:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
        return opt

    def fresh():
        return [nn.Parameter(t.clone()) for t in start]
    mine, theirs = fresh(), fresh()
    saved_mine = run(PlainSGD, mine, grads[:2]).state_dict()
    saved_theirs = run(torch.optim.SGD, theirs, grads[:2]).state_dict()
    assert saved_mine["param_groups"][0]["params"] == [0, 1, 2, 3]
    # cross over: torch's SGD continues PlainSGD's state and PlainSGD continues torch's
    a = torch.optim.SGD(mine, **hyper)
    a.load_state_dict(saved_mine)
    b = PlainSGD(theirs, **hyper)
    b.load_state_dict(saved_theirs)
    for g in grads[2:]:
        for opt, params in ((a, mine), (b, theirs)):
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(mine, theirs))
    with pytest.raises(ValueError, match="loaded state dict has 4 parameters in 1 group"):
        PlainSGD(fresh()[:3], **hyper).load_state_dict(saved_mine)


def test_plain_sgd_restores_the_checkpoints_hyper_parameters_and_dtypes_as_torch_does():
    """torch.optim.SGD's load_state_dict puts the saved lr/momentum back and keeps its own
    parameters; PlainSGD does the same. A float64 buffer saved for float32 parameters is cast."""
    w = nn.Parameter(torch.full((4,), 1.0))
    saved = PlainSGD([w], lr=0.5, momentum=0.5).state_dict()
    saved["state"] = {0: {"momentum_buffer": torch.full((4,), 2.0, dtype=torch.float64)}}
    for cls in (PlainSGD, torch.optim.SGD):
        p = nn.Parameter(torch.full((4,), 1.0))
        opt = cls([p], lr=0.1, momentum=0.25)
        opt.load_state_dict(saved)
        group = opt.param_groups[0]
        assert (group["lr"], group["momentum"]) == (0.5, 0.5), cls
        assert len(group["params"]) == 1 and group["params"][0] is p, cls
        p.grad = torch.full((4,), 1.0)
        opt.step()        # buf = 0.5 * 2 + 1 = 2; p = 1 - 0.5 * 2 = 0
        assert torch.equal(p.detach(), torch.zeros(4)), cls
        buf = opt.buffers[0] if cls is PlainSGD else opt.state[p]["momentum_buffer"]
        assert buf.dtype == torch.float32, cls
