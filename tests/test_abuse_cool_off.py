"""The cool-off of an abusive client id, in-process (fake transport, fake clock): after the
transport closes an admitted client's session for abuse, that id's re-joins are refused for a
period that doubles with each abuse close; a network drop never costs a re-join."""
import logging

import pytest

from federatedscope.core.communication.transport import Disconnected
from federatedscope.core.message import ASSIGN_ID, REFUSE
from federatedscope.core.workers.cool_off import COOL_OFF_BASE, COOL_OFF_CAP, CoolOff
from server_harness import Harness, quiet

TOKEN = "shared-secret"
ABUSE = "too many invalid messages"


def _h(tmp_path, monkeypatch):
    return Harness(tmp_path, "federate.total_round_num", 3, "federate.client_num", 5,
                   token=TOKEN, monkeypatch=monkeypatch, expected=5)


def _answer(h, conn):
    """The last message the server sent for connection ``conn`` (REFUSE goes to the conn,
    ASSIGN_ID to the bound id)."""
    bound = h.comm.bound.get(conn)
    for to, msg in reversed(h.comm.sent):
        if to == ("conn", conn) or (bound is not None and to == bound and msg.msg_type == ASSIGN_ID):
            return msg
    return None


def _rejoin(h, cid, conn, token=TOKEN):
    h.join(cid, conn=conn, token=token)
    return _answer(h, conn)


def _warnings(caplog, text):
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


def test_abuse_closes_escalate_per_id_and_a_network_drop_costs_nothing(tmp_path, monkeypatch,
                                                                        caplog):
    quiet(caplog)
    h = _h(tmp_path, monkeypatch)
    for cid in range(1, 6):
        h.join(cid, conn=cid, token=TOKEN)
    assert h.server.clients.online_ids() == {1, 2, 3, 4, 5}

    # A network drop (not abuse): client 4 re-joins at once, on a new connection.
    h.server.handle(Disconnected(4, "stream error: UNAVAILABLE"))
    assert _rejoin(h, 4, 104).msg_type == ASSIGN_ID and 4 in h.server.clients.online_ids()

    # Client 3 abuses three times: 5 s, 10 s, 20 s; each period is refused until its last
    # moment and admitted just after it.
    conn, periods = 3, []
    for close in range(1, 4):
        h.server.handle(Disconnected(conn, ABUSE, abuse=True))
        assert 3 not in h.server.clients.online_ids()
        period = COOL_OFF_BASE * 2 ** (close - 1)
        periods.append(period)
        for attempt in range(4):                      # an abuser retrying in a loop
            conn += 100
            got = _rejoin(h, 3, conn)
            assert got.msg_type == REFUSE, got
            assert got.content["reason"].startswith("cooling off: ")
            assert ABUSE in got.content["reason"] and f"{close} time(s)" in got.content["reason"]
            # the seconds left, to 0.1 s
            assert got.content["retry_after"] == pytest.approx(period * (1 - attempt * 0.01),
                                                               abs=0.051)
            assert conn in h.comm.closed
            h.clock.now += 0.01 * period
        h.clock.now += period * 0.96 - 0.001           # 1 ms before the end: still refused
        conn += 100
        assert _rejoin(h, 3, conn).msg_type == REFUSE
        h.clock.now += 0.002
        conn += 100
        assert _rejoin(h, 3, conn).msg_type == ASSIGN_ID
        assert 3 in h.server.clients.online_ids()
    assert periods == [5.0, 10.0, 20.0]

    # Another id's first abuse close starts at the base, not at client 3's level.
    h.server.handle(Disconnected(2, ABUSE, abuse=True))
    assert _rejoin(h, 2, 902).content["retry_after"] == COOL_OFF_BASE
    # While 2 cools off, an impostor without the token learns "bad token", not the cool-off.
    got = _rejoin(h, 2, 903, token="wrong")
    assert got.msg_type == REFUSE and got.content["reason"] == "bad token"
    # The other clients were never touched.
    assert {1, 3, 4, 5} <= h.server.clients.online_ids()

    # One line per abuse close, naming the period; one refusal line per period, not per attempt.
    closes = _warnings(caplog, "closed for abuse")
    assert len(closes) == 4
    assert [c.split("refused for ")[1].split("s,")[0] for c in closes] == ["5", "10", "20", "5"]
    assert len(_warnings(caplog, "is cooling off until")) == 4
    drop = _warnings(caplog, "client #4 lost")
    assert len(drop) == 1 and "abuse" not in drop[0]


def test_period_doubles_up_to_the_cap():
    c = CoolOff()
    assert [c.period(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert c.period(11) == COOL_OFF_CAP == 3600.0 and c.period(10) == 2560.0
    assert c.period(10 ** 6) == COOL_OFF_CAP          # no overflow for a very persistent abuser


def test_join_order_ids_skip_an_id_cooling_off(tmp_path, monkeypatch):
    """data_idx without distribute.client_id: a newcomer is not handed an id that cools off
    (it would be refused for another's abuse), and when only such ids are free it is told so."""
    h = _h(tmp_path, monkeypatch)
    for cid in range(1, 6):
        h.join(cid, conn=cid, token=TOKEN)
    h.server.handle(Disconnected(2, ABUSE, abuse=True))
    h.server.handle(Disconnected(5, "stream closed by client"))
    h.join(-1, conn=50, token=TOKEN)                  # the lowest offline id not cooling off: 5
    assert h.comm.bound[50] == 5
    h.join(-1, conn=51, token=TOKEN)
    got = _answer(h, 51)
    assert got.msg_type == REFUSE and got.content["reason"] == "unknown id"
    h.clock.now += COOL_OFF_BASE + 0.001
    h.join(-1, conn=52, token=TOKEN)                  # 2 is free again
    assert h.comm.bound[52] == 2
