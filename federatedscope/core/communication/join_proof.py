"""Proof of a client token that a recording cannot replay.

The token never travels. Each session the server sends a fresh random nonce (gRPC initial
metadata ``NONCE_HEADER``, before the client sends anything); the client's ``join_in`` carries
``proof`` = HMAC-SHA256(key = token_digest(token), nonce || claimed client id) instead of the token.
The server holds only the digest (the manifest's ``token_hash`` or the digest of
``distribute.token``), so it can check the proof without knowing the token, and a join recorded
on one stream fails on any other: its nonce differs. The server transport stamps the nonce it
sent into the delivered join's content (``NONCE_KEY``, overwriting whatever the peer put there),
so ``Admission`` checks exactly the nonce of the stream the join came on.
"""
import hashlib
import hmac

NONCE_HEADER = "fs-join-nonce"   # gRPC metadata keys are lower-case ASCII
NONCE_KEY = "nonce"              # set by the server transport only
PROOF_KEY = "proof"              # set by the client transport only
NONCE_BYTES = 32


def join_proof(key: bytes, nonce: bytes, client_id) -> str:
    """HMAC-SHA256 over the nonce and the claimed id, hex. The id is bound in so that a proof for
    one claim cannot be reused as another id (matters with a shared ``distribute.token``)."""
    msg = nonce + b"|" + str(client_id).encode("ascii", "backslashreplace")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def proves_token(key: bytes, content: dict, plain_digest: bytes) -> bool:
    """Does this join show it holds the token whose digest is ``key``?

    A join that came over the network has the transport's nonce: only an HMAC proof counts, a
    plain ``token`` field is ignored (it would be replayable). A join without a nonce never left
    the process (standalone simulation, unit tests): its plain token's digest is compared."""
    nonce = content.get(NONCE_KEY)
    if nonce is None:
        return hmac.compare_digest(plain_digest, key)
    proof = content.get(PROOF_KEY)
    if not isinstance(nonce, str) or not isinstance(proof, str):
        return False
    try:
        expected = join_proof(key, bytes.fromhex(nonce), content.get("client_id"))
    except ValueError:
        return False
    return hmac.compare_digest(proof.encode("utf-8", "surrogatepass"), expected.encode("ascii"))
