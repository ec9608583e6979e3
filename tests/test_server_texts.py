"""The server's round logic, continued (same harness, 4 clients): what it drops, re-declarations
mid-round, and the texts an operator acts on, compared whole (a mutated text must not still
contain the expected one)."""
import pytest
import torch

from federatedscope.core.message import FINISH, MODEL_PARA
from federatedscope.core.workers.server_eval import Evaluation
from federatedscope.core.workers.server_liveness import Liveness
from federatedscope.core.workers.client_table import ClientRecord
from federatedscope.core.workers.server_state import Phase
from server_harness import Harness, good_metrics, make_cfg, quiet
from test_server_rounds import _join4, _beat


# ------------------------------------------------------------------ what the server drops
def test_messages_from_a_stale_connection_or_of_unknown_type_are_dropped(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 1, expected=4)
    _join4(h)
    g = h.global_state()
    h.send(2, MODEL_PARA, 0, {"sample_size": 20}, h.shifted(50.0, g), conn=99)   # not its conn
    assert "dropped model_para from unjoined/stale connection 99" in caplog.text
    assert 2 in h.server.round_state.pending
    h.send(3, "no_such_type", 0)
    assert "client #3 sent unexpected no_such_type; ignored" in caplog.text
    h.update(4, 1, h.shifted(50.0, g), size=40)                  # a future round
    assert "ignored model_para from client #4 for round 1 (current round 0)" in caplog.text
    for c in range(1, 5):
        h.update(c, 0, h.shifted(1.0, g), size=10 * c)
    assert float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean()) == \
        pytest.approx(1.0, abs=1e-5)


def test_a_handler_error_marks_the_client_lost_and_names_the_message(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 1, expected=4)

    def boom(msg):
        raise ValueError("bad payload")
    h.server.register_handlers("custom_boom", boom)
    _join4(h)
    h.send(3, "custom_boom", 0)
    assert "error while handling custom_boom from connection 3: ValueError('bad payload'); " \
           "closing that connection" in caplog.text
    assert "client #3 dropped after an error in its message" in caplog.text
    assert not h.server.clients[3].online and h.comm.closed == [3]
    assert h.server.clients.online_ids() == {1, 2, 4}


def test_metrics_for_another_round_or_from_an_unasked_client_are_ignored(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    _join4(h)
    h.metrics(1, 0, good_metrics())           # nothing is being evaluated
    assert "ignored metrics from client #1 for round 0" in caplog.text
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.1, g), size=10 * c)
    h.metrics(2, 2, good_metrics())           # the evaluation is of round 1
    assert "ignored metrics from client #2 for round 2" in caplog.text
    for c in range(1, 5):
        h.metrics(c, 1, good_metrics(acc=0.25 * c))
    h.metrics(4, 1, good_metrics(acc=0.0))    # a second answer is not taken
    line = h.eval_lines()[0]
    assert line["Clients"] == [1, 2, 3, 4]
    assert line["Results_weighted_avg"]["test_acc"] == pytest.approx(0.625)


def test_a_diverged_round_with_wrong_shapes_gives_the_configuration_hint(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 3, expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, {**h.shifted(1.0, g), "fc2.bias": torch.zeros(7)}, size=10 * c)
    assert h.server.finished and h.server.exit_code == 5
    assert "every update of round 1 was refused (client #1: " in caplog.text
    assert "check that the clients run the same model and data configuration" in caplog.text
    assert "lower train.optimizer.lr" not in caplog.text


def test_a_diverged_round_with_nan_tells_how_to_restart(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 3, expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(float("nan"), g), size=10 * c)
    assert h.server.exit_code == 5
    assert "the model diverged: lower train.optimizer.lr or set grad.grad_clip, then restart " \
           "with federate.restore_from" in caplog.text
    assert "stopping with exit code 5" in caplog.text


# ------------------------------------------------------------------ re-declarations mid-round
def _declaration(cid, train):
    return {"client_id": cid, "num_samples": {"train": train, "val": 5, "test": 5},
            "fingerprint": "ab" * 32, "label_hist": [train // 2, train - train // 2],
            "sample_type": "float32[4]"}


def test_a_redeclared_shard_changes_the_weight_and_a_refused_one_leaves_the_round(
        tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 3, "eval.freq", 3, expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.5, g), size=10 * c)
    assert h.server.round == 1
    g = h.global_state()
    h.redeclare(3, _declaration(3, 60))               # accepted: 60 train samples from now on
    assert "client #3 re-declared its shard (60 train samples)" in caplog.text
    assert h.server.round_state.pending == {1, 2, 3, 4} and h.server.clients[3].online
    h.redeclare(2, {"client_id": 2})                  # malformed: refused, out of the round
    refusals = [m for _, m in h.comm.sent if m.msg_type == "refuse"]
    assert [(m.receiver, m.state, m.content["reason"]) for m in refusals] == \
        [(2, 1, "malformed join")]
    assert not h.server.clients[2].online and h.comm.closed == [2]
    assert h.server.round_state.pending == {1, 3, 4}
    h.update(1, 1, h.shifted(1.0, g), size=10)
    h.update(3, 1, h.shifted(2.0, g), size=60)
    h.update(4, 1, h.shifted(4.0, g), size=40)
    # weights 10, 60, 40: (10 + 120 + 160) / 110
    assert h.server.round == 2
    assert float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean()) == \
        pytest.approx(290 / 110, abs=1e-5)


def test_the_last_pending_client_refused_at_redeclaration_completes_the_round(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 2, "eval.freq", 2, expected=4)
    _join4(h)
    g = h.global_state()
    for c in (1, 2, 4):
        h.update(c, 0, h.shifted(1.0 * c, g), size=10 * c)
    assert h.server.round == 0
    h.redeclare(3, {"client_id": 4, **{k: v for k, v in _declaration(3, 30).items()
                                       if k != "client_id"}})          # another client's id
    assert h.server.round == 1 and h.asked(MODEL_PARA, 1) == [1, 2, 4]
    # weights 10, 20, 40: (10 + 40 + 160) / 70
    assert float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean()) == \
        pytest.approx(3.0, abs=1e-5)


# ------------------------------------------------------------------ texts and the end
def test_sub_second_timeouts_are_timeouts_too(tmp_path):
    live = Liveness(make_cfg(tmp_path, "federate.join_timeout", 0.5, "federate.round_timeout",
                             0.5, "federate.eval_timeout", 0.25,
                             "distribute.heartbeat_timeout", 0.5))
    assert [r.client_id for r in live.silent([ClientRecord(1, 1, last_seen=0.0),
                                              ClientRecord(2, 2, last_seen=0.2)], 0.6)] == [1]
    assert live.join_overdue(0.0, 0.6) and not live.join_overdue(0.0, 0.5)
    assert live.round_overdue(0.0, 0.6) and not live.round_overdue(0.0, 0.5)
    assert live.eval_overdue(Evaluation(1, {2}, started=0.0), 0.3)
    assert not live.eval_overdue(Evaluation(1, {2}, started=0.0), 0.25)


def test_the_still_waiting_line_comes_once_per_join_timeout_period_counted_from_the_start(
        tmp_path):
    # periods of 7.5 s from a start at 1013.0 (not a multiple of the period): the line comes at
    # 9 s (period 1), not again at 14.9 s (still period 1), again at 15.1 s (period 2) and once
    # for a jump over several periods (52 s: period 6)
    live = Liveness(make_cfg(tmp_path, "federate.join_timeout", 7.5,
                             "federate.min_clients_threshold", 3))
    said = [live.join_short(1013.0, 1013.0 + t, 2, 5) for t in (9.0, 14.9, 15.1, 52.0, 52.4)]
    line = ("Server: {}s since start (federate.join_timeout=8s) with 2/5 clients, fewer than "
            "federate.min_clients_threshold=3; still waiting: start the missing clients (check "
            "their logs) or lower federate.min_clients_threshold")
    assert said == [line.format(9), None, line.format(15), line.format(52), None]
    short = Liveness(make_cfg(tmp_path, "federate.join_timeout", 0.5))
    assert short.join_short(1013.0, 1013.6, 0, 4) is not None       # sub-second periods count
    never = Liveness(make_cfg(tmp_path, "federate.join_timeout", 0.0))
    assert [never.join_short(1013.0, 1013.0 + t, 0, 4) for t in (0.5, 60.0, 3600.0)] == [None] * 3


def test_the_divergence_line_lists_every_refusal_clipped_and_ends_with_the_hint(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 3, "eval.freq", 3, expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.5, g), size=10 * c)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 1, {**h.shifted(1.0, g), "fc2.bias": torch.zeros(c + 10, 1, 1, 1, 1, 1, 1)},
                 size=10 * c)
    refused = h.server.round_state.refused
    assert sorted(refused) == [1, 2, 3, 4]
    reasons = "; ".join(f"client #{c}: {refused[c]}" for c in (1, 2, 3, 4))
    assert len(reasons) > 300
    line = [r.getMessage() for r in caplog.records if "exit code 5" in r.getMessage()]
    assert line == [f"Server: stopping with exit code 5: every update of round 2 was refused "
                    f"({reasons[:300]}...[{len(reasons)} chars]); check that the clients run "
                    f"the same model and data configuration"]
    finish = [(r, m.state) for r, m in h.comm.sent if m.msg_type == FINISH]
    assert finish == [(c, 1) for c in (1, 2, 3, 4)]


def test_tick_does_nothing_once_finished_or_in_a_standalone_run(tmp_path, monkeypatch, caplog):
    from federatedscope.core.workers.server import Server
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 1, "distribute.heartbeat_timeout", 10.0,
                monkeypatch=monkeypatch, expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.5, g), size=10 * c)
    for c in range(1, 5):
        h.metrics(c, 1, good_metrics())
    assert h.server.finished
    n = len(caplog.records)
    h.tick(after=100.0)                     # every client silent for 100 s: nothing to do
    assert h.comm.closed == [] and len(caplog.records) == n
    assert all(r.online for r in h.server.clients.values())
    local = Harness(tmp_path / "standalone", "federate.total_round_num", 2,
                    "distribute.heartbeat_timeout", 10.0, "federate.round_timeout", 5.0,
                    monkeypatch=monkeypatch, expected=4)
    local.server = local.build(Server, 4, distributed=False)
    _join4(local)
    local.tick(after=100.0)                 # the in-process bus cannot lose a client
    assert local.comm.closed == [] and not local.server.round_state.timed_out
    assert local.server.round_state.pending == {1, 2, 3, 4}


def test_a_silent_client_is_named_with_its_silence_and_a_give_up_without_save_to_says_so(
        tmp_path, monkeypatch, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, "distribute.heartbeat_timeout", 10.0,
                "federate.min_clients_threshold", 4, "federate.graceful_termination_timeout",
                20.0, monkeypatch=monkeypatch, expected=4)
    _join4(h)
    g = h.global_state()
    for c in (1, 2, 3):
        h.update(c, 0, h.shifted(1.0, g), size=10 * c)
    h.tick(after=7.0)
    _beat(h, (1, 2, 3))
    h.tick(after=5.0)                       # client 4: 12 s since its join
    assert "Server: client #4 silent for 12s (> distribute.heartbeat_timeout); marking it lost" \
        in caplog.text
    assert h.comm.closed == [4] and h.server.clients[4].offline_since == h.clock.now
    _beat(h, (1, 2, 3))
    h.tick(after=9.0)
    _beat(h, (1, 2, 3))
    h.tick(after=2.0)                       # past the grace: 3 updates < 4 -> paused
    assert h.server.round_state.phase is Phase.PAUSED
    for _ in range(2):
        _beat(h, (1, 2, 3))
        h.tick(after=9.0)
    _beat(h, (1, 2, 3))
    h.tick(after=3.0)                       # 21 s paused
    assert h.server.exit_code == 3
    assert "gave up after waiting 20s for clients; 0 round(s) done, none checkpointed " \
           "(federate.save_to is not set); to continue a run that gives up, set " \
           "federate.save_to and restart with federate.restore_from" in caplog.text
    assert "checkpointed to" not in caplog.text
