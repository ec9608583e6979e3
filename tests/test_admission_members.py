"""The server's client table (``client_table.ClientTable``) in isolation, in-process: with 4
clients, what it binds, sends, logs and counts on join, refusal, loss, abuse close and
re-declaration (no Server: its own bookkeeping only)."""
import logging
import time
from types import SimpleNamespace as NS

from federatedscope.core.communication.transport import Disconnected
from federatedscope.core.message import ASSIGN_ID, REFUSE, SERVER_ID
from federatedscope.core.workers import admission as adm_mod
from federatedscope.core.workers.admission import Admission
from federatedscope.core.workers.client_table import ClientTable
from server_harness import FakeComm, quiet
from test_admission_rules import COUNTS, _decl, _entries

PEER = "ipv4:10.0.0.7:5123"


def _table(manifest=None):
    comm = FakeComm()
    return ClientTable(Admission(manifest, strict=True, max_clients=4), comm, 4), comm


def _ns(c):
    return {"train": 10 * c, "val": c, "test": c + 1}


def _warned(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_four_joins_are_bound_told_their_id_indexed_and_logged(caplog):
    quiet(caplog)
    t, comm = _table()
    t.job_id = "0a1b2c3d4e5f6789"
    assert t.train_counts() == [] and t.online_ids() == set() and t.online_count() == 0
    for c in (1, 2, 3, 4):
        assert t.join(10 + c, PEER if c != 4 else "", {"client_id": c, "num_samples": _ns(c)},
                      5) == c
    assert comm.bound == {11: 1, 12: 2, 13: 3, 14: 4} and comm.closed == []
    assigned = [(to, m.msg_type, m.sender, m.state, m.content) for to, m in comm.sent]
    assert assigned == [(c, ASSIGN_ID, SERVER_ID, 5, {"client_id": c, "job_id": "0a1b2c3d4e5f6789"})
                        for c in (1, 2, 3, 4)]
    assert t.online_ids() == {1, 2, 3, 4} and t.online_count() == 4
    t.online_ids().add(9)                                   # a copy
    assert t.online_ids() == {1, 2, 3, 4}
    assert t.on_conn(12).client_id == 2 and t.on_conn(12).conn_id == 12 and t.on_conn(2) is None
    assert t.train_counts() == [10, 20, 30, 40]
    assert f"Server: client #2 joined, from {PEER} (20 train samples; 2/4 online)" in caplog.text
    assert "Server: client #4 joined (40 train samples; 4/4 online)" in caplog.text
    assert _warned(caplog) == []


def test_the_shard_date_is_logged_only_when_plausible(caplog):
    quiet(caplog)
    t, _ = _table()
    for c, mod in ((1, 86400 + 3661.5), (2, 2 ** 33), (3, -1), (4, "yesterday")):
        t.join(c, "", {"client_id": c, "num_samples": _ns(c), "shard_last_modified": mod}, 0)
    assert ("client #1 joined (10 train samples; shard last modified 1970-01-02 01:01:01 UTC; "
            "1/4 online)") in caplog.text
    assert caplog.text.count("shard last modified") == 1
    t2, _ = _table()
    t2.join(1, "", {"client_id": 1, "num_samples": _ns(1), "shard_last_modified": 0}, 0)
    assert "shard last modified 1970-01-01 00:00:00 UTC" in caplog.text


def test_a_client_with_no_train_samples_is_warned_once(caplog):
    quiet(caplog)
    t, _ = _table()
    t.join(1, "", {"client_id": 1, "num_samples": {"train": 0, "val": 4, "test": 4}}, 0)
    t.join(2, "", {"client_id": 2, "num_samples": {"train": 1}}, 0)
    assert _warned(caplog) == ["Server: client #1 declares 0 train samples: it can only "
                               "evaluate; its updates weigh nothing in FedAvg"]


def test_a_refused_join_tells_only_its_connection_the_class_and_closes_it(caplog):
    quiet(caplog)
    t, comm = _table()
    t.join(11, PEER, {"client_id": 1}, 2)
    assert t.join(21, PEER, {"client_id": 1}, 2) is None
    to, msg = comm.sent[-1]
    assert (to, msg.msg_type, msg.sender, msg.receiver, msg.state, msg.content) == (
        ("conn", 21), REFUSE, SERVER_ID, -1, 2, {"reason": "duplicate"})
    assert comm.closed == [21] and t.on_conn(21) is None and comm.bound == {11: 1}
    assert (f"Server: refused client (claimed id 1, from {PEER}): client id 1 is already "
            f"connected (duplicate id)") in _warned(caplog)
    assert t.join(22, "", {"client_id": "x" * 100}, 2) is None
    assert any(w.startswith("Server: refused client (claimed id " + "x" * 40 + "...[100 chars]): "
               "join_in without an integer client_id")
               for w in _warned(caplog))


def test_joins_with_other_local_params_are_refused_naming_both_lists_and_the_fix(caplog):
    """FedBN's keys given to the clients only (or to the server only) would cost every update of
    the run; the join is refused instead, and the peer is told the detail (a config, no secret)."""
    quiet(caplog)
    t, comm = _table()
    t.local_param = ["bn", "norm"]
    same = {"client_id": 1, "num_samples": _ns(1), "local_param": ["norm", "bn", "bn"]}
    assert t.join(11, "", same, 0) == 1                         # the same set, in any order
    fault = ("personalization.local_param differs: the client keeps {} local, the server "
             "['bn', 'norm']; give the server and every client the same "
             "personalization.local_param (FedBN: ['bn'] or ['norm'])")
    for conn, cid, claimed in ((12, 2, ["bn"]), (13, 3, []), (14, 4, ["bn", "norm", "head"])):
        content = {"client_id": cid, "num_samples": _ns(cid), "local_param": claimed}
        assert t.join(conn, PEER, content, 3) is None
        to, msg = comm.sent[-1]
        text = fault.format(sorted(set(claimed)))
        assert (to, msg.msg_type, msg.state, msg.content) == (("conn", conn), REFUSE, 3,
                                                              {"reason": text})
        assert comm.closed[-1] == conn and cid not in t.online_ids()
        assert f"Server: refused client (claimed id {cid}, from {PEER}): {text}" in _warned(caplog)
    assert t.join(15, "", {"client_id": 2, "num_samples": _ns(2)}, 0) is None   # none sent: []
    assert t.join(16, "", {"client_id": 3, "local_param": "bn"}, 0) is None
    assert comm.sent[-1][1].content == {"reason": "local_param must be a list of strings"}
    assert t.online_ids() == {1} and t.train_counts() == [10]
    plain, _ = _table()                         # FedAvg on both sides: nothing to send or check
    assert plain.join(11, "", {"client_id": 1, "num_samples": _ns(1)}, 0) == 1


def test_clients_with_fedopt_on_a_server_without_it_are_told_once_and_admitted(caplog):
    """FedOpt is the server's setting (as in FS): clients that set fedopt.use change nothing,
    so the server admits them and says once, naming the key to set on the server."""
    quiet(caplog)
    t, _ = _table()
    t.follow(NS(local_param=[], server_optimizer=None))
    for cid in (1, 2, 3, 4):
        content = {"client_id": cid, "num_samples": _ns(cid), "fedopt": cid != 1}
        assert t.join(10 + cid, "", content, 0) == cid
    told = [w for w in _warned(caplog) if "fedopt" in w]
    assert told == ["Server: client #2 runs with fedopt.use True, but FedOpt is the server's "
                    "setting (as in FS) and this server's is False: the job aggregates with plain "
                    "FedAvg; set fedopt.use True (and fedopt.optimizer) in the server's config for "
                    "FedOpt"]
    caplog.clear()
    with_opt, _ = _table()
    with_opt.follow(NS(local_param=["bn"], server_optimizer=object()))
    assert with_opt.local_param == ["bn"] and with_opt.fedopt
    content = {"client_id": 1, "num_samples": _ns(1), "fedopt": True, "local_param": ["bn"]}
    assert with_opt.join(11, "", content, 0) == 1 and not _warned(caplog)


def test_a_second_join_on_a_bound_connection_is_ignored(caplog):
    quiet(caplog)
    t, comm = _table()
    t.join(11, "", {"client_id": 1, "num_samples": _ns(1)}, 0)
    n = len(comm.sent)
    assert t.join(11, "", {"client_id": 2}, 0) is None
    assert len(comm.sent) == n and comm.closed == [] and 2 not in t and t.online_ids() == {1}
    assert _warned(caplog) == ["Server: client #1 sent another join_in on its connection "
                               "(claiming 2); ignored"]
    t.join(11, "", {"client_id": "c" * 60}, 0)                     # a long claim is clipped
    assert _warned(caplog)[-1] == ("Server: client #1 sent another join_in on its connection "
                                   "(claiming " + "c" * 40 + "...[60 chars]); ignored")
    t.join(12, "p" * 100, {"client_id": 2, "num_samples": _ns(2)}, 0)   # so is a long peer
    assert f"Server: client #2 joined, from {'p' * 80}...[100 chars] (20 train" in caplog.text


def test_losses_free_the_connection_and_a_rejoin_is_logged_as_such(monkeypatch, caplog):
    quiet(caplog)
    monkeypatch.setattr(time, "monotonic", lambda: 250.0)
    t, comm = _table()
    for c in (1, 2, 3, 4):
        t.join(10 + c, "", {"client_id": c, "num_samples": _ns(c)}, 0)
    t.disconnected(Disconnected(99, "unknown connection"))          # nobody: nothing happens
    t.disconnected(Disconnected(13, "peer closed\nthe stream"))
    rec = t[3]
    assert not rec.online and rec.offline_since == 250.0 and t.on_conn(13) is None
    assert t.online_ids() == {1, 2, 4} and t.online_count() == 3
    assert _warned(caplog) == ["Server: client #3 lost (peer closed\\nthe stream)"]
    t.mark_lost(rec, "again", since=7.0)                             # twice: no KeyError
    assert rec.offline_since == 7.0
    t.mark_lost(t[2], "silent", since=float("-inf"))
    assert t[2].offline_since == float("-inf")
    assert t.join(23, "", {"client_id": 3, "num_samples": _ns(3)}, 1) == 3
    assert "Server: client #3 re-joined (30 train samples; 3/4 online)" in caplog.text
    assert t.on_conn(23).client_id == 3 and t[3].online and comm.bound[23] == 3
    assert t.train_counts() == [10, 20, 30, 40] and len(t) == 4


def test_an_abuse_close_starts_the_cool_off_and_its_line_names_the_end(monkeypatch, caplog):
    quiet(caplog)
    monkeypatch.setattr(adm_mod.time, "monotonic", lambda: 1000.0)
    monkeypatch.setattr(adm_mod.time, "time", lambda: 7200.0)       # 02:00:00 UTC
    t, comm = _table()
    for c in (1, 2, 3, 4):
        t.join(10 + c, "", {"client_id": c, "num_samples": _ns(c)}, 0)
    t.disconnected(Disconnected(12, "y" * 300, abuse=True))
    assert t.admission.cool_off.strikes[2].why == "y" * 80 + "...[300 chars]"
    assert _warned(caplog) == [f"Server: client #2 lost ({'y' * 200}...[300 chars]); closed for "
                               f"abuse (1 time(s)): its re-joins are refused for 5s, until "
                               f"02:00:05 UTC"]
    assert t.join(22, "", {"client_id": 2}, 0) is None
    assert comm.sent[-1][1].content == {"reason": comm.sent[-1][1].content["reason"],
                                        "retry_after": 5.0}
    assert comm.sent[-1][1].content["reason"].startswith("cooling off: ")
    n = len(_warned(caplog))
    t.join(32, "", {"client_id": 2}, 0)                               # again: debug only
    assert len(_warned(caplog)) == n and comm.closed == [22, 32]
    t.disconnected(Disconnected(11, "flood", abuse=False))
    assert 1 not in t.admission.cool_off.strikes


def test_redeclarations_update_the_counts_or_count_the_client_out(caplog):
    quiet(caplog)
    t, comm = _table(_entries())
    for c in (1, 2, 3, 4):
        assert t.join(10 + c, "", {"client_id": c, "declaration": _decl(c)}, 0) == c
    assert t.train_counts() == [COUNTS[c]["train"] for c in (1, 2, 3, 4)]
    lenient = t.admission
    lenient.strict = False
    new = _decl(2, num_samples={"train": 3, "val": 5, "test": 6}, label_hist=[1, 1, 1])
    assert t.redeclare(2, {"declaration": new, "refresh_error": "z" * 500}, 4) is True
    assert t.train_counts() == [12, 3, 7, 51]                         # the cache was dropped
    assert "Server: client #2 re-declared its shard (3 train samples)" in caplog.text
    assert (f"Server: client #2 could not load its changed shard ({'z' * 200}...[500 chars]); "
            f"it keeps its previous shard") in caplog.text
    lenient.strict = True
    n = len(comm.sent)
    assert t.redeclare(4, {"declaration": _decl(4, fingerprint="c" * 64)}, 4) is False
    to, msg = comm.sent[n]
    assert (to, msg.msg_type, msg.sender, msg.state, msg.content) == (
        4, REFUSE, SERVER_ID, 4, {"reason": "declaration mismatch"})
    assert "Server: client #4 refused" in _warned(caplog)
    assert comm.closed == [14] and not t[4].online and t[4].offline_since == float("-inf")
    assert t.online_ids() == {1, 2, 3}
    assert any(w.startswith("Server: Refused re-declaration of client #4: client 4: fingerprint")
               for w in _warned(caplog))
    assert "could not load" not in caplog.text.split("re-declared its shard")[1]


def test_a_join_storm_through_the_table_tells_the_held_joins_by_their_client_ids(caplog):
    # 14 clients in one window of the join lines (a frozen clock): the first 10 are logged one
    # by one, the other 4 (joining as 14, 12, 11, 13) in one line naming the lowest and highest
    # id, told when the last expected client is in
    quiet(caplog)
    t = ClientTable(Admission(None, strict=True, max_clients=14), FakeComm(), 14)
    t.join_lines.clock = lambda: 100.0
    for k, c in enumerate(list(range(1, 11)) + [14, 12, 11, 13]):
        assert t.join(100 + k, PEER, {"client_id": c, "num_samples": _ns(c)}, 0) == c
    joined = [r.getMessage() for r in caplog.records if "joined" in r.getMessage()]
    assert len(joined) == 11 and joined[9].startswith("Server: client #10 joined")
    assert joined[10] == ("Server: 4 more client(s) joined in 1s, ids #11..#14 among them (over "
                          "10 lines per 1s, not logged one by one; 14/14 online)")


OPEN_WARNING = ("Server: no client tokens configured (distribute.token or token_hash in the "
                "manifest): a client id is only a claim, and anyone who can reach this port may "
                "join as a missing client")


def test_a_server_without_tokens_says_so_once_and_one_with_tokens_says_nothing(caplog):
    from test_admission_rules import _entries
    quiet(caplog)
    Admission(None, strict=True, max_clients=4).warn_if_open()
    Admission(_entries(), strict=True, max_clients=4).warn_if_open()   # no token_hash either
    assert _warned(caplog) == [OPEN_WARNING, OPEN_WARNING]
    caplog.clear()
    Admission(None, strict=True, shared_token="s3cret", max_clients=4).warn_if_open()
    Admission(_entries({2: "ab" * 32}), strict=True, max_clients=4).warn_if_open()
    assert _warned(caplog) == []


def test_missing_are_the_expected_or_joined_ids_that_did_not_answer(caplog):
    quiet(caplog)
    t, _ = _table()                      # data_idx mode: ids 1..4 expected
    assert t.missing_from([]) == {1, 2, 3, 4}            # none joined yet: all are missing
    for c in (1, 2):
        t.join(10 + c, "", {"client_id": c, "num_samples": _ns(c)}, 0)
    assert t.missing_from({1}) == {2, 3, 4}
    assert t.missing_from([1, 2, 3, 4]) == set()
    from test_admission_rules import _entries
    entries = _entries()
    whole, _ = _table(entries)          # exactly as many entries as expected clients: all of them
    assert whole.missing_from([2]) == {1, 3, 4}
    del entries[2]                      # a manifest of clients 1, 3, 4 (4 expected)
    m, _ = _table(entries)              # the manifest's ids, not 1..expected
    assert m.missing_from([]) == {1, 3, 4}
    assert m.missing_from([3]) == {1, 4}
    # a job of 4 clients cut from a manifest of 7: no id in particular is expected, so only the
    # ids that joined can be missing (not the 3 the operator chose not to start)
    import dataclasses
    seven = _entries()                  # clients 1..4, and 5..7 listed beside them
    seven.update({c: dataclasses.replace(seven[1], client_id=c, shard_path=f"client_{c}")
                  for c in (5, 6, 7)})
    big, _ = _table(seven)
    assert big.missing_from([]) == set()
    for c in (2, 3, 4):
        assert big.join(20 + c, "", {"client_id": c, "declaration": _decl(c)}, 0) == c
    assert big.missing_from([3]) == {2, 4}


def test_a_fresh_table_sends_an_empty_job_id_and_counts_no_server_optimizer(caplog):
    """Before the server sets them (``job_id``, ``follow``): no job named, plain FedAvg."""
    quiet(caplog)
    t, comm = _table()
    t.join(11, "", {"client_id": 1, "num_samples": _ns(1), "fedopt": True}, 0)
    assert [m.content for _, m in comm.sent] == [{"client_id": 1, "job_id": ""}]
    assert [w for w in _warned(caplog) if "fedopt" in w] == [
        "Server: client #1 runs with fedopt.use True, but FedOpt is the server's setting (as in "
        "FS) and this server's is False: the job aggregates with plain FedAvg; set fedopt.use "
        "True (and fedopt.optimizer) in the server's config for FedOpt"]


# ------------------------------------------------------------------ sending and closing
def _joined_table(online=(1, 3, 4)):
    t, comm = _table()
    for c in (1, 2, 3, 4):
        t.join(10 + c, PEER, {"client_id": c, "num_samples": _ns(c)}, 0)
    for c in {1, 2, 3, 4} - set(online):
        t.mark_lost(t[c], "gone")
    comm.sent.clear()
    return t, comm


def test_the_model_goes_once_to_every_online_client_or_to_the_ids_given():
    import torch
    from federatedscope.core.message import BROADCAST, EVALUATE, FINISH, MODEL_PARA
    t, comm = _joined_table()
    model = torch.nn.Linear(3, 2)
    t.send_model(model, MODEL_PARA, 6)
    assert [to for to, _ in comm.sent] == [1, 3, 4]             # sorted, client 2 is offline
    msg = comm.sent[0][1]
    assert all(m is msg for _, m in comm.sent)                   # one message for all of them
    assert (msg.msg_type, msg.sender, msg.receiver, msg.state, msg.content) == \
        (MODEL_PARA, SERVER_ID, BROADCAST, 6, {})
    assert sorted(msg.tensors) == ["bias", "weight"]
    assert all(torch.equal(msg.tensors[k], v) and not msg.tensors[k].requires_grad
               for k, v in model.state_dict().items())
    comm.sent.clear()
    t.send_model(model, EVALUATE, 2, {4, 2})                     # the ids given, online or not
    assert [(to, m.msg_type, m.state) for to, m in comm.sent] == [(2, EVALUATE, 2),
                                                                   (4, EVALUATE, 2)]
    comm.sent.clear()
    t.send_model(model, FINISH, 3, [])
    t2, comm2 = _table()
    t2.send_model(model, FINISH, 3)                              # nobody online: nothing sent
    assert comm.sent == [] and comm2.sent == []


def test_a_failed_connection_drops_its_client_or_closes_an_unjoined_stream(caplog):
    quiet(caplog)
    t, comm = _joined_table(online=(1, 2, 3, 4))
    t.close_conn(13, "dropped after an error in its message")
    assert not t[3].online and t.online_ids() == {1, 2, 4} and comm.closed == [13]
    assert "Server: client #3 dropped after an error in its message" in _warned(caplog)
    t.close_conn(99, "dropped after an error in its message")   # a stream nobody joined on
    assert comm.closed == [13, 99] and t.online_ids() == {1, 2, 4}
    t.close_conn(None, "dropped after an error in its message")  # an event without a connection
    assert comm.closed == [13, 99]
