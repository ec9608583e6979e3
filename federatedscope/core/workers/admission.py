"""Who may join, as whom, and with what weight: the server's checks of a client's claims.

A join carries ``client_id``, an optional ``token`` and, in shard mode, a ``declaration`` (see
``manifest_utils.ShardDeclaration``). With a manifest, the declaration must match the manifest entry
of that id (strict: refuse; otherwise warn and use the declared count). A manifest entry may name a
``token_hash`` (sha256 hex of the client's secret); ``distribute.token`` on the server is a shared
secret for runs without per-client hashes. Without a manifest (FS's data_idx mode) ids come from
the client or, failing that, from join order, as in FS.
"""
import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Set

logger = logging.getLogger("federatedscope")


@dataclass
class Decision:
    accepted: bool
    reason: str = ""
    client_id: int = -1
    train_samples: int = 0


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Admission:
    def __init__(self, manifest: Optional[dict], strict: bool, shared_token: str = "",
                 max_clients: int = 0):
        self.manifest = manifest          # Dict[int, ManifestEntry] or None
        self.strict = strict
        self.shared_token = shared_token
        self.max_clients = max_clients
        self.declarations: Dict[int, object] = {}
        self.counts: Dict[int, int] = {}
        self._next_id = 1

    # ----------------------------------------------------------------- join
    def admit(self, content: dict, online: Set[int]) -> Decision:
        claimed = content.get("client_id")
        if not isinstance(claimed, int) or isinstance(claimed, bool):
            return Decision(False, "join_in without an integer client_id")
        token = content.get("token", "")
        if not isinstance(token, str):
            return Decision(False, "token must be a string")
        if claimed <= 0:
            if self.manifest is not None:
                return Decision(False, "a client id is required (set distribute.client_id) "
                                       "when the server checks a manifest")
            claimed = self._assign_id(online)
        if claimed in online:
            return Decision(False, f"client id {claimed} is already connected (duplicate id)")
        if self.max_clients and self.manifest is None and claimed > self.max_clients:
            return Decision(False, f"client id {claimed} is out of range 1..{self.max_clients} "
                                   f"(federate.client_num)")
        problem = self._check_token(claimed, token)
        if problem:
            return Decision(False, problem)
        return self._check_claims(claimed, content)

    def _assign_id(self, online: Set[int]) -> int:
        while self._next_id in online or self._next_id in self.counts:
            self._next_id += 1
        return self._next_id

    def _check_token(self, cid: int, token: str) -> str:
        expected_hash = ""
        if self.manifest is not None and cid in self.manifest:
            expected_hash = getattr(self.manifest[cid], "token_hash", "") or ""
        if expected_hash:
            if not hmac.compare_digest(_hash_token(token), expected_hash):
                return f"client {cid}: token does not match the manifest's token_hash"
        elif self.shared_token and not hmac.compare_digest(token, self.shared_token):
            return f"client {cid}: missing or wrong token (distribute.token)"
        return ""

    def _check_claims(self, cid: int, content: dict) -> Decision:
        decl_dict = content.get("declaration")
        num_samples = content.get("num_samples", {})
        if decl_dict is not None:
            return self._check_declaration(cid, decl_dict)
        if self.manifest is not None:
            return Decision(False, f"client {cid} sent no shard declaration but the server checks "
                                   f"a manifest (enable distributed_data on the client)")
        train = num_samples.get("train", 0) if isinstance(num_samples, dict) else 0
        if not isinstance(train, int) or isinstance(train, bool) or train < 0:
            return Decision(False, "num_samples.train must be a non-negative integer")
        self.counts[cid] = train
        return Decision(True, client_id=cid, train_samples=train)

    def _check_declaration(self, cid: int, decl_dict) -> Decision:
        from federatedscope.core.auxiliaries.manifest_utils import (ShardDeclaration,
                                                                    check_declaration)
        try:
            decl = ShardDeclaration.from_dict(decl_dict)
        except (ValueError, TypeError, KeyError) as e:
            return Decision(False, f"malformed declaration: {e}")
        if decl.client_id != cid:
            return Decision(False, f"declaration is for client {decl.client_id}, "
                                   f"but the client joined as {cid}")
        if self.manifest is not None:
            reasons = check_declaration(self.manifest.get(cid), decl)
            if reasons:
                text = f"client {cid}: " + "; ".join(reasons)
                if self.strict or self.manifest.get(cid) is None:
                    return Decision(False, text)
                logger.warning(f"{text} (distributed_data.strict_check is off: accepted)")
        self.declarations[cid] = decl
        self.counts[cid] = int(decl.num_samples.get("train", 0))
        return Decision(True, client_id=cid, train_samples=self.counts[cid])

    # ----------------------------------------------------------- re-checks
    def redeclare(self, cid: int, decl_dict) -> Decision:
        """A client's shard changed on disk between rounds; check the new declaration."""
        return self._check_declaration(cid, decl_dict)

    def revalidate(self, client_ids: Iterable[int]) -> Dict[int, str]:
        """Before each aggregation: the contributing set must still match the manifest."""
        problems: Dict[int, str] = {}
        if self.manifest is None:
            return problems
        from federatedscope.core.auxiliaries.manifest_utils import check_declaration
        for cid in client_ids:
            decl = self.declarations.get(cid)
            if decl is None:
                problems[cid] = "no declaration on record"
                continue
            reasons = check_declaration(self.manifest.get(cid), decl)
            if reasons and self.strict:
                problems[cid] = "; ".join(reasons)
        return problems
