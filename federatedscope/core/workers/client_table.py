"""Every client that ever joined the server, by id: who is online, on which connection.

``ClientTable`` runs the join exchange (``Admission`` decides; the table binds the connection,
tells the client its id and logs the join) and a re-declaration, and marks clients lost. The
server and its liveness rules read it; nothing else writes it.
"""
import logging
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Set

from federatedscope.core.communication.transport import Disconnected, ServerComm
from federatedscope.core.message import (ASSIGN_ID, BROADCAST, REFUSE, SERVER_ID, Message,
                                         clip_text)
from federatedscope.core.workers.admission import Admission, refuse
from federatedscope.core.workers.cool_off import utc_after
from federatedscope.core.workers.join_lines import JoinLines
from federatedscope.core.workers.validation import check_local_param

logger = logging.getLogger("federatedscope")


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
        self.fedopt = False                      # the server runs a server optimizer
        self._fedopt_told = False
        self.join_lines = JoinLines()

    def follow(self, aggregator) -> None:
        """Take the server's own algorithm settings that joining clients are checked against."""
        self.local_param = list(aggregator.local_param)
        self.fedopt = aggregator.server_optimizer is not None

    def online_ids(self) -> Set[int]:
        """The ids online now (a copy)."""
        return set(self._online)

    def missing_from(self, answered) -> Set[int]:
        """The ids expected or joined that are not in ``answered``: timed out, refused, lost, or
        never joined. Expected: 1..expected in FS's data_idx mode, the manifest's ids when the job
        runs them all; a job of fewer clients than its manifest lists expects no id in particular
        (its eval lines must not list thousands of ids nobody started)."""
        manifest = self.admission.manifest
        if manifest is None:
            expected = set(range(1, self.expected + 1))
        else:
            expected = set(manifest) if len(manifest) <= self.expected else set()
        return (expected | set(self)) - set(answered)

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

    def drop(self, rec: ClientRecord, why: str, since: Optional[float] = None) -> None:
        """Mark it lost and close its connection (the server stops trusting that session)."""
        self.mark_lost(rec, why, since)
        self.comm.close(rec.conn_id)

    def send_model(self, model, msg_type: str, round_idx: int, cids=None) -> None:
        """The global model to ``cids`` (default: every online client): the transport encodes
        (or copies) it once, before returning, so no per-broadcast clone of it is made here."""
        cids = sorted(self._online if cids is None else cids)
        if cids:
            state = {k: v.detach() for k, v in model.state_dict().items()}
            self.comm.broadcast(Message(msg_type, SERVER_ID, BROADCAST, round_idx, {}, state), cids)

    def close_conn(self, conn_id: Optional[int], why: str) -> None:
        """Stop trusting a connection: the client bound to it is dropped, an unjoined one closed."""
        rec = self.on_conn(conn_id)
        if rec is not None:
            self.drop(rec, why)
        elif conn_id is not None:
            self.comm.close(conn_id)

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
            decision = refuse(mismatch, mismatch)
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
        if content.get("fedopt") is True and not self.fedopt and not self._fedopt_told:
            # not refused: a client's fedopt keys change nothing it does (as in FS)
            self._fedopt_told = True
            logger.warning(f"Server: client #{cid} runs with fedopt.use True, but FedOpt is the "
                           f"server's setting (as in FS) and this server's is False: the job "
                           f"aggregates with plain FedAvg; set fedopt.use True (and "
                           f"fedopt.optimizer) in the server's config for FedOpt")
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
        self.drop(self[cid], "refused", since=float("-inf"))
        return False

    def train_counts(self) -> list:
        """Every known client's declared train count (the reference for capping a claim)."""
        if self._counts is None:
            self._counts = [self.admission.counts(c).get("train", 0) for c in self]
        return self._counts
