"""The server's records on their own (``RoundState``, ``Evaluation``, the handler registry) and
more round edges: a manifest re-cut mid-run, restarts of a finished job, what is broadcast,
results that cannot be written."""
import pytest

from federatedscope.core.message import EVALUATE, FINISH, MODEL_PARA, SERVER_ID
from federatedscope.core.workers.server_eval import Evaluation
from federatedscope.core.workers.server_state import Phase
from server_harness import Harness, good_metrics, quiet
from test_server_rounds import _join4, _beat, _lose
from test_server_texts import _declaration


# ------------------------------------------------------------------ the records themselves
def _two_rounds(h) -> None:
    """Rounds 0 and 1 with the 4 joined clients: update sizes 10c, every evaluation good."""
    for r in range(2):
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g), size=10 * c)
        for c in range(1, 5):
            h.metrics(c, r + 1, good_metrics())


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
    assert h.server.round == 2 and h.server.round_state.refused == {}
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
    h.build(Server, 4, distributed=False)
    assert want not in caplog.text


def test_a_restarted_finished_job_ends_again_without_a_second_final_line(tmp_path, caplog):
    quiet(caplog)
    ckpt = str(tmp_path / "ckpt.pt")
    opts = ("federate.total_round_num", 2, "federate.save_to", ckpt, "federate.restore_from", ckpt)
    h = Harness(tmp_path, *opts, expected=4)
    _join4(h)
    _two_rounds(h)
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
    # the restored history still knows the final accuracy (0.5 from good_metrics)
    assert "finished after 2 rounds; final weighted-avg test_acc=0.5" in caplog.text


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
    assert "Server: round 1/2 aggregated 4 update(s) (100 samples, rule fedavg) in 7.500s" \
        in caplog.text
    assert "Server: round 2/2 aggregated 4 update(s) (100 samples, rule fedavg) in 7.500s" \
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
    assert 4 in h.server.round_state.pending


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
    assert h.server.round_state.phase is Phase.PAUSED and h.server.exit_code == 0
    assert "paused: only 0 update(s) in round 1, fewer than federate.min_clients_threshold=2" \
        in caplog.text
    assert "every update" not in caplog.text and not h.server.finished


def test_results_that_cannot_be_written_say_how_many_lines_wait_and_are_lost(tmp_path, caplog):
    import os
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, "eval.freq", 1, expected=4)
    os.makedirs(h.monitor.log_path)
    _join4(h)
    _two_rounds(h)
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


@pytest.mark.parametrize("ids,joining,never", [
    (None, (1, 2, 4), [3, 5]),                    # FS's data_idx ids: 1..5
    ((2, 5, 7, 9, 11), (2, 5, 9), [7, 11])])       # a manifest's ids
def test_a_client_that_never_joined_is_listed_missing_in_every_eval_line(
        tmp_path, monkeypatch, caplog, ids, joining, never):
    from federatedscope.core.data.shard_format import ManifestEntry
    quiet(caplog)
    entries = None if ids is None else {
        c: ManifestEntry(c, f"client_{c}", {"train": 10, "val": 5, "test": 5}, "ab" * 32, [5, 5],
                         sample_type="float32[4]") for c in ids}
    h = Harness(tmp_path, "federate.total_round_num", 2, "federate.join_timeout", 20.0,
                "federate.min_clients_threshold", 3, manifest=entries, sample_type="float32[4]",
                monkeypatch=monkeypatch, expected=5)
    for c in joining:
        h.join(c, **({} if ids is None else {"declaration": _declaration(c, 10)}))
    h.tick(after=21.0)                   # past join_timeout with 3 >= threshold: start
    for r in range(2):
        g = h.global_state()
        for c in joining:
            h.update(c, r, h.shifted(0.5, g))
        lost = joining[-1] if r == 1 else None        # round 2: one more answers no evaluation
        for c in joining:
            if c != lost:
                h.metrics(c, r + 1, good_metrics())
        if lost:
            h.tick(after=400.0)          # the evaluation times out without it
    lines = h.eval_lines()
    assert [(e["Round"], e["Clients"], e["Missing"]) for e in lines if "Missing" in e] == [
        (1, sorted(joining), never), (2, sorted(joining)[:2], sorted(never + [joining[-1]]))]
