"""FedOpt's server optimizer across a checkpoint (``federate.restore_from``): the state carries
over, the hyper-parameters are the resumed run's, and state of another optimizer type is dropped
with one warning. In-process: 4 weighted clients (FedAvg), the checkpoint's own round trip
(torch.save, a weights_only load), values chosen so that Adam's steps are exact by hand.
"""
import io
import logging

import torch

from federatedscope.core.aggregators.fedavg import ClientsAvgAggregator
from federatedscope.core.aggregators.fedopt import FedOptimizer
from test_aggregator_units import _cfg

# client id: (weight, offset from the global); weighted mean offset (10 + 2 + 1 + 3) / 16 = 1
CLIENTS = {4: (8, 1.25), 1: (1, 2.0), 3: (4, 0.25), 2: (3, 1.0)}
ADAM = dict(betas=(0.5, 0.75), eps=0.0)


def _round(opt, g, sign_w, sign_b):
    """One round of 4 clients whose weighted mean is the global + sign: the pseudo-gradient
    (global - mean) is -sign_w on fc.weight and -sign_b on fc.bias."""
    agg = ClientsAvgAggregator(_cfg(), server_optimizer=opt)
    for cid, (w, o) in CLIENTS.items():
        agg.add(cid, w, {"fc.weight": g["fc.weight"] + sign_w * o,
                         "fc.bias": g["fc.bias"] + sign_b * o, "steps": g["steps"] + cid})
    return agg.finish_round(g)


def _checkpoint(opt) -> dict:
    buf = io.BytesIO()
    torch.save(ClientsAvgAggregator(_cfg(), server_optimizer=opt).state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _two_adam_rounds():
    """lr 0.5: both keys move by lr each round (a constant gradient: m_hat / sqrt(v_hat) = 1)."""
    opt = FedOptimizer("Adam", lr=0.5, **ADAM)
    g = {"fc.weight": torch.full((2, 3), 0.5), "fc.bias": torch.full((3,), -0.5),
         "steps": torch.tensor(0)}
    for want_w, want_b in ((1.0, -1.0), (1.5, -1.5)):
        g = _round(opt, g, +1, -1)
        assert torch.equal(g["fc.weight"], torch.full((2, 3), want_w))
        assert torch.equal(g["fc.bias"], torch.full((3,), want_b))
    return opt, g


def test_a_resumed_adam_steps_with_the_new_lr_from_the_restored_moments(caplog):
    _, g = _two_adam_rounds()
    saved = _checkpoint(_two_adam_rounds()[0])
    assert saved["fedopt_type"] == "Adam"
    resumed = FedOptimizer("Adam", lr=3.5, **ADAM)
    ClientsAvgAggregator(_cfg(), server_optimizer=resumed).load_state_dict(saved)
    with caplog.at_level(logging.INFO, logger="federatedscope"):
        new = _round(resumed, g, -1, -1)          # fc.weight's gradient flips sign: +1
    # fc.weight: m = 0.5 * -0.75 + 0.5 * 1 = 0.125, v = 0.75 * 0.4375 + 0.25 = 0.578125;
    # m_hat = 0.125 / (1 - 0.5^3) = 1/7, v_hat = 1: 1.5 - 3.5 / 7 = 1.0 (the checkpoint's lr 0.5
    # would give 1.5 - 0.5 / 7; fresh moments 1.5 - 3.5)
    assert torch.equal(new["fc.weight"], torch.full((2, 3), 1.0))
    # fc.bias: the gradient stays +1, so m_hat / sqrt(v_hat) = 1: -1.5 - 3.5
    assert torch.equal(new["fc.bias"], torch.full((3,), -5.0))
    assert resumed.state_dict()["fedopt_optimizer"]["param_groups"][0]["lr"] == 3.5
    assert ("fedopt.optimizer: restored the server optimizer's state under this run's lr=3.5 "
            "(the checkpoint's: lr=0.5)") in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_checkpoint_written_before_the_type_was_stored_still_resumes():
    _, g = _two_adam_rounds()
    saved = _checkpoint(_two_adam_rounds()[0])
    del saved["fedopt_type"]
    resumed = FedOptimizer("Adam", lr=3.5, **ADAM)
    resumed.load_state_dict(saved)
    assert torch.equal(_round(resumed, g, -1, -1)["fc.weight"], torch.full((2, 3), 1.0))


def _one_warning(caplog, configured, written_by):
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"fedopt.optimizer.type is {configured} but the checkpoint's "
                                  f"server optimizer state was written by {written_by}")
    assert f"; that state cannot drive {configured}, so it starts afresh" in warnings[0]


def test_a_fedopt_checkpoint_restored_without_fedopt_warns_once_that_its_state_is_dropped(caplog):
    plain = ClientsAvgAggregator(_cfg())
    with caplog.at_level(logging.INFO, logger="federatedscope"):
        plain.load_state_dict(_checkpoint(_two_adam_rounds()[0]))
        plain.load_state_dict({})                             # a FedAvg checkpoint: nothing lost
        plain.load_state_dict({"fedopt_type": "SGD", "fedopt_buffers": {}})   # momentum 0: none
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["the checkpoint holds a server optimizer's state (Adam) but this run has "
                        "none (fedopt.use False): it is not used, and the next checkpoint drops "
                        "it; restore with fedopt.use True and the checkpoint's fedopt.optimizer "
                        "to continue it"]
    assert plain.state_dict() == {}


def test_adam_state_into_sgd_with_momentum_warns_once_and_sgd_starts_fresh(caplog):
    _, g = _two_adam_rounds()
    sgd = FedOptimizer("SGD", lr=0.25, momentum=0.5)
    with caplog.at_level(logging.INFO, logger="federatedscope"):
        sgd.load_state_dict(_checkpoint(_two_adam_rounds()[0]))
        # fresh buffers: buf = g; fc.weight 1.5 - 0.25 * 1, fc.bias -1.5 - 0.25 * -1
        new = _round(sgd, g, -1, +1)
        new = _round(sgd, new, -1, +1)    # buf = 0.5 * 1 + 1 = 1.5: 1.25 - 0.375
    assert torch.equal(new["fc.weight"], torch.full((2, 3), 0.875))
    assert torch.equal(new["fc.bias"], torch.full((3,), -0.875))
    _one_warning(caplog, "SGD", "Adam")
    # a checkpoint from before the type was stored is told apart by its form
    caplog.clear()
    old = _checkpoint(_two_adam_rounds()[0])
    del old["fedopt_type"]
    with caplog.at_level(logging.INFO, logger="federatedscope"):
        FedOptimizer("SGD", lr=0.25, momentum=0.5).load_state_dict(old)
    _one_warning(caplog, "SGD", "another optimizer with other arguments")


def test_sgd_momentum_buffers_into_adam_warn_once_and_adam_starts_fresh(caplog):
    sgd = FedOptimizer("SGD", lr=0.5, momentum=0.5)
    g = {"fc.weight": torch.full((2, 3), 0.5), "fc.bias": torch.full((3,), -0.5),
         "steps": torch.tensor(0)}
    g = _round(sgd, _round(sgd, g, +1, -1), +1, -1)
    saved = _checkpoint(sgd)
    assert saved["fedopt_type"] == "SGD" and set(saved["fedopt_buffers"]) == {"fc.weight",
                                                                              "fc.bias"}
    for state, written_by in ((saved, "SGD"),
                              ({"fedopt_buffers": saved["fedopt_buffers"]}, "plain SGD")):
        caplog.clear()
        adam = FedOptimizer("Adam", lr=0.25, **ADAM)
        with caplog.at_level(logging.INFO, logger="federatedscope"):
            adam.load_state_dict(state)
            new = _round(adam, g, -1, +1)
        # a fresh Adam's first step is lr times the gradient's sign
        assert torch.equal(new["fc.weight"], g["fc.weight"] - 0.25)
        assert torch.equal(new["fc.bias"], g["fc.bias"] + 0.25)
        _one_warning(caplog, "Adam", written_by)
