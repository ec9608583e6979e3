"""The swarm speaking for a REAL partition: each virtual client declares its shard's meta.json
and presents its token file (harness/swarm_manifest.py: shards_from_manifest), as bench/fullsize.py does
with FEMNIST's 3,550 writers."""
import re

import pytest

from federatedscope.core.auxiliaries.client_tokens import token_hash
from federatedscope.core.data.shard_format import ShardDeclaration, check_declaration, read_manifest
from federatedscope.core.data.sharding import ShardArgs, prepare_shards
from harness.jobs import Job
from harness.procs import wait_all
from harness.swarm import Swarm, SwarmPlan, run_swarm, server_opts, summarize
from harness.swarm_manifest import shards_from_manifest
from tests.test_sharding import write_leaf

# 5 writers, one per client (sequential): counts chosen so the 0.6/0.2/0.2 cut is easy by hand,
# and the first writer's val split is empty (floor(4 * 0.2) = 0)
COUNTS = {"f0000_1": 4, "f0001_2": 15, "f0002_3": 20, "f0003_4": 25, "f0004_5": 30}
# floor(0.6 n), floor(0.2 n), the rest
EXPECTED = {1: (2, 0, 2), 2: (9, 3, 3), 3: (12, 4, 4), 4: (15, 5, 5), 5: (18, 6, 6)}


@pytest.fixture(scope="module")
def partition(tmp_path_factory):
    base = tmp_path_factory.mktemp("real")
    write_leaf(str(base / "data" / "femnist" / "raw" / "all_data_0.json"), COUNTS, seed=3)
    prepare_shards(ShardArgs(dataset="femnist", root=str(base / "data"), clients=5,
                             out=str(base / "shards"), seed=7, progress=False,
                             tokens=str(base / "tokens")))
    return str(base / "shards" / "manifest.json"), str(base / "tokens")


def test_declarations_and_tokens_come_from_the_real_shards(partition):
    manifest_path, tokens = partition
    shards = shards_from_manifest(manifest_path, tokens)
    manifest = read_manifest(manifest_path)
    assert sorted(shards) == [1, 2, 3, 4, 5]
    for cid, want in EXPECTED.items():
        s = shards[cid]
        assert (s.num_samples["train"], s.num_samples["val"], s.num_samples["test"]) == want
        decl = ShardDeclaration.from_dict(s.declaration)  # what the server parses off the wire
        assert decl.client_id == cid and sum(decl.label_hist) == want[0]
        assert decl.fingerprint == manifest.clients[cid].fingerprint
        assert check_declaration(manifest.clients[cid], decl) == []
        assert token_hash(s.token) == manifest.clients[cid].token_hash
    assert len({s.token for s in shards.values()}) == 5


def test_an_empty_split_reports_zero_accuracy_not_a_crash(partition):
    s = shards_from_manifest(*partition)[1]           # val is empty (4 samples)
    m = Swarm._metrics(s, 1)
    assert (m["val_total"], m["val_correct"], m["val_acc"]) == (0, 0, 0.0)
    # test: 2 samples, acc min(1, 0.05 + 0.1 + 1 % 7 / 100) = 0.16 -> round(0.32) = 0 correct
    assert (m["test_total"], m["test_correct"]) == (2, 0)


def test_a_manifest_with_token_hashes_needs_the_tokens(partition):
    with pytest.raises(ValueError, match=r"client 1 has a token hash.*tokens_dir"):
        shards_from_manifest(partition[0])


def test_the_real_server_admits_every_real_declaration_and_finishes(partition, tmp_path):
    manifest_path, tokens = partition
    rounds = 2
    job = Job(tmp_path, "", rounds, manifest_path)
    server = job.server(server_opts(rounds))
    try:
        res = run_swarm(SwarmPlan(f"127.0.0.1:{job.port}", shards_from_manifest(manifest_path,
                                                                                 tokens),
                                  timeout=120))
        assert wait_all([server], 60) == [0], open(job.log("server")).read()[-3000:]
    finally:
        wait_all([server], 1)
    s = summarize(res, rounds)
    assert s["refused"] == 0 and s["errors"] == [], s
    assert s["joined"] == 5 and s["finished"] == 5 and s["messages_lost"] == 0, s
    log = open(job.log("server")).read()
    assert [int(m) for m in re.findall(r"aggregated (\d+) update", log)] == [5] * rounds


def test_a_session_that_fails_before_joining_is_retried_with_backoff(partition):
    """Nothing listens: every client retries as the real client reconnects (1 s, then 1.6 s,
    +-20 %) while the next wait still fits the swarm's 3 s: tries at ~0, ~1.0 and ~2.6 s, so
    exactly 2 retries each (the third wait, ~2.56 s, would end past 3 s)."""
    from harness.procs import free_port
    shards = shards_from_manifest(*partition)
    res = run_swarm(SwarmPlan(f"127.0.0.1:{free_port()}", shards, timeout=3.0))
    assert [r.join_retries for r in res.values()] == [2] * 5
    assert all(r.join_latency is None and r.error for r in res.values())
    s = summarize(res, 1)
    assert (s["join_retries"], s["retried_clients"], s["joined"]) == (10, 5, 0)
    assert s["retry_errors"]
