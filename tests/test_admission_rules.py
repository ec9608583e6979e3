"""The server's admission rules, pinned one by one, in-process and without shard files: a
4-client manifest built in memory, hand-written declarations, and the exact reason each refusal
gives (the server log line an operator acts on, and the class the peer is told)."""
import logging
import os

import pytest

from federatedscope.core.data.shard_format import (Manifest, ManifestEntry, ShardDeclaration,
                                                   write_manifest)
from federatedscope.core.workers import admission as adm_mod
from federatedscope.core.workers.admission import (BAD_TOKEN, COOLING_OFF, DUPLICATE, MALFORMED,
                                                   MISMATCH, UNKNOWN_ID, Admission)
from federatedscope.core.workers.cool_off import CoolOff

ST = "uint8[28,28]"
# 4 clients; every count differs so a count taken from the wrong split or client shows
COUNTS = {1: {"train": 12, "val": 3, "test": 4}, 2: {"train": 30, "val": 5, "test": 6},
          3: {"train": 7, "val": 2, "test": 1}, 4: {"train": 51, "val": 4, "test": 8}}
HIST = {1: [5, 4, 3], 2: [10, 0, 20], 3: [7, 0, 0], 4: [17, 17, 17]}
FP = {c: f"{c:x}" * 64 for c in COUNTS}


def _entries(token_hash=None):
    return {c: ManifestEntry(c, f"client_{c}", dict(COUNTS[c]), FP[c], list(HIST[c]),
                             (token_hash or {}).get(c, ""), ST, "femnist") for c in COUNTS}


def _decl(c, **over):
    d = ShardDeclaration(c, dict(COUNTS[c]), FP[c], list(HIST[c]), ST).to_dict()
    d.update(over)
    return d


def _join(adm, cid, online=(), **content):
    return adm.admit({"client_id": cid, **content}, set(online))


# ------------------------------------------------------------------ declarations vs manifest
def test_each_of_four_matching_declarations_is_verified_with_the_manifest_counts():
    adm = Admission(_entries(), strict=True, max_clients=4)
    for c in (4, 2, 1, 3):
        d = _join(adm, c, declaration=_decl(c))
        assert d.accepted and d.client_id == c and d.train_samples == COUNTS[c]["train"]
        assert d.reason == "" and d.peer_reason == "" and d.retry_after == 0.0 and not d.quiet
    for c in COUNTS:
        assert adm.counts(c) == COUNTS[c] and adm.verified(c)
    got = adm.counts(2)
    got["train"] = 10 ** 9                      # the caller's copy, not the record
    assert adm.counts(2)["train"] == 30
    assert adm.counts(9) == {} and not adm.verified(9)


def test_a_strict_server_names_every_differing_field_and_stores_nothing():
    adm = Admission(_entries(), strict=True, max_clients=4)
    d = _join(adm, 2, declaration=_decl(2, num_samples={"train": 30, "val": 6, "test": 6},
                                        fingerprint="b" * 64))
    assert not d.accepted and d.peer_reason == MISMATCH
    assert d.reason == ("client 2: val count 6 != manifest 5; fingerprint bbbbbbbbbbbb... != "
                        "manifest 222222222222... (the shard differs from the one prepared)")
    assert adm.counts(2) == {} and not adm.verified(2)


def test_a_lenient_server_admits_the_lie_unverified_and_says_so(caplog):
    caplog.set_level(logging.WARNING, logger="federatedscope")
    adm = Admission(_entries(), strict=False, max_clients=4)
    d = _join(adm, 3, declaration=_decl(3, num_samples={"train": 7, "val": 2, "test": 9}))
    assert d.accepted and d.train_samples == 7 and not adm.verified(3)
    assert adm.counts(3) == {"train": 7, "val": 2, "test": 9}       # the declared, unverified
    assert ("client 3: test count 9 != manifest 1 (distributed_data.strict_check is off: "
            "accepted; its sample counts are unverified)") in caplog.text
    assert _join(adm, 1, declaration=_decl(1)).accepted and adm.verified(1)


def test_a_declaration_for_another_id_or_malformed_or_missing_is_refused():
    adm = Admission(_entries(), strict=False, max_clients=4)
    d = _join(adm, 2, declaration=_decl(3))
    assert (d.accepted, d.peer_reason) == (False, MISMATCH)
    assert d.reason == "declaration is for client 3, but the client joined as 2"
    d = _join(adm, 2, declaration={"client_id": 2})
    assert d.peer_reason == MALFORMED and d.reason.startswith("malformed declaration: join "
                                                              "declaration: field ")
    d = _join(adm, 2, declaration=_decl(2, label_hist=[1, 2]))      # hist sum != train count
    assert d.peer_reason == MALFORMED and "label_hist" in d.reason
    d = _join(adm, 2, num_samples={"train": 30, "val": 5, "test": 6})
    assert d.peer_reason == MISMATCH and d.reason == (
        "client 2 sent no shard declaration but the server checks a manifest (enable "
        "distributed_data on the client)")
    assert adm.claims == {}


def test_without_a_manifest_a_declaration_is_taken_but_never_verified():
    adm = Admission(None, strict=True, max_clients=4)
    d = _join(adm, 4, declaration=_decl(4, num_samples={"train": 51, "val": 0, "test": 2}))
    assert d.accepted and d.train_samples == 51 and not adm.verified(4)
    assert adm.counts(4) == {"train": 51, "val": 0, "test": 2}
    assert adm.claims[4].declaration.fingerprint == FP[4]


def test_the_sample_type_given_to_admission_overrides_the_entries():
    adm = Admission(_entries(), strict=True, max_clients=4, sample_type="float32[3,32,32]")
    d = _join(adm, 1, declaration=_decl(1))
    assert not d.accepted and d.reason == ("client 1: sample type 'uint8[28,28]' != manifest "
                                           "'float32[3,32,32]'")
    assert _join(adm, 1, declaration=_decl(1, sample_type="float32[3,32,32]")).accepted
    assert adm.revalidate([1]) == {}                     # and so it does before aggregation


# ------------------------------------------------------------------ ids
@pytest.mark.parametrize("cid", ["1", 1.0, True, None])
def test_a_client_id_that_is_not_an_int_is_malformed(cid):
    d = Admission(None, strict=True, max_clients=4).admit({"client_id": cid}, set())
    assert (d.accepted, d.peer_reason, d.reason) == (False, MALFORMED,
                                                     "join_in without an integer client_id")


def test_a_token_that_is_not_a_string_is_malformed():
    d = _join(Admission(None, strict=True, max_clients=4), 1, token=123)
    assert (d.peer_reason, d.reason) == (MALFORMED, "token must be a string")


@pytest.mark.parametrize("cid", [0, -1])
def test_a_manifest_server_requires_an_explicit_id(cid):
    d = _join(Admission(_entries(), strict=True, max_clients=4), cid, declaration=_decl(1))
    assert d.peer_reason == UNKNOWN_ID and d.reason == (
        "a client id is required (set distribute.client_id on the client) when the server "
        "checks a manifest")


def test_ids_are_assigned_in_join_order_lowest_free_first_then_offline_holders():
    adm = Admission(None, strict=True, max_clients=4)
    online = set()
    for want in (1, 2, 3):
        d = _join(adm, -1 if want != 2 else 0, online)        # 0 and -1: "assign me one"
        assert d.accepted and d.client_id == want
        online.add(d.client_id)
    assert _join(adm, -1, {1, 2, 3}).client_id == 4           # never held: 4
    assert _join(adm, -1, {1, 2, 3, 4}).peer_reason == UNKNOWN_ID
    assert _join(adm, -1, {1, 2, 3, 4}).reason == (
        "every client id 1..4 is held by an online client or cooling off after an abuse close "
        "(federate.client_num)")
    assert _join(adm, -1, {1, 2, 4}).client_id == 3           # 3 is offline: its slot is back
    fresh = Admission(None, strict=True, max_clients=4)
    _join(fresh, 2)
    assert _join(fresh, -1, {3}).client_id == 1                # neither held nor online
    assert _join(fresh, -1, {1, 3}).client_id == 4             # 2 was held, 4 never was


def test_without_a_client_num_ids_are_unbounded():
    assert _join(Admission(None, strict=True), 7).accepted            # the default: no bound
    adm = Admission(None, strict=True, max_clients=0)
    assert _join(adm, 1000).accepted
    assert _join(adm, -1, {1000}).client_id == 1
    adm2 = Admission(None, strict=True, max_clients=0)
    assert [_join(adm2, -1, set(range(1, k))).client_id for k in (1, 2, 3)] == [1, 2, 3]
    assert _join(adm2, -1, {1, 2, 3}).client_id == 4           # one above the highest known


def test_ids_outside_the_range_or_the_manifest_are_unknown():
    adm = Admission(None, strict=True, max_clients=4)
    assert _join(adm, 4).accepted
    d = _join(adm, 5)
    assert (d.peer_reason, d.reason) == (UNKNOWN_ID, "client id 5 is out of range 1..4 "
                                                     "(federate.client_num)")
    withm = Admission(_entries(), strict=True, max_clients=2)   # the manifest decides, not 2
    assert _join(withm, 4, declaration=_decl(4)).accepted
    d = _join(withm, 5, declaration=_decl(4, client_id=5))
    assert (d.peer_reason, d.reason) == (UNKNOWN_ID, "client id 5 is not listed in the manifest")


def test_a_second_join_of_an_online_id_is_a_duplicate():
    adm = Admission(None, strict=True, max_clients=4)
    d = _join(adm, 3, {1, 3})
    assert (d.peer_reason, d.reason) == (DUPLICATE, "client id 3 is already connected "
                                                    "(duplicate id)")
    assert _join(adm, 3, {1, 2, 4}).accepted


# ------------------------------------------------------------------ data_idx counts
def test_data_idx_counts_default_to_zero_and_must_be_safe_integers():
    adm = Admission(None, strict=True, max_clients=4)
    d = _join(adm, 1, num_samples={"train": 2 ** 53 - 1, "test": 9})
    assert d.accepted and d.train_samples == 2 ** 53 - 1
    assert adm.counts(1) == {"train": 2 ** 53 - 1, "val": 0, "test": 9} and not adm.verified(1)
    assert _join(adm, 2, num_samples=[5, 5, 5]).accepted and adm.counts(2) == {
        "train": 0, "val": 0, "test": 0}
    assert _join(adm, 3).accepted and adm.counts(3)["train"] == 0
    for split, bad in (("train", 2 ** 53), ("val", -1), ("test", True), ("train", 3.0),
                       ("val", "4")):
        d = _join(adm, 4, num_samples={"train": 1, "val": 1, "test": 1, split: bad})
        assert (d.peer_reason, d.reason) == (MALFORMED, f"num_samples.{split} must be a "
                                                        f"non-negative integer"), (split, bad)
    assert _join(adm, 4, num_samples={"train": 0, "val": 0, "test": 0}).accepted
    assert 4 in adm.claims and adm.counts(4) == {"train": 0, "val": 0, "test": 0}


# ------------------------------------------------------------------ tokens
def test_per_client_token_hashes_and_the_shared_token():
    from federatedscope.core.data.shard_format import token_digest
    hashes = {1: token_digest("one").hex(), 2: "not-hex", 3: ""}
    adm = Admission(_entries(hashes), strict=True, shared_token="shared", max_clients=4)
    assert adm.uses_tokens
    assert _join(adm, 1, token="one", declaration=_decl(1)).accepted
    d = _join(adm, 1, token="shared", declaration=_decl(1))    # its hash wins over the shared
    assert (d.peer_reason, d.reason) == (BAD_TOKEN, "client 1: token does not match the "
                                                    "manifest's token_hash")
    d = _join(adm, 2, token="x", declaration=_decl(2))
    assert d.reason == "client 2: the manifest's token_hash is not hex (re-cut the shards)"
    assert _join(adm, 3, token="shared", declaration=_decl(3)).accepted
    d = _join(adm, 4, token="one", declaration=_decl(4))
    assert (d.peer_reason, d.reason) == (BAD_TOKEN, "client 4: missing or wrong token "
                                                    "(distribute.token)")
    d = _join(adm, 4, declaration=_decl(4))                    # no token field at all
    assert d.peer_reason == BAD_TOKEN
    for secret in ("XXXX", "None", "0"):         # a missing token stands for no secret at all
        assert _join(Admission(None, strict=True, shared_token=secret), 1).peer_reason == BAD_TOKEN


def test_entries_without_a_token_hash_attribute_need_no_token():
    """A plain id -> entry mapping is accepted too; an entry object without ``token_hash``
    (written before per-client tokens) means: no per-client token."""
    from types import SimpleNamespace
    plain = {c: SimpleNamespace(**{k: v for k, v in vars(e).items() if k != "token_hash"})
             for c, e in _entries().items()}
    adm = Admission(plain, strict=True, max_clients=4)
    assert not adm.uses_tokens
    assert _join(adm, 3, token="anything", declaration=_decl(3)).accepted
    shared = Admission(plain, strict=True, shared_token="s", max_clients=4)
    assert _join(shared, 4, token="s", declaration=_decl(4)).accepted
    assert _join(shared, 1, token="x", declaration=_decl(1)).peer_reason == BAD_TOKEN


def test_which_servers_use_tokens():
    assert not Admission(None, strict=True).uses_tokens
    assert not Admission(_entries(), strict=True).uses_tokens
    assert Admission(None, strict=True, shared_token="s").uses_tokens
    assert Admission(_entries({3: "ab" * 32}), strict=True).uses_tokens
    assert _join(Admission(_entries(), strict=True), 2, token="any", declaration=_decl(2)).accepted


def test_the_token_is_checked_before_duplicate_and_cool_off(monkeypatch):
    """Whether an id is online or cooling off is told only to who proves its token."""
    adm = Admission(None, strict=True, shared_token="s", max_clients=4)
    assert _join(adm, 2, {2}, token="bad").peer_reason == BAD_TOKEN
    assert _join(adm, 2, {2}, token="s").peer_reason == DUPLICATE
    adm.cool_off.close(3, "flood")
    assert _join(adm, 3, token="bad").peer_reason == BAD_TOKEN
    assert _join(adm, 3, {3}, token="s").peer_reason.startswith(COOLING_OFF)


# ------------------------------------------------------------------ cool-off
def test_cool_off_periods_double_from_the_base_to_the_cap():
    c = CoolOff(base=2.0, cap=20.0)
    assert [c.period(k) for k in (1, 2, 3, 4, 5, 6)] == [2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert CoolOff().period(1) == 5.0 and CoolOff().period(11) == 3600.0
    assert CoolOff().period(10) == 2560.0 and CoolOff().period(10 ** 6) == 3600.0


def test_a_cooling_id_is_refused_with_its_end_and_reason_and_logged_once(monkeypatch):
    now = {"mono": 500.0}
    monkeypatch.setattr(adm_mod.time, "monotonic", lambda: now["mono"])
    monkeypatch.setattr(adm_mod.time, "time", lambda: 86400.0 * 3 + 3600 * 10)   # 10:00:00 UTC
    adm = Admission(None, strict=True, max_clients=4)
    s = adm.cool_off.close(2, "too many invalid messages")
    assert (s.closes, s.until, s.why, s.refused) == (1, 505.0, "too many invalid messages", 0)
    now["mono"] = 501.75
    assert adm.cool_off.left(2) == 3.25 and adm.cool_off.left(1) == 0.0
    assert adm.cool_off.cooling() == {2}
    d = _join(adm, 2)
    assert d.accepted is False and d.retry_after == 3.2 and not d.quiet
    assert d.reason == ("client id 2 is cooling off until 10:00:03 UTC (abuse close 1: too many "
                        "invalid messages); re-join refused")
    assert d.peer_reason == ("cooling off: this id's session was closed for abuse (too many "
                             "invalid messages; 1 time(s)); re-joins are refused until 10:00:03 "
                             "UTC (3s). Fix what made the client send invalid or excess "
                             "messages, then restart it after that time")
    assert _join(adm, 2).quiet and adm.cool_off.strikes[2].refused == 2
    assert _join(adm, -1, {1}).client_id == 3                   # 2 is not handed out
    now["mono"] = 504.5                                          # half a second left
    assert adm.cool_off.cooling() == {2} and _join(adm, -1, {1, 3, 4}).peer_reason == UNKNOWN_ID
    now["mono"] = 505.0                                          # the period is over
    assert adm.cool_off.cooling() == set() and _join(adm, 2).accepted
    s = adm.cool_off.close(2, "oversized")
    assert (s.closes, s.until, s.refused) == (2, 515.0, 0)       # doubled, refusals reset
    now["mono"] = 511.0
    d = _join(adm, 2)
    assert (d.retry_after, d.quiet) == (4.0, False) and "abuse close 2: oversized" in d.reason


def test_assignment_refuses_when_every_free_id_is_cooling_off(monkeypatch):
    monkeypatch.setattr(adm_mod.time, "monotonic", lambda: 100.0)
    adm = Admission(None, strict=True, max_clients=4)
    for c in (1, 3):
        adm.cool_off.close(c, "flood")
    assert _join(adm, -1, {2}).client_id == 4
    assert _join(adm, -1, {2, 4}).peer_reason == UNKNOWN_ID


# ------------------------------------------------------------------ config, re-checks
def test_from_config_takes_the_manifest_entries_strictness_token_and_sample_type(tmp_path):
    from server_harness import make_cfg
    man = Manifest("femnist", "writer", 0, [0.6, 0.2, 0.2], {}, _entries(), 3, ST)
    cfg = make_cfg(tmp_path, "distributed_data.strict_check", False, "distribute.token", "tok")
    adm = Admission.from_config(cfg, man, "/nowhere/manifest.json", 4)
    assert adm.manifest is man.clients and adm.strict is False and adm.max_clients == 4
    assert adm.sample_type == ST and adm.manifest_path == "/nowhere/manifest.json"
    assert adm.uses_tokens and not _join(adm, 1, token="x", declaration=_decl(1)).accepted
    plain = Admission.from_config(make_cfg(tmp_path), _entries(), "", 4)
    assert plain.manifest == _entries() and plain.strict is True and plain.sample_type is None
    assert not plain.uses_tokens


def _write(path, entries):
    write_manifest(str(path), Manifest("femnist", "writer", 0, [0.6, 0.2, 0.2], {}, entries, 3,
                                       ST))


def test_revalidate_rereads_a_changed_manifest_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="federatedscope")
    path = tmp_path / "manifest.json"
    _write(path, _entries())
    adm = Admission(_entries(), strict=True, max_clients=4, manifest_path=str(path))
    for c in COUNTS:
        assert _join(adm, c, declaration=_decl(c)).accepted
    assert adm.revalidate([1, 2, 3, 4]) == {} and "changed on disk" not in caplog.text
    recut = _entries()
    recut[2].fingerprint, recut[4].num_samples["val"] = "e" * 64, 99
    recut[4].label_hist = [18, 17, 16]
    _write(path, recut)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    problems = adm.revalidate([7, 1, 2, 3, 4])             # every id is looked at
    assert problems == {2: "fingerprint 222222222222... != manifest eeeeeeeeeeee... (the shard "
                           "differs from the one prepared)",
                        4: "val count 4 != manifest 99; train label_hist differs from the "
                           "manifest (class 0: 17 vs 18)", 7: "no declaration on record"}
    assert caplog.text.count(f"Server: manifest {path} changed on disk; re-read it") == 1
    adm.revalidate([1])
    assert caplog.text.count("changed on disk") == 1            # the new stamp was kept
    path.write_text("{not json")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10 ** 9))
    assert adm.revalidate([2, 3]) == {2: problems[2]}           # the last good read is kept
    assert f"Server: manifest {path} changed and no longer loads (" in caplog.text
    assert "keeping the version read at start" in caplog.text


def test_lenient_revalidation_unverifies_and_warns_each_round(caplog):
    caplog.set_level(logging.WARNING, logger="federatedscope")
    adm = Admission(_entries(), strict=False, max_clients=4)
    for c in COUNTS:
        _join(adm, c, declaration=_decl(c))
    adm.manifest[3].label_hist = [6, 1, 0]
    adm.manifest[3].num_samples["test"] = 2
    assert adm.revalidate([1, 3]) == {} and adm.verified(1) and not adm.verified(3)
    assert ("Server: client #3 still differs from the manifest (test count 1 != manifest 2; "
            "train label_hist differs from the manifest (class 0: 7 vs 6)); lenient mode, "
            "counts unverified") in caplog.text
    assert Admission(None, strict=True).revalidate([1, 2]) == {}


def test_a_redeclaration_replaces_the_counts_or_is_refused():
    adm = Admission(None, strict=True, max_clients=4)
    _join(adm, 2, declaration=_decl(2))
    d = adm.redeclare(2, _decl(2, num_samples={"train": 3, "val": 1, "test": 1},
                               label_hist=[1, 1, 1]))
    assert d.accepted and d.train_samples == 3 and adm.counts(2) == {"train": 3, "val": 1,
                                                                      "test": 1}
    strict = Admission(_entries(), strict=True, max_clients=4)
    _join(strict, 2, declaration=_decl(2))
    assert not strict.redeclare(2, _decl(2, fingerprint="f" * 64)).accepted
    assert strict.counts(2) == COUNTS[2] and strict.verified(2)
