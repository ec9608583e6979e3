"""Who is in the federation, as whom, with what counts: the server's checks of a client's claims.

``ClientTable`` holds every client that joined (who is online, on which connection) and runs the
join exchange; ``Admission`` decides each join and keeps what the client declared: the counts an
update's ``sample_size`` (its FedAvg weight) is checked against.

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
from federatedscope.core.communication.transport import Disconnected, ServerComm
from federatedscope.core.data.shard_format import (ShardDeclaration, check_declaration,
                                                   load_manifest, token_digest)
from federatedscope.core.message import ASSIGN_ID, REFUSE, SERVER_ID, UNASSIGNED, Message, clip_text
from federatedscope.core.workers.cool_off import CoolOff, utc_after
from federatedscope.core.workers.join_lines import JoinLines
from federatedscope.core.workers.validation import check_local_param

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


def _refuse(peer_reason: str, detail: str) -> Decision:
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
            return _refuse(MALFORMED, "join_in without an integer client_id")
        token = content.get("token", "")
        if not isinstance(token, str):
            return _refuse(MALFORMED, "token must be a string")
        if claimed <= 0:
            if self.manifest is not None:
                return _refuse(UNKNOWN_ID, "a client id is required (set distribute.client_id "
                                           "on the client) when the server checks a manifest")
            # an id cooling off is not handed to a newcomer: it would be refused for another's abuse
            claimed = self._assign_id(online | self.cool_off.cooling())
            if claimed == UNASSIGNED:
                return _refuse(UNKNOWN_ID, f"every client id 1..{self.max_clients} is held by an "
                                           f"online client or cooling off after an abuse close "
                                           f"(federate.client_num)")
        if self.manifest is None and self.max_clients and claimed > self.max_clients:
            return _refuse(UNKNOWN_ID, f"client id {claimed} is out of range 1..{self.max_clients} "
                                       f"(federate.client_num)")
        if self.manifest is not None and claimed not in self.manifest:
            return _refuse(UNKNOWN_ID, f"client id {claimed} is not listed in the manifest")
        problem = self._check_token(claimed, token, content)  # before "duplicate": who is
        if problem:                                   # online is nobody's business without it
            return _refuse(BAD_TOKEN, problem)
        if self.cool_off.left(claimed) > 0:
            return self._cooling_refusal(claimed)
        if claimed in online:
            return _refuse(DUPLICATE, f"client id {claimed} is already connected (duplicate id)")
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
            return _refuse(MISMATCH, f"client {cid} sent no shard declaration but the server "
                                     f"checks a manifest (enable distributed_data on the client)")
        num_samples = content.get("num_samples", {})
        counts: Dict[str, int] = {}
        for split in ("train", "val", "test"):
            n = num_samples.get(split, 0) if isinstance(num_samples, dict) else 0
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 2 ** 53:
                return _refuse(MALFORMED, f"num_samples.{split} must be a non-negative integer")
            counts[split] = n
        self.claims[cid] = ClientClaims(counts, verified=False)
        return Decision(True, client_id=cid, train_samples=counts["train"])

    def _check_declaration(self, cid: int, decl_dict) -> Decision:
        try:
            decl = ShardDeclaration.from_dict(decl_dict)
        except (ValueError, TypeError, KeyError) as e:
            return _refuse(MALFORMED, f"malformed declaration: {e}")
        if decl.client_id != cid:
            return _refuse(MISMATCH, f"declaration is for client {decl.client_id}, "
                                     f"but the client joined as {cid}")
        verified = True
        if self.manifest is not None:
            reasons = check_declaration(self.manifest.get(cid), decl, self.sample_type)
            if reasons:
                text = f"client {cid}: " + "; ".join(reasons)
                if self.strict:
                    return _refuse(MISMATCH, text)
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


@dataclass
class ClientRecord:
    client_id: int
    conn_id: int
    online: bool = True
    last_seen: float = field(default_factory=lambda: time.monotonic())
    offline_since: float = 0.0


class ClientTable(Dict[int, ClientRecord]):
    """Every client that ever joined, by id: who is online, on which connection.

    Who is online, by id and by connection, is kept as indexes updated on join and loss: they
    are asked for every message, and a scan of all records per message made a round of
    thousands of clients quadratic."""

    def __init__(self, admission: Admission, comm: ServerComm, expected: int):
        super().__init__()
        self.admission, self.comm, self.expected = admission, comm, expected
        self._online: Set[int] = set()
        self._by_conn: Dict[int, int] = {}       # connection -> online client id
        self._counts: Optional[list] = None      # train_counts(), until a declaration changes
        self.job_id = ""                         # sent with every id (the server sets it)
        self.local_param: list = []              # the server's personalization.local_param
        self.join_lines = JoinLines()

    def online_ids(self) -> Set[int]:
        """The ids online now (a copy)."""
        return set(self._online)

    def online_count(self) -> int:
        return len(self._online)

    def on_conn(self, conn_id: int) -> Optional[ClientRecord]:
        """The online client bound to ``conn_id`` (a connection carries one identity)."""
        cid = self._by_conn.get(conn_id)
        return self[cid] if cid is not None else None

    def mark_lost(self, rec: ClientRecord, why: str, since: Optional[float] = None) -> None:
        """Offline from now (or ``since``); the server stops waiting for it after the grace."""
        rec.online = False
        rec.offline_since = time.monotonic() if since is None else since
        self._online.discard(rec.client_id)
        if self._by_conn.get(rec.conn_id) == rec.client_id:
            del self._by_conn[rec.conn_id]
        logger.warning(f"Server: client #{rec.client_id} {why}")

    def disconnected(self, event: Disconnected) -> None:
        """A session ended. An abuse close (the transport says so) starts the id's cool-off;
        the one line logged names it and when it ends."""
        rec = self.on_conn(event.conn_id)
        if rec is None:
            return
        why = f"lost ({clip_text(event.reason)})"
        if event.abuse:
            s = self.admission.cool_off.close(rec.client_id, clip_text(event.reason, 80))
            left = self.admission.cool_off.left(rec.client_id)
            why += (f"; closed for abuse ({s.closes} time(s)): its re-joins are refused for "
                    f"{left:.0f}s, until {utc_after(left)}")
        self.mark_lost(rec, why)

    def join(self, conn_id: int, peer: str, content: dict, round_idx: int) -> Optional[int]:
        """Admit a join_in: the client id (bound, told with assign_client_id), or None when
        it was refused (the peer learns the reason class) or ignored."""
        src = f", from {clip_text(peer, 80)}" if peer else ""
        holder = self.on_conn(conn_id)
        if holder is not None:   # one identity per connection: a second join is ignored
            logger.warning(f"Server: client #{holder.client_id} sent another join_in on its "
                           f"connection (claiming {clip_text(content.get('client_id'), 40)}); ignored")
            return None
        decision = self.admission.admit(content, self._online)
        mismatch = decision.accepted and check_local_param(self.local_param,
                                                           content.get("local_param", []))
        if mismatch:   # a config error, not a secret: the peer is told the detail and the fix
            decision = _refuse(mismatch, mismatch)
        if not decision.accepted:
            # a cool-off refused again and again is logged once per period, not per attempt
            (logger.debug if decision.quiet else logger.warning)(
                f"Server: refused client (claimed id {clip_text(content.get('client_id'), 40)}"
                f"{src}): {decision.reason}")
            reply = {"reason": decision.peer_reason}
            if decision.retry_after:
                reply["retry_after"] = decision.retry_after
            self.comm.send_to_conn(conn_id, Message(REFUSE, SERVER_ID, -1, round_idx, reply))
            self.comm.close(conn_id)
            return None
        cid = decision.client_id
        rejoin = cid in self
        self[cid] = ClientRecord(cid, conn_id)
        self._online.add(cid)
        self._by_conn[conn_id] = cid
        self._counts = None
        self.comm.bind(conn_id, cid)
        self.comm.send(Message(ASSIGN_ID, SERVER_ID, cid, round_idx,
                               {"client_id": cid, "job_id": self.job_id}))
        modified = content.get("shard_last_modified")
        shard = (f"; shard last modified {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(modified))}"
                 f" UTC" if isinstance(modified, (int, float)) and 0 <= modified < 2 ** 33 else "")
        verb = "re-joined" if rejoin else "joined"
        self.join_lines.joined(cid, f"Server: client #{cid} {verb}{src} ({decision.train_samples} "
                                    f"train samples{shard}; {len(self._online)}/{self.expected} "
                                    f"online)", len(self._online), self.expected)
        if decision.train_samples == 0:
            logger.warning(f"Server: client #{cid} declares 0 train samples: it can only evaluate; "
                           f"its updates weigh nothing in FedAvg")
        return cid

    def redeclare(self, cid: int, content: dict, round_idx: int) -> bool:
        """A joined client's shard changed on disk; False when the new declaration is refused
        (the client is then told, closed and counted out)."""
        error = content.get("refresh_error")
        if error:
            logger.warning(f"Server: client #{cid} could not load its changed shard "
                           f"({clip_text(error)}); it keeps its previous shard")
        decision = self.admission.redeclare(cid, content["declaration"])
        if decision.accepted:
            self._counts = None
            logger.info(f"Server: client #{cid} re-declared its shard "
                        f"({decision.train_samples} train samples)")
            return True
        logger.warning(f"Server: Refused re-declaration of client #{cid}: {decision.reason}")
        self.comm.send(Message(REFUSE, SERVER_ID, cid, round_idx, {"reason": decision.peer_reason}))
        self.mark_lost(self[cid], "refused", since=float("-inf"))
        self.comm.close(self[cid].conn_id)
        return False

    def train_counts(self) -> list:
        """Every known client's declared train count (the reference for capping a claim)."""
        if self._counts is None:
            self._counts = [self.admission.counts(c).get("train", 0) for c in self]
        return self._counts


def _file_stamp(path: str) -> Optional[Tuple[int, int]]:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
