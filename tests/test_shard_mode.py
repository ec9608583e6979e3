"""Shard mode end to end: isolation proven by an open() audit, fidelity to a standalone simulation,
and refusal of a client whose declaration does not match the manifest."""
import json
import os
import shutil

import pytest
import torch

from harness.jobs import Job
from harness.procs import ROOT, start_main, wait_all

ROUNDS = 3


def _audit_env(tmp, name, data_root):
    return {"FS_AUDIT_OPEN_LOG": os.path.join(str(tmp), f"opened_{name}.txt"),
            "FS_AUDIT_ROOT": data_root}


def _opened(tmp, name):
    path = os.path.join(str(tmp), f"opened_{name}.txt")
    with open(path) as f:
        return {line.strip() for line in f if line.strip()}


@pytest.fixture(scope="module")
def shard_run(femnist_root, femnist_shards, tmp_path_factory):
    """One distributed shard-mode job (3 rounds) with every process's opens recorded."""
    tmp = tmp_path_factory.mktemp("shard_run")
    data_root = os.pathsep.join([femnist_root, os.path.dirname(femnist_shards)])
    job = Job(tmp, femnist_root, rounds=ROUNDS, manifest=femnist_shards)
    ckpt = str(tmp / "global.pt")
    server = job.server(["federate.save_to", ckpt], env=_audit_env(tmp, "server", data_root))
    clients = [job.client(k, env=_audit_env(tmp, f"client_{k}", data_root)) for k in (1, 2, 3)]
    codes = wait_all([server] + clients, timeout=300)
    assert codes == [0, 0, 0, 0], job.server_log()[-3000:]
    return job, tmp, ckpt


def test_each_client_opens_only_its_shard_and_server_only_the_manifest(shard_run, femnist_shards):
    job, tmp, _ = shard_run
    shard_root = os.path.realpath(os.path.dirname(femnist_shards))
    assert _opened(tmp, "server") == {os.path.join(shard_root, "manifest.json")}
    for k in (1, 2, 3):
        opened = _opened(tmp, f"client_{k}")
        own = os.path.join(shard_root, f"client_{k}") + os.sep
        assert opened, f"client {k} opened nothing under the data root?"
        assert all(p.startswith(own) for p in opened), (k, sorted(opened))
        assert {os.path.basename(p) for p in opened} >= {"meta.json", "train.pt", "val.pt", "test.pt"}
        log = open(job.log(f"client_{k}")).read()
        assert f"Client {k} loaded" in log and f"client_{k}/train.pt" in log


def test_data_idx_mode_reads_everything_by_contrast(femnist_root, tmp_path):
    job = Job(tmp_path, femnist_root, rounds=1)
    server = job.server(env=_audit_env(tmp_path, "server", femnist_root))
    clients = [job.client(k, env=_audit_env(tmp_path, f"client_{k}", femnist_root)) for k in (1, 2, 3)]
    assert wait_all([server] + clients, timeout=300) == [0, 0, 0, 0]
    raw = {os.path.realpath(os.path.join(femnist_root, "femnist", "raw", f))
           for f in os.listdir(os.path.join(femnist_root, "femnist", "raw"))}
    for name in ("server", "client_1", "client_2", "client_3"):
        opened = _opened(tmp_path, name)
        # every process touches the whole dataset (raw JSON or the shared processed cache)
        assert opened & raw or any("processed" in p for p in opened), (name, opened)
        assert not any("client_" in os.path.basename(os.path.dirname(p)) for p in opened)


def test_distributed_equals_standalone_simulation(shard_run, femnist_shards, tmp_path):
    job, _, ckpt = shard_run
    cfg = os.path.join(ROOT, "scripts", "distributed_scripts", "distributed_configs",
                       "distributed_femnist_server.yaml")
    ckpt2 = str(tmp_path / "standalone.pt")
    proc = start_main(["--cfg", cfg, "federate.mode", "standalone", "distributed_data.manifest",
                       femnist_shards, "federate.total_round_num", str(ROUNDS), "federate.save_to",
                       ckpt2, "outdir", str(tmp_path / "exp")], str(tmp_path / "standalone.log"))
    assert wait_all([proc], timeout=300) == [0], open(tmp_path / "standalone.log").read()[-2000:]
    a = torch.load(ckpt, weights_only=True)
    b = torch.load(ckpt2, weights_only=True)
    assert a["round"] == b["round"] == ROUNDS
    worst = max(float((a["model"][k].double() - b["model"][k].double()).abs().max())
                for k in a["model"])
    assert worst <= 1e-5, worst


def test_declaration_mismatch_is_refused_and_others_carry_on(femnist_root, femnist_shards, tmp_path):
    # A manifest that disagrees with client 2's shard (e.g. the shard was re-cut afterwards).
    bad_dir = tmp_path / "shards"
    shutil.copytree(os.path.dirname(femnist_shards), bad_dir)
    manifest = json.loads((bad_dir / "manifest.json").read_text())
    for entry in manifest["clients"]:
        if entry["client_id"] == 2:
            entry["fingerprint"] = "0" * 64
    (bad_dir / "manifest.json").write_text(json.dumps(manifest))
    job = Job(tmp_path, femnist_root, rounds=1, manifest=str(bad_dir / "manifest.json"))
    server = job.server(["federate.join_timeout", "3.0", "federate.min_clients_threshold", "2"])
    clients = {k: job.client(k) for k in (1, 2, 3)}
    assert wait_all([clients[2]], timeout=120) == [2]
    client_log = open(job.log("client_2")).read()      # the peer learns the class, not the manifest
    assert "refused by the server: declaration mismatch" in client_log
    assert "fingerprint" not in client_log
    assert wait_all([server, clients[1], clients[3]], timeout=240) == [0, 0, 0]
    log = job.server_log()
    assert "refused client (claimed id 2" in log and "fingerprint" in log
    assert job.final()["Round"] == 1
