"""The FL core in-process (fake transport, fake clock): FedAvg, every rejection path of a joined
client, timeouts, liveness, refusals. Each test names the behaviour it would catch if removed."""

import pytest
import torch

from federatedscope.core.message import EVALUATE, MODEL_PARA
from server_harness import Harness, good_metrics, quiet


def _run_round(h, r, states, sizes=None):
    for cid, st in states.items():
        h.update(cid, r, st, (sizes or {}).get(cid, 10))


def test_fedavg_is_sample_weighted_exactly(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 1, expected=2)
    h.join(1, num_samples={"train": 10, "val": 1, "test": 1})
    h.join(2, num_samples={"train": 30, "val": 1, "test": 1})
    g = h.global_state()
    a, b = h.shifted(1.0, g), h.shifted(-3.0, g)
    _run_round(h, 0, {1: a, 2: b}, {1: 10, 2: 30})
    new = h.global_state()
    for k, v in g.items():
        if v.is_floating_point():
            want = (a[k].double() * 10 + b[k].double() * 30) / 40   # hand computation: g - 2
            assert torch.equal(new[k], want.to(v.dtype)), k
            assert torch.allclose(new[k], v - 2.0, atol=1e-5)


@pytest.mark.parametrize("mutate,reason", [
    (lambda s: {k: v for k, v in list(s.items())[1:]}, "state keys differ"),
    (lambda s: {**s, "fc2.bias": torch.zeros(3)}, "fc2.bias"),
    (lambda s: {**s, "fc2.bias": s["fc2.bias"].double()}, "fc2.bias"),
    (lambda s: {**s, "fc2.bias": s["fc2.bias"] * float("nan")}, "non-finite"),
    (lambda s: {**s, "fc2.bias": s["fc2.bias"] + float("inf")}, "non-finite"),
])
def test_every_bad_update_of_a_joined_client_is_rejected(tmp_path, caplog, mutate, reason):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 1, expected=2)
    h.join(1)
    h.join(2)
    g = h.global_state()
    h.update(1, 0, mutate(h.shifted(5.0, g)))
    assert "rejected update of client #1" in caplog.text and reason in caplog.text
    h.update(2, 0, h.shifted(1.0, g))
    new = h.global_state()            # only the honest update counts
    assert torch.allclose(new["fc2.bias"], g["fc2.bias"] + 1.0)


def test_sample_size_must_equal_the_declared_count(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 1, expected=2)
    h.join(1)
    h.join(2)
    g = h.global_state()
    h.update(1, 0, h.shifted(5.0, g), size=11)
    assert "sample_size 11 != declared train count 10" in caplog.text
    h.update(2, 0, h.shifted(1.0, g))
    assert torch.allclose(h.global_state()["fc2.bias"], g["fc2.bias"] + 1.0)


def test_a_claimed_billion_samples_cannot_buy_the_model_in_data_idx_mode(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 1, "aggregator.max_sample_ratio", 4.0,
                expected=3)
    h.join(1)
    h.join(2)
    h.join(3, num_samples={"train": 10 ** 9, "val": 5, "test": 5})
    g = h.global_state()
    _run_round(h, 0, {1: h.shifted(1.0, g), 2: h.shifted(1.0, g), 3: h.shifted(-100.0, g)},
               {3: 10 ** 9})
    delta = float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean())
    # weights 10, 10 and the cap 4 x median(10) = 40: (10 + 10 - 4000) / 60
    assert delta == pytest.approx((10 + 10 - 100 * 40) / 60, rel=1e-4)


@pytest.mark.parametrize("rule", ["median", "krum", "normbounding", "trimmedmean", "bulyan"])
def test_robust_rules_bound_a_byzantine_update(tmp_path, rule):
    h = Harness(tmp_path, "federate.total_round_num", 1, "aggregator.robust_rule", rule,
                "aggregator.byzantine_node_num", 1, "aggregator.BFT_args.normbounding_norm_bound",
                0.5, "aggregator.BFT_args.trimmedmean_excluded_ratio", 0.2, expected=7)
    for c in range(1, 8):           # 7 clients: every rule's precondition holds for f=1
        h.join(c)
    g = h.global_state()
    honest = {c: h.shifted(0.001 + 0.0002 * (c - 1), g) for c in range(1, 7)}
    attacker = {k: (v * 1e30 if v.is_floating_point() else v) for k, v in h.shifted(1.0, g).items()}
    _run_round(h, 0, {**honest, 7: attacker})
    new = h.global_state()
    floats = [k for k, v in g.items() if v.is_floating_point()]
    change = torch.cat([(new[k] - g[k]).reshape(-1).double() for k in floats])
    assert torch.isfinite(change).all()
    if rule == "normbounding":
        assert float(change.norm()) <= 0.5 + 1e-6      # clipped to the bound
    else:
        assert float(change.abs().max()) <= 0.002 + 1e-6  # within the honest updates


def test_fedavg_without_a_robust_rule_is_wrecked_by_the_same_update(tmp_path):
    """The contrast that makes the robust-rule test meaningful."""
    h = Harness(tmp_path, "federate.total_round_num", 1, expected=3)
    for c in (1, 2, 3):
        h.join(c)
    g = h.global_state()
    attacker = {k: (v * 1e30 if v.is_floating_point() else v) for k, v in h.shifted(1.0, g).items()}
    _run_round(h, 0, {1: h.shifted(0.001, g), 2: h.shifted(0.002, g), 3: attacker})
    assert float((h.global_state()["fc2.bias"] - g["fc2.bias"]).abs().max()) > 1e20


@pytest.mark.parametrize("bad", [
    {"test_acc": 7.5}, {"test_total": 10 ** 12, "test_acc": 1.0}, {"test_avg_loss": float("nan")},
    {"test_loss": -1.0}, {"bogus_metric": 1.0}, {"test_correct": 99},
])
def test_fake_metrics_are_refused_and_the_line_says_who_is_missing(tmp_path, caplog, bad):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 1, expected=2)
    h.join(1)
    h.join(2)
    g = h.global_state()
    _run_round(h, 0, {1: h.shifted(0.1, g), 2: h.shifted(0.1, g)})
    assert h.asked(EVALUATE, 1) == [1, 2]
    h.metrics(1, 1, good_metrics(acc=0.25))
    h.metrics(2, 1, {**good_metrics(acc=0.99), **bad})
    assert "refused the metrics of client #2" in caplog.text
    line = [x for x in h.eval_lines() if not x.get("Final")][0]
    assert line["Clients"] == [1] and line["Missing"] == [2]
    assert line["Results_weighted_avg"]["test_acc"] == 0.25
    assert h.server.finished


def test_an_evaluation_that_never_comes_back_times_out(tmp_path, monkeypatch, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, "federate.eval_timeout", 30.0,
                monkeypatch=monkeypatch, expected=2)
    h.join(1)
    h.join(2)
    g = h.global_state()
    _run_round(h, 0, {1: h.shifted(0.1, g), 2: h.shifted(0.1, g)})
    h.metrics(1, 1, good_metrics())
    h.send(2, "heartbeat", 0)
    h.tick(after=29.0)
    assert h.asked(MODEL_PARA, 1) == []             # round 2 waits for the evaluation
    h.send(1, "heartbeat", 0)
    h.send(2, "heartbeat", 0)
    h.tick(after=2.0)
    assert "timed out" in caplog.text and h.asked(MODEL_PARA, 1) == [1, 2]
    assert [x["Round"] for x in h.eval_lines()] == [1]
    assert h.eval_lines()[0]["Missing"] == [2]


def test_round_timeout_aggregates_without_the_straggler(tmp_path, monkeypatch):
    h = Harness(tmp_path, "federate.total_round_num", 1, "federate.round_timeout", 10.0,
                "federate.min_clients_threshold", 1, monkeypatch=monkeypatch, expected=2)
    h.join(1)
    h.join(2)
    g = h.global_state()
    h.update(1, 0, h.shifted(1.0, g))
    h.send(2, "heartbeat", 0)
    h.tick(after=5.0)
    assert h.server.round == 0
    h.send(2, "heartbeat", 0)
    h.tick(after=6.0)
    assert h.server.round == 1 and torch.allclose(h.global_state()["fc2.bias"], g["fc2.bias"] + 1)


def test_a_silent_client_is_marked_lost_and_the_round_goes_on(tmp_path, monkeypatch, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 1, "distribute.heartbeat_timeout", 10.0,
                "federate.min_clients_threshold", 1, monkeypatch=monkeypatch, expected=2)
    h.join(1)
    h.join(2)
    g = h.global_state()
    h.update(1, 0, h.shifted(1.0, g))
    h.tick(after=11.0)                      # client 2 said nothing for 11 s
    assert "client #2 silent" in caplog.text and 2 in h.comm.closed
    h.tick(after=11.0)                      # past the grace: dropped from the round
    assert h.server.round == 1


def test_one_bad_event_closes_that_connection_not_the_server(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 1, expected=2)

    def explode(msg):
        raise RuntimeError("x" * 5000)
    h.server.register_handlers("custom_boom", explode)
    h.join(1)
    h.join(2)
    h.send(1, "custom_boom", 0)
    assert 1 in h.comm.closed and not h.server.finished
    assert max(len(r.getMessage()) for r in caplog.records) < 1000      # bounded log line
    h.join(1, conn=7)                                                     # it may come back
    g = h.global_state()
    h.send(1, MODEL_PARA, 0, {"sample_size": 10}, h.shifted(1.0, g), conn=7)
    h.update(2, 0, h.shifted(1.0, g))
    assert h.server.round == 1


def test_custom_message_type_reaches_a_registered_handler(tmp_path):
    h = Harness(tmp_path, expected=1)
    got = []
    h.server.register_handlers("my_type", got.append)
    h.join(1)
    h.send(1, "my_type", 0, {"x": 1})
    assert [m.content for m in got] == [{"x": 1}]


@pytest.mark.parametrize("token", ["\ud800", "été", "x" * 10000, ""])
def test_any_token_string_is_compared_safely(tmp_path, token):
    h = Harness(tmp_path, token="s3cret", expected=1)
    h.join(1, token=token)
    assert h.refusals() == ["bad token"]
    h.join(1, conn=2, token="s3cret")
    assert 1 in h.server.clients


def test_refusals_name_a_class_only(tmp_path):
    h = Harness(tmp_path, expected=2)
    h.join(1)
    h.join(1, conn=9)                       # duplicate
    h.join(5)                               # out of range
    h.join("x")                             # malformed
    assert h.refusals() == ["duplicate", "unknown id", "malformed join"]


def test_many_clients_aggregate_online_and_match_the_batch_mean(tmp_path):
    from federatedscope.core.aggregators.fedavg import OnlineClientsAvgAggregator
    from federatedscope.core.auxiliaries.aggregator_builder import ONLINE_AGGR_FROM
    n = ONLINE_AGGR_FROM
    h = Harness(tmp_path, "federate.total_round_num", 1, expected=n)
    assert isinstance(h.server.aggregator, OnlineClientsAvgAggregator)
    for c in range(1, n + 1):
        h.join(c, num_samples={"train": c, "val": 1, "test": 1})
    g = h.global_state()
    for c in range(1, n + 1):
        h.update(c, 0, h.shifted(float(c), g), size=c)
    want = sum(c * c for c in range(1, n + 1)) / sum(range(1, n + 1))
    assert torch.allclose(h.global_state()["fc2.bias"], g["fc2.bias"] + want, atol=1e-4)


def test_a_checkpoint_that_cannot_be_written_does_not_stall_the_job(tmp_path, caplog):
    quiet(caplog)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")                      # save_to below a file: every write fails
    h = Harness(tmp_path, "federate.total_round_num", 2, "federate.save_to",
                str(blocker / "ckpt.pt"), expected=1)
    h.join(1)
    for r in (0, 1):
        h.update(1, r, h.shifted(0.1))
        h.metrics(1, r + 1, good_metrics())
    assert "cannot write the checkpoint" in caplog.text and h.server.finished


def test_standalone_weights_are_not_capped(tmp_path):
    from federatedscope.core.workers.server import Server
    h = Harness(tmp_path, "federate.total_round_num", 1, "aggregator.max_sample_ratio", 4.0,
                expected=3)
    h.server = h.build(Server, 3, distributed=False)
    h.join(1)
    h.join(2)
    h.join(3, num_samples={"train": 1000, "val": 5, "test": 5})
    g = h.global_state()
    _run_round(h, 0, {1: h.shifted(1.0, g), 2: h.shifted(1.0, g), 3: h.shifted(-1.0, g)},
               {3: 1000})
    delta = float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean())
    assert delta == pytest.approx((10 + 10 - 1000) / 1020, rel=1e-4)


def test_one_connection_cannot_hold_two_identities(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, expected=3)
    h.join(1)
    h.join(2, conn=1)                       # a second join on client 1's connection
    assert 2 not in h.server.clients and "another join_in" in caplog.text
    assert h.server.clients[1].online and 1 not in h.comm.closed


def test_a_client_with_no_train_samples_is_warned_about(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, expected=2)
    h.join(1, num_samples={"train": 0, "val": 3, "test": 3})
    assert "client #1 declares 0 train samples" in caplog.text
