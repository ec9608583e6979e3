"""The server's round logic at its edges, in-process (fake transport, fake clock), 4 clients and
several rounds: the clock's boundaries (``Liveness``), pausing and resuming a round, catching up a
re-joined client, early stop, the global evaluator, and the texts an operator acts on."""
import pytest
import torch

from federatedscope.core.message import EVALUATE, FINISH, MODEL_PARA, SERVER_ID
from federatedscope.core.workers.server_eval import Evaluation
from federatedscope.core.workers.server_liveness import Liveness, eval_limit
from federatedscope.core.workers.client_table import ClientRecord
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
                                               (0.3, 0.15, 0.3), (0.0, 5.0, 30.0)])
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


def test_a_client_the_transport_heard_is_not_silent_and_only_quiet_records_ask(tmp_path):
    """The gRPC transport keeps heartbeats to itself and stamps the connection instead; the
    server's clock folds that stamp in before calling a client silent, and asks for it only
    when its own record looks silent (asking for all 3,550 records every tick costs)."""
    live = Liveness(make_cfg(tmp_path, "distribute.heartbeat_timeout", 8.0))
    recs = [ClientRecord(c, 10 + c, last_seen=100.0) for c in (1, 2, 3, 4)]
    recs[2].last_seen = 106.0                      # client 3 spoke to the server itself
    heard = {11: 104.5, 12: 101.0, 13: 0.0}        # conn -> transport's stamp; 14 unknown
    asked = []

    def stamp(conn_id: int) -> float:
        asked.append(conn_id)
        return heard.get(conn_id, 0.0)
    # at 108.5, 1, 2 and 4 look quiet (8.5 s > 8 s); the transport heard 1 and 2 since
    assert [r.client_id for r in live.silent(recs, 108.5, stamp)] == [4]
    assert asked == [11, 12, 14]
    assert [r.last_seen for r in recs] == [104.5, 101.0, 106.0, 100.0]
    asked.clear()
    assert [r.client_id for r in live.silent(recs, 109.1, stamp)] == [2, 4]
    assert asked == [12, 14]
    asked.clear()
    assert [r.client_id for r in live.silent(recs, 112.6, stamp)] == [1, 2, 4]
    assert asked == [11, 12, 14]       # 3 is quiet for 6.6 s only: not asked
    assert [r.client_id for r in live.silent(recs, 114.1, stamp)] == [1, 2, 3, 4]
    # an older stamp never moves a record back
    assert recs[0].last_seen == 104.5 and live.silent(recs[:1], 112.4, lambda c: 50.0) == []


def test_heartbeats_kept_by_the_transport_keep_clients_in_the_round(tmp_path, monkeypatch,
                                                                   caplog):
    """4 clients; 1 and 3 send nothing to the server but the transport heard them (their
    heartbeats): after 11 s with heartbeat_timeout 10 only 2 and 4 are lost and closed, and the
    round finishes with 1 and 3's updates."""
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 1, "distribute.heartbeat_timeout", 10.0,
                "federate.min_clients_threshold", 2, monkeypatch=monkeypatch, expected=4)
    for c in (1, 2, 3, 4):
        h.join(c, conn=20 + c)
    g = h.global_state()
    h.clock.now += 9.0
    h.comm.heard.update({21: h.clock.now, 23: h.clock.now})
    h.tick(after=2.0)
    assert h.comm.closed == [22, 24]
    assert "client #2 silent for 11s" in caplog.text and "client #1 silent" not in caplog.text
    h.send(1, MODEL_PARA, 0, {"sample_size": 10}, h.shifted(1.0, g), conn=21)
    h.send(3, MODEL_PARA, 0, {"sample_size": 10}, h.shifted(3.0, g), conn=23)
    h.clock.now += 10.0
    h.comm.heard.update({21: h.clock.now, 23: h.clock.now})
    h.tick(after=1.0)                       # 2 and 4 past the grace: no longer waited for
    assert h.server.round == 1 and h.comm.closed == [22, 24]
    assert "client #1 silent" not in caplog.text and "client #3 silent" not in caplog.text
    assert torch.allclose(h.global_state()["fc2.bias"], g["fc2.bias"] + 2.0)


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
    assert h.server.round_state.phase is Phase.JOINING and h.asked(MODEL_PARA, 0) == []
    short = ("Server: {}s since start (federate.join_timeout=20s) with 2/4 clients, fewer than "
             "federate.min_clients_threshold=3; still waiting: start the missing clients (check "
             "their logs) or lower federate.min_clients_threshold")
    _beat(h, (1, 2))
    h.tick(after=10.0)                      # 35 s: the same period, nothing new to say
    _beat(h, (1, 2))
    h.tick(after=6.0)                       # 41 s: a second period
    said = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert said == [short.format(25), short.format(41)]
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
    assert h.asked(MODEL_PARA, 0) == [] and h.server.round_state.phase is Phase.JOINING
    h.join(4, num_samples={"train": 40, "val": 5, "test": 5})
    assert h.asked(MODEL_PARA, 0) == [1, 2, 3, 4] and h.server.round_state.phase is Phase.TRAINING
    assert h.server.round_state.sampled == {1, 2, 3, 4} == h.server.round_state.pending


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
    assert h.server.round_state.phase is Phase.EVALUATING          # client 4 is still awaited
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
    assert h.server.round_state.phase is Phase.PAUSED and h.server.round == 0
    assert "dropping lost client(s) [3, 4] from round 1" in caplog.text
    assert "paused: only 2 update(s) in round 1, fewer than federate.min_clients_threshold=3; " \
           "waiting up to 300s for clients to (re)join" in caplog.text
    h.join(3, conn=43, num_samples={"train": 30, "val": 5, "test": 5})
    assert "enough clients are back; resuming" in caplog.text
    # the round is sampled afresh: 1, 2 and 3 train again; the paused updates are dropped
    assert h.sent_types(1).count(MODEL_PARA) == 2 and h.sent_types(3).count(MODEL_PARA) == 2
    assert h.server.round_state.pending == {1, 2, 3} and h.server.round_state.phase is Phase.TRAINING
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
    assert h.server.round_state.timed_out and h.server.round == 0
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
    assert h.server.round == 0 and not h.server.round_state.timed_out
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
    assert h.server.round_state.phase is Phase.PAUSED
    assert h.server.round_state.sampled == set() and h.server.round_state.pending == set()
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


def test_the_global_evaluator_replaces_the_clients_evaluation(tmp_path, logs):
    # FS's make_global_eval: the server evaluates alone after each round; no client is asked
    h = Harness(tmp_path, "federate.total_round_num", 3, expected=4)
    calls = []

    def global_eval():
        calls.append(h.server.round)
        return {"test_acc": 0.875, "test_total": 100, "test_loss": 50.0, "test_avg_loss": 0.5}
    h.server.global_eval = global_eval
    _join4(h)
    for r in range(3):
        assert calls == list(range(1, r + 1)) and h.asked(MODEL_PARA, r) == [1, 2, 3, 4]
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g), size=10 * c)
    assert calls == [1, 2, 3] and all(h.asked(EVALUATE, r) == [] for r in range(1, 4))
    h.metrics(2, 3, good_metrics(acc=0.1))     # unasked metrics change nothing
    lines = h.eval_lines()
    assert [x["Round"] for x in lines[:3]] == [1, 2, 3]
    assert all(x["Clients"] == [SERVER_ID] and x["Missing"] == [] for x in lines[:3])
    assert lines[2]["Results_weighted_avg"]["test_acc"] == 0.875 and h.server.finished
    said = [t for _, t in logs if t.startswith("Server: evaluation after round")]
    assert said[:3] == [f"Server: evaluation after round {r} (the server's own data): "
                        "test_acc=0.8750, test_avg_loss=0.5000" for r in (1, 2, 3)]


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
    assert h.server.round_state.phase is Phase.EVALUATING
    _beat(h, (1, 2))
    h.tick(after=1.0)
    assert "evaluation of round 1: clients [3, 4] are lost; not waiting for them" in caplog.text
    assert h.eval_lines()[0]["Missing"] == [3, 4] and h.asked(MODEL_PARA, 1) == [1, 2]


def test_quiet_for_exactly_the_timeout_is_not_silent_nor_asked_about(tmp_path):
    """Both comparisons are strict: a record quiet for exactly the heartbeat timeout is not even
    asked about, and one whose transport stamp is exactly that old is not silent."""
    live = Liveness(make_cfg(tmp_path, "distribute.heartbeat_timeout", 8.0))
    asked = []

    def stamp(conn_id: int) -> float:
        asked.append(conn_id)
        return {21: 100.0}.get(conn_id, 0.0)
    on_edge = ClientRecord(1, 11, last_seen=100.0)     # its own record: exactly 8 s quiet
    heard_on_edge = ClientRecord(2, 21, last_seen=90.0)  # 18 s quiet; the transport: 8 s
    assert live.silent([on_edge, heard_on_edge], 108.0, stamp) == []
    assert asked == [21] and heard_on_edge.last_seen == 100.0
    assert [r.client_id for r in live.silent([on_edge, heard_on_edge], 108.25, stamp)] == [1, 2]


def test_an_evaluation_nobody_answered_is_written_empty_when_the_threshold_is_still_online(
        tmp_path, monkeypatch, caplog):
    """threshold 4, 4 clients online and silent past eval_timeout: exactly the threshold is still
    online, so the round's empty line is written and training goes on (no pause); the next
    evaluation, answered, says who reported."""
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 3, "federate.min_clients_threshold", 4,
                "federate.eval_timeout", 10.0, "distribute.heartbeat_timeout", 0.0,
                monkeypatch=monkeypatch, expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.25, g), size=10 * c)
    assert h.asked(EVALUATE, 1) == [1, 2, 3, 4]
    h.tick(after=10.5)
    assert h.server.round_state.phase is Phase.TRAINING and h.asked(MODEL_PARA, 1) == [1, 2, 3, 4]
    assert [(x["Round"], x["Clients"], x["Missing"]) for x in h.eval_lines()] == \
        [(1, [], [1, 2, 3, 4])]
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 1, h.shifted(0.25, g), size=10 * c)
    for c in range(1, 5):
        h.metrics(c, 2, good_metrics(acc=0.25 * c))
    said = [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("Server: evaluation after round")]
    assert said == ["Server: evaluation after round 2 (4 clients, weighted avg): test_acc=0.6250, "
                    "test_avg_loss=1.0000, val_acc=0.6250"]


def test_without_a_weighted_average_the_finish_line_says_none(tmp_path, caplog):
    # eval.report without weighted_avg: the Final line has no weighted accuracy to quote
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 1, "eval.report", ["avg"], expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.25, g), size=10 * c)
    for c in range(1, 5):
        h.metrics(c, 1, good_metrics(acc=0.25 * c))
    assert h.server.finished and h.server.exit_code == 0
    assert h.eval_lines()[-1]["Results_avg"]["test_acc"] == 0.625
    assert "Server: finished after 1 rounds; final weighted-avg test_acc=None" in caplog.text
