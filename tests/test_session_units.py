"""The session's security and bookkeeping units, in-process: the join proof (HMAC over the
stream's nonce and the claimed id), per-client token files and their hashes, TLS credentials and
the diagnosis of a failed TLS channel (real handshakes on 127.0.0.1 against the certificates
below), the Message record's validation, and the unjoined-stream/connection tables' edge cases.
Every expected value is worked out here by hand (hashlib/hmac directly, literal texts)."""
import hashlib
import hmac
import json
import os
import queue
import re
import socket
import ssl
import stat
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from federatedscope.core import message as msg_mod
from federatedscope.core.auxiliaries import client_tokens as ct
from federatedscope.core.communication import join_proof as jp
from federatedscope.core.communication import security
from federatedscope.core.communication.unjoined import (UnjoinedConnections, UnjoinedStreams,
                                                        peer_address)
from federatedscope.core.configs.config import ConfigError, get_default_cfg
from federatedscope.core.data.shard_format import (Manifest, ManifestEntry,
                                                   ShardDeclaration, write_manifest)
from federatedscope.core.message import InvalidMessage, Message, clip_text, validate_message
from federatedscope.core.workers.admission import BAD_TOKEN, Admission

# A throw-away CA and a server certificate it signed (SAN: IP 127.0.0.1, IP ::1, DNS localhost;
# valid 2000-2199), and a second CA that signed nothing; the same shapes that
# scripts/distributed_scripts/make_local_certs.sh makes, kept here so no test runs openssl.
CA_CRT = """-----BEGIN CERTIFICATE-----
MIIBbjCCARSgAwIBAgIBATAKBggqhkjOPQQDAjAVMRMwEQYDVQQDDApmcy10ZXN0
LWNhMCAXDTAwMDEwMTAwMDAwMFoYDzIxOTkxMjMxMDAwMDAwWjAVMRMwEQYDVQQD
DApmcy10ZXN0LWNhMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAELKwykGy3FyDb
VdQ9VguL+xktkUfSROWwB5P0i5d21MY8b7F9AzcWuIHQfaNzdYYx80Y+F6axlicq
/vzf71pTDqNTMFEwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUMjmDpiggoGui
/CQJ08Tg16jkZ+AwHwYDVR0jBBgwFoAUMjmDpiggoGui/CQJ08Tg16jkZ+AwCgYI
KoZIzj0EAwIDSAAwRQIhAPV2gKnlGtyJN/RZ1RDl4SMzL5p8pf8aTm9EANqUrs55
AiBF1ajlOsPuyJ6TBn3Ah2/1BYsrpiAMncY8hnaH7rCAuQ==
-----END CERTIFICATE-----
"""
OTHER_CA_CRT = """-----BEGIN CERTIFICATE-----
MIIBcDCCARagAwIBAgIBATAKBggqhkjOPQQDAjAWMRQwEgYDVQQDDAtmcy1vdGhl
ci1jYTAgFw0wMDAxMDEwMDAwMDBaGA8yMTk5MTIzMTAwMDAwMFowFjEUMBIGA1UE
AwwLZnMtb3RoZXItY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARNhShzpH0g
D2d9U7JwqstwKP+oYucdBfjpB/x5nGGWa72vY5+Wh9fCcxtKkSjBg27xG9n57FND
jZ5q2AKZyAqGo1MwUTAPBgNVHRMBAf8EBTADAQH/MB0GA1UdDgQWBBQoK5yh9VM6
VDAg2INrj9aVVPvTUzAfBgNVHSMEGDAWgBQoK5yh9VM6VDAg2INrj9aVVPvTUzAK
BggqhkjOPQQDAgNIADBFAiEAsupPjARd/noXMcIAUAKko3lj6bEwzKVwx+iLAi6t
QyMCIA2V2YEATNg/e0yWJJgQAA4AoxCSecZx6GDDnaW6ZEzZ
-----END CERTIFICATE-----
"""
SERVER_CRT = """-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIBATAKBggqhkjOPQQDAjAVMRMwEQYDVQQDDApmcy10ZXN0
LWNhMCAXDTAwMDEwMTAwMDAwMFoYDzIxOTkxMjMxMDAwMDAwWjAUMRIwEAYDVQQD
DAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATlB1O2VUjh13ZK
AZpfE+lyNsN7NI5X57rDT1mVQQMKc8YWC8o0gTkrBjNN8gw3Mzu1SKSkNWSPBCTS
B5yOFgTQo3sweTAJBgNVHRMEAjAAMCwGA1UdEQQlMCOHBH8AAAGHEAAAAAAAAAAA
AAAAAAAAAAGCCWxvY2FsaG9zdDAdBgNVHQ4EFgQU21AyP4kNTFuuO9c/bJgo9q3P
//4wHwYDVR0jBBgwFoAUMjmDpiggoGui/CQJ08Tg16jkZ+AwCgYIKoZIzj0EAwID
SAAwRQIhAOr8EKGUMOHN8thaWf+EayzhyX4apE1XVqcGrcZNd3XTAiBFmVbf6/3d
KbqxH4uaFr5EKVlhwVz93UxL5xncf6n7cg==
-----END CERTIFICATE-----
"""
SERVER_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNRrZvsL17B3QiufO
XJYeJI2SeypCvJlYwl9FOxfUkpqhRANCAATlB1O2VUjh13ZKAZpfE+lyNsN7NI5X
57rDT1mVQQMKc8YWC8o0gTkrBjNN8gw3Mzu1SKSkNWSPBCTSB5yOFgTQ
-----END PRIVATE KEY-----
"""


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


IPV6 = _ipv6_loopback()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _hmac(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


# =============================================================== join proof
NONCES = [bytes([k]) * 32 for k in (3, 5, 7, 9)]         # one stream nonce per client


def test_the_wire_names_of_nonce_and_proof():
    # the server transport stamps "nonce", the client transport sends "proof"; the header goes
    # out as gRPC metadata (lower-case ASCII) and the nonce is 32 random bytes
    assert (jp.NONCE_HEADER, jp.NONCE_KEY, jp.PROOF_KEY, jp.NONCE_BYTES) == \
        ("fs-join-nonce", "nonce", "proof", 32)


def test_the_proof_is_hmac_of_the_token_digest_over_nonce_bar_id():
    for cid, nonce in zip((1, 2, 3, 14), NONCES):
        key = hashlib.sha256(f"tok-{cid}".encode()).digest()
        assert jp.join_proof(key, nonce, cid) == _hmac(key, nonce + b"|" + str(cid).encode())
    # an id that is no int (a hostile claim) is bound byte for byte, non-ASCII escaped
    key = hashlib.sha256(b"k").digest()
    assert jp.join_proof(key, NONCES[0], "é7\udc80") == \
        _hmac(key, NONCES[0] + b"|\\xe97\\udc80")
    assert jp.join_proof(key, NONCES[0], -1) == _hmac(key, NONCES[0] + b"|-1")


def _joins(tokens):
    """client id -> the content its join carries over stream k (nonce k, proof with its token)."""
    return {cid: {"client_id": cid, "nonce": NONCES[i].hex(),
                  "proof": _hmac(hashlib.sha256(tokens[cid].encode()).digest(),
                                 NONCES[i] + b"|" + str(cid).encode())}
            for i, cid in enumerate(sorted(tokens))}


def test_each_of_four_proofs_holds_only_for_its_own_key_nonce_and_id():
    tokens = {1: "alpha-1", 2: "bravo-2", 3: "charlie-3", 4: "delta-4"}
    keys = {c: hashlib.sha256(t.encode()).digest() for c, t in tokens.items()}
    joins = _joins(tokens)
    for c, content in joins.items():
        assert jp.proves_token(keys[c], content, b"")
        for other in tokens:
            if other != c:
                # another client's key, or this proof replayed on another client's stream
                assert not jp.proves_token(keys[other], content, b"")
                assert not jp.proves_token(keys[c], dict(content, nonce=joins[other]["nonce"]),
                                           b"")
                # claimed as another id with the right token: the id is bound in
                assert not jp.proves_token(keys[c], dict(content, client_id=other), b"")
        # the proof is hex as sent: case or one changed digit does not pass
        assert not jp.proves_token(keys[c], dict(content, proof=content["proof"].upper()), b"")
        flipped = content["proof"][:-1] + ("0" if content["proof"][-1] != "0" else "1")
        assert not jp.proves_token(keys[c], dict(content, proof=flipped), b"")


def test_over_the_network_only_the_proof_counts_never_a_plain_token():
    key = hashlib.sha256(b"s3cret").digest()
    plain = hashlib.sha256(b"s3cret").digest()          # the plain token hashes right
    net = {"client_id": 2, "nonce": NONCES[1].hex(), "token": "s3cret"}
    assert not jp.proves_token(key, net, plain)
    assert not jp.proves_token(key, dict(net, proof=None), plain)
    assert not jp.proves_token(key, dict(net, proof=7), plain)
    good = _hmac(key, NONCES[1] + b"|2")
    assert jp.proves_token(key, dict(net, proof=good), b"")
    # a nonce that is not a hex string is refused, not raised
    for nonce in (NONCES[1], 12, "zz", "abc"):
        assert not jp.proves_token(key, {"client_id": 2, "nonce": nonce, "proof": good}, plain)
    # a proof with characters no hex digest has (a lone surrogate off the wire) is refused
    for proof in (good[:-1] + "\udc80", good[:-1] + "é", "", good + "0"):
        assert not jp.proves_token(key, {"client_id": 2, "nonce": NONCES[1].hex(),
                                         "proof": proof}, b"")


def test_without_a_nonce_the_plain_tokens_digest_is_compared():
    key = hashlib.sha256(b"in-process").digest()
    assert jp.proves_token(key, {"client_id": 1}, hashlib.sha256(b"in-process").digest())
    assert not jp.proves_token(key, {"client_id": 1}, hashlib.sha256(b"in-process ").digest())
    assert not jp.proves_token(key, {"client_id": 1, "proof": _hmac(key, b"|1")}, b"")


COUNTS = {"train": 10, "val": 2, "test": 3}


def _entries(hashes):
    return {c: ManifestEntry(c, f"client_{c}", dict(COUNTS), f"{c:x}" * 64, [4, 3, 3],
                             hashes.get(c, ""), "uint8[28,28]", "femnist") for c in (1, 2, 3, 4)}


def _decl(c):
    return ShardDeclaration(c, dict(COUNTS), f"{c:x}" * 64, [4, 3, 3], "uint8[28,28]").to_dict()


def test_four_per_client_tokens_each_admit_only_their_own_client():
    """The manifest holds sha256 hex of each secret (what client_tokens.token_hash writes): a
    client's own token proves its id over the wire; another's token, the hash itself, or a
    replay on another stream is refused as a bad token."""
    tokens = {1: "alpha-1", 2: "bravo-2", 3: "charlie-3", 4: "delta-4"}
    adm = Admission(_entries({c: ct.token_hash(t) for c, t in tokens.items()}), strict=False)
    joins = {c: dict(j, declaration=_decl(c)) for c, j in _joins(tokens).items()}
    for c in tokens:
        d = adm.admit(joins[c], set())
        assert d.accepted and d.client_id == c
        for other in tokens:
            if other != c:
                forged = dict(joins[other], client_id=c)         # other's valid proof, c's id
                assert adm.admit(forged, set()).peer_reason == BAD_TOKEN
                stolen = {"client_id": c, "nonce": NONCES[0].hex(), "declaration": _decl(c),
                          "proof": _hmac(hashlib.sha256(tokens[other].encode()).digest(),
                                         NONCES[0] + b"|" + str(c).encode())}
                assert adm.admit(stolen, set()).peer_reason == BAD_TOKEN
        hash_as_token = {"client_id": c, "token": ct.token_hash(tokens[c]),
                         "declaration": _decl(c)}
        assert adm.admit(hash_as_token, set()).peer_reason == BAD_TOKEN
        in_process = {"client_id": c, "token": tokens[c], "declaration": _decl(c)}
        assert adm.admit(in_process, set()).accepted


# =============================================================== token files
def test_token_hash_is_sha256_hex_of_the_utf8_token():
    for token in ("a", "client-4-secret", "tök", "\udcff-from-a-file", ""):
        assert ct.token_hash(token) == _sha(token)
    assert len({ct.token_hash(f"t{k}") for k in range(4)}) == 4


def test_token_path_names_each_clients_file():
    assert [ct.token_path("/run/tok", k) for k in (1, 2, 10, 4000)] == \
        ["/run/tok/client_1.token", "/run/tok/client_2.token", "/run/tok/client_10.token",
         "/run/tok/client_4000.token"]


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _files(d):
    return sorted(os.listdir(d))


def test_staged_tokens_are_private_fresh_and_hashed_and_commit_puts_them_in_place(
        tmp_path, umask022):
    out = tmp_path / "tokens"
    ids = [3, 1, 7, 4]
    (tmp_path / "tokens").mkdir(mode=0o700)
    (out / "client_7.token.new").write_text("stale from a crashed run\n")
    hashes = ct.stage_tokens(str(out), ids)
    assert list(hashes) == ids
    assert _files(out) == [f"client_{k}.token.new" for k in (1, 3, 4, 7)]
    staged = {}
    for k in ids:
        p = out / f"client_{k}.token.new"
        text = p.read_text()
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}\n", text), text     # 32 random bytes, base64url
        assert _mode(p) == 0o600
        assert hashes[k] == _sha(text[:-1])
        staged[k] = text
    assert len(set(staged.values())) == 4
    paths = ct.commit(str(out), [4, 1, 7, 3])
    assert paths == [str(out / f"client_{k}.token") for k in (4, 1, 7, 3)]
    assert _files(out) == [f"client_{k}.token" for k in (1, 3, 4, 7)]
    for k in ids:
        assert (out / f"client_{k}.token").read_text() == staged[k]
        assert _mode(out / f"client_{k}.token") == 0o600
    again = ct.stage_tokens(str(out), [1])                         # the directory exists
    assert again[1] != hashes[1]


def test_a_new_token_directory_is_made_private(tmp_path, umask022):
    out = tmp_path / "a" / "tokens"
    assert list(ct.stage_tokens(str(out), [2, 5, 6, 9])) == [2, 5, 6, 9]
    assert _mode(out) == 0o700                 # the token folder itself; parents as umask says


def test_discard_drops_only_the_named_staged_tokens(tmp_path):
    out = str(tmp_path)
    ct.stage_tokens(out, [1, 2, 3, 4])
    (tmp_path / "client_2.token").write_text("committed earlier\n")
    ct.discard(out, [2, 4, 8])                                   # 8 was never staged
    assert _files(out) == ["client_1.token.new", "client_2.token", "client_3.token.new"]


def _manifest(path, hashes=None):
    write_manifest(str(path), Manifest("femnist", "writer", 7, [0.6, 0.2, 0.2], {"k": "v"},
                                       _entries(hashes or {}), 3, "uint8[28,28]",
                                       writer_ids={c: [f"w{c}a", f"w{c}b"] for c in (1, 2, 3, 4)}))


def test_add_to_manifest_writes_the_hash_of_each_clients_new_token(tmp_path):
    man = tmp_path / "manifest.json"
    _manifest(man)
    before = json.loads(man.read_text())
    assert ct.add_to_manifest(str(man), str(tmp_path / "tok")) == 4
    after = json.loads(man.read_text())
    assert _files(tmp_path / "tok") == [f"client_{k}.token" for k in (1, 2, 3, 4)]
    for e_before, e_after in zip(before["clients"], after["clients"]):
        k = e_after["client_id"]
        token = (tmp_path / "tok" / f"client_{k}.token").read_text().strip()
        assert e_after.pop("token_hash") == _sha(token)
        assert e_after == e_before                         # writer ids and every field kept
    assert {k: v for k, v in after.items() if k != "clients"} == \
        {k: v for k, v in before.items() if k != "clients"}
    assert ct.check_files(str(man), str(tmp_path / "tok")) == []
    # a second run replaces every token: the old ones no longer match
    old = (tmp_path / "tok" / "client_3.token").read_text()
    assert ct.add_to_manifest(str(man), str(tmp_path / "tok")) == 4
    assert (tmp_path / "tok" / "client_3.token").read_text() != old
    assert json.loads(man.read_text())["clients"][2]["token_hash"] != _sha(old.strip())


def test_a_failed_manifest_write_leaves_no_token_files_and_the_old_manifest(tmp_path,
                                                                             monkeypatch):
    man = tmp_path / "manifest.json"
    _manifest(man)
    text = man.read_bytes()

    def broken(path, manifest):
        assert sorted(manifest.clients) == [1, 2, 3, 4]
        assert all(len(e.token_hash) == 64 for e in manifest.clients.values())
        assert _files(tmp_path / "tok") == [f"client_{k}.token.new" for k in (1, 2, 3, 4)]
        raise OSError("disk full")
    monkeypatch.setattr(ct.sf, "write_manifest", broken)
    with pytest.raises(OSError, match="disk full"):
        ct.add_to_manifest(str(man), str(tmp_path / "tok"))
    assert _files(tmp_path / "tok") == [] and man.read_bytes() == text


def test_check_files_names_each_client_whose_token_file_is_wrong(tmp_path):
    tokens = {1: "one-1", 2: "two-2", 3: "three-3", 4: "four-4"}
    man = tmp_path / "manifest.json"
    _manifest(man, {c: _sha(t) for c, t in tokens.items()})
    d = tmp_path / "tok"
    d.mkdir()
    for c, text, mode in ((1, "one-1\n", 0o600),         # right (the newline is stripped)
                          (3, "three-3x\n", 0o640),      # wrong token and group-readable
                          (4, "  four-4  \n", 0o604)):   # right token, world-readable
        (d / f"client_{c}.token").write_text(text)
        os.chmod(d / f"client_{c}.token", mode)
    p = {c: str(d / f"client_{c}.token") for c in tokens}
    assert ct.check_files(str(man), str(d)) == [
        f"client 2: token file {p[2]} is missing",
        f"client 3: {p[3]} does not hash to the manifest's token_hash",
        f"client 3: {p[3]} is readable by others (chmod 600 {p[3]})",
        f"client 4: {p[4]} is readable by others (chmod 600 {p[4]})"]
    os.chmod(p[4], 0o700)                                  # owner-only bits are fine
    (d / "client_2.token").write_text("two-2")
    os.chmod(p[2], 0o400)
    assert ct.check_files(str(man), str(d)) == [
        f"client 3: {p[3]} does not hash to the manifest's token_hash",
        f"client 3: {p[3]} is readable by others (chmod 600 {p[3]})"]
    # bytes that are not UTF-8 cannot be the token: a listed problem, not a crash
    (d / "client_1.token").write_bytes(b"one-1\xff\n")
    assert ct.check_files(str(man), str(d))[0] == \
        f"client 1: {p[1]} does not hash to the manifest's token_hash"
    (d / "client_1.token").write_text("one-1\n")
    # one client without a hash while the others have one
    _manifest(man, {c: _sha(t) for c, t in tokens.items() if c != 2})
    assert ct.check_files(str(man), str(d))[0] == \
        f"client 2 has no token_hash in {man} while others do"


def test_token_files_are_read_as_utf8_whatever_the_locale(tmp_path):
    """A token with non-ASCII characters hashes the same under an ASCII (C) locale."""
    import locale
    tokens = {1: "tök-1", 2: "ключ-2", 3: "plain-3", 4: "日本-4"}
    man = tmp_path / "manifest.json"
    _manifest(man, {c: _sha(t) for c, t in tokens.items()})
    for c, t in tokens.items():
        (tmp_path / f"client_{c}.token").write_bytes((t + "\n").encode("utf-8"))
        os.chmod(tmp_path / f"client_{c}.token", 0o600)
    old = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C")
        assert ct.check_files(str(man), str(tmp_path)) == []
    finally:
        locale.setlocale(locale.LC_CTYPE, old)


# =============================================================== credentials and TLS
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    for name, text in (("ca.crt", CA_CRT), ("other.crt", OTHER_CA_CRT),
                       ("server.crt", SERVER_CRT), ("server.key", SERVER_KEY)):
        (d / name).write_text(text)
    return {k: str(d / k) for k in ("ca.crt", "other.crt", "server.crt", "server.key")}


def _cfg(**distribute):
    cfg = get_default_cfg()
    for k, v in distribute.items():
        setattr(cfg.distribute, k, v)
    return cfg


def test_a_missing_credential_file_is_named_with_its_key_and_the_fix(tmp_path, certs):
    gone = str(tmp_path / "nope.crt")
    fix = "(make one with scripts/distributed_scripts/make_local_certs.sh)"
    cases = [(lambda: security.server_credentials(_cfg(tls_cert=gone,
                                                       tls_key=certs["server.key"])),
              f"distribute.tls_cert: file not found: {gone} {fix}"),
             (lambda: security.server_credentials(_cfg(tls_cert=certs["server.crt"],
                                                       tls_key=gone)),
              f"distribute.tls_key: file not found: {gone} {fix}"),
             (lambda: security.channel_credentials(_cfg(tls_ca=gone)),
              f"distribute.tls_ca: file not found: {gone} {fix}"),
             (lambda: security.client_token(_cfg(token_file=gone, token="t")),
              f"distribute.token_file: file not found: {gone} {fix}"),
             (lambda: security.channel_credentials(_cfg(tls_ca=str(tmp_path))),   # a folder
              f"distribute.tls_ca: file not found: {tmp_path} {fix}")]
    for call, text in cases:
        with pytest.raises(ConfigError) as e:
            call()
        assert str(e.value) == text


def test_tls_needs_both_cert_and_key_and_neither_means_plaintext(certs):
    assert security.server_credentials(_cfg()) is None
    assert security.channel_credentials(_cfg()) is None
    for half in ({"tls_cert": certs["server.crt"]}, {"tls_key": certs["server.key"]}):
        with pytest.raises(ConfigError) as e:
            security.server_credentials(_cfg(**half))
        assert str(e.value) == \
            "TLS needs both distribute.tls_cert and distribute.tls_key on the server"


def test_the_credentials_carry_a_real_grpc_tls_channel(certs):
    """A gRPC server on the configured cert/key, a channel on the configured CA: ready."""
    creds = security.server_credentials(_cfg(tls_cert=certs["server.crt"],
                                             tls_key=certs["server.key"]))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_secure_port("127.0.0.1:0", creds)
    assert port > 0
    server.start()
    try:
        ch = grpc.secure_channel(f"127.0.0.1:{port}",
                                 security.channel_credentials(_cfg(tls_ca=certs["ca.crt"])))
        grpc.channel_ready_future(ch).result(timeout=10)
        ch.close()
        assert security.tls_problem("127.0.0.1", port, certs["ca.crt"]) == ""
    finally:
        server.stop(None)


def test_the_token_file_wins_and_is_stripped(tmp_path):
    f = tmp_path / "client_3.token"
    f.write_bytes("  tök-3\n".encode("utf-8"))
    assert security.client_token(_cfg(token_file=str(f), token="shared")) == "tök-3"
    assert security.client_token(_cfg(token="shared")) == "shared"
    assert security.client_token(_cfg()) == ""
    # a file that is not UTF-8 (a binary key dropped in by mistake): the key, the file and what
    # belongs there, as a config error
    f.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ConfigError) as e:
        security.client_token(_cfg(token_file=str(f), token="shared"))
    assert str(e.value) == (f"distribute.token_file: {f} is not UTF-8 text; it must hold the "
                            f"token the shard tool's --tokens wrote for this client")


class _Servers:
    """Tiny TLS / plaintext / silent servers on loopback port 0; each completed TLS handshake
    reports the ALPN protocol it agreed on."""

    def __init__(self, certs):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certs["server.crt"], certs["server.key"])
        self.ctx.set_alpn_protocols(["h2", "http/1.1"])
        self.alpn: "queue.Queue" = queue.Queue()
        self.socks = []

    def start(self, host: str, kind: str) -> int:
        lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        lsock.bind((host, 0))
        lsock.listen(8)
        self.socks.append(lsock)
        if kind != "silent":        # silent: the kernel accepts, nobody ever answers
            threading.Thread(target=self._loop, args=(lsock, kind), daemon=True).start()
        return lsock.getsockname()[1]

    def _loop(self, lsock, kind):
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            try:
                if kind == "tls":
                    with self.ctx.wrap_socket(conn, server_side=True) as c:
                        self.alpn.put(c.selected_alpn_protocol())
                else:                  # what a plaintext HTTP/2 server answers a ClientHello with
                    with conn:
                        conn.recv(4096)
                        conn.sendall(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8))
            except (ssl.SSLError, OSError):
                pass

    def close(self):
        for s in self.socks:
            s.close()


@pytest.fixture
def servers(certs):
    s = _Servers(certs)
    yield s
    s.close()


def test_a_tls_channel_that_works_is_no_problem_and_offers_h2(servers, certs):
    """gRPC needs ALPN h2: every handshake the diagnosis makes offers it."""
    port = servers.start("127.0.0.1", "tls")
    ca = certs["ca.crt"]
    assert security.tls_problem("127.0.0.1", port, ca) == ""
    assert security.tls_problem("localhost", port, ca) == ""
    if IPV6:
        port6 = servers.start("::1", "tls")
        assert security.tls_problem("[::1]", port6, ca) == ""    # brackets off for the name too
    assert [servers.alpn.get(timeout=5) for _ in range(2 + IPV6)] == ["h2"] * (2 + IPV6)


def test_a_client_without_a_ca_against_a_tls_server_is_told_to_set_one(servers):
    for host in ("127.0.0.1", "[::1]")[:1 + IPV6]:
        port = servers.start(host.strip("[]"), "tls")
        assert security.tls_problem(host, port, "") == (
            f"TLS: the server at {host}:{port} speaks TLS but this client has no "
            f"distribute.tls_ca; set it to the CA that signed the server's certificate")
        assert servers.alpn.get(timeout=5) == "h2"


def test_a_ca_that_did_not_sign_the_server_is_named(servers, certs):
    port = servers.start("127.0.0.1", "tls")
    wrong = certs["other.crt"]
    assert security.tls_problem("127.0.0.1", port, wrong) == (
        f"TLS: the server at 127.0.0.1:{port} presents a certificate not signed by the CA in "
        f"distribute.tls_ca={wrong} (unable to get local issuer certificate); use the CA that "
        f"signed the server's distribute.tls_cert "
        f"(scripts/distributed_scripts/make_local_certs.sh)")


def test_a_name_not_in_the_certificate_is_named_with_the_key_to_change(servers, certs):
    port = servers.start("127.0.0.2", "tls")              # 127/8 is loopback; not in the SAN
    assert security.tls_problem("127.0.0.2", port, certs["ca.crt"]) == (
        f"TLS: the server at 127.0.0.2:{port} presents a certificate that does not name "
        f"'127.0.0.2' (IP address mismatch, certificate is not valid for '127.0.0.2'.); "
        f"connect with distribute.server_host set to a name in the certificate, or re-make the "
        f"server's distribute.tls_cert for this name")


def test_a_plaintext_server_is_a_tls_problem_only_for_a_client_with_a_ca(servers, certs):
    port = servers.start("127.0.0.1", "plain")
    ca = certs["ca.crt"]
    got = security.tls_problem("127.0.0.1", port, ca)
    m = re.fullmatch(rf"TLS: the server at 127\.0\.0\.1:{port} does not complete a TLS "
                     rf"handshake \(([A-Z_]+)\); is it started with distribute\.tls_cert/tls_key\? "
                     rf"This client has distribute\.tls_ca={re.escape(ca)}", got)
    assert m, got                                # the OpenSSL reason only, not the whole error
    assert security.tls_problem("127.0.0.1", port, "") == ""


def test_an_unreachable_or_silent_server_is_left_to_the_callers_message(servers, certs,
                                                                         monkeypatch):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))                  # bound, not listening: refused
    try:
        assert security.tls_problem("127.0.0.1", closed.getsockname()[1], certs["ca.crt"]) == ""
    finally:
        closed.close()
    waits = []
    real = socket.create_connection

    def timed(address, timeout=None, **kw):
        waits.append(timeout)          # (a call without a timeout would wait forever: cap it)
        return real(address, timeout=0.5 if timeout is None else timeout, **kw)
    monkeypatch.setattr(socket, "create_connection", timed)
    port = servers.start("127.0.0.1", "silent")
    t0 = time.monotonic()
    assert security.tls_problem("127.0.0.1", port, certs["ca.crt"], timeout=0.2) == ""
    assert waits == [0.2] and time.monotonic() - t0 < 5


def test_the_host_name_is_used_whole_for_the_address_and_the_certificate_check(
        servers, certs, monkeypatch):
    """Only IPv6 brackets come off the host: a name starting and ending in other characters
    (here X, resolved to loopback by a stand-in resolver) is connected to and checked as is."""
    port = servers.start("127.0.0.1", "tls")
    real = socket.create_connection
    names = {"X-fl-node-X": "127.0.0.1", "127.0.0.1": "127.0.0.1"}

    def resolve(address, *a, **kw):
        return real((names.get(address[0], "invalid."), address[1]), *a, **kw)
    monkeypatch.setattr(socket, "create_connection", resolve)
    assert security.tls_problem("X-fl-node-X", port, "") == (
        f"TLS: the server at X-fl-node-X:{port} speaks TLS but this client has no "
        f"distribute.tls_ca; set it to the CA that signed the server's certificate")
    assert security.tls_problem("X-fl-node-X", port, certs["ca.crt"]) == (
        f"TLS: the server at X-fl-node-X:{port} presents a certificate that does not name "
        f"'X-fl-node-X' (Hostname mismatch, certificate is not valid for 'X-fl-node-X'.); "
        f"connect with distribute.server_host set to a name in the certificate, or re-make the "
        f"server's distribute.tls_cert for this name")


# =============================================================== Message
@pytest.fixture
def custom_types():
    added = []
    yield added
    for t in added:
        msg_mod._SCHEMA.pop(t, None)


def _m(msg_type, content=None, state=3, **kw):
    return Message(msg_type, 4, 0, state, dict(content or {}), **kw)


def _invalid(msg, from_server) -> str:
    with pytest.raises(InvalidMessage) as e:
        validate_message(msg, from_server)
    return str(e.value)


def test_a_message_keeps_each_field_where_it_was_given():
    t0 = time.time()
    a, b = Message("metrics", 3, 0), Message("model_para", 0, 2, 9, {"x": 1}, None, 12.5)
    assert t0 <= a.timestamp <= time.time() and type(a.timestamp) is float
    assert (a.msg_type, a.sender, a.receiver, a.state, a.content, a.tensors) == \
        ("metrics", 3, 0, 0, {}, None)
    assert (b.sender, b.receiver, b.state, b.content, b.timestamp) == (0, 2, 9, {"x": 1}, 12.5)
    a.content["k"] = 1
    assert Message("metrics", 1, 0).content == {}                # a fresh dict per message
    assert (msg_mod.SERVER_ID, msg_mod.UNASSIGNED, msg_mod.BROADCAST) == (0, -1, -2)


def test_repr_names_the_route_round_and_keys_never_the_tensors():
    m = Message("model_para", 7, 0, 12, {"sample_size": 5, "b": 1},
                {"w": torch.zeros(3), "b": torch.ones(2), "c": torch.zeros(1)})
    assert repr(m) == "Message(model_para, 7->0, round=12, keys=['b', 'sample_size'], tensors=3)"
    assert repr(Message("finish", 0, 4, 2, {})) == \
        "Message(finish, 0->4, round=2, keys=[], tensors=0)"


def test_who_may_send_each_type():
    for t in ("join_in", "metrics", "heartbeat", "redeclare"):
        assert _invalid(_m(t), True) == f"{t} may only come from a client"
    for t in ("assign_client_id", "evaluate", "finish", "refuse"):
        assert _invalid(_m(t), False) == f"{t} may only come from the server"
    assert _invalid(_m("gossip"), False) == "unknown msg_type 'gossip'"
    assert _invalid(_m("gossip", state=-1), True) == "unknown msg_type 'gossip'"
    validate_message(_m("evaluate"), True)
    validate_message(_m("heartbeat"), False)
    validate_message(_m("model_para"), True)                    # the server's needs no size
    validate_message(_m("model_para", {"sample_size": 4}, tensors={"w": torch.zeros(1)}), False)


@settings(max_examples=60, deadline=None)
@given(state=st.integers(-10, 10 ** 9 + 10) | st.integers(-2 ** 40, 2 ** 40))
def test_the_round_must_lie_in_0_to_a_billion(state):
    m = _m("heartbeat", state=state)
    if 0 <= state <= 10 ** 9:
        validate_message(m, False)
    else:
        assert _invalid(m, False) == f"round {state!r} out of range"


def test_round_and_timestamp_bounds_exactly():
    for ok in (0, 1, 10 ** 9):
        validate_message(_m("heartbeat", state=ok), False)
    # True is an int to isinstance: a JSON `true` must not pass as round 1 (nor False as 0)
    for bad in (-1, 10 ** 9 + 1, 2.0, "3", None, True, False):
        assert _invalid(_m("heartbeat", state=bad), False) == f"round {bad!r} out of range"
    for bad in (5, float("nan"), float("inf"), -float("inf"), "1.0"):
        assert _invalid(_m("heartbeat", timestamp=bad), False) == \
            "timestamp is not a finite number"
    validate_message(_m("heartbeat", timestamp=-3.5), False)
    m = _m("heartbeat")
    m.content = ["not", "a", "dict"]
    assert _invalid(m, False) == "content is not an object"


def test_required_content_fields_and_their_types():
    validate_message(_m("join_in", {"client_id": -1}), False)
    for bad in ({}, {"client_id": "1"}, {"client_id": True}, {"client_id": 1.0}):
        assert _invalid(_m("join_in", bad), False) == \
            "join_in: content field 'client_id' must be int"
    assert _invalid(_m("refuse", {"reason": 3}), True) == \
        "refuse: content field 'reason' must be str"
    assert _invalid(_m("redeclare", {"declaration": []}), False) == \
        "redeclare: content field 'declaration' must be dict"
    validate_message(_m("assign_client_id", {"client_id": 4}), True)


def test_metrics_are_at_most_256_named_numbers():
    validate_message(_m("metrics", {"results": {f"m{k}": k * 0.5 for k in range(256)}}), False)
    validate_message(_m("metrics", {"results": {"acc": 1, "loss": -0.25}}), False)
    assert _invalid(_m("metrics", {"results": {f"m{k}": 1 for k in range(257)}}), False) == \
        "metrics: 257 entries"
    for results, name in (({"acc": 0.5, "loss": "0.1"}, "loss"), ({"ok": True}, "ok"),
                          ({"n": None}, "n"), ({7: 1.0}, "7"), ({"x": [1]}, "x"),
                          ({"L" * 50: "?"}, "L" * 40 + "...[50 chars]")):
        assert _invalid(_m("metrics", {"results": results}), False) == \
            f"metrics: {name} is not a number"


def test_a_clients_model_needs_a_sample_size_and_tensors():
    w = {"w": torch.zeros(2)}
    validate_message(_m("model_para", {"sample_size": 0}, tensors=w), False)
    for bad in ({}, {"sample_size": -1}, {"sample_size": True}, {"sample_size": 3.0}):
        assert _invalid(_m("model_para", bad, tensors=w), False) == \
            "model_para from a client needs a non-negative int sample_size"
    for tensors in (None, {}):
        assert _invalid(_m("model_para", {"sample_size": 6}, tensors=tensors), False) == \
            "model_para carries no tensors"


def test_a_registered_type_passes_with_its_sender_and_fields(custom_types):
    custom_types += ["fs_test_probe", "fs_test_order", "fs_test_any"]
    fields = {"n": int}
    msg_mod.register_message_type("fs_test_probe", content=fields)
    fields["extra"] = str                              # registration took a copy
    assert _invalid(_m("fs_test_probe", {"n": 1}), True) == \
        "fs_test_probe may only come from a client"           # "client" is the default
    validate_message(_m("fs_test_probe", {"n": 1}), False)
    assert _invalid(_m("fs_test_probe", {}), False) == \
        "fs_test_probe: content field 'n' must be int"
    msg_mod.register_message_type("fs_test_order", "server")
    validate_message(_m("fs_test_order"), True)
    assert _invalid(_m("fs_test_order"), False) == "fs_test_order may only come from the server"
    msg_mod.register_message_type("fs_test_any", "any", None)
    validate_message(_m("fs_test_any"), True)
    validate_message(_m("fs_test_any"), False)
    # a type already known keeps its rule
    msg_mod.register_message_type("join_in", "server", {})
    assert _invalid(_m("join_in", {"client_id": 1}), True) == "join_in may only come from a client"
    assert _invalid(_m("join_in"), False) == "join_in: content field 'client_id' must be int"
    with pytest.raises(ValueError) as e:
        msg_mod.register_message_type("fs_test_bad", "peer")
    assert str(e.value) == "sender must be client, server or any, not 'peer'"
    assert "fs_test_bad" not in msg_mod._SCHEMA


def test_clip_text_makes_a_peer_value_one_printable_bounded_line():
    assert clip_text("x" * 200) == "x" * 200
    assert clip_text("x" * 201) == "x" * 200 + "...[201 chars]"
    assert clip_text("ab\ncd") == "ab\\ncd"
    assert clip_text("bad\udc80") == "bad\\udc80"
    assert clip_text(("a", 1)) == "('a', 1)"
    assert clip_text(b"\x00") == "b'\\x00'"
    assert clip_text("y" * 41, 40) == "y" * 40 + "...[41 chars]"
    assert clip_text("\n" * 30, 40) == "\\n" * 20 + "...[60 chars]"


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=300), limit=st.integers(1, 250))
def test_clip_text_keeps_short_text_and_cuts_long_text_at_the_limit(text, limit):
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\n", "\\n")
    got = clip_text(text, limit)
    assert "\n" not in got
    if len(safe) <= limit:
        assert got == safe
    else:
        assert got == f"{safe[:limit]}...[{len(safe)} chars]"


# =============================================================== unjoined streams / connections
@dataclass
class S:
    conn_id: int
    peer: str


def test_a_unix_socket_path_with_colons_is_one_address():
    # only ipv4/ipv6 peers carry a port; any other peer text is its own address whole
    assert peer_address("unix:/run/fl:1.sock") == "unix:/run/fl:1.sock"
    assert peer_address("unix-abstract:fl:7") == "unix-abstract:fl:7"
    u = UnjoinedStreams(cap=5)
    for cid, peer in enumerate(["unix:/run/fl:1.sock", "unix:/run/fl:2.sock",
                                "unix:/run/fl:2.sock", "ipv4:10.0.0.1:1", "ipv4:10.0.0.1:2"]):
        u.add(S(cid, peer))
    assert u.cap == 5
    # the two unix paths are two addresses: ties at 2 streams go to the older oldest (1 < 3)
    assert u.victim().conn_id == 1
    assert u.oldest_idle("unix:/run/fl:1.sock").conn_id == 0


def test_removing_a_joining_stream_once_frees_its_slot_and_an_unknown_one_frees_none():
    u = UnjoinedStreams(cap=6)
    s = [S(i, f"ipv4:10.0.0.{1 + i % 2}:{5000 + i}") for i in range(6)]
    for x in s:
        u.add(x)
    u.joined_in(s[0])
    u.joined_in(s[2])
    u.remove(s[0])                         # joining; .1 still has idle 2 and 4
    assert (len(u), u.idle, u.joining) == (5, 4, 1)
    u.remove(S(99, "ipv4:10.0.0.1:5099"))  # never added, its address has streams
    u.remove(S(98, "ipv4:10.0.0.7:5098"))  # never added, nor its address
    u.joined_in(S(97, "ipv4:10.0.0.1:5097"))
    assert (len(u), u.idle, u.joining) == (5, 4, 1)
    u.joined_in(s[2])                      # already joining: stays one
    assert (len(u), u.idle, u.joining) == (5, 4, 1)
    # .2 now holds 3 idle and .1 holds 2 (one joining): .2's oldest gives way
    assert u.victim() is s[1]


def test_a_fixed_ceiling_of_one_is_one():
    c = UnjoinedConnections(fixed=1, expected=4, headroom=8)
    assert [c.ceiling(b) for b in (0, 2, 4)] == [1, 1, 1]
    assert c.refusal("ipv4:10.0.0.3:1", 0) == ""
    c.opened("ipv4:10.0.0.3:1")
    assert c.refusal("ipv4:10.0.0.3:2", 0) == (
        "ipv4:10.0.0.3 already holds 1 connections with streams that have not joined "
        "(ceiling 1, set; distribute.grpc_max_connections_per_address); retry later")


def test_a_bound_single_stream_connection_leaves_nothing_when_it_closes():
    c = UnjoinedConnections(fixed=0, expected=4, headroom=2)
    peers = [f"ipv4:10.0.0.4:{7000 + k}" for k in range(4)]
    for p in peers:
        c.opened(p)
    assert c.held("ipv4:10.0.0.4") == 4
    for p in peers:
        c.bound(p)
        c.closed(p, was_bound=True)
    assert c.held("ipv4:10.0.0.4") == 0
    # after all 4 joined the ceiling is the headroom (2); these peers are new connections
    assert [c.refusal(p, 4) for p in peers[:2]] == ["", ""]
