"""What a swarm's virtual clients declare: a synthetic manifest, or the shards of a real one.

``write_swarm_manifest`` writes N synthetic entries (random counts and label histograms, tokens as
hashes) and returns what each client declares; ``shards_from_manifest`` reads a real partition's
shards as their clients would. Either feeds ``harness.swarm.SwarmPlan``; the server reads only
the manifest, so no shard file is needed.
"""
import hashlib
import os
from dataclasses import dataclass
from typing import Dict


@dataclass
class SwarmShard:
    client_id: int
    token: str
    num_samples: Dict[str, int]
    declaration: dict


# The swarm impersonates FEMNIST clients: their shards hold 28x28 grey-level samples.
SAMPLE_TYPE = "uint8[28,28]"


def swarm_token(seed: int, cid: int) -> str:
    return hashlib.sha256(f"swarm-token:{seed}:{cid}".encode()).hexdigest()[:32]


def write_swarm_manifest(out_dir: str, n: int, seed: int = 0, num_classes: int = 62,
                         declarations: bool = True) -> "tuple[str, Dict[int, SwarmShard]]":
    """A manifest of ``n`` synthetic shards (random counts and label histograms, tokens as
    hashes, like the managed launcher's); returns (manifest path, client id -> what that client
    declares; empty without ``declarations``). No shard files: the server reads only the
    manifest, and virtual clients train on nothing. The manifest benchmark times loading it."""
    import numpy as np
    from federatedscope.core.data.shard_format import (Manifest, ManifestEntry, ShardDeclaration,
                                                       now_iso, token_digest, write_manifest)
    rng = np.random.default_rng(seed)
    trains = rng.integers(40, 401, size=n)
    hists = rng.multinomial(trains, [1 / num_classes] * num_classes)
    entries, shards = {}, {}
    for cid, train, row in zip(range(1, n + 1), trains.tolist(), hists.tolist()):
        counts = {"train": train, "val": max(1, train // 3), "test": max(1, train // 3)}
        fp = hashlib.sha256(f"swarm-shard:{seed}:{cid}".encode()).hexdigest()
        token = swarm_token(seed, cid)
        entries[cid] = ManifestEntry(cid, f"client_{cid}", counts, fp, row,
                                     token_digest(token).hex())
        if declarations:
            shards[cid] = SwarmShard(cid, token, counts,
                                     ShardDeclaration(cid, counts, fp, row, SAMPLE_TYPE).to_dict())
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "manifest.json")
    write_manifest(path, Manifest("femnist", "synthetic", seed, [0.6, 0.2, 0.2],
                                  {"generator": "harness/swarm_manifest.py"}, entries, num_classes,
                                  SAMPLE_TYPE, created=now_iso()))
    return path, shards


def shards_from_manifest(manifest_path: str, tokens_dir: str = "") -> Dict[int, SwarmShard]:
    """What every client of a REAL partition declares: each shard's ``meta.json`` read as its
    client reads it (``ShardDeclaration.of_meta``; sha256 not re-checked, the server never sees
    the files) and its token from ``<tokens_dir>/client_<k>.token`` (``prepare_shards.py
    --tokens`` or ``make_client_tokens.py``). No tokens dir: the manifest must hold no token
    hashes, else the server refuses every join, so that is an error naming the fix."""
    from federatedscope.core.auxiliaries.client_tokens import token_path
    from federatedscope.core.data.shard_format import (ShardDeclaration, read_manifest, read_meta,
                                                       shard_dir)
    manifest = read_manifest(manifest_path)
    out = {}
    for cid, entry in sorted(manifest.clients.items()):
        meta = read_meta(shard_dir(manifest_path, entry))
        token = ""
        if entry.token_hash and not tokens_dir:
            raise ValueError(f"{manifest_path}: client {cid} has a token hash; pass the folder "
                             f"of its client_<k>.token files (tokens_dir)")
        if tokens_dir:
            with open(token_path(tokens_dir, cid)) as f:
                token = f.read().strip()
        out[cid] = SwarmShard(cid, token, dict(meta.num_samples),
                              ShardDeclaration.of_meta(meta).to_dict())
    return out
