"""What each event does to the server, in-process (fake transport and clock, 4 clients, several
rounds): the guard around a failing event, where a disconnect and a re-join lead, the lines an
operator reads about them (compared whole), the claim cap naming its client, the registry's
message types, and a finished server that stays finished whatever still arrives."""
import uuid

import pytest
import torch

from federatedscope.core.communication.transport import Disconnected
from federatedscope.core.message import (ASSIGN_ID, EVALUATE, FINISH, InvalidMessage, MODEL_PARA, Message,
                                         validate_message)
from federatedscope.core.workers.base_worker import Worker
from federatedscope.core.workers.server_state import Phase
from server_harness import Harness, good_metrics, pause_after_losing_client_4, quiet
from test_server_rounds import _join4


def _lines(caplog, part):
    return [r.getMessage() for r in caplog.records if part in r.getMessage()]


def _since(h, n, cid):
    """(type, round) of what client ``cid`` was sent after the first ``n`` sends."""
    return [(m.msg_type, m.state) for r, m in h.comm.sent[n:] if r == cid]


# ------------------------------------------------------------------ the guard
def test_a_failing_disconnect_names_the_event_and_closes_only_that_connection(
        tmp_path, caplog, monkeypatch):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    _join4(h)

    def broken(event):
        raise RuntimeError("table broken")
    monkeypatch.setattr(h.server.clients, "disconnected", broken)
    h.server.handle(Disconnected(3, "network drop"))
    assert _lines(caplog, "error while handling") == [
        "Server: error while handling Disconnected from connection 3: "
        "RuntimeError('table broken'); closing that connection"]
    assert h.comm.closed == [3] and h.server.clients.online_ids() == {1, 2, 4}
    assert h.server.round_state.phase is Phase.TRAINING and not h.server.finished
    h.server.handle(Disconnected(77, "network drop"))     # a connection no client is bound to
    assert h.comm.closed == [3, 77] and h.server.clients.online_ids() == {1, 2, 4}


def test_an_event_no_transport_makes_is_logged_and_closes_nothing(tmp_path, caplog):
    """Neither an Incoming nor a Disconnected: no connection to name or close, and the guard
    itself must not fail on it (no conn_id, no msg)."""
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    _join4(h)
    h.server.handle(("conn", 3))
    [line] = _lines(caplog, "error while handling")
    assert line.startswith("Server: error while handling tuple from connection None: ")
    assert line.endswith("; closing that connection")
    assert h.comm.closed == [] and h.server.clients.online_ids() == {1, 2, 3, 4}
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.5, g), size=10 * c)
    assert h.server.round == 1 and h.asked(EVALUATE, 1) == [1, 2, 3, 4]


def test_a_disconnect_marks_only_that_client_lost_and_closes_nothing(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    _join4(h)
    h.disconnect(2)
    h.server.handle(Disconnected(77, "never joined"))        # no client on it: nothing to do
    assert _lines(caplog, "Server: client #")[-1] == "Server: client #2 lost (test)"
    assert _lines(caplog, "error") == [] and h.comm.closed == []
    assert h.server.clients.online_ids() == {1, 3, 4} and h.server.round_state.pending == {1, 2, 3, 4}


def test_a_long_message_type_is_clipped_to_40_characters_in_both_drop_lines(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    _join4(h)
    long_type = "t" * 30 + "u" * 70
    h.send(2, long_type, 0, conn=99)                          # not client 2's connection
    h.send(3, long_type, 0)                                   # no handler for it
    clipped = "t" * 30 + "u" * 10 + "...[100 chars]"
    assert _lines(caplog, "dropped") == [
        f"Server: dropped {clipped} from unjoined/stale connection 99"]
    assert _lines(caplog, "unexpected") == [f"Server: client #3 sent unexpected {clipped}; ignored"]


# ------------------------------------------------------------------ joins and re-joins
def test_each_join_line_names_the_peer_the_count_and_who_is_online_of_how_many(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    _join4(h, 3)
    h.disconnect(2)
    h.join(2, conn=12, num_samples={"train": 25, "val": 5, "test": 5})
    assert _lines(caplog, "joined") == [
        "Server: client #1 joined, from ipv4:127.0.0.1:1 (10 train samples; 1/4 online)",
        "Server: client #2 joined, from ipv4:127.0.0.1:1 (20 train samples; 2/4 online)",
        "Server: client #3 joined, from ipv4:127.0.0.1:1 (30 train samples; 3/4 online)",
        "Server: client #2 re-joined, from ipv4:127.0.0.1:1 (25 train samples; 3/4 online)"]
    assert h.server.round_state.phase is Phase.JOINING


def test_a_rejoin_catches_up_on_the_round_and_on_the_evaluation_in_flight(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 3, expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(1.0, g), size=10 * c)
    for c in range(1, 5):
        h.metrics(c, 1, good_metrics())
    assert h.server.round == 1 and h.server.round_state.pending == {1, 2, 3, 4}
    g = h.global_state()
    h.update(1, 1, h.shifted(2.0, g), size=10)
    h.disconnect(2)
    n = len(h.comm.sent)
    h.join(2, conn=12, num_samples={"train": 20, "val": 5, "test": 5})
    assert _since(h, n, 2) == [(ASSIGN_ID, 1), (MODEL_PARA, 1)]
    h.send(2, MODEL_PARA, 1, {"sample_size": 20}, h.shifted(2.0, g), conn=12)
    for c in (3, 4):
        h.update(c, 1, h.shifted(2.0, g), size=10 * c)
    assert h.server.round == 2 and h.asked(EVALUATE, 2) == [1, 2, 3, 4]
    assert float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean()) == \
        pytest.approx(2.0, abs=1e-5)
    h.metrics(1, 2, good_metrics(acc=0.25))
    h.disconnect(3)
    n = len(h.comm.sent)
    h.join(3, conn=13, num_samples={"train": 30, "val": 5, "test": 5})
    assert _since(h, n, 3) == [(ASSIGN_ID, 2), (EVALUATE, 2)]
    h.send(3, "metrics", 2, {"results": good_metrics(acc=0.75)}, conn=13)
    h.send(2, "metrics", 2, {"results": good_metrics(acc=0.5)}, conn=12)
    h.metrics(4, 2, good_metrics(acc=1.0))
    line = h.eval_lines()[-1]
    assert (line["Round"], line["Missing"]) == (2, [])
    assert line["Results_weighted_avg"]["test_acc"] == pytest.approx(0.625)


def test_a_paused_server_says_when_enough_clients_are_back(tmp_path, monkeypatch, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, "federate.min_clients_threshold", 4,
                "distribute.heartbeat_timeout", 0.0, monkeypatch=monkeypatch, expected=4)
    _join4(h)
    pause_after_losing_client_4(h)
    assert h.server.round_state.phase is Phase.PAUSED
    h.join(4, conn=14, num_samples={"train": 40, "val": 5, "test": 5})
    assert _lines(caplog, "back") == ["Server: enough clients are back; resuming"]
    assert h.server.round_state.phase is Phase.TRAINING and h.server.round_state.pending == {1, 2, 3, 4}


# ------------------------------------------------------------------ updates
def test_the_claim_cap_warning_names_the_client_and_the_mean_uses_the_cap(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, "aggregator.max_sample_ratio", 2.0,
                expected=4)
    for c, n in zip(range(1, 5), (10, 20, 30, 400)):
        h.join(c, num_samples={"train": n, "val": 5, "test": 5})
    g = h.global_state()
    for c, n in zip(range(1, 5), (10, 20, 30, 400)):
        h.update(c, 0, h.shifted(1.0 * c, g), size=n)
    # median(10, 20, 30, 400) = 25, cap 2 x 25 = 50: (10 x 1 + 20 x 2 + 30 x 3 + 50 x 4) / 110
    assert _lines(caplog, "capped") == [
        "Server: client #4 claims 400 train samples, unverified; its weight is capped at 50 "
        "(aggregator.max_sample_ratio x the median declared count)"]
    assert float((h.global_state()["fc2.bias"] - g["fc2.bias"]).mean()) == \
        pytest.approx(340 / 110, abs=1e-5)


@pytest.mark.parametrize("extra", [{"fc2.bais": (1,)}, {"fc2.bias": (61,)}])
def test_an_aggregation_rule_returning_what_the_model_lacks_stops_the_job(tmp_path, caplog,
                                                                           extra):
    """A misspelt key or a wrong shape must not pass: loaded leniently a key would be dropped
    without a word and the round counted; blamed on the last client, the round would wait for
    ever with nobody pending. The rule's fault stops the job (exit 1), naming the rule and the
    key; no client is dropped and no round is counted."""
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    agg = h.server.aggregator
    rule = agg.aggregate
    agg.aggregate = lambda info: {**rule(info), **{k: torch.zeros(s) for k, s in extra.items()}}
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(1.0, g), size=10 * c)
    assert h.server.finished and h.server.exit_code == 1
    assert h.server.round == 0 and h.asked(EVALUATE, 1) == []
    assert h.asked(FINISH, 0) == [1, 2, 3, 4]            # the clients are told
    assert not _lines(caplog, "error while handling") and not _lines(caplog, "lost")
    [line] = _lines(caplog, "stopping with exit code 1")
    key = next(iter(extra))
    assert f"ClientsAvgAggregator.aggregate returned ['{key}'] (of 1)" in line
    assert "fix it to return one tensor per shared key" in line


# ------------------------------------------------------------------ the registry
def test_a_registered_type_passes_validation_only_from_the_peer_role(tmp_path):
    # fresh names: the registry is process-wide, and a name registered by an earlier run in the
    # same process (mutmut forks its runs from one) would pass without this registration
    up_type, down_type = (f"fs_events_{uuid.uuid4().hex}" for _ in range(2))
    h = Harness(tmp_path, expected=4)
    h.server.register_handlers(up_type, lambda m: None)

    class ClientSide(Worker):
        peer_role = "server"
    ClientSide(5).register_handlers(down_type, lambda m: None)
    up = Message(up_type, 3, 0, 2, {})
    down = Message(down_type, 0, 5, 2, {})
    validate_message(up, from_server=False)
    validate_message(down, from_server=True)
    with pytest.raises(InvalidMessage, match=f"^{up_type} may only come from a client$"):
        validate_message(up, from_server=True)
    with pytest.raises(InvalidMessage, match=f"^{down_type} may only come from the server$"):
        validate_message(down, from_server=False)


# ------------------------------------------------------------------ the end
def test_a_server_that_gave_up_stays_finished_when_a_refused_redeclaration_arrives(
        tmp_path, monkeypatch, caplog):
    """The standalone loop still delivers queued messages to a finished server: a refusal must
    not reopen the round it gave up on."""
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 3, "federate.min_clients_threshold", 4,
                "federate.graceful_termination_timeout", 20.0, "distribute.heartbeat_timeout", 0.0,
                monkeypatch=monkeypatch, expected=4)
    _join4(h)
    g = h.global_state()
    for c in (1, 2, 3):
        h.update(c, 0, h.shifted(1.0, g), size=10 * c)
    h.update(4, 0, {**h.shifted(1.0, g), "fc2.bias": torch.zeros(3)}, size=40)   # refused
    assert h.server.round_state.phase is Phase.PAUSED and h.server.round_state.pending == set()
    h.tick(after=21.0)
    assert h.server.finished and h.server.exit_code == 3
    h.redeclare(2, {"client_id": 2})                          # malformed: refused
    assert h.server.finished and h.server.exit_code == 3
    assert len(_lines(caplog, "paused:")) == 1 and h.server.round == 0
