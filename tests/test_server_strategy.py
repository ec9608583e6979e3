"""The server's round strategy in-process (fake transport): FedOpt's server step by hand, its state
across a restart, robust rule + FedOpt, each robust rule's precondition at n in {4, 5, 10},
updates that omit the personalized keys (FedBN), and join-order ids for FS's data_idx clients."""
import pytest
import torch

from federatedscope.core.auxiliaries.aggregator_builder import get_aggregator
from federatedscope.core.configs.config import CN, ConfigError
from federatedscope.core.message import ASSIGN_ID
from federatedscope.core.workers.server import Server
from server_harness import Harness, good_metrics, make_cfg
from harness.procs import run_script


def with_algo_keys(h, fedopt=None, local_param=None, restore=True):
    """The algorithm keys (cfg_fl_algo's, not merged yet) added to this test's config only."""
    cfg = h.cfg
    cfg.defrost()
    cfg.fedopt = CN()
    cfg.fedopt.use = fedopt is not None
    cfg.fedopt.optimizer = CN()
    cfg.fedopt.optimizer.type = "SGD"
    cfg.fedopt.optimizer.lr = (fedopt or {}).get("lr", 1.0)
    cfg.fedopt.optimizer.momentum = (fedopt or {}).get("momentum", 0.0)
    cfg.personalization = CN()
    cfg.personalization.local_param = list(local_param or [])
    cfg.freeze()
    h.server = h.build(Server, h.server.client_num, distributed=True, cfg=cfg)
    return h


SIZES = {1: 10, 2: 20, 3: 30, 4: 40}


def _join_all(h):
    for c, n in SIZES.items():
        h.join(c, num_samples={"train": n, "val": 5, "test": 5})


def _round(h, r, shifts):
    """Every client sends the global model + shifts[c]; then every client reports metrics."""
    g = h.global_state()
    for c in SIZES:
        h.update(c, r, h.shifted(shifts[c], g), size=SIZES[c])
    for c in SIZES:
        h.metrics(c, r + 1, good_metrics())


def _float_delta(h, g0):
    """The (uniform) change of every float tensor since g0, as one float."""
    d = h.global_state()["fc2.bias"] - g0["fc2.bias"]
    return float(d.mean())


def test_fedopt_sgd_lr_1_without_momentum_is_exactly_fedavg(tmp_path):
    shifts = {1: 0.5, 2: -1.25, 3: 2.0, 4: 0.125}
    plain = Harness(tmp_path / "a", "federate.total_round_num", 2, expected=4)
    opt = with_algo_keys(Harness(tmp_path / "b", "federate.total_round_num", 2, expected=4),
                         fedopt={"lr": 1.0})
    for h in (plain, opt):
        _join_all(h)
        _round(h, 0, shifts)
        _round(h, 1, shifts)
    a, b = plain.global_state(), opt.global_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert opt.server.aggregator.server_optimizer is not None


def test_fedopt_lr_half_takes_exactly_half_the_step(tmp_path):
    h = with_algo_keys(Harness(tmp_path, "federate.total_round_num", 1, expected=4),
                       fedopt={"lr": 0.5})
    _join_all(h)
    g0 = h.global_state()
    _round(h, 0, {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0})
    # FedAvg step: (10*1 + 20*2 + 30*3 + 40*4) / 100 = 3.0; half of it:
    new = h.global_state()
    for k, v in g0.items():
        if v.is_floating_point():
            fedavg = (v.double() + 3.0).to(v.dtype)          # what FedAvg's mean gives
            want = (v.double() - 0.5 * (v.double() - fedavg.double())).to(v.dtype)
            assert torch.equal(new[k], want), k
    assert _float_delta(h, g0) == pytest.approx(1.5, abs=1e-5)


def _momentum_by_hand(steps, lr, momentum):
    """The global's change after each round: pseudo-gradient -s, torch's SGD momentum."""
    out, buf, pos = [], None, 0.0
    for s in steps:
        grad = -s
        buf = grad if buf is None else momentum * buf + grad
        pos -= lr * buf
        out.append(pos)
    return out


ROUND_SHIFTS = [{1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}, {1: 0.5, 2: -0.5, 3: 1.5, 4: 0.0},
                {1: -1.0, 2: 2.0, 3: 0.0, 4: 1.0}]
FEDAVG_STEPS = [sum(SIZES[c] * s[c] for c in SIZES) / 100 for s in ROUND_SHIFTS]  # 1.0, 0.4, 0.7


def test_fedopt_momentum_over_three_rounds_matches_a_hand_rolled_sgd(tmp_path):
    h = with_algo_keys(Harness(tmp_path, "federate.total_round_num", 3, expected=4),
                       fedopt={"lr": 0.5, "momentum": 0.9})
    _join_all(h)
    g0 = h.global_state()
    want = _momentum_by_hand(FEDAVG_STEPS, 0.5, 0.9)
    # bufs -1, -(0.9 + 0.4) = -1.3, -(1.17 + 0.7) = -1.87; steps 0.5, 0.65, 0.935
    assert want == pytest.approx([0.5, 1.15, 2.085])
    for r in range(3):
        _round(h, r, ROUND_SHIFTS[r])
        assert _float_delta(h, g0) == pytest.approx(want[r], abs=1e-4), r


def test_fedopt_momentum_is_restored_from_the_checkpoint(tmp_path):
    ckpt = str(tmp_path / "ckpt.pt")
    opts = ("federate.total_round_num", 3, "federate.save_to", ckpt, "federate.restore_from", ckpt)
    h = with_algo_keys(Harness(tmp_path, *opts, expected=4), fedopt={"lr": 0.5, "momentum": 0.9})
    _join_all(h)
    g0 = h.global_state()
    _round(h, 0, ROUND_SHIFTS[0])
    _round(h, 1, ROUND_SHIFTS[1])
    del h                                               # killed after round 2 was reported
    h2 = with_algo_keys(Harness(tmp_path, *opts, expected=4), fedopt={"lr": 0.5, "momentum": 0.9})
    assert h2.server.round == 2
    _join_all(h2)
    _round(h2, 2, ROUND_SHIFTS[2])
    # with the buffer: 2.085; a fresh buffer would give 1.15 + 0.5 * 0.7 = 1.5
    assert _float_delta(h2, g0) == pytest.approx(2.085, abs=1e-4)


def test_robust_rule_then_fedopt(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 1, "aggregator.robust_rule", "median",
                "aggregator.byzantine_node_num", 1, expected=5)
    h = with_algo_keys(h, fedopt={"lr": 0.5})
    for c in range(1, 6):
        h.join(c)
    g0 = h.global_state()
    for c, s in {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 1e6}.items():   # 5 is the attacker
        h.update(c, 0, h.shifted(s, g0))
    # median of (1, 2, 3, 4, 1e6) = 3, then half a step: 1.5
    assert _float_delta(h, g0) == pytest.approx(1.5, abs=1e-4)


@pytest.mark.parametrize("rule,f,ratio,ok_at", [
    ("krum", 1, 0.1, {5, 10}),           # n > 2f + 2 = 4
    ("krum", 2, 0.1, {10}),              # n > 6
    ("bulyan", 1, 0.1, {10}),            # n >= 4f + 3 = 7
    ("trimmedmean", 1, 0.1, {10}),       # int(0.1 n) >= 1: 4 and 5 trim nothing
    ("trimmedmean", 1, 0.25, {4, 5, 10}),
    ("median", 2, 0.1, {4, 5, 10}),
])
@pytest.mark.parametrize("n", [4, 5, 10])
def test_each_robust_rule_checks_its_precondition_at_start(tmp_path, rule, f, ratio, ok_at, n):
    cfg = make_cfg(tmp_path, "aggregator.robust_rule", rule, "aggregator.byzantine_node_num", f,
                   "aggregator.BFT_args.trimmedmean_excluded_ratio", ratio)
    if n in ok_at:
        assert get_aggregator(cfg, n).rule == rule
    else:
        with pytest.raises(ConfigError, match="aggregator.byzantine_node_num"):
            get_aggregator(cfg, n)


def test_sampled_clients_per_round_decide_the_precondition(tmp_path):
    cfg = make_cfg(tmp_path, "aggregator.robust_rule", "krum", "aggregator.byzantine_node_num", 1,
                   "federate.sample_client_num", 4)
    with pytest.raises(ConfigError, match="have 4"):
        get_aggregator(cfg, 10)


def test_updates_may_omit_exactly_the_personalized_keys(tmp_path, caplog):
    h = with_algo_keys(Harness(tmp_path, "federate.total_round_num", 1, expected=4),
                       local_param=["bn"])
    for c, n in SIZES.items():         # FedBN clients declare their local keys at the join
        h.join(c, num_samples={"train": n, "val": 5, "test": 5}, local_param=["bn"])
    g0 = h.global_state()
    shared = lambda st: {k: v for k, v in st.items() if "bn" not in k}   # noqa: E731
    h.update(1, 0, {k: v for k, v in shared(h.shifted(9.0, g0)).items() if k != "fc1.bias"})
    assert "rejected update of client #1" in caplog.text          # one key too few
    for c in (2, 3, 4):
        h.update(c, 0, shared(h.shifted(float(c), g0)), size=SIZES[c])
    new = h.global_state()
    # weights 20, 30, 40: (40 + 90 + 160) / 90
    assert float((new["fc2.bias"] - g0["fc2.bias"]).mean()) == pytest.approx(290 / 90, abs=1e-4)
    assert all(torch.equal(new[k], g0[k]) for k in g0 if "bn" in k)   # the global keeps its own


def test_data_idx_clients_without_an_id_get_join_order_ids(tmp_path, caplog):
    h = Harness(tmp_path, expected=3)
    h.join(-1, conn=11)
    h.join(3, conn=12)
    h.join(-1, conn=13)
    assigned = [m.content["client_id"] for _, m in h.comm.sent if m.msg_type == ASSIGN_ID]
    assert assigned == [1, 3, 2] and h.comm.bound == {11: 1, 12: 3, 13: 2}
    h.join(-1, conn=14)                         # every id is online
    assert h.refusals() == ["unknown id"]
    h.disconnect(13)
    h.join(-1, conn=15)                         # a restarted client takes the free slot back
    assert h.comm.bound[15] == 2


def test_registered_workers_and_aggregators_are_asked_first(tmp_path, monkeypatch):
    from federatedscope import register
    from federatedscope.core.aggregators.fedavg import ClientsAvgAggregator
    from federatedscope.core.auxiliaries.worker_builder import get_client_cls, get_server_cls
    from federatedscope.core.workers.client import Client

    class MyServer(Server):
        pass

    class MyAgg(ClientsAvgAggregator):
        pass
    monkeypatch.setitem(register.worker_dict, "mine",
                        lambda method: {"server": MyServer} if method == "FedAvg" else None)
    monkeypatch.setitem(register.aggregator_dict, "mine",
                        lambda method, cfg: MyAgg(cfg) if method == "FedAvg" else None)
    cfg = make_cfg(tmp_path)
    assert get_server_cls(cfg) is MyServer and get_client_cls(cfg) is Client
    assert isinstance(get_aggregator(cfg, 4), MyAgg)


def test_a_rule_that_cannot_hold_ends_the_run_with_exit_1_naming_the_key(femnist_root, tmp_path):
    import os
    import subprocess
    import sys
    from harness.procs import MAIN, ROOT
    cfg = os.path.join(ROOT, "scripts", "distributed_scripts", "distributed_configs",
                       "distributed_femnist_server.yaml")
    run = run_script([MAIN, "--cfg", cfg, "federate.mode", "standalone",
                          "distributed_data.enabled", "False", "data.root", femnist_root,
                          "data.subsample", "1.0",
                          "federate.client_num", "4", "aggregator.robust_rule", "krum",
                          "aggregator.byzantine_node_num", "1", "outdir", str(tmp_path)], timeout=300, cwd=ROOT)
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    out = run.stdout + run.stderr
    assert "aggregator.byzantine_node_num=1 only with more than 4 clients per round (have 4)" in out
