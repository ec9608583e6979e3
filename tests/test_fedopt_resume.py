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


# ------------------------------------------------------- the optimizer's own paths, by hand
def test_a_general_optimizer_keeps_each_keys_dtype_and_passes_integer_buffers_through():
    opt, g = _two_adam_rounds()
    # "steps" is no float: it takes the combined value, floor((8*4 + 1*1 + 4*3 + 3*2) / 16) = 3
    # on top of the 3 it had after the two rounds above
    assert g["steps"].dtype == torch.int64 and int(g["steps"]) == 6
    assert g["fc.weight"].dtype == torch.float32 and g["fc.bias"].dtype == torch.float32


def test_a_general_optimizer_refuses_a_round_whose_floating_keys_changed():
    opt, g = _two_adam_rounds()
    try:
        opt.step({"fc.weight": g["fc.weight"]}, {"fc.weight": g["fc.weight"] + 1})
    except ValueError as e:
        assert str(e) == ("fedopt: the round's floating keys changed (1 now, 2 before); the "
                          "server optimizer's state is per key")
    else:
        raise AssertionError("a changed key set was accepted")


def test_sgd_with_more_than_lr_and_momentum_is_torchs_sgd():
    # weight_decay 0.25, momentum 0.5, lr 0.5; the global w, the clients' mean w - 1 (grad 1):
    # round 1: d = 1 + 0.25 * 1 = 1.25, buf = d, w = 1 - 0.5 * 1.25 = 0.375
    # round 2: d = 1 + 0.25 * 0.375 = 1.09375, buf = 0.5 * 1.25 + d = 1.71875,
    #          w = 0.375 - 0.5 * 1.71875 = -0.484375 (plain SGD would give 0.5, then 0.0)
    opt = FedOptimizer("SGD", lr=0.5, momentum=0.5, weight_decay=0.25)
    w = torch.full((4,), 1.0)
    got = []
    for _ in range(2):
        w = opt.step({"w": w}, {"w": w - 1})["w"]
        got.append(w)
    assert torch.equal(got[0], torch.full((4,), 0.375))
    assert torch.equal(got[1], torch.full((4,), -0.484375))


def test_a_resume_that_changes_two_hyper_parameters_names_both_in_key_order(caplog):
    saved = _checkpoint(_two_adam_rounds()[0])
    _, g = _two_adam_rounds()
    resumed = FedOptimizer("Adam", lr=3.5, betas=(0.5, 0.875), eps=0.0)
    resumed.load_state_dict(saved)
    with caplog.at_level(logging.INFO, logger="federatedscope"):
        _round(resumed, g, -1, -1)
    assert caplog.records[-1].getMessage() == (
        "fedopt.optimizer: restored the server optimizer's state under this run's "
        "betas=(0.5, 0.875), lr=3.5 (the checkpoint's: betas=(0.5, 0.75), lr=0.5)")


def test_state_of_the_same_type_over_other_tensors_starts_afresh_with_one_warning(caplog):
    saved = _checkpoint(_two_adam_rounds()[0])           # Adam over fc.weight and fc.bias
    adam = FedOptimizer("Adam", lr=0.25, **ADAM)
    adam.load_state_dict(saved)
    g = {"fc.weight": torch.full((2, 3), 0.5), "fc.bias": torch.full((3,), -0.5),
         "extra": torch.full((5,), 2.0)}
    with caplog.at_level(logging.INFO, logger="federatedscope"):
        new = adam.step(g, {k: v + 1 for k, v in g.items()})
    for key, value in g.items():                          # a fresh Adam: lr times the sign
        assert torch.equal(new[key], value + 0.25), key
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith("fedopt.optimizer: the checkpoint's server optimizer state does "
                              "not fit this run's Adam over 3 tensors (")
    assert warning.endswith("); it starts afresh (restore with the fedopt.optimizer.type it "
                            "was written with to continue it)")


def test_a_saved_state_does_not_follow_later_steps():
    opt, g = _two_adam_rounds()
    state = opt.state_dict()
    moments = {k: v.clone() for k, v in state["fedopt_optimizer"]["state"][0].items()}
    _round(opt, g, -1, -1)
    for name, value in state["fedopt_optimizer"]["state"][0].items():
        assert torch.equal(value, moments[name]), name


def test_hyper_parameters_that_cannot_be_compared_count_as_changed():
    from federatedscope.core.aggregators.fedopt import _same
    assert _same((0.5, 0.75), (0.5, 0.75)) and not _same(0.5, 0.25)
    assert not _same(torch.ones(2), torch.ones(2))      # several elements: no single truth


def test_momentum_buffers_or_a_typeless_state_restored_without_fedopt_warn_with_its_name(caplog):
    plain = ClientsAvgAggregator(_cfg())
    with caplog.at_level(logging.INFO, logger="federatedscope"):
        plain.load_state_dict({"fedopt_type": "SGD", "fedopt_buffers": {"w": torch.ones(2)}})
        plain.load_state_dict({"fedopt_optimizer": {"state": {}, "param_groups": []}})
    rest = (" but this run has none (fedopt.use False): it is not used, and the next checkpoint "
            "drops it; restore with fedopt.use True and the checkpoint's fedopt.optimizer to "
            "continue it")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "the checkpoint holds a server optimizer's state (SGD)" + rest,
        "the checkpoint holds a server optimizer's state (FedOpt)" + rest]
