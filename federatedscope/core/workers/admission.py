"""Who is in the federation, as whom, with what counts: the server's checks of a client's claims.

``Admission`` decides each join and keeps what the client declared: the counts an update's
``sample_size`` (its FedAvg weight) is checked against. ``client_table.ClientTable`` holds every
client that joined (who is online, on which connection) and runs the join exchange with it.

A join carries ``client_id``, an optional ``token`` and, in shard mode, a ``declaration``
(``shard_format.ShardDeclaration``). With a manifest, the declaration must match the manifest entry
of that id (strict: refuse; lenient: warn, and the declared count is *unverified*). A manifest entry
may name a ``token_hash`` (sha256 hex of the client's secret); ``distribute.token`` on the server is
a shared secret for runs without per-client hashes. Without a manifest (FS's data_idx mode) ids come
from the client or, when it claims ``UNASSIGNED`` (-1), from join order: the lowest id in
1..expected that no client holds (then the lowest whose holder is offline), told to the client with
``assign_client_id`` as in FS; every count is unverified. An id closed for abuse waits out a
``CoolOff``. A refused peer learns only a reason *class* (``Decision.peer_reason``); the detail,
which may quote the manifest, goes to the server log only.
"""
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, Optional, Set, Tuple

from federatedscope.core.communication.join_proof import proves_token
from federatedscope.core.data.shard_format import (ShardDeclaration, check_declaration,
                                                   load_manifest, token_digest)
from federatedscope.core.message import UNASSIGNED, clip_text
from federatedscope.core.workers.cool_off import CoolOff, utc_after

logger = logging.getLogger("federatedscope")

# Reason classes a refused peer may see (never manifest values).
UNKNOWN_ID = "unknown id"
MISMATCH = "declaration mismatch"
BAD_TOKEN = "bad token"
DUPLICATE = "duplicate"
MALFORMED = "malformed join"
COOLING_OFF = "cooling off"

@dataclass
class Decision:
    accepted: bool
    reason: str = ""                  # detail for the server log
    peer_reason: str = ""             # class for the peer
    client_id: int = -1
    train_samples: int = 0
    retry_after: float = 0.0          # seconds until a re-join may succeed (cool-off only)
    quiet: bool = False               # a repeat of a refusal already logged this period


def refuse(peer_reason: str, detail: str) -> Decision:
    """A refusal: ``detail`` for the server log, ``peer_reason`` (a class) for the peer."""
    return Decision(False, detail, peer_reason)


@dataclass
class ClientClaims:
    """What the server holds of one admitted client's declaration."""
    counts: Dict[str, int] = field(default_factory=dict)   # split -> declared samples
    verified: bool = False            # counts checked against the manifest
    declaration: object = None        # ShardDeclaration in shard mode


class Admission:
    def __init__(self, manifest: Optional[dict], strict: bool, shared_token: str = "",
                 max_clients: int = 0, manifest_path: str = "", sample_type: Optional[str] = None):
        self.manifest = manifest          # Dict[int, ManifestEntry] or None
        self.strict = strict
        self.shared_digest = token_digest(shared_token) if shared_token else b""
        self.max_clients = max_clients
        self.manifest_path = manifest_path
        self.sample_type = sample_type
        self.claims: Dict[int, ClientClaims] = {}
        self.cool_off = CoolOff()
        self._stamp = _file_stamp(manifest_path)

    @classmethod
    def from_config(cls, cfg, manifest, manifest_path: str, expected: int) -> "Admission":
        """The server's admission for ``cfg``: ``manifest`` is the shard format's ``Manifest``
        (or None in data_idx mode; a plain id -> entry dict is accepted too)."""
        entries = getattr(manifest, "clients", manifest)
        return cls(entries, cfg.distributed_data.strict_check, cfg.distribute.token,
                   max_clients=expected, manifest_path=manifest_path,
                   sample_type=getattr(manifest, "sample_type", None))

    def warn_if_open(self) -> None:
        """A distributed server without tokens admits whoever claims a free id: say so once."""
        if not self.uses_tokens:
            logger.warning("Server: no client tokens configured (distribute.token or token_hash "
                           "in the manifest): a client id is only a claim, and anyone who can "
                           "reach this port may join as a missing client")

    @property
    def uses_tokens(self) -> bool:
        return bool(self.shared_digest) or any(
            getattr(e, "token_hash", "") for e in (self.manifest or {}).values())

    def counts(self, cid: int) -> Dict[str, int]:
        c = self.claims.get(cid)
        return dict(c.counts) if c else {}

    def verified(self, cid: int) -> bool:
        c = self.claims.get(cid)
        return bool(c and c.verified)

    def check_sample_size(self, cid: int, sample_size: object) -> Optional[str]:
        """``None`` when an update's ``sample_size`` is the train count ``cid`` declared at join
        (in shard mode, the count the manifest vouched for), else why not: the FedAvg weight is
        never a bare claim of the update."""
        if not isinstance(sample_size, int) or isinstance(sample_size, bool):
            return "sample_size is not an integer"
        declared = self.counts(cid).get("train", 0)
        if sample_size != declared:
            return f"sample_size {sample_size} != declared train count {declared}"
        return None

    # ----------------------------------------------------------------- join
    def admit(self, content: dict, online: Set[int]) -> Decision:
        claimed = content.get("client_id")
        if not isinstance(claimed, int) or isinstance(claimed, bool):
            return refuse(MALFORMED, "join_in without an integer client_id")
        token = content.get("token", "")
        if not isinstance(token, str):
            return refuse(MALFORMED, "token must be a string")
        if claimed <= 0:
            if self.manifest is not None:
                return refuse(UNKNOWN_ID, "a client id is required (set distribute.client_id "
                                           "on the client) when the server checks a manifest")
            # an id cooling off is not handed to a newcomer: it would be refused for another's abuse
            claimed = self._assign_id(online | self.cool_off.cooling())
            if claimed == UNASSIGNED:
                return refuse(UNKNOWN_ID, f"every client id 1..{self.max_clients} is held by an "
                                           f"online client or cooling off after an abuse close "
                                           f"(federate.client_num)")
        if self.manifest is None and self.max_clients and claimed > self.max_clients:
            return refuse(UNKNOWN_ID, f"client id {claimed} is out of range 1..{self.max_clients} "
                                       f"(federate.client_num)")
        if self.manifest is not None and claimed not in self.manifest:
            return refuse(UNKNOWN_ID, f"client id {claimed} is not listed in the manifest")
        problem = self._check_token(claimed, token, content)  # before "duplicate": who is
        if problem:                                   # online is nobody's business without it
            return refuse(BAD_TOKEN, problem)
        if self.cool_off.left(claimed) > 0:
            return self._cooling_refusal(claimed)
        if claimed in online:
            return refuse(DUPLICATE, f"client id {claimed} is already connected (duplicate id)")
        return self._check_claims(claimed, content)

    def _cooling_refusal(self, cid: int) -> Decision:
        s, left = self.cool_off.strikes[cid], self.cool_off.left(cid)
        s.refused += 1
        end = utc_after(left)
        return Decision(False, f"client id {cid} is cooling off until {end} (abuse close "
                               f"{s.closes}: {s.why}); re-join refused",
                        f"{COOLING_OFF}: this id's session was closed for abuse ({s.why}; "
                        f"{s.closes} time(s)); re-joins are refused until {end} ({left:.0f}s). "
                        f"Fix what made the client send invalid or excess messages, then restart "
                        f"it after that time", retry_after=round(left, 1),
                        quiet=s.refused > 1)

    def _assign_id(self, online: Set[int]) -> int:
        """Join order: the lowest id never held, else the lowest held by an offline client (a
        restarted data_idx client gets a slot back); UNASSIGNED when all are online."""
        top = self.max_clients or (max(list(self.claims) + list(online) + [0]) + 1)
        ids = range(1, top + 1)
        fresh = [i for i in ids if i not in self.claims and i not in online]
        if fresh:
            return fresh[0]
        return next((i for i in ids if i not in online), UNASSIGNED)

    def _check_token(self, cid: int, token: str, content: dict) -> str:
        expected_hex = ""
        if self.manifest is not None and cid in self.manifest:
            expected_hex = getattr(self.manifest[cid], "token_hash", "") or ""
        if expected_hex:
            try:
                expected = bytes.fromhex(expected_hex)
            except ValueError:
                return f"client {cid}: the manifest's token_hash is not hex (re-cut the shards)"
            if not proves_token(expected, content, token_digest(token)):
                return f"client {cid}: token does not match the manifest's token_hash"
        elif self.shared_digest and not proves_token(self.shared_digest, content,
                                                     token_digest(token)):
            return f"client {cid}: missing or wrong token (distribute.token)"
        return ""

    def _check_claims(self, cid: int, content: dict) -> Decision:
        decl_dict = content.get("declaration")
        if decl_dict is not None:
            return self._check_declaration(cid, decl_dict)
        if self.manifest is not None:
            return refuse(MISMATCH, f"client {cid} sent no shard declaration but the server "
                                     f"checks a manifest (enable distributed_data on the client)")
        num_samples = content.get("num_samples", {})
        counts: Dict[str, int] = {}
        for split in ("train", "val", "test"):
            n = num_samples.get(split, 0) if isinstance(num_samples, dict) else 0
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 2 ** 53:
                return refuse(MALFORMED, f"num_samples.{split} must be a non-negative integer")
            counts[split] = n
        self.claims[cid] = ClientClaims(counts, verified=False)
        return Decision(True, client_id=cid, train_samples=counts["train"])

    def _check_declaration(self, cid: int, decl_dict) -> Decision:
        try:
            decl = ShardDeclaration.from_dict(decl_dict)
        except (ValueError, TypeError, KeyError) as e:
            return refuse(MALFORMED, f"malformed declaration: {e}")
        if decl.client_id != cid:
            return refuse(MISMATCH, f"declaration is for client {decl.client_id}, "
                                     f"but the client joined as {cid}")
        verified = True
        if self.manifest is not None:
            reasons = check_declaration(self.manifest.get(cid), decl, self.sample_type)
            if reasons:
                text = f"client {cid}: " + "; ".join(reasons)
                if self.strict:
                    return refuse(MISMATCH, text)
                logger.warning(f"{text} (distributed_data.strict_check is off: accepted; its "
                               f"sample counts are unverified)")
                verified = False
        else:
            verified = False
        counts = {s: int(decl.num_samples.get(s, 0)) for s in ("train", "val", "test")}
        self.claims[cid] = ClientClaims(counts, verified, decl)
        return Decision(True, client_id=cid, train_samples=counts["train"])

    # ----------------------------------------------------------- re-checks
    def redeclare(self, cid: int, decl_dict) -> Decision:
        """A client's shard changed on disk between rounds; check the new declaration."""
        return self._check_declaration(cid, decl_dict)

    def revalidate(self, client_ids: Iterable[int]) -> Dict[int, str]:
        """Before each aggregation. If the manifest file changed since it was read (a re-cut while
        the job runs), re-read it and compare every contributor's declaration with the new entry:
        strict mode leaves a mismatching client out of the round, lenient mode warns each round."""
        problems: Dict[int, str] = {}
        if self.manifest is None:
            return problems
        self._reload_if_changed()
        for cid in client_ids:
            claims = self.claims.get(cid)
            if claims is None or claims.declaration is None:
                problems[cid] = "no declaration on record"
                continue
            reasons = check_declaration(self.manifest.get(cid), claims.declaration, self.sample_type)
            if not reasons:
                continue
            if self.strict:
                problems[cid] = "; ".join(reasons)
            else:
                claims.verified = False
                logger.warning(f"Server: client #{cid} still differs from the manifest "
                               f"({'; '.join(reasons)}); lenient mode, counts unverified")
        return problems

    def _reload_if_changed(self) -> None:
        stamp = _file_stamp(self.manifest_path)
        if not self.manifest_path or stamp == self._stamp:
            return
        try:
            self.manifest = load_manifest(self.manifest_path)
        except (ValueError, OSError) as e:
            logger.error(f"Server: manifest {self.manifest_path} changed and no longer loads ({e}); "
                         f"keeping the version read at start")
        else:
            logger.warning(f"Server: manifest {self.manifest_path} changed on disk; re-read it")
        self._stamp = stamp


def _file_stamp(path: str) -> Optional[Tuple[int, int]]:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
