"""The server's round logic at its edges, in-process (fake transport, fake clock), 4 clients and
several rounds: the clock's boundaries (``Liveness``), pausing and resuming a round, catching up a
re-joined client, early stop, the global evaluator, and the texts an operator acts on."""
import pytest
import torch

from federatedscope.core.message import EVALUATE, FINISH, MODEL_PARA, SERVER_ID
from federatedscope.core.workers.server_eval import Evaluation
from federatedscope.core.workers.server_liveness import Liveness, eval_limit
from federatedscope.core.workers.server_members import ClientRecord
from federatedscope.core.workers.server_state import Phase
from server_harness import Harness, good_metrics, make_cfg, quiet


def _join4(h, n=4):
    for c in range(1, n + 1):
        h.join(c, num_samples={"train": 10 * c, "val": 5, "test": 5})


def _beat(h, cids):
    for c in cids:
        h.send(c, "heartbeat", 0)


# ------------------------------------------------------------------ Liveness, by the clock
@pytest.mark.parametrize("ev,rt,want", [(300.0, 0.0, 300.0), (300.0, 20.0, 20.0),
                                        (10.0, 20.0, 10.0), (0.0, 15.0, 15.0), (0.0, 0.0, 0.0)])
def test_eval_limit_is_the_smaller_positive_timeout(ev, rt, want):
    assert eval_limit(ev, rt) == want


@pytest.mark.parametrize("hb,deadline,grace", [(30.0, 5.0, 30.0), (4.0, 2.0, 4.0),
                                               (0.06, 0.05, 0.06), (0.0, 0.05, 30.0)])
def test_next_deadline_and_grace_follow_the_heartbeat_timeout(tmp_path, hb, deadline, grace):
    live = Liveness(make_cfg(tmp_path, "distribute.heartbeat_timeout", hb))
    assert live.next_deadline() == pytest.approx(deadline)
    assert live.grace == pytest.approx(grace)


def test_every_wait_is_overdue_only_strictly_after_its_limit(tmp_path):
    live = Liveness(make_cfg(tmp_path, "distribute.heartbeat_timeout", 12.0,
                             "federate.join_timeout", 20.0, "federate.round_timeout", 40.0,
                             "federate.eval_timeout", 25.0,
                             "federate.graceful_termination_timeout", 50.0))
    assert (live.join_timeout, live.round_timeout, live.eval_timeout, live.patience) == \
        (20.0, 40.0, 25.0, 50.0)
    recs = [ClientRecord(1, 1, last_seen=100.0), ClientRecord(2, 2, last_seen=95.0),
            ClientRecord(3, 3, online=False, last_seen=0.0, offline_since=100.0),
            ClientRecord(4, 4, online=False, last_seen=0.0, offline_since=99.0)]
    # silent: online and quiet for more than 12 s; an offline record is never "silent"
    assert [r.client_id for r in live.silent(recs, 112.0)] == [2]
    assert [r.client_id for r in live.silent(recs, 112.5)] == [1, 2]
    # gone: offline for more than the grace (= the heartbeat timeout, 12 s)
    assert live.gone(recs, 111.0) == set() and live.gone(recs, 111.5) == {4}
    assert live.gone(recs, 112.5) == {3, 4}
    assert not live.join_overdue(0.0, 20.0) and live.join_overdue(0.0, 20.5)
    assert not live.round_overdue(10.0, 50.0) and live.round_overdue(10.0, 50.5)
    ev = Evaluation(3, {1, 2}, started=10.0)
    assert not live.eval_overdue(ev, 35.0) and live.eval_overdue(ev, 35.5)
    assert not live.eval_overdue(Evaluation(3, set(), started=10.0), 1000.0)  # nobody awaited
    assert not live.pause_overdue(None, 1e9)
    assert not live.pause_overdue(10.0, 60.0) and live.pause_overdue(10.0, 60.5)


def test_zero_timeouts_never_expire(tmp_path):
    live = Liveness(make_cfg(tmp_path, "distribute.heartbeat_timeout", 0.0,
                             "federate.join_timeout", 0.0, "federate.round_timeout", 0.0,
                             "federate.eval_timeout", 0.0))
    assert live.silent([ClientRecord(1, 1, last_seen=0.0)], 1e9) == []
    assert not live.join_overdue(0.0, 1e9) and not live.round_overdue(0.0, 1e9)
    assert not live.eval_overdue(Evaluation(1, {1}, started=0.0), 1e9)


# ------------------------------------------------------------------ joining
def test_join_timeout_starts_with_the_clients_there_once_enough(tmp_path, monkeypatch, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, "federate.join_timeout", 20.0,
                "federate.min_clients_threshold", 3, monkeypatch=monkeypatch, expected=4)
    h.join(1)
    h.join(2)
    h.tick(after=25.0)                      # overdue, but 2 < threshold 3: keep waiting
    assert h.server.state.phase is Phase.JOINING and h.asked(MODEL_PARA, 0) == []
    h.join(3)
    _beat(h, (1, 2, 3))
    h.tick(after=0.0)
    assert h.asked(MODEL_PARA, 0) == [1, 2, 3]
    assert "federate.join_timeout=20s passed with 3/4 clients; starting with those" in caplog.text
    assert "3/4 clients joined; starting training (round 1/2)" in caplog.text


def test_join_timeout_is_not_overdue_at_exactly_its_value(tmp_path, monkeypatch):
    h = Harness(tmp_path, "federate.join_timeout", 20.0, "federate.min_clients_threshold", 2,
                monkeypatch=monkeypatch, expected=4)
    h.join(1)
    h.join(2)
    h.tick(after=20.0)
    assert h.asked(MODEL_PARA, 0) == []
    _beat(h, (1, 2))
    h.tick(after=0.5)
    assert h.asked(MODEL_PARA, 0) == [1, 2]


def test_all_expected_clients_start_round_1_and_not_before(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 3, expected=4)
    _join4(h, 3)
    assert h.asked(MODEL_PARA, 0) == [] and h.server.state.phase is Phase.JOINING
    h.join(4, num_samples={"train": 40, "val": 5, "test": 5})
    assert h.asked(MODEL_PARA, 0) == [1, 2, 3, 4] and h.server.state.phase is Phase.TRAINING
    assert h.server.state.sampled == {1, 2, 3, 4} == h.server.state.pending


# ------------------------------------------------------------------ re-joins in a round
def test_a_pending_client_that_rejoins_mid_round_gets_the_round_again(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    _join4(h)
    g = h.global_state()
    h.update(1, 0, h.shifted(1.0, g), size=10)
    h.disconnect(1)
    h.disconnect(2)
    h.join(1, conn=21, num_samples={"train": 10, "val": 5, "test": 5})   # already answered
    h.join(2, conn=22, num_samples={"train": 20, "val": 5, "test": 5})   # still pending
    assert h.sent_types(1).count(MODEL_PARA) == 1
    assert h.sent_types(2).count(MODEL_PARA) == 2
    for c in (2, 3, 4):
        h.send(c, MODEL_PARA, 0, {"sample_size": 10 * c}, h.shifted(2.0, g),
               conn=22 if c == 2 else c)
    # weights 10, 20, 30, 40: (10 x 1 + 90 x 2) / 100
    assert h.server.round == 1
    assert float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean()) == \
        pytest.approx(1.9, abs=1e-5)


def test_a_client_that_rejoins_during_evaluation_is_asked_again(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 3, expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.5, g), size=10 * c)
    assert h.asked(EVALUATE, 1) == [1, 2, 3, 4]
    h.metrics(1, 1, good_metrics(acc=0.25))
    h.disconnect(1)
    h.disconnect(3)
    h.join(1, conn=31, num_samples={"train": 10, "val": 5, "test": 5})   # answered already
    h.join(3, conn=33, num_samples={"train": 30, "val": 5, "test": 5})   # still awaited
    assert h.sent_types(1).count(EVALUATE) == 1 and h.sent_types(3).count(EVALUATE) == 2
    h.metrics(2, 1, good_metrics(acc=0.5))
    h.send(3, "metrics", 1, {"results": good_metrics(acc=0.75)}, conn=33)
    assert h.server.state.phase is Phase.EVALUATING          # client 4 is still awaited
    h.metrics(4, 1, good_metrics(acc=1.0))
    line = h.eval_lines()[0]
    assert line["Round"] == 1 and line["Clients"] == [1, 2, 3, 4] and line["Missing"] == []
    assert line["Results_weighted_avg"]["test_acc"] == pytest.approx(0.625)
    assert h.asked(MODEL_PARA, 1) == [1, 2, 3, 4]


# ------------------------------------------------------------------ pause and resume
def _lose(h, cids, after=31.0):
    """Drop ``cids``' connections and let ``after`` seconds pass (the grace is 30 s), the others
    heart-beating halfway so they are not silent."""
    for c in cids:
        h.disconnect(c)
    h.tick(after=after / 2)
    _beat(h, sorted(h.server.clients.online_ids()))
    h.tick(after=after / 2)


def test_too_few_updates_pause_and_a_rejoin_restarts_the_round_from_scratch(
        tmp_path, monkeypatch, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, "federate.min_clients_threshold", 3,
                monkeypatch=monkeypatch, expected=4)
    _join4(h)
    g = h.global_state()
    h.update(1, 0, h.shifted(100.0, g), size=10)
    h.update(2, 0, h.shifted(100.0, g), size=20)
    _lose(h, (3, 4))
    assert h.server.state.phase is Phase.PAUSED and h.server.round == 0
    assert "dropping lost client(s) [3, 4] from round 1" in caplog.text
    assert "paused: only 2 update(s) in round 1, fewer than federate.min_clients_threshold=3; " \
           "waiting up to 300s for clients to (re)join" in caplog.text
    h.join(3, conn=43, num_samples={"train": 30, "val": 5, "test": 5})
    assert "enough clients are back; resuming" in caplog.text
    # the round is sampled afresh: 1, 2 and 3 train again; the paused updates are dropped
    assert h.sent_types(1).count(MODEL_PARA) == 2 and h.sent_types(3).count(MODEL_PARA) == 2
    assert h.server.state.pending == {1, 2, 3} and h.server.state.phase is Phase.TRAINING
    h.update(1, 0, h.shifted(1.0, g), size=10)
    h.update(2, 0, h.shifted(2.0, g), size=20)
    h.send(3, MODEL_PARA, 0, {"sample_size": 30}, h.shifted(3.0, g), conn=43)
    # (10 x 1 + 20 x 2 + 30 x 3) / 60; an accumulator kept from before the pause would add 100s
    assert h.server.round == 1
    assert float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean()) == \
        pytest.approx(140 / 60, abs=1e-5)


def test_after_a_round_timeout_the_threshold_th_update_completes_the_round(tmp_path, monkeypatch):
    h = Harness(tmp_path, "federate.total_round_num", 2, "federate.min_clients_threshold", 2,
                "federate.round_timeout", 10.0, monkeypatch=monkeypatch, expected=4)
    _join4(h)
    g = h.global_state()
    h.update(1, 0, h.shifted(1.0, g), size=10)
    _beat(h, (1, 2, 3, 4))
    h.tick(after=11.0)                      # timed out with 1 < 2 updates: waits for a 2nd
    assert h.server.state.timed_out and h.server.round == 0
    h.update(4, 0, h.shifted(4.0, g), size=40)   # 2 updates now suffice after the timeout
    assert h.server.round == 1
    assert float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean()) == \
        pytest.approx((10 + 160) / 50, abs=1e-5)


def test_a_round_timeout_is_strict_and_waits_for_the_threshold(tmp_path, monkeypatch, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, "federate.min_clients_threshold", 2,
                "federate.round_timeout", 10.0, monkeypatch=monkeypatch, expected=4)
    _join4(h)
    g = h.global_state()
    h.update(1, 0, h.shifted(1.0, g), size=10)
    h.update(2, 0, h.shifted(2.0, g), size=20)
    _beat(h, (1, 2, 3, 4))
    h.tick(after=10.0)
    assert h.server.round == 0 and not h.server.state.timed_out
    _beat(h, (1, 2, 3, 4))
    h.tick(after=0.5)
    assert h.server.round == 1
    assert "round 1 timed out after 10s; stragglers [3, 4] are no longer waited for once 2 " \
           "update(s) are in" in caplog.text
    assert "round 1: aggregating without [3, 4]" in caplog.text
    assert float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean()) == \
        pytest.approx(50 / 30, abs=1e-5)
    # the late straggler is ignored: its round is over
    h.update(3, 0, h.shifted(9.0, g), size=30)
    assert "ignored model_para from client #3 for round 0 (current round 1)" in caplog.text


def test_too_few_online_for_the_next_round_pauses_then_gives_up_with_exit_3(
        tmp_path, monkeypatch, caplog):
    quiet(caplog)
    ckpt = tmp_path / "ckpt.pt"
    h = Harness(tmp_path, "federate.total_round_num", 4, "federate.min_clients_threshold", 3,
                "federate.graceful_termination_timeout", 50.0, "federate.save_to", str(ckpt),
                "distribute.heartbeat_timeout", 0.0, monkeypatch=monkeypatch, expected=4)
    _join4(h)
    g = h.global_state()
    for c in (1, 2):
        h.update(c, 0, h.shifted(1.0, g), size=10 * c)
    _lose(h, (4,))
    h.update(3, 0, h.shifted(1.0, g), size=30)
    assert h.server.round == 1 and h.asked(EVALUATE, 1) == [1, 2, 3]
    h.disconnect(3)
    h.metrics(1, 1, good_metrics())
    h.metrics(2, 1, good_metrics())
    h.tick(after=31.0)                      # 3 is gone: the evaluation ends, round 2 cannot start
    assert h.eval_lines()[0]["Missing"] == [3, 4] and h.asked(MODEL_PARA, 1) == []
    assert "paused: 2 client(s) online for round 2, fewer than " \
           "federate.min_clients_threshold=3; waiting up to 50s" in caplog.text
    assert h.server.state.phase is Phase.PAUSED
    assert h.server.state.sampled == set() and h.server.state.pending == set()
    h.tick(after=50.0)
    assert not h.server.finished
    h.tick(after=0.5)
    assert h.server.finished and h.server.exit_code == 3
    assert f"gave up after waiting 50s for clients; 1 round(s) done and checkpointed to {ckpt}; " \
           "restart with federate.restore_from to continue" in caplog.text
    assert FINISH not in h.sent_types(1)    # the clients are not told: a restart continues
    assert ckpt.exists()


# ------------------------------------------------------------------ evaluation
def test_early_stop_ends_the_job_after_patience_evaluations_without_improvement(
        tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 10, "early_stop.patience", 2,
                "eval.freq", 1, expected=4)
    _join4(h)
    losses = [2.0, 1.0, 1.5, 1.0, 0.5]      # best at round 2; rounds 3 and 4 do not improve
    for r in range(5):
        if h.server.finished:
            break
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g), size=10 * c)
        for c in range(1, 5):
            h.metrics(c, r + 1, good_metrics(loss=losses[r]))
    assert h.server.finished and h.server.round == 4 and h.server.exit_code == 0
    assert "early stop after round 4 (no improvement of test_loss for 2 evaluations)" in caplog.text
    lines = h.eval_lines()
    assert [x["Round"] for x in lines] == [1, 2, 3, 4, 4] and lines[-1]["Final"]
    assert lines[-1]["best_round"] == 2
    assert all(FINISH in h.sent_types(c) for c in range(1, 5))


def test_the_global_evaluator_replaces_the_clients_results(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    calls = []

    def global_eval():
        calls.append(h.server.round)
        return {"test_acc": 0.875, "test_total": 100, "test_loss": 50.0, "test_avg_loss": 0.5}
    h.server.global_eval = global_eval
    _join4(h)
    for r in range(2):
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g), size=10 * c)
        for c in range(1, 5):   # in round 2, client 4's metrics are refused: nobody is missing
            h.metrics(c, r + 1, {**good_metrics(acc=0.1), **({"test_total": 6} if c == 4 and r
                                                             else {})})
    assert calls == [1, 2]
    lines = h.eval_lines()
    assert [x["Round"] for x in lines[:2]] == [1, 2]
    assert all(x["Clients"] == [SERVER_ID] and x["Missing"] == [] for x in lines[:2])
    assert lines[1]["Results_weighted_avg"]["test_acc"] == 0.875


def test_the_final_line_and_log_give_the_last_weighted_accuracy(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    for c in range(1, 5):
        h.join(c, num_samples={"train": 10 * c, "val": 5, "test": c})
    for r in range(2):
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g), size=10 * c)
        for c in range(1, 5):
            h.metrics(c, r + 1, good_metrics(test=c, acc=0.1 * c))
    # test totals 1..4 weigh the accuracies 0.1..0.4: (0.1 + 0.8 + 0.9 + 1.6) / 10 = 0.3
    end = [r.getMessage() for r in caplog.records if "finished after" in r.getMessage()]
    assert end == ["Server: finished after 2 rounds; final weighted-avg test_acc=0.3"]
    final = h.eval_lines()[-1]
    assert final["Final"] and final["Results_weighted_avg"]["test_acc"] == pytest.approx(0.3)
    assert (tmp_path / "job" / "curves.png").stat().st_size > 0      # beside the results log
    assert "cannot write the curves" not in caplog.text
    assert all(h.sent_types(c).count(FINISH) == 1 for c in range(1, 5))


def test_an_evaluation_with_lost_clients_ends_without_them(tmp_path, monkeypatch, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, monkeypatch=monkeypatch, expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.1, g), size=10 * c)
    h.metrics(1, 1, good_metrics())
    h.metrics(2, 1, good_metrics())
    _lose(h, (3, 4), after=30.0)            # not past the grace yet
    assert h.server.state.phase is Phase.EVALUATING
    _beat(h, (1, 2))
    h.tick(after=1.0)
    assert "evaluation of round 1: clients [3, 4] are lost; not waiting for them" in caplog.text
    assert h.eval_lines()[0]["Missing"] == [3, 4] and h.asked(MODEL_PARA, 1) == [1, 2]


# ------------------------------------------------------------------ what the server drops
def test_messages_from_a_stale_connection_or_of_unknown_type_are_dropped(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 1, expected=4)
    _join4(h)
    g = h.global_state()
    h.send(2, MODEL_PARA, 0, {"sample_size": 20}, h.shifted(50.0, g), conn=99)   # not its conn
    assert "dropped model_para from unjoined/stale connection 99" in caplog.text
    assert 2 in h.server.state.pending
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
    assert h.server.state.pending == {1, 2, 3, 4} and h.server.clients[3].online
    h.redeclare(2, {"client_id": 2})                  # malformed: refused, out of the round
    refusals = [m for _, m in h.comm.sent if m.msg_type == "refuse"]
    assert [(m.receiver, m.state, m.content["reason"]) for m in refusals] == \
        [(2, 1, "malformed join")]
    assert not h.server.clients[2].online and h.comm.closed == [2]
    assert h.server.state.pending == {1, 3, 4}
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
    refused = h.server.state.refused
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
    local.server = Server(local.cfg, local.model, local.comm, local.monitor, 4, local.admission,
                          distributed=False)
    _join4(local)
    local.tick(after=100.0)                 # the in-process bus cannot lose a client
    assert local.comm.closed == [] and not local.server.state.timed_out
    assert local.server.state.pending == {1, 2, 3, 4}


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
    assert h.server.state.phase is Phase.PAUSED
    for _ in range(2):
        _beat(h, (1, 2, 3))
        h.tick(after=9.0)
    _beat(h, (1, 2, 3))
    h.tick(after=3.0)                       # 21 s paused
    assert h.server.exit_code == 3
    assert "gave up after waiting 20s for clients; 0 round(s) done and checkpointed; restart " \
           "with federate.restore_from to continue" in caplog.text


# ------------------------------------------------------------------ the records themselves
def test_round_state_transitions_over_two_rounds():
    from federatedscope.core.workers.server_state import RoundState
    st = RoundState()
    assert (st.phase, st.round, st.sampled, st.pending, st.refused, st.started_at, st.timed_out,
            st.paused_since, st.evaluation, st.eval_owed, st.stop_requested, st.exit_code) == \
        (Phase.JOINING, 0, set(), set(), {}, 0.0, False, None, None, None, False, 0)
    sampled = {2, 3, 5, 7}
    st.begin_round(sampled, 12.5)
    sampled.add(9)                          # the state keeps its own copies
    assert st.sampled == {2, 3, 5, 7} == st.pending and st.sampled is not st.pending
    assert (st.phase, st.started_at, st.timed_out, st.paused_since) == \
        (Phase.TRAINING, 12.5, False, None)
    st.pending.discard(2)
    st.refused[3] = "non-finite"
    st.timed_out = True
    st.pause(20.0)
    assert (st.phase, st.paused_since, st.pending) == (Phase.PAUSED, 20.0, {3, 5, 7})
    st.begin_round({5, 7, 11}, 30.0)        # resumed: a fresh round, nothing carried over
    assert (st.sampled, st.pending, st.refused, st.timed_out, st.paused_since) == \
        ({5, 7, 11}, {5, 7, 11}, {}, False, None)
    st.end_round(False)
    assert (st.round, st.phase, st.sampled, st.pending, st.refused, st.eval_owed) == \
        (1, Phase.TRAINING, set(), set(), {}, None)
    st.begin_round({1}, 40.0)
    st.pause(41.0)
    st.end_round(True)
    assert (st.round, st.eval_owed, st.paused_since) == (2, 2, None)
    st.evaluation = Evaluation(2, {1})
    st.finish(5)
    assert (st.phase, st.exit_code, st.evaluation) == (Phase.FINISHED, 5, None)
    st2 = RoundState()
    st2.finish()
    assert st2.exit_code == 0


def test_an_evaluation_record_accepts_refuses_and_drops(monkeypatch):
    import federatedscope.core.workers.server_eval as se
    monkeypatch.setattr(se.time, "monotonic", lambda: 77.0)
    ev = Evaluation(4, {1, 2, 3, 4})
    assert ev.started == 77.0 and ev.results == {} and ev.refused == {} and not ev.done
    assert ev.expects(2, 4) and not ev.expects(2, 3) and not ev.expects(9, 4)
    declared = {"train": 10, "val": 5, "test": 5}
    good = good_metrics(acc=0.75)
    assert ev.accept(1, good, declared, ["test", "val"]) == ""
    good["test_acc"] = 0.0                  # the record keeps its own copy
    assert ev.results == {1: good_metrics(acc=0.75)}
    problem = ev.accept(2, {**good_metrics(), "test_total": 6}, declared, ("test", "val"))
    assert problem == "test_total=6 != the 5 test samples declared at join"
    assert ev.refused == {2: problem} and 2 not in ev.results and not ev.expects(2, 4)
    assert ev.drop([3, 9]) == {3} and ev.waiting == {4} and not ev.done
    assert ev.drop([3]) == set()
    # the splits asked for are the ones allowed: a val metric under eval.split=[test] is refused
    assert ev.accept(4, good_metrics(), declared, ["test"]) == \
        "metric name 'val_acc' is not <split>_<metric> for a split in eval.split"
    assert ev.done and sorted(ev.refused) == [2, 4] and list(ev.results) == [1]


def test_the_handler_registry_is_fs_shaped():
    from federatedscope.core.message import Message, _SCHEMA
    from federatedscope.core.workers.base_worker import Worker
    w = Worker()
    assert (w.ID, w.cfg, w.comm, w.msg_handlers) == (-1, None, None, {})
    seen = []

    class Echo(Worker):
        peer_role = "server"
        default_handlers = (("fs_test_echo", "callback_funcs_for_echo"),)

        def callback_funcs_for_echo(self, msg):
            seen.append(("base", msg.state))

    class Louder(Echo):
        def callback_funcs_for_echo(self, msg):
            seen.append(("override", msg.state))

    e, lo = Echo(7, "cfg", "comm"), Louder(8)
    assert (e.ID, e.cfg, e.comm) == (7, "cfg", "comm")
    assert _SCHEMA["fs_test_echo"]["from"] == "server"
    assert e.dispatch(Message("fs_test_echo", 0, 7, 3, {})) is True
    assert lo.dispatch(Message("fs_test_echo", 0, 8, 4, {})) is True
    assert seen == [("base", 3), ("override", 4)]
    assert e.dispatch(Message("fs_test_nobody", 0, 7, 5, {})) is False
    e.register_handlers("fs_test_echo", lambda m: seen.append(("later", m.state)))
    assert e.dispatch(Message("fs_test_echo", 0, 7, 6, {})) is True and seen[-1] == ("later", 6)
    w.register_handlers("fs_test_any", seen.append)
    assert _SCHEMA["fs_test_any"]["from"] == "any"


def test_unwritable_checkpoint_and_curves_each_cost_one_line_saying_what_follows(tmp_path, caplog):
    quiet(caplog)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    h = Harness(tmp_path, "federate.total_round_num", 2, "eval.freq", 2, "federate.save_to",
                str(blocker / "ckpt.pt"), expected=4)
    (tmp_path / "job").mkdir(exist_ok=True)
    (tmp_path / "job" / "curves.png").mkdir()       # a directory where the picture goes
    _join4(h)
    for r in range(2):
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g), size=10 * c)
    for c in range(1, 5):
        h.metrics(c, 2, good_metrics())
    assert h.server.finished and h.server.exit_code == 0
    lines = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
    ckpt = [x for x in lines if x.startswith(f"Server: cannot write the checkpoint {blocker}")]
    assert len(ckpt) == 3                   # after rounds 1 and 2, and after the evaluation
    assert all(x.endswith("; the job goes on, but a restart would resume from the last "
                          "checkpoint written (free space or point federate.save_to elsewhere)")
               for x in ckpt)
    png = str(tmp_path / "job" / "curves.png")
    curves = [x for x in lines if x.startswith(f"Server: cannot write the curves {png} (")]
    assert len(curves) == 1 and curves[0].endswith(
        "; the results log is whole; redraw with scripts/tools/plot_results.py")
    assert len(lines) == 4 and [x["Round"] for x in h.eval_lines()] == [2, 2]


# ------------------------------------------------------------------ more of the round's edges
def test_a_manifest_entry_changed_mid_run_leaves_that_client_out_in_strict_mode(tmp_path, caplog):
    import dataclasses
    from federatedscope.core.data.shard_format import ManifestEntry
    quiet(caplog)
    train = {1: 10, 2: 20, 3: 30, 4: 400}
    entries = {c: ManifestEntry(c, f"client_{c}", {"train": n, "val": 5, "test": 5}, "ab" * 32,
                                [n // 2, n - n // 2], sample_type="float32[4]")
               for c, n in train.items()}
    h = Harness(tmp_path, "federate.total_round_num", 2, "eval.freq", 2,
                "aggregator.max_sample_ratio", 2.0, manifest=entries, sample_type="float32[4]")
    for c, n in train.items():
        h.join(c, declaration=_declaration(c, n))
    assert all(h.admission.verified(c) for c in range(1, 5))
    g = h.global_state()
    for c, n in train.items():
        h.update(c, 0, h.shifted(float(c), g), size=n)
    # verified counts are not capped (the cap would be 2 x median 25 = 50 for client 4):
    # (10 + 40 + 90 + 1600) / 460
    assert float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean()) == \
        pytest.approx(1740 / 460, abs=1e-5)
    h.admission.manifest[3] = dataclasses.replace(entries[3], fingerprint="cd" * 32)  # re-cut
    g = h.global_state()
    for c, s in {1: 1.0, 2: 1.0, 3: 10.0, 4: 1.0}.items():
        h.update(c, 1, h.shifted(s, g), size=train[c])
    assert "rejected update of client #3: fingerprint abababababab... != manifest " \
           "cdcdcdcdcdcd... (the shard differs from the one prepared)" in caplog.text
    assert h.server.round == 2 and h.server.state.refused == {}
    assert float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean()) == \
        pytest.approx(1.0, abs=1e-5)


def test_the_no_token_warning_is_given_only_where_it_applies(tmp_path, caplog):
    from federatedscope.core.workers.server import Server
    quiet(caplog)
    want = ("Server: no client tokens configured (distribute.token or token_hash in the "
            "manifest): a client id is only a claim, and anyone who can reach this port may join "
            "as a missing client")
    h = Harness(tmp_path / "open", expected=4)
    assert [r.getMessage() for r in caplog.records] == [want]
    assert h.server.ID == SERVER_ID and h.server.cfg is h.cfg and h.server.comm is h.comm
    caplog.clear()
    Harness(tmp_path / "token", token="s3cret", expected=4)
    Server(h.cfg, h.model, h.comm, h.monitor, 4, h.admission, distributed=False)
    assert want not in caplog.text


def test_a_restarted_finished_job_ends_again_without_a_second_final_line(tmp_path, caplog):
    quiet(caplog)
    ckpt = str(tmp_path / "ckpt.pt")
    opts = ("federate.total_round_num", 2, "federate.save_to", ckpt, "federate.restore_from", ckpt)
    h = Harness(tmp_path, *opts, expected=4)
    _join4(h)
    for r in range(2):
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g), size=10 * c)
        for c in range(1, 5):
            h.metrics(c, r + 1, good_metrics())
    assert h.server.finished and [x.get("Final", False) for x in h.eval_lines()] == \
        [False, False, True]
    caplog.clear()
    h2 = Harness(tmp_path, *opts, expected=4)
    assert [r.getMessage() for r in caplog.records if "restored" in r.getMessage()] == \
        [f"Server: restored round 2 from {ckpt}"]
    _join4(h2)
    assert h2.server.finished and h2.server.exit_code == 0
    assert [x.get("Final", False) for x in h2.eval_lines()] == [False, False, True]
    assert [(r, m.state) for r, m in h2.comm.sent if m.msg_type == FINISH] == \
        [(c, 2) for c in range(1, 5)]
    assert h2.asked(MODEL_PARA, 2) == [] and h2.asked(EVALUATE, 2) == []
    assert h2.comm.closed == [] and "error while handling" not in caplog.text
    assert "finished after 2 rounds; final weighted-avg test_acc=None" in caplog.text


def test_what_the_server_broadcasts_and_how_long_a_round_took(tmp_path, monkeypatch, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, "eval.freq", 2,
                monkeypatch=monkeypatch, expected=4)
    _join4(h)
    for r in range(2):
        g = h.global_state()
        h.clock.now += 7.5
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g), size=10 * c)
    for c in range(1, 5):
        h.metrics(c, 2, good_metrics(acc=0.1 * c + 0.00123))
    assert "Server: round 1/2 aggregated 4 update(s) (100 samples, rule fedavg) in 7.50s" \
        in caplog.text
    assert "Server: round 2/2 aggregated 4 update(s) (100 samples, rule fedavg) in 7.50s" \
        in caplog.text
    # accuracies 0.10123 .. 0.40123 over equal test counts: 0.25123, rounded to 4 digits
    end = [r.getMessage() for r in caplog.records if "finished after" in r.getMessage()]
    assert end == ["Server: finished after 2 rounds; final weighted-avg test_acc=0.2512"]
    keys = sorted(h.model.state_dict())
    for r, m in h.comm.sent:
        if m.msg_type in (MODEL_PARA, EVALUATE, FINISH):
            assert (m.sender, m.receiver, m.content) == (SERVER_ID, -2, {}), m.msg_type
            assert sorted(m.tensors) == keys
    to_2 = [(m.msg_type, m.state) for r, m in h.comm.sent if r == 2]
    assert to_2 == [("assign_client_id", 0), (MODEL_PARA, 0), (MODEL_PARA, 1), (EVALUATE, 2),
                    (FINISH, 2)]


def test_a_lost_client_that_still_sends_is_dropped(tmp_path, monkeypatch, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 1, "distribute.heartbeat_timeout", 10.0,
                monkeypatch=monkeypatch, expected=4)
    _join4(h)
    g = h.global_state()
    h.tick(after=6.0)
    _beat(h, (1, 2, 3))
    h.tick(after=5.0)                       # client 4 silent: lost, its connection closed
    h.update(4, 0, h.shifted(9.0, g), size=40)  # a message already in flight on that connection
    assert "dropped model_para from unjoined/stale connection 4" in caplog.text
    assert 4 in h.server.state.pending


def test_results_unwritable_past_the_bound_at_an_evaluation_start_no_next_round(
        tmp_path, monkeypatch, caplog):
    import os
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 5, "distribute.heartbeat_timeout", 0.0,
                "federate.results_write_timeout", 20.0, "eval.freq", 1, monkeypatch=monkeypatch,
                expected=4)
    os.makedirs(h.monitor.log_path)
    _join4(h)
    for r in range(2):
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g), size=10 * c)
        h.clock.now += 25.0                 # no tick in between: the next write finds it overdue
        for c in range(1, 5):
            h.metrics(c, r + 1, good_metrics())
        if r == 0:
            assert not h.server.finished and h.asked(MODEL_PARA, 1) == [1, 2, 3, 4]
    assert h.server.finished and h.server.exit_code == 4
    assert h.asked(MODEL_PARA, 2) == [] and all(FINISH in h.sent_types(c) for c in range(1, 5))
    assert f"Server: stopping with exit code 4: the results log {h.monitor.log_path} could not " \
           "be written for more than 20s; free space or fix the path (outdir)" in \
           [r.getMessage() for r in caplog.records]


def test_an_error_names_the_message_type_clipped_and_logs_the_traceback_only_in_debug(
        tmp_path, caplog):
    import logging
    quiet(caplog)
    kind = "custom_" + "y" * 70

    def boom(msg):
        raise KeyError("k")
    h = Harness(tmp_path, "federate.total_round_num", 1, expected=4)
    h.server.register_handlers(kind, boom)
    _join4(h)
    h.send(2, kind, 0)
    rec = [r for r in caplog.records if "error while handling" in r.getMessage()]
    assert rec[0].getMessage() == (f"Server: error while handling {kind[:60]}...[77 chars] from "
                                   f"connection 2: KeyError('k'); closing that connection")
    assert not rec[0].exc_info
    caplog.set_level(logging.DEBUG, logger="federatedscope")
    h.send(3, kind, 0)
    rec = [r for r in caplog.records if "error while handling" in r.getMessage()]
    assert len(rec) == 2 and rec[1].exc_info and rec[1].exc_info[0] is KeyError


def test_one_refused_update_and_the_rest_lost_pauses_it_did_not_diverge(
        tmp_path, monkeypatch, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, "federate.min_clients_threshold", 2,
                monkeypatch=monkeypatch, expected=4)
    _join4(h)
    g = h.global_state()
    h.update(1, 0, h.shifted(float("nan"), g), size=10)
    _lose(h, (2, 3, 4))
    assert h.server.state.phase is Phase.PAUSED and h.server.exit_code == 0
    assert "paused: only 0 update(s) in round 1, fewer than federate.min_clients_threshold=2" \
        in caplog.text
    assert "every update" not in caplog.text and not h.server.finished


def test_results_that_cannot_be_written_say_how_many_lines_wait_and_are_lost(tmp_path, caplog):
    import os
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, "eval.freq", 1, expected=4)
    os.makedirs(h.monitor.log_path)
    _join4(h)
    for r in range(2):
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g), size=10 * c)
        for c in range(1, 5):
            h.metrics(c, r + 1, good_metrics())
    head = f"Server: cannot write the results log {h.monitor.log_path}"
    fails = [r.getMessage() for r in caplog.records if r.getMessage().startswith(head)]
    assert [x.rsplit("); ", 1)[1] for x in fails] == [
        f"{n} line(s) stay queued and are retried with the next one" for n in (1, 2, 3)]
    stop = [r.getMessage() for r in caplog.records if "exit code 4" in r.getMessage()]
    assert stop == [f"Server: stopping with exit code 4: the results could not be written to "
                    f"{h.monitor.log_path} (3 line(s) lost); free space or fix the path (outdir)"]


def test_a_metrics_refusal_names_client_round_and_reason(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.1, g), size=10 * c)
    h.metrics(2, 1, {**good_metrics(), "test_total": 6})
    assert "Server: refused the metrics of client #2 for round 1: test_total=6 != the 5 test " \
           "samples declared at join" in [r.getMessage() for r in caplog.records]
