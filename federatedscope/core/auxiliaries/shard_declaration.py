"""What a client claims about its shard when it joins, and the comparison with the manifest.

The same comparison serves the server (a joining client's declaration) and the launcher's
pre-flight (a shard's ``meta.json``, turned into the declaration its client would send), so the
two can never disagree about what "matches the manifest" means.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from federatedscope.core.auxiliaries.manifest_schema import (SPLITS, ManifestEntry, ShardMeta,
                                                             _Checker)


@dataclass
class ShardDeclaration:
    """What a client claims about its shard when it joins (travels over the network)."""
    client_id: int
    num_samples: Dict[str, int]
    fingerprint: str
    label_hist: List[int]
    sample_type: str = "uint8[28,28]"

    def to_dict(self) -> Dict[str, Any]:
        return {"client_id": self.client_id, "num_samples": dict(self.num_samples),
                "fingerprint": self.fingerprint, "label_hist": list(self.label_hist),
                "sample_type": self.sample_type}

    @classmethod
    def from_dict(cls, d: Any) -> "ShardDeclaration":
        # Comes from the network: strict types, no coercion, bounded sizes.
        c = _Checker("join declaration", "the client's shard (re-run the client after fixing it)")
        c.obj(d, "declaration")
        c.keys(d, "declaration", ("client_id", "num_samples", "fingerprint", "label_hist",
                                  "sample_type"))
        cid = c.pos_int(d["client_id"], "client_id")
        counts = c.counts(d["num_samples"], "num_samples")
        fp = c.sha(d["fingerprint"], "fingerprint")
        hist = c.hist(d["label_hist"], "label_hist", None, counts["train"])
        st = c.string(d["sample_type"], "sample_type")
        if len(st) > 64 or len(hist) > 100_000:
            c.fail("sample_type/label_hist", "is implausibly large")
        return cls(cid, counts, fp, hist, st)

    @classmethod
    def of_meta(cls, meta: ShardMeta) -> "ShardDeclaration":
        """The declaration a client holding this shard would send (used by pre-flight)."""
        return cls(meta.client_id, dict(meta.num_samples), meta.fingerprint,
                   list(meta.label_hist["train"]), meta.sample_type)


def check_declaration(entry: Optional[ManifestEntry], decl: ShardDeclaration,
                      sample_type: Optional[str] = None) -> List[str]:
    """Why ``decl`` does not match the manifest ``entry``; an empty list means it matches.

    Complete on its own: the sample type is compared with the entry's (``read_manifest`` puts
    the manifest's ``sample_type`` on every entry); ``sample_type`` overrides it when given.
    """
    if entry is None:
        return [f"client id {decl.client_id} is not listed in the manifest"]
    reasons: List[str] = []
    if entry.client_id != decl.client_id:
        reasons.append(f"client id {decl.client_id} != manifest entry {entry.client_id}")
    for s in SPLITS:
        got, want = decl.num_samples.get(s), entry.num_samples.get(s)
        if got != want:
            reasons.append(f"{s} count {got} != manifest {want}")
    if decl.fingerprint != entry.fingerprint:
        reasons.append(f"fingerprint {decl.fingerprint[:12]}... != manifest "
                       f"{entry.fingerprint[:12]}... (the shard differs from the one prepared)")
    if list(decl.label_hist) != list(entry.label_hist):
        a, b = list(decl.label_hist), list(entry.label_hist)
        diff = next((f"class {i}: {x} vs {y}" for i, (x, y) in enumerate(zip(a, b)) if x != y),
                    f"{len(a)} bins vs {len(b)}")
        reasons.append(f"train label_hist differs from the manifest ({diff})")
    want_type = entry.sample_type if sample_type is None else sample_type
    if decl.sample_type != want_type:
        reasons.append(f"sample type {decl.sample_type!r} != manifest {want_type!r}")
    return reasons
