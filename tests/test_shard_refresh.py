"""A client whose shard changes on disk between rounds re-declares; the server re-validates."""
import os
import shutil

import pytest

from harness.jobs import LIGHT_TRAINING, Job
from harness.procs import ROOT, checkpoint_round, frozen, run_script, wait_all

ROUNDS = 8   # the swap lands once round 1 is checkpointed; the rest leaves room for the re-check


@pytest.fixture
def two_cuts(femnist_root, femnist_shards, tmp_path):
    """The test's own copy of the shards, plus a re-cut (other splits) to swap in mid-run."""
    live = tmp_path / "shards"
    shutil.copytree(os.path.dirname(femnist_shards), live)
    recut = tmp_path / "recut"
    run_script([os.path.join(ROOT, "scripts", "tools", "prepare_femnist_shards.py"),
                    "--root", femnist_root, "--clients", "3", "--out", str(recut), "--seed", "0",
                    "--splits", "0.5,0.25,0.25"], check=True)
    return live, recut


def _swap_in(live, recut, k):
    """Replace client k's shard directory in one rename, as a data refresh job would."""
    staged = live / f".client_{k}.new"
    shutil.copytree(recut / f"client_{k}", staged)
    old = live / f".client_{k}.old"
    os.rename(live / f"client_{k}", old)
    os.rename(staged, live / f"client_{k}")
    shutil.rmtree(old)


@pytest.mark.parametrize("strict", [False, True])
def test_refreshed_shard_is_redeclared_and_checked(femnist_root, two_cuts, tmp_path, strict):
    live, recut = two_cuts
    job = Job(tmp_path, femnist_root, rounds=ROUNDS, manifest=str(live / "manifest.json"),
              common=["distributed_data.strict_check", str(strict), *LIGHT_TRAINING])
    server = job.server(["federate.min_clients_threshold", "2", "federate.save_to", job.ckpt,
                         "distribute.heartbeat_timeout", "6.0"])
    clients = {k: job.client(k, ["distribute.heartbeat_interval", "0.5"]) for k in (1, 2, 3)}
    job.wait_round(1, watch=[server] + list(clients.values()))
    with frozen(server):      # keyed to state: the swap lands while rounds remain
        assert checkpoint_round(job.ckpt) < ROUNDS - 1
        _swap_in(live, recut, 3)
    if strict:
        wait_all([clients[3]], timeout=120, expect=[2])
        wait_all([server, clients[1], clients[2]], timeout=240, expect=[0, 0, 0])
        log = job.server_log()
        assert "Refused re-declaration of client #3" in log
    else:
        wait_all([server] + list(clients.values()), timeout=240, expect=[0, 0, 0, 0])
        log = job.server_log()
        assert "client #3 re-declared its shard" in log and "strict_check is off" in log
    assert "shard changed on disk; re-declaring" in open(job.log("client_3")).read()
    assert job.final()["Round"] == ROUNDS
